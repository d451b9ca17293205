"""The faults a user meets that used to print a traceback: each is one line naming the value and
what is allowed, a non-zero exit, and nothing written outside the run's own folders."""

import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from conftest import ROOT

ENV = dict(os.environ, PYTHONPATH=ROOT)


def _tree(folder) -> dict:
    """Every file under ``folder`` with its size and modification time: what 'nothing changed' compares."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            out[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns)
    return out


def _cli(module: str, args: list[str], timeout=300, **kwargs):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=timeout, **kwargs)


def _one_line(proc, prefix: str) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(prefix), proc.stderr[-3000:]
    return lines[-1]


def _paths(tmp_path):
    return [f"--workdir={tmp_path / 'work'}", f"--export_dir={tmp_path / 'exp'}"]


def _nothing_written(tmp_path, before=None):
    assert not (tmp_path / "work").exists() and not (tmp_path / "exp").exists()
    if before is not None:
        assert _tree(tmp_path) == before


@pytest.fixture
def afile(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("keep me")
    return path


@pytest.mark.parametrize("args,expected", [
    (["--seed=-1"], "train: --seed=-1 is not allowed; allowed: 0 or a positive integer"),
    (["--mask_init=nan"], "train: --mask_init=nan is not allowed; allowed: a finite number float32 holds"),
    (["--method=ewc", "--ewc_lambda=1e300"], "train: --ewc_lambda=1e+300 is not allowed; allowed: a finite number float32 holds"),
    (["--g_lr=inf"], "train: --g_lr=inf is not allowed; allowed: a finite number"),
    (["--epochs_per_task=2", "--steps_per_task=5"],
     "train: --epochs_per_task=2 and --steps_per_task=5 are not allowed together; allowed: one of them"),
    (["--dataset=imagenet50", "--method=ewc"], "train: no settings for --dataset=imagenet50 with ewc: flags/imagenet50_ewc.cfg"),
    (["--progress=loud"], "train: --progress='loud' is not allowed; allowed: auto, bar, line, none"),
    (["--sparsity_layer_weights=1,nan,1"], "train: --sparsity_layer_weights='1,nan,1' is not allowed; allowed: three "
     "comma-separated finite numbers >= 0, one per masked layer, e.g. 1,1,1"),
])
def test_bad_values_are_one_line_and_write_nothing(tmp_path, afile, args, expected):
    before = _tree(tmp_path)
    proc = _cli("dgm_keras.train", [*args, *_paths(tmp_path), f"--data_dir={tmp_path / 'data'}"])
    _one_line(proc, expected)
    _nothing_written(tmp_path, before)


def test_data_dir_under_a_file(tmp_path, afile):
    before = _tree(tmp_path)
    proc = _cli("dgm_keras.train", [f"--data_dir={afile}/tfds", *_paths(tmp_path)])
    _one_line(proc, f"train: --data_dir='{afile}/tfds' is not allowed; allowed: a path under a folder ('{afile}' is a file)")
    _nothing_written(tmp_path, before)
    assert afile.read_text() == "keep me"


def test_a_flagfile_with_an_unknown_flag_names_the_file_and_line(tmp_path):
    flagfile = tmp_path / "mine.cfg"
    flagfile.write_text("# my run\n--method=dgma\n--learning_rate=1e-3\n")
    before = _tree(tmp_path)
    proc = _cli("dgm_keras.train", [f"--flagfile={flagfile}", *_paths(tmp_path)])
    _one_line(proc, f"train: {flagfile}:3: --learning_rate is not a flag of dgm_keras.train")
    _nothing_written(tmp_path, before)


def test_help_says_the_real_defaults():
    from dgm_keras import config, train  # noqa: PLC0415

    assert "0.08" not in train.FLAGS["sparsity_weight"].help.replace("reference code: 0.08", "")
    assert train.FLAGS["sparsity_weight"].default == config.HyperParams().sparsity_weight == 1.0


def test_steps_per_task_records_what_ran(tmp_path):
    from dgm_keras import train  # noqa: PLC0415

    values = {name: train.FLAGS[name].default for name in train.FLAG_NAMES}
    values.update(steps_per_task=7, data_dir=str(tmp_path))
    resolved, origin = train.resolve(values, given={"steps_per_task"})
    assert resolved["epochs_per_task"] == 1 and resolved["steps_per_task"] == 7
    assert origin["sources"]["epochs_per_task"].startswith("implied by --steps_per_task")


def _truncated_targz(path, keep: float):
    """A gzipped tar of incompressible members, cut to ``keep`` of its bytes (a cut download)."""
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(40):
            payload = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
            info = tarfile.TarInfo(f"train/airplane/{i:04d}.jpg")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    data = buf.getvalue()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_truncated_cifar10_archive_is_one_line(tmp_path, keep):
    from dgm_keras import prepare_data  # noqa: PLC0415

    archive = tmp_path / "cifar10.tar.gz"
    _truncated_targz(archive, keep)
    with pytest.raises(prepare_data.SourceError, match=r"CIFAR-10 archive .* is truncated or corrupt .*download it again"):
        prepare_data.read_cifar10(str(archive))
    data_dir = tmp_path / "data"
    proc = _cli("dgm_keras.prepare_data", ["--dataset=cifar10", f"--source={archive}", f"--data_dir={data_dir}"])
    _one_line(proc, "prepare_data: CIFAR-10 archive")
    assert not (data_dir / "cifar10").exists()


def _copy_mnist(mnist_small_dir, tmp_path):
    copy = tmp_path / "tfds"
    shutil.copytree(os.path.join(mnist_small_dir, "mnist"), copy / "mnist")
    shards = sorted((copy / "mnist").rglob("mnist-train.tfrecord-*"))
    assert shards
    return copy, shards


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_tfds_dataset_is_one_line(tmp_path, mnist_small_dir, damage):
    from dgm_keras import data  # noqa: PLC0415

    copy, shards = _copy_mnist(mnist_small_dir, tmp_path)
    if damage == "truncate":
        with open(shards[0], "r+b") as f:
            f.truncate(os.path.getsize(shards[0]) // 2)
    else:
        os.remove(shards[0])
    scenario = data.make_scenario("mnist", 5)
    with pytest.raises(data.DataError, match=r"the prepared mnist in .* is damaged or incomplete \((DataLossError|NotFoundError)"
                       r".*remove .*mnist and prepare it again"):
        data.load_scenario_data(scenario, str(copy), 0.15)


def test_a_damaged_tfds_dataset_stops_train_with_one_line(tmp_path, mnist_small_dir):
    copy, shards = _copy_mnist(mnist_small_dir, tmp_path)
    with open(shards[0], "r+b") as f:
        f.truncate(os.path.getsize(shards[0]) // 2)
    proc = _cli("dgm_keras.train", ["--method=finetune", "--steps_per_task=1", f"--data_dir={copy}", *_paths(tmp_path)])
    _one_line(proc, "train: the prepared mnist in")
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("state,complaint", [
    ({"format": 1, "identity": []}, "state['identity'] is list"),
    ({"format": 1, "identity": {}, "task_done": "3"}, "state['task_done'] is str"),
    ({"format": 1, "identity": {}, "task_done": 0}, "lacks 'task_checkpoint'"),
    ([1, 2, 3], "state is a list"),
    ({"format": 1, "identity": {}, "task_done": 2, "task_checkpoint": None, "method_state": None, "results": None,
      "step": None}, "records task 3 done but no checkpoint"),
    ({"format": 1, "identity": {}, "task_done": -1, "task_checkpoint": None, "method_state": None, "results": None,
      "step": {"task": 0}}, "state['step'] lacks 'step'"),
])
def test_a_state_json_with_a_wrong_schema_is_one_line(tmp_path, state, complaint):
    from dgm_keras import checkpointing  # noqa: PLC0415

    ckpt = tmp_path / "work" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps(state))
    with pytest.raises(checkpointing.CheckpointError, match=r"state.json is corrupt \(ValueError: .*"
                       + complaint.replace("[", r"\[").replace("]", r"\]")):
        checkpointing.RunCheckpoints(str(tmp_path / "work"), {"dataset": "mnist"}).load()


def test_a_state_json_with_a_wrong_schema_stops_train(tmp_path, mnist_small_dir):
    ckpt = tmp_path / "work" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps({"format": 1, "identity": {}, "task_done": "x"}))
    before = _tree(tmp_path)
    proc = _cli("dgm_keras.train", ["--method=finetune", "--steps_per_task=1", f"--data_dir={mnist_small_dir}", *_paths(tmp_path)])
    _one_line(proc, f"train: {ckpt / 'state.json'} is corrupt (ValueError:")
    assert _tree(tmp_path) == before and not (tmp_path / "exp").exists()


def test_the_imagenet50_advice_is_a_command_that_works():
    from dgm_keras import data, prepare_data  # noqa: PLC0415

    advice = data.offline_advice("imagenet50", "/d")
    assert "prepare_data" not in advice and "manual_dir" in advice and "/d/downloads/manual" in advice
    assert "imagenet50" not in prepare_data.OFFLINE_DATASETS  # so it must not be recommended
    for dataset in prepare_data.OFFLINE_DATASETS:
        assert f"prepare_data --dataset={dataset} --source=PATH" in data.offline_advice(dataset, "/d")


def test_ctrl_c_is_one_line_that_says_where_the_run_resumes(tmp_path, mnist_small_dir):
    work = tmp_path / "work"
    args = ["--method=finetune", "--steps_per_task=60", "--checkpoint_every=20",
            f"--data_dir={mnist_small_dir}", *_paths(tmp_path)]
    # Ctrl-C as in a terminal, even where pytest itself was started with SIGINT ignored (a shell's
    # background job): the child would inherit that and never see the signal.
    proc = subprocess.Popen([sys.executable, "-m", "dgm_keras.train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    state = work / "checkpoints" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text()).get("task_done", -1) >= 0:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("train: interrupted; the last checkpoint is ")
    assert last.endswith("; rerun the same command to resume")
    recorded = json.loads(state.read_text())
    where = (f"task {recorded['step']['task'] + 1} step {recorded['step']['step']}" if recorded["step"]
             else f"the end of task {recorded['task_done'] + 1}")
    assert where in last  # what it says is what a rerun resumes from


def test_gzip_helper_really_truncates(tmp_path):
    # The archive test above is only meaningful if the archive is damaged where tar must read.
    archive = tmp_path / "a.tar.gz"
    _truncated_targz(archive, 0.5)
    with pytest.raises((EOFError, tarfile.ReadError, gzip.BadGzipFile)):
        with tarfile.open(archive) as tar:
            tar.getmembers()
