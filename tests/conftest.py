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
