"""The commands people reach for, on a finished short run: evaluate, sample, runs; each with
one-line errors for bad input and a --help that exits 0."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SMALL_MNIST


def _command(module, *args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", f"dgm_keras.{module}", *args], capture_output=True, text=True,
                          cwd=cwd, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)


def _one_line_error(proc, prog):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: "), proc.stderr
    return lines[0]


def test_evaluate_scores_as_the_run_did(finished_run, mnist_small_dir, tmp_path):
    scores_path = tmp_path / "scores.json"
    proc = _command("evaluate", f"--model={finished_run.export_root / 'classifier'}", f"--data_dir={mnist_small_dir}",
                    f"--json={scores_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = json.loads(scores_path.read_text())
    results = finished_run.results
    # The highest version is the run's last task: the same A_t, per-task row and per-class accuracy.
    assert scores["version"] == 2 and len(scores["per_class"]) == 10
    assert scores["accuracy"] == pytest.approx(results["A_t"][-1], abs=1e-9)
    assert scores["per_task"] == pytest.approx(results["accuracy_matrix"][-1], abs=1e-9)
    assert scores["per_class"] == pytest.approx(results["per_class_accuracy"][-1], abs=1e-9)
    confusion = np.array(scores["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == scores["images"] == SMALL_MNIST["test"]
    assert np.trace(confusion) / confusion.sum() == pytest.approx(scores["accuracy"])
    assert f"A_10 = {100 * results['A_t'][-1]:.2f}%" in proc.stdout and "confusion matrix" in proc.stdout
    assert proc.stderr.strip() == "", proc.stderr  # no TensorFlow start-up lines


def test_evaluate_version_one_knows_five_classes(finished_run, mnist_small_dir):
    proc = _command("evaluate", f"--model={finished_run.export_root / 'classifier' / '1'}", f"--data_dir={mnist_small_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"A_5 = {100 * finished_run.results['A_t'][0]:.2f}%" in proc.stdout


def test_evaluate_on_validation_scores_as_the_run_did(finished_run, mnist_small_dir):
    # --split=validation: the images the run held out of its training split, where settings are chosen.
    proc = _command("evaluate", f"--model={finished_run.export_root / 'classifier'}", f"--data_dir={mnist_small_dir}",
                    "--split=validation")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"A_10 = {100 * finished_run.results['A_t_validation'][-1]:.2f}% on" in proc.stdout
    assert "validation images" in proc.stdout and "train[85%:]" in proc.stdout


@pytest.mark.parametrize("args,pattern", [
    (["--model=/no/such/folder"], "evaluate: --model='/no/such/folder': no such folder"),
    (["--model={gen}"], "evaluate: --model=.* is a 'generator' export; allowed: a classifier export"),
    (["--model={clf}", "--dataset=mnist3"], "evaluate: --dataset='mnist3' is not allowed; allowed: mnist, fashion_mnist"),
    ([], "evaluate: --model is required"),
])
def test_evaluate_bad_input(finished_run, args, pattern):
    args = [a.format(gen=finished_run.export_root / "generator" / "1", clf=finished_run.export_root / "classifier")
            for a in args]
    assert re.match(pattern, _one_line_error(_command("evaluate", *args), "evaluate"))


def test_sample_draws_a_row_per_class(finished_run, tmp_path):
    import matplotlib.image

    out = tmp_path / "grid.png"
    proc = _command("sample", f"--model={finished_run.export_root / 'generator'}", "--classes=0,3", "--per_class=16",
                    f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith(f"-> {out}") and proc.stderr.strip() == ""
    grid = matplotlib.image.imread(out)
    assert grid.shape[1] > 4 * grid.shape[0]  # two rows of sixteen
    wide = tmp_path / "four.png"
    assert _command("sample", f"--model={finished_run.export_root / 'generator'}", "--classes=0,3,5,9",
                    "--per_class=4", f"--out={wide}").returncode == 0
    four = matplotlib.image.imread(wide)
    assert four.shape[0] > 1.5 * grid.shape[0]  # four rows are taller than two


@pytest.mark.parametrize("args,line", [
    (["--model={gen1}", "--classes=7"], "sample: --classes='7' is not allowed; allowed: classes 0..4 (this version has seen 5)"),
    (["--model={gen}", "--classes=0,x"], "sample: --classes='0,x' is not allowed; allowed: class indices separated by "
                                         "commas, e.g. 0,3"),
    (["--model={gen}", "--per_class=0"], "sample: --per_class=0 is not allowed; allowed: an integer in [1, 64]"),
    (["--model={gen}", "--out=grid.gif"], "sample: --out='grid.gif' is not allowed; allowed: a file name ending in "
                                          ".png, .pdf, .svg, .jpg"),
    (["--model={clf}"], None),
])
def test_sample_bad_input(finished_run, args, line):
    export = finished_run.export_root
    args = [a.format(gen=export / "generator", gen1=export / "generator" / "1", clf=export / "classifier" / "2")
            for a in args]
    got = _one_line_error(_command("sample", *args), "sample")
    assert got == (line or f"sample: --model='{export / 'classifier' / '2'}' is a 'classifier' export; allowed: a "
                           "generator export (<export_dir>/<run>/generator/<version>)")


def test_runs_lists_the_run(finished_run, tmp_path):
    proc = _command("runs", f"--root={finished_run.root / 'runs'}")
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()
    assert header.split() == ["run", "dataset", "method", "split", "seed", "state", "A_t", "strict"]
    assert row.split() == ["r", "mnist", "dgmw", "2x5", "0", "complete", f"{100 * finished_run.results['A_t'][-1]:.2f}%"]
    listed = json.loads(_command("runs", f"--root={finished_run.root / 'runs'}", "--json").stdout)
    assert listed["complete"] is True and listed["tasks_done"] == 2 and listed["A_t"] == finished_run.results["A_t"][-1]
    # A run killed during its first task has no results.json yet: its state.json still names it.
    killed = tmp_path / "killed" / "checkpoints"
    killed.mkdir(parents=True)
    killed.joinpath("state.json").write_text(json.dumps({"identity": {"dataset": "mnist", "method": "si", "seed": 3,
                                                                      "classes_per_task": 2}}))
    rows = _command("runs", f"--root={tmp_path}").stdout.splitlines()
    assert rows[1].split()[:5] == ["killed", "mnist", "si", "?", "3"] and "task 0 of ?" in rows[1]
    assert _one_line_error(_command("runs", "--root=/no/such"), "runs") == (
        "runs: --root='/no/such': no such folder; allowed: a folder of runs (train writes runs/<run_name>)")


@pytest.mark.parametrize("module,flag", [(m, f) for m in ("train", "evaluate", "sample", "runs", "plots", "benchmark")
                                         for f in ("--help", "--helpfull")] + [("prepare_data", "--help")])
def test_help_exits_zero(module, flag):
    proc = _command(module, flag)
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert "--" in proc.stdout and proc.stdout.splitlines()[0].strip(), proc.stdout[:500]
