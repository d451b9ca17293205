"""Data mixed or lost: export folders that belong to their run, folders that cannot be written,
a damaged newest checkpoint, a NaN stop and its way out (--restart), a run that ends at chance.

Every run here is tiny (finetune, 2 tasks of 5 MNIST classes, a few steps). Each stop is one
line (the CLI's last stderr line), a non-zero exit, and nothing outside the run's own folders
changes."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, poison_second_task

pytestmark = pytest.mark.usefixtures("mnist_read_once")  # the runs in this process read MNIST once

FLAGS = dict(method="finetune", classes_per_task=5, steps_per_task=4, checkpoint_every=2, batch_size=32)


def _flags(tmp, data_dir, workdir="work", export_dir="exp", **over):
    return dict(FLAGS, data_dir=data_dir, workdir=str(tmp / workdir), export_dir=str(tmp / export_dir), run_name="r",
                **over)


def _cfg(flags: dict):
    """The RunConfig ``python -m dgm_keras.train`` makes of these flags (same identity as the CLI's)."""
    from dgm_keras import config, runner, train

    values = {name: train.FLAGS[name].default for name in train.FLAG_NAMES}
    values.update(flags)
    values, origin = train.resolve(values, given=set(flags))
    hp = config.HyperParams(**{f.name: values[f.name] for f in dataclasses.fields(config.HyperParams)
                               if f.name in values and f.name != "jit_compile"}, jit_compile=False)
    return runner.RunConfig(
        dataset=values["dataset"], method=values["method"], classes_per_task=values["classes_per_task"],
        class_order=values["class_order"], validation_fraction=values["validation_fraction"],
        data_dir=values["data_dir"], workdir=values["workdir"], export_dir=values["export_dir"],
        run_name=values["run_name"], hp=hp, flags=values, settings=origin, checkpoint_every=values["checkpoint_every"],
        resume_from=values["resume_from"], restart=values["restart"])


def _run(flags: dict, lines=None):
    from dgm_keras import runner

    return runner.run(_cfg(flags), log=(lines.append if lines is not None else lambda *_: None))


def _cli(flags: dict):
    args = [f"--{k}={v}" if not isinstance(v, bool) else f"--{'' if v else 'no'}{k}" for k, v in flags.items()]
    proc = subprocess.run([sys.executable, "-m", "dgm_keras.train", *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=600)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return proc.returncode, lines[-1] if lines else "", proc


def _tree(path, skip=()):
    """Every file under ``path`` (but those under ``skip``) with its bytes."""
    out = {}
    for dirpath, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in skip]
        for name in files:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


def _state(workdir):
    with open(os.path.join(workdir, "checkpoints", "state.json")) as f:
        return json.load(f)


def _versions(export_root, model="classifier"):
    folder = os.path.join(export_root, model)
    return sorted(n for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


# 1. Two runs with the same run name write into one export folder.

def test_export_folder_belongs_to_the_run_that_wrote_it(tmp_path, mnist_small_dir):
    from dgm_keras import runfolders

    results = _run(_flags(tmp_path, mnist_small_dir))
    export_root = tmp_path / "exp" / "r"
    assert _versions(export_root) == ["1", "2"] and results["complete"]
    with open(export_root / "run.json") as f:
        assert json.load(f)["workdir"] == str(tmp_path / "work")
    before = _tree(tmp_path)

    # Another run (more steps, its own workdir) under the same name: refused before training.
    code, last, _ = _cli(_flags(tmp_path, mnist_small_dir, workdir="other", steps_per_task=6))
    assert code == 1
    assert last == (f"train: {export_root} holds the exports of another run (checkpoints in {tmp_path / 'work'}; "
                    f"steps_per_task=4 there, 6 now (1 setting(s) differ)); use another --run_name or --export_dir, "
                    f"or move {export_root} away")
    assert _tree(tmp_path) == before and not (tmp_path / "other").exists()

    # Same flags, another workdir: still another run (its versions would replace this one's).
    with pytest.raises(runfolders.FolderError, match=r"holds the exports of another run \(checkpoints in \S+/work\); "):
        _run(_flags(tmp_path, mnist_small_dir, workdir="other"))
    assert _tree(tmp_path) == before and not (tmp_path / "other").exists()


# 2. An export folder that passes the flag check but cannot be written; a failed export.

@pytest.mark.parametrize("flag", ["workdir", "export_dir"])
def test_unwritable_folder_is_refused_before_training(tmp_path, mnist_small_dir, flag):
    if not os.path.isdir("/sys/kernel") or not os.access("/sys/kernel", os.W_OK):
        pytest.skip("needs /sys/kernel to pass check_flags' access test (as root) and refuse writes")
    flags = _flags(tmp_path, mnist_small_dir)
    flags[flag] = "/sys/kernel/dgm_faults_test"
    shown = flags[flag] if flag == "workdir" else os.path.join(flags[flag], "r")
    before = _tree(tmp_path)
    code, last, _ = _cli(flags)
    assert code == 1
    assert last == (f"train: --{flag}: {shown} cannot be written (PermissionError: Operation not permitted); "
                    "use a folder this user can write")
    assert _tree(tmp_path) == before and sorted(os.listdir(tmp_path)) == []


def test_failed_export_keeps_the_task_and_a_rerun_exports_it(tmp_path, mnist_small_dir, monkeypatch):
    from dgm_keras import export, runfolders

    real = export.export_classifier

    def failing(model, classify, scenario, task, channels, model_dir):
        if task == 1:
            raise PermissionError(13, "Permission denied", model_dir)
        return real(model, classify, scenario, task, channels, model_dir)

    flags = _flags(tmp_path, mnist_small_dir)
    monkeypatch.setattr(export, "export_classifier", failing)
    with pytest.raises(runfolders.FolderError) as err:
        _run(flags)
    assert str(err.value) == (f"task 2: exporting to {tmp_path / 'exp' / 'r'} failed (PermissionError: [Errno 13] "
                              f"Permission denied: '{tmp_path / 'exp' / 'r' / 'classifier'}'); the task is checkpointed: "
                              "rerun the same command to export it and continue")
    state = _state(tmp_path / "work")
    assert state["task_done"] == 1 and state["exported"] is False and not state["complete"]
    monkeypatch.setattr(export, "export_classifier", real)
    lines = []
    results = _run(flags, lines)
    assert "task 2 was checkpointed but not exported; exporting it now" in lines
    assert results["complete"] and results["resumed_at"] == ["task 3"]  # nothing trained again
    assert len(results["exports"]) == 2 and _versions(tmp_path / "exp" / "r") == ["1", "2"]
    assert _state(tmp_path / "work")["exported"] is True


# 3. A corrupt newest checkpoint, and the previous one the manager keeps.

class _Killed(Exception):
    pass


def test_corrupt_newest_checkpoint_offers_and_uses_the_previous(tmp_path, mnist_small_dir, monkeypatch):
    from dgm_keras import checkpointing

    real = checkpointing.RunCheckpoints.save_step

    def save_then_die(self, task, step, trackables, extra):
        real(self, task, step, trackables, extra)
        if task == 1:
            raise _Killed()  # a kill right after task 2's step-2 checkpoint

    flags = _flags(tmp_path, mnist_small_dir)
    monkeypatch.setattr(checkpointing.RunCheckpoints, "save_step", save_then_die)
    with pytest.raises(_Killed):
        _run(flags)
    monkeypatch.setattr(checkpointing.RunCheckpoints, "save_step", real)
    state = _state(tmp_path / "work")
    assert state["step"]["task"] == 1 and state["step"]["step"] == 2 and state["previous"]["task_done"] == 0
    newest = tmp_path / "work" / "checkpoints" / state["step"]["checkpoint"]
    data_file = tmp_path / "work" / "checkpoints" / "steps" / f"{os.path.basename(newest)}.data-00000-of-00001"
    data_file.write_bytes(data_file.read_bytes()[:100])
    before = _tree(tmp_path)

    code, last, _ = _cli(flags)
    assert code == 1
    assert last.startswith(f"train: checkpoint {newest} is truncated, corrupt or does not match this run (")
    assert last.endswith("; rerun with --resume_from=previous to resume from the checkpoint before it (end of task 1), "
                         "or rerun with --restart to set the old run aside and start over")
    assert _tree(tmp_path) == before

    lines = []
    results = _run(dict(flags, resume_from="previous"), lines)
    assert lines[0] == ("resuming from the previous checkpoint (end of task 1) as --resume_from=previous asks; "
                        "the newest (task 2 step 2) is not used and will be overwritten")
    assert results["complete"] and results["resumed_at"] == ["task 2"]
    assert _versions(tmp_path / "exp" / "r") == ["1", "2"]  # the same run writes on in its export folder


# 4. A NaN stop says what is kept, and --restart lets a lower learning rate start over.

def test_nan_before_any_checkpoint_says_nothing_is_kept_and_a_rerun_may_change_flags(tmp_path, mnist_small_dir):
    code, last, _ = _cli(_flags(tmp_path, mnist_small_dir, d_lr=1e30, checkpoint_every=0))
    assert code == 1
    assert last.startswith("train: task 1: ") and re.search(r" = nan (at step \d+|in steps \d+-\d+) of the task;", last)
    assert last.endswith("; the run stopped before its first checkpoint, so nothing is kept; lower the learning rates "
                         "(--d_lr, --g_lr) or check the data, and rerun")
    assert sorted(os.listdir(tmp_path)) == ["work"]  # only its own folder: state.json, no checkpoint
    assert sorted(os.listdir(tmp_path / "work" / "checkpoints")) == ["state.json"]
    # Nothing to resume, so the rerun with a sane learning rate needs no --restart.
    results = _run(_flags(tmp_path, mnist_small_dir, checkpoint_every=0))
    assert results["complete"] and results["resumed_at"] == []


def test_nan_after_a_checkpoint_names_restart_which_starts_over(tmp_path, mnist_small_dir, monkeypatch):
    from dgm_keras import runner

    flags = _flags(tmp_path, mnist_small_dir)
    poison_second_task(monkeypatch)
    with pytest.raises(runner.TrainingDiverged) as err:
        _run(flags)
    assert str(err.value).endswith(
        f"the run stopped and its last good checkpoint (end of task 1) is kept in {tmp_path / 'work' / 'checkpoints'}; "
        "rerunning resumes it as it is: to lower the learning rates (--d_lr, --g_lr) add --restart, which sets this "
        "run aside and starts over, or check the data")
    monkeypatch.undo()  # the data is good again
    before = _tree(tmp_path)

    code, last, _ = _cli(dict(flags, d_lr=0.0005))
    assert code == 1
    assert last == (f"train: the checkpoint in {tmp_path / 'work' / 'checkpoints'} belongs to another run: "
                    f"d_lr={_cfg(flags).hp.d_lr!r} there, 0.0005 now (1 setting(s) differ); rerun with the same flags, "
                    "use another --workdir, or "
                    "rerun with --restart to set the old run aside and start over")
    assert _tree(tmp_path) == before

    lines = []
    results = _run(dict(flags, d_lr=0.0005, restart=True), lines)
    assert results["complete"] and results["hyperparameters"]["d_lr"] == 0.0005 and results["resumed_at"] == []
    (aside_work,) = os.listdir(tmp_path / "work" / "set_aside")
    (aside_exp,) = os.listdir(tmp_path / "exp" / "r" / "set_aside")
    assert lines[0] == (f"--restart: the old run's files are set aside in {tmp_path / 'work' / 'set_aside' / aside_work} "
                        f"and {tmp_path / 'exp' / 'r' / 'set_aside' / aside_exp}")
    # Nothing deleted: every old file is there, byte for byte, under set_aside/<time>/.
    moved = _tree(tmp_path / "work" / "set_aside" / aside_work)
    moved.update({os.path.join("EXP", k): v for k, v in _tree(tmp_path / "exp" / "r" / "set_aside" / aside_exp).items()})
    old = {k.replace(os.path.join("work", ""), "", 1) if k.startswith("work") else k.replace(os.path.join("exp", "r"), "EXP", 1): v
           for k, v in before.items()}
    assert moved == old
    assert _versions(tmp_path / "exp" / "r") == ["1", "2"]


# 5. A run that diverges while staying finite ends at chance: a warning, recorded in results.json.

def test_task_ending_near_chance_is_warned(tmp_path, mnist_small_dir):
    lines = []
    results = _run(_flags(tmp_path, mnist_small_dir, classes_per_task=10, d_lr=100.0), lines)
    (warning,) = results["warnings"]
    weakest = min(range(10), key=lambda c: results["per_class_accuracy"][0][c])
    assert warning.startswith(f"warning: task 1 ends near chance on its own class {weakest}: "
                              f"{100 * results['per_class_accuracy'][0][weakest]:.2f}% ")
    assert warning.endswith("% (chance 10.00% among the 10 seen classes, warned at <= 1.5x); the training diverged, "
                            "was far too short, or cannot tell this class apart: try lower learning rates "
                            "(--d_lr, --g_lr) or more steps")
    assert results["accuracy_matrix"][0][0] <= 0.15 and warning in lines
    with open(tmp_path / "work" / "results.json") as f:
        assert json.load(f)["warnings"] == [warning]


def test_near_chance_is_judged_class_by_class():
    from dgm_keras import evaluation

    # A collapsed classifier: one class of the task always answered, the other never: 50% on the
    # task's mean, 0 on a class.
    assert evaluation.class_near_chance([0.9, 0.9, 1.0, 0.0], range(2, 4)) == 3
    # Hard but learned classes (CIFAR-10 5x2 joint training's deer and dog: 54.75% on the mean):
    # each far above 1/6.
    assert evaluation.class_near_chance([0.9, 0.9, 0.6, 0.5, 0.6, 0.5], range(4, 6)) is None
    # 1.5 x 1/K, on the weakest class of the task.
    assert evaluation.class_near_chance([0.9] * 9 + [0.1499], range(9, 10)) == 9
    assert evaluation.class_near_chance([0.9] * 9 + [0.1501], range(9, 10)) is None
    assert evaluation.class_near_chance([0.9, 0.9, 0.37, 0.9], range(2, 4)) == 2  # <= 1.5 x 1/4
    assert evaluation.class_near_chance([0.9, 0.9, 0.38, 0.9], range(2, 4)) is None
    assert evaluation.class_near_chance([1.0], range(0, 1)) is None  # one class seen: nothing to judge
    assert evaluation.class_near_chance([0.0, 0.0], range(0, 2)) == 0  # first task, collapsed elsewhere
