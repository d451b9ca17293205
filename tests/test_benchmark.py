"""The comparison harness: entries, A_t lookup, and a real (tiny) two-method table."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from dgm_keras import benchmark, config


def test_every_method_has_an_entry_and_unknown_names_are_refused():
    assert {e.method for e in benchmark.ENTRIES} == set(config.METHOD_NAMES)
    assert [e.key for e in benchmark.select_entries("ewc_m,finetune,ewc_m")] == ["ewc_m", "finetune"]  # as given
    rows = [{"key": "ewc_m"}, {"key": "finetune"}]
    assert [r["key"] for r in benchmark.table_order(rows)] == ["finetune", "ewc_m"]  # the table keeps the paper's order
    with pytest.raises(benchmark.BenchmarkError, match=r"--methods='ewc,hat' is not allowed; allowed: all, or"):
        benchmark.select_entries("ewc,hat")


def test_accuracy_at_reads_the_task_that_completes_the_classes():
    results = {"scenario": {"classes_per_task": 2}, "A_t": [1.0, 0.5, 0.4, 0.3, 0.2],
               "A_t_selected": [1.0, 0.6, 0.5, 0.4, 0.25]}
    assert benchmark.accuracy_at(results, 4) == pytest.approx(50.0)
    assert benchmark.accuracy_at(results, 10, selected=True) == pytest.approx(25.0)
    assert benchmark.accuracy_at(results, 5) is None  # no task ends with 5 classes in 5x2
    assert benchmark.mid_point(10, 1) == 5 and benchmark.mid_point(10, 2) == 6 and benchmark.mid_point(50, 10) == 30


def test_every_entry_runs_through_its_settings_file_and_budget_flags_come_last(tmp_path):
    cmd = benchmark.train_command(benchmark.select_entries("ewc_m")[0], "mnist", 2, str(tmp_path), dict(
        seed=3, epochs_per_task=1, steps_per_task=0, data_dir=None))
    assert cmd[3] == "--settings=ewc_m" and "--dataset=mnist" in cmd
    assert cmd.index("--classes_per_task=2") > 3 and cmd[-1] == "--epochs_per_task=1"


def test_a_pair_without_settings_is_refused_before_anything_runs(tmp_path):
    benchmark.check_settings(benchmark.select_entries("all"), "mnist")  # every MNIST entry has its file
    # CIFAR-10 has the entries of its table (issue 12), not the regularisation baselines.
    benchmark.check_settings(benchmark.select_entries("joint,finetune,icarl,dgr,mergan_ra,dgmw,dgma"), "cifar10")
    with pytest.raises(benchmark.BenchmarkError, match=r"no settings for --dataset=cifar10 with ewc, si: "
                       r"flags/cifar10_ewc.cfg, flags/cifar10_si.cfg missing"):
        benchmark.check_settings(benchmark.select_entries("dgmw,ewc,si"), "cifar10")
    proc = subprocess.run([sys.executable, "-m", "dgm_keras.benchmark", "--dataset=svhn_cropped", "--methods=dgmw,icarl",
                           f"--workdir={tmp_path}"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode != 0 and not os.listdir(tmp_path)
    assert [line for line in proc.stderr.splitlines() if line.strip()][-1].startswith(
        "benchmark: no settings for --dataset=svhn_cropped with icarl: flags/svhn_cropped_icarl.cfg missing")


def test_a_finished_entry_is_reused_only_for_the_same_run():
    cmd = ["-m", "dgm_keras.train", "--flagfile=f.cfg", "--seed=0", "--epochs_per_task=1"]
    assert benchmark.same_run(cmd, cmd + ["--data_dir=/elsewhere/tfds"])  # where the data lives changes nothing
    assert not benchmark.same_run(cmd, cmd[:-1] + ["--epochs_per_task=2"])
    assert not benchmark.same_run(cmd, cmd[:-1])


def test_train_flags_go_last_and_the_harness_flags_are_refused(tmp_path):
    entry = benchmark.select_entries("mergan_ra")[0]
    flags = benchmark.check_train_flags(["--gp_weight=10", "--d_lr=1e-3"])
    cmd = benchmark.train_command(entry, "mnist", 2, str(tmp_path), dict(seed=0, epochs_per_task=1, train_flags=flags))
    assert cmd[-3:] == ["--epochs_per_task=1", "--gp_weight=10", "--d_lr=1e-3"]  # after the flagfile: they win
    with pytest.raises(benchmark.BenchmarkError, match=r"--train_flag='--seed=3' is not allowed; allowed: any train "
                                                       r"flag but method, .* pass --seed to it"):
        benchmark.check_train_flags(["--seed=3"])
    with pytest.raises(benchmark.BenchmarkError, match=r"--train_flag='gp_weight=10' is not allowed; allowed: a train"):
        benchmark.check_train_flags(["gp_weight=10"])
    # Their runs get their own folder: a variant never replaces (rmtree) the plain runs' entries.
    assert benchmark.run_set_name("mnist", "5x2", []) == "mnist_5x2"
    assert benchmark.run_set_name("mnist", "5x2", flags) == "mnist_5x2+gp_weight=10+d_lr=1e-3"
    assert benchmark.run_set_name("mnist", "5x2", ["--x=a/b"]) == "mnist_5x2+x=a_b"


def test_bad_methods_flag_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dgm_keras.benchmark", "--methods=sgd", f"--workdir={tmp_path}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode != 0
    assert [line for line in proc.stderr.splitlines() if line.strip()][-1].startswith(
        "benchmark: --methods='sgd' is not allowed; allowed: all, or a comma list of joint, finetune")
    assert not os.listdir(tmp_path)


# Stands in for a training: the first run leaves a checkpoint and is killed; a run that finds
# the checkpoint writes its results. So whether the harness resumed shows in one exit code.
_FAKE_TRAIN = """
import json, os, signal, sys
work = sys.argv[1]
if os.path.exists(os.path.join(work, "ckpt")):
    json.dump({"complete": True, "A_t": [1.0]}, open(os.path.join(work, "results.json"), "w"))
else:
    open(os.path.join(work, "ckpt"), "w").close()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_an_unfinished_entry_resumes_from_its_checkpoints_and_another_command_starts_clean(tmp_path):
    entry, run_dir, logged = benchmark.ENTRIES[0], str(tmp_path / "joint"), []
    cmd = [sys.executable, "-c", _FAKE_TRAIN, run_dir]
    killed = benchmark.run_entry(entry, cmd, run_dir, log=logged.append)
    assert killed["exit"] == -9 and os.path.exists(os.path.join(run_dir, "ckpt"))
    resumed = benchmark.run_entry(entry, cmd, run_dir, log=logged.append)
    assert resumed["exit"] == 0 and resumed["resumed"] and resumed["results"]["A_t"] == [1.0]
    assert logged[2].startswith("[joint] resuming: ")
    assert benchmark.run_entry(entry, cmd, run_dir, log=logged.append)["exit"] == 0 and logged[-1].endswith("reused " + run_dir)
    # Another command (here: another budget) does not inherit the checkpoint: it starts clean, is killed again.
    assert benchmark.run_entry(entry, cmd + ["--epochs_per_task=2"], run_dir, log=logged.append)["exit"] == -9
    # So does --rerun with the same command.
    assert benchmark.run_entry(entry, cmd + ["--epochs_per_task=2"], run_dir, log=logged.append)["exit"] == 0
    assert benchmark.run_entry(entry, cmd + ["--epochs_per_task=2"], run_dir, rerun=True, log=logged.append)["exit"] == -9


def test_entries_finished_earlier_at_the_same_settings_stay_in_the_table(tmp_path):
    opts = dict(seed=0, epochs_per_task=0, steps_per_task=30, data_dir="/data", train_flags=[])
    icarl = next(e for e in benchmark.ENTRIES if e.key == "icarl")
    run_dir = os.path.join(tmp_path, "icarl")
    os.makedirs(run_dir)
    cmd = benchmark.train_command(icarl, "mnist", 5, run_dir, opts)
    benchmark.write_atomic(os.path.join(run_dir, "benchmark_row.json"), json.dumps({"key": "icarl", "command": cmd[1:], "exit": 0}))
    benchmark.write_atomic(os.path.join(run_dir, "results.json"), json.dumps({"A_t": [0.5, 0.25]}))
    joint = benchmark.select_entries("joint")
    assert [r["key"] for r in benchmark.earlier_rows(joint, "mnist", 5, str(tmp_path), opts)] == ["icarl"]
    assert benchmark.earlier_rows(benchmark.select_entries("icarl"), "mnist", 5, str(tmp_path), opts) == []  # run, not read
    assert benchmark.earlier_rows(joint, "mnist", 5, str(tmp_path), dict(opts, steps_per_task=60)) == []  # other budget


def test_a_row_another_harness_finishes_meanwhile_stays_in_the_table(tmp_path):
    # Two harness processes at once (--methods=icarl and --methods=joint): icarl finishes while
    # joint trains. The table joint's process writes must hold icarl's row; read only at the
    # start, it was dropped (found on CIFAR-10 in session 12: MeRGAN-RA's row vanished).
    opts = dict(seed=0, epochs_per_task=0, steps_per_task=30, data_dir="/data", train_flags=[])
    results = {"scenario": {"classes_per_task": 5}, "A_t": [0.9, 0.5], "A_t_selected": [0.9, 0.5], "forgetting": 0.4}
    times = {"wall_seconds": 60.0, "cpu_seconds": 60.0, "peak_memory_mb": 100.0}
    icarl = next(e for e in benchmark.ENTRIES if e.key == "icarl")

    def joint_while_icarl_finishes(entry, cmd, run_dir, rerun=False):
        icarl_dir = os.path.join(tmp_path, "icarl")
        os.makedirs(icarl_dir)
        icarl_cmd = benchmark.train_command(icarl, "mnist", 5, icarl_dir, opts)
        benchmark.write_atomic(os.path.join(icarl_dir, "results.json"), json.dumps(dict(results, A_t=[0.8, 0.25])))
        benchmark.write_atomic(os.path.join(icarl_dir, "benchmark_row.json"),
                               json.dumps({"key": "icarl", "command": icarl_cmd[1:], "exit": 0} | times))
        return {"key": entry.key, "command": cmd[1:], "exit": 0, "results": results} | times

    out = str(tmp_path / "table.md")
    rows, table = benchmark.run_and_tabulate(benchmark.select_entries("joint"), "mnist", 5, str(tmp_path), opts, out,
                                             "30 steps a task", run=joint_while_icarl_finishes)
    assert [r["key"] for r in rows] == ["joint", "icarl"]
    with open(out) as f:
        written = f.read()
    assert written == table
    assert "| JT (upper bound) | 90.00 |" in written and "| iCaRL | 80.00 | 90.00 | 25.00 | 50.00 |" in written


def test_two_methods_make_a_table(tmp_path, mnist_small_dir):
    out = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, "-m", "dgm_keras.benchmark", "--methods=joint",
                           "--classes_per_task=5", "--steps_per_task=30", f"--data_dir={mnist_small_dir}",
                           f"--workdir={tmp_path / 'runs'}", f"--out={out}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = out.read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines() if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"method", "JT (upper bound)"}
    assert rows["method"][:3] == ["A5 strict", "A5 selected", "A10 strict"]  # 2x5: A5 after task 1
    joint = rows["JT (upper bound)"]
    assert float(joint[2]) > 60.0  # real numbers: after 30 steps a task, all 10 classes well above chance
    assert re.fullmatch(r"\d+\.\d / \d+\.\d min", joint[5]) and re.fullmatch(r"\d+ MB", joint[6])
    assert int(joint[7].replace(",", "")) > 10_000 and joint[8] == "—"
    assert (tmp_path / "runs" / "mnist_2x5" / "joint" / "results.json").exists()
    assert os.path.exists(os.path.splitext(out)[0] + ".json")
    # A second invocation reuses finished entries (a killed benchmark continues) unless --rerun.
    again = subprocess.run([sys.executable, "-m", "dgm_keras.benchmark", "--methods=joint", "--classes_per_task=5",
                            "--steps_per_task=30", f"--data_dir={mnist_small_dir}", f"--workdir={tmp_path / 'runs'}",
                            f"--out={tmp_path / 'again.md'}"],
                           capture_output=True, text=True, cwd=ROOT, timeout=600, env=dict(os.environ, PYTHONPATH=ROOT))
    assert again.returncode == 0 and "[joint] reused" in again.stdout
    assert [line for line in (tmp_path / "again.md").read_text().splitlines() if line.startswith("| JT")] == [
        line for line in table.splitlines() if line.startswith("| JT")]


def test_the_gpu_check_runs_its_smoke_version_on_cpu(tmp_path, mnist_small_dir):
    # benchmarks/gpu_check.sh cannot be run for real without a GPU; --smoke runs every part of it
    # tiny (step throughput, a short run and its seconds a task, the memory line) so the script
    # is known to parse and run.
    script = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
    env = dict(os.environ, PYTHON=sys.executable, TFDS_DATA_DIR=mnist_small_dir)  # built (mnist_small_dir) before it runs
    proc = subprocess.run([script, "--smoke"], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert re.search(r"^dgmw   mnist   strided    1 false combined        1     1 \d+\.\d{4} +\d+\.\d+ ", out, re.M), out
    assert re.search(r"^mnist 2 tasks x 2 steps, XLA False: seconds a task \[\d+\.\d+, \d+\.\d+\], A_t \[", out, re.M), out
    assert "peak GPU memory" in out and re.search(r"gpu_check: done in \d+ s$", out.strip()), out
    bad = subprocess.run([script, "--fast"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "gpu_check: unknown argument --fast; allowed: --smoke, --data_dir=DIR, --steps_per_task=N")
