"""Short real runs on MNIST through the entry point: results.json, tables, logs and exports."""

import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from conftest import ROOT


def _train(tmp_path, mnist_dir, *flags):
    env = dict(os.environ, PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "dgm_keras.train", f"--data_dir={mnist_dir}", f"--workdir={tmp_path / 'work'}",
           f"--export_dir={tmp_path / 'exp'}", "--run_name=r", *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "work" / "results.json") as f:
        return proc.stdout, json.load(f)


def test_joint_training_learns_real_mnist(tmp_path, mnist_dir):
    out, res = _train(tmp_path, mnist_dir, "--method=joint", "--classes_per_task=5", "--steps_per_task=60")
    assert res["complete"] is True
    assert len(res["accuracy_matrix"]) == 2 and len(res["accuracy_matrix"][1]) == 2
    assert res["A_t"][0] > 0.9 and res["A_t"][1] > 0.8  # chance: 0.2 and 0.1
    assert res["counts"] == {"train": 51000, "test": 10000, "validation": 9000}
    assert "Accuracy (%), strict" in out and "A_10 strict" in out
    assert sorted(os.listdir(tmp_path / "exp" / "r" / "classifier")) == ["1", "2"]


def test_dgmw_run_writes_everything(finished_run):
    # The shared run (conftest.finished_run): --method=dgmw --classes_per_task=5 --steps_per_task=15 --ngf=4.
    res, workdir, export_root = finished_run.results, finished_run.workdir, finished_run.export_root
    assert res["hyperparameters"]["steps_per_task"] == 15 and res["hyperparameters"]["ngf"] == 4
    assert res["complete"] is True
    matrix = res["accuracy_matrix"]
    assert [len(r) for r in matrix] == [1, 2]
    # Seed 0 on this budget (deterministic on a machine) gives T1 55%, then T2 62% and A_10 30%; a
    # classifier that ignores its input scores about a fifth of a task (one class of five), 10% of A_10.
    # Fifteen steps do not make digits: replay keeps no real task-1 test image (T1 0% after task 2).
    assert matrix[0][0] > 0.4 and matrix[1][1] > 0.4, matrix  # chance: 0.2
    assert res["A_t"][1] > 0.2, res["A_t"]  # chance: 0.1
    # What replay does teach at this budget: the classifier puts the generator's past-class images
    # in the past classes (100% here), where with replay labelled as current classes, or blank
    # replay images, task 2 sends them all to its own classes (0%).
    old = np.repeat(np.arange(5, dtype=np.int32), 40)
    gen = tf.saved_model.load(str(export_root / "generator" / "2")).signatures["sample"]
    clf = tf.saved_model.load(str(export_root / "classifier" / "2")).signatures["serving_default"]
    replayed = gen(labels=tf.constant(old), seed=tf.constant(0, tf.int64))["images"]
    predicted = clf(images=replayed)["classes"].numpy()
    assert np.mean(predicted < 5) > 0.8, np.bincount(predicted, minlength=10)
    assert len(res["A_t_selected"]) == 2 and len(res["task_seconds"]) == 2
    assert res["versions"]["keras"].startswith("3.")
    assert res["hyperparameters"]["ac_weight"] == 1.0  # five classes a task: the AC-GAN term is on by default
    rep = res["method_report"]
    assert len(rep["generator_size_after_task"]) == 2 and rep["replay_images_per_task"][0] == 0
    assert rep["replay_images_per_task"][1] > 0
    for kind in ("classifier", "generator"):
        assert sorted(os.listdir(export_root / kind)) == ["1", "2"]
    events = [f for f in os.listdir(workdir / "tb") if f.startswith("events")]
    assert events
    assert np.isfinite(res["last_losses"]["d_loss"])


def test_results_json_says_what_it_holds(finished_run):
    import dataclasses
    import datetime

    from dgm_keras import config, quiet

    res = finished_run.results
    assert "fractions in [0, 1]" in res["units"]["accuracy"] and "last_losses" in res["units"]
    assert all(0.0 <= a <= 1.0 for a in res["A_t"])  # fractions, as the units say
    started = datetime.datetime.fromisoformat(res["started_at"])
    finished = datetime.datetime.fromisoformat(res["finished_at"])
    assert started.tzinfo is not None and started <= finished
    assert (finished - started).total_seconds() >= sum(res["task_seconds"]) - 1
    version = res["code_version"]
    assert version["package"] == "0.1.0"
    if finished_run.commit:  # a git checkout: the commit the run started from
        assert version["git_commit"] == finished_run.commit and isinstance(version["git_dirty"], bool)
    # Each value once: hyperparameters as the method ran them, flags for the rest.
    assert not set(res["flags"]) & set(res["hyperparameters"])
    assert set(res["hyperparameters"]) == {f.name for f in dataclasses.fields(config.HyperParams)}
    assert res["hyperparameters"]["jit_compile"] is False  # as resolved ("auto" on a CPU), not as typed
    assert res["hyperparameters"]["ac_weight"] == 1.0 and res["flags"]["workdir"] == str(finished_run.workdir)
    # The console: the run's own lines on stdout; none of TensorFlow's start-up notices on stderr.
    assert finished_run.stdout.startswith("train: mnist, dgmw, 5 class(es) a task; settings flags/mnist_dgmw.cfg")
    noise = [line for line in finished_run.stderr.splitlines() if quiet.is_notice(line, quiet.has_nvidia_driver())]
    assert noise == [] and "oneDNN" not in finished_run.stderr, finished_run.stderr[-2000:]


def test_a_task_whose_masks_keep_every_free_weight_is_warned(finished_run):
    # 15 steps a task cannot switch a mask entry off (an embedding starts at +0.05 and Adam moves
    # it about 2e-3 a step), so each task keeps all its free weights and the generator doubles.
    results = finished_run.results
    sizes = results["method_report"]["generator_size_after_task"]
    assert results["last_losses"]["sparsity"] >= 0.99
    expected = [f"warning: task {t}'s masks kept 100% of the generator's free weights (none learned to switch off in "
                f"its 15 steps), so the generator grew to {size:,} weights; an embedding starts at --mask_init=0.05 "
                "and moves about one learning rate (0.002) a step, so switching off takes at least 25 steps: give each "
                "task more steps (--epochs_per_task, --steps_per_task) or a lower --mask_init" for t, size in ((1, sizes[0]), (2, sizes[1]))]
    assert [w for w in results["warnings"] if "masks kept" in w] == expected
    assert all(w in finished_run.stdout for w in expected)
