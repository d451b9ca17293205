"""Resuming: SIGKILL at three points of a short run, rerun the same command, compare with an
uninterrupted run; corrupt, truncated and foreign checkpoints; a NaN loss."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, poison_second_task, reading_mnist_once

ARGS = ["--classes_per_task=5", "--steps_per_task=12", "--checkpoint_every=4", "--replay_per_class=200"]


def _cmd(tmp, data_dir, *extra):
    return [sys.executable, "-m", "dgm_keras.train", *ARGS, f"--data_dir={data_dir}", f"--workdir={tmp}/work",
            f"--export_dir={tmp}/exp", "--run_name=r", *extra]


def _env():
    return dict(os.environ, PYTHONPATH=ROOT)


def _state(tmp):
    try:
        with open(os.path.join(tmp, "work", "checkpoints", "state.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _run_and_kill(cmd, condition, timeout=900):
    """Starts the run and SIGKILLs it as soon as ``condition()`` holds; True if it was killed."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    proc.wait()
    return False


def _last_task_checkpoint(tmp):
    import tensorflow as tf

    state = _state(tmp)
    assert state["complete"]
    return tf.train.load_checkpoint(os.path.join(tmp, "work", "checkpoints", state["task_checkpoint"]))


def _versions(tmp):
    root = os.path.join(tmp, "exp", "r", "classifier")
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def _stop(proc):
    if proc.poll() is None:  # the test failed before it waited for it
        proc.kill()
        proc.wait()


def test_kill_at_three_points_then_resume_equals_uninterrupted(tmp_path, mnist_small_dir, request):
    ref = tmp_path / "ref"
    ref.mkdir()
    # The uninterrupted run goes on beside the interrupted ones (its own folders; the second core).
    with open(ref / "stderr.txt", "w") as ref_err:
        reference = subprocess.Popen(_cmd(ref, mnist_small_dir), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=ref_err)
    request.addfinalizer(lambda: _stop(reference))

    run = tmp_path / "run"
    cmd = _cmd(run, mnist_small_dir)

    def mid_task(task):
        return lambda: (_state(run) or {}).get("step") and _state(run)["step"]["task"] == task

    kill_points = [mid_task(0), lambda: "1" in _versions(run), mid_task(1)]
    killed = [_run_and_kill(cmd, point) for point in kill_points]
    assert killed == [True, True, True]
    # Nothing a server would load is half-written: every version folder is complete.
    for version in _versions(run):
        assert not version.startswith(".tmp"), version
        assert os.path.exists(run / "exp" / "r" / "classifier" / version / "saved_model.pb")
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(run / "work" / "results.json") as f:
        got = json.load(f)
    assert reference.wait(timeout=900) == 0, (ref / "stderr.txt").read_text()[-2000:]
    with open(ref / "work" / "results.json") as f:
        expected = json.load(f)
    assert got["complete"] and len(got["resumed_at"]) >= 1
    # Exactly the uninterrupted run's results (README, Resuming): same stream, same seeds, same
    # optimizer state, so the same bits on the same machine. (Not ``last_losses``: they are the
    # means of the loss trackers over the last fit call, which after a resume covers only the
    # steps since the resume.)
    for key in ("accuracy_matrix", "A_t", "per_class_accuracy", "accuracy_matrix_selected", "A_t_selected"):
        assert got[key] == expected[key], key
    # ... and the same networks, bitwise: every tensor of the last task checkpoint.
    ours, theirs = (_last_task_checkpoint(tmp) for tmp in (run, ref))
    names = [k for k in theirs.get_variable_to_shape_map() if k != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert sorted(names) == sorted(k for k in ours.get_variable_to_shape_map() if k != "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert len(names) > 20
    different = [k for k in names if not np.array_equal(ours.get_tensor(k), theirs.get_tensor(k))]
    assert not different, different
    assert _versions(run) == ["1", "2"]
    # Rerunning a finished run changes nothing.
    before = (run / "work" / "results.json").read_bytes()
    again = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "holds a complete run" in again.stdout + again.stderr
    assert (run / "work" / "results.json").read_bytes() == before


def _cfg(tmp, data_dir, method="finetune", **hp):
    from dgm_keras import config, runner

    params = dict(steps_per_task=5, batch_size=32, replay_per_class=50, ngf=4)
    params.update(hp)
    return runner.RunConfig(dataset="mnist", method=method, classes_per_task=5, class_order="natural",
                            validation_fraction=0.15, data_dir=data_dir, workdir=str(tmp / "work"),
                            export_dir=str(tmp / "exp"), run_name="r", hp=config.HyperParams(**params), flags={},
                            checkpoint_every=2)


def _tree(path):
    """Every file under ``path`` with its bytes, to show nothing was touched."""
    out = {}
    for dirpath, _, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory, mnist_small_dir):
    """A finished two-task fine-tuning run whose checkpoints the tests below damage (on copies)."""
    from dgm_keras import runner

    tmp = tmp_path_factory.mktemp("finished")
    with reading_mnist_once():
        runner.run(_cfg(tmp, mnist_small_dir), log=lambda *_: None)
    return tmp


def _copy(finished, tmp_path):
    import shutil

    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    state = _state(tmp_path)
    state["complete"] = False  # make it resumable: the task-1 checkpoint is then restored
    state["task_done"], state["task_checkpoint"] = 0, "tasks/task-0"
    with open(tmp_path / "work" / "checkpoints" / "state.json", "w") as f:
        json.dump(state, f)
    return tmp_path


def test_restore_of_a_task_checkpoint_is_exact(finished, tmp_path, mnist_small_dir):
    import numpy as np
    import tensorflow as tf

    from dgm_keras import checkpointing, data, runner
    from dgm_keras.methods import make_method

    cfg = _cfg(finished, mnist_small_dir)
    ckpts = checkpointing.RunCheckpoints(cfg.workdir, runner.run_identity(cfg))
    state = ckpts.load()
    scenario = data.make_scenario("mnist", 5)
    method = make_method("finetune", scenario, 1, cfg.hp)
    method.set_state(state["method_state"], None)
    ckpts.restore({**method.trackables(), "keras_global_seed": checkpointing.global_seed_state()},
                  state["task_checkpoint"])
    reader = tf.train.load_checkpoint(os.path.join(ckpts.directory, state["task_checkpoint"]))
    shapes = reader.get_variable_to_shape_map()
    # The classifier head's kernel is the only [2048, 10] tensor (features x classes after two tasks).
    (key,) = [k for k, shape in shapes.items() if shape == [2048, 10]]
    assert (method.disc.classifier.kernel.numpy() == reader.get_tensor(key)).all()  # bitwise
    # The conv trunk too (Keras keeps it in a list, which tf.train.Checkpoint alone would miss).
    (conv_key,) = [k for k, shape in shapes.items() if shape == [5, 5, 1, 32]]
    first_conv = method.disc.trunk[0].kernel.numpy()
    assert np.abs(first_conv).sum() > 0 and (first_conv == reader.get_tensor(conv_key)).all()


@pytest.mark.parametrize("damage,pattern", [
    ("state_json", r"state.json is corrupt \(JSONDecodeError"),
    ("truncated", r"checkpoint \S*tasks/task-0 is truncated, corrupt or does not match this run"),
    ("other_method", r"belongs to another run: method='finetune' there, 'joint' now"),
    ("other_lr", r"belongs to another run: d_lr=0.002 there, 0.01 now"),
])
def test_bad_checkpoints_are_refused_and_left_alone(finished, tmp_path, mnist_small_dir, damage, pattern, mnist_read_once):
    from dgm_keras import checkpointing, runner

    run = _copy(finished, tmp_path)
    ckpt_dir = run / "work" / "checkpoints"
    cfg = _cfg(run, mnist_small_dir)
    if damage == "state_json":
        (ckpt_dir / "state.json").write_text('{"task_done": 0, "identity": {')
    elif damage == "truncated":
        data_file = ckpt_dir / "tasks" / "task-0.data-00000-of-00001"
        data_file.write_bytes(data_file.read_bytes()[:100])
    elif damage == "other_method":
        cfg = _cfg(run, mnist_small_dir, method="joint")
        cfg.method = "joint"
    elif damage == "other_lr":
        cfg = _cfg(run, mnist_small_dir, d_lr=0.01)
    before = _tree(run)
    with pytest.raises(checkpointing.CheckpointError, match=pattern):
        runner.run(cfg, log=lambda *_: None)
    assert _tree(run) == before  # nothing overwritten, nothing added


def test_cli_reports_a_foreign_checkpoint_in_one_line(finished, tmp_path, mnist_small_dir):
    run = _copy(finished, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "dgm_keras.train", "--method=joint", "--classes_per_task=5",
                           "--steps_per_task=5", f"--data_dir={mnist_small_dir}", f"--workdir={run}/work",
                           f"--export_dir={run}/exp", "--run_name=r"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("train: the checkpoint in ") and "belongs to another run: method='finetune' there" in last


@pytest.mark.parametrize("trunk,resumes", [("strided", True), ("pooled", False)])
def test_a_checkpoint_from_before_a_setting_existed_resumes_at_its_default(finished, tmp_path, mnist_small_dir,
                                                                             trunk, resumes):
    # Checkpoints written before --d_trunk existed have no d_trunk in their identity: the default
    # (the trunk they were trained with) resumes them, another value is another run.
    from dgm_keras import checkpointing, runner

    run = _copy(finished, tmp_path)
    path = run / "work" / "checkpoints" / "state.json"
    state = json.loads(path.read_text())
    del state["identity"]["d_trunk"]
    path.write_text(json.dumps(state))
    cfg = _cfg(run, mnist_small_dir, d_trunk=trunk)
    ckpts = checkpointing.RunCheckpoints(cfg.workdir, runner.run_identity(cfg))
    if resumes:
        assert ckpts.load()["task_done"] == 0
    else:
        with pytest.raises(checkpointing.CheckpointError, match="d_trunk='strided' there, 'pooled' now"):
            ckpts.load()


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, mnist_small_dir, monkeypatch, mnist_read_once):
    from dgm_keras import runner

    poison_second_task(monkeypatch)
    with pytest.raises(runner.TrainingDiverged, match=r"task 2: cls_loss = nan in steps 1-2 of the task; the run stopped "
                                                      r"and its last good checkpoint \(end of task 1\) is kept"):
        runner.run(_cfg(tmp_path, mnist_small_dir), log=lambda *_: None)
    state = _state(tmp_path)
    assert state["task_done"] == 0 and state["step"] is None
    with open(tmp_path / "work" / "results.json") as f:
        assert len(json.load(f)["A_t"]) == 1
