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
