"""Data: real MNIST counts, task splits and ranges; SVHN/ImageNet-50 on generated data."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from dgm_keras import data


def test_mnist_counts_and_range(mnist_dir, mnist_scenario_data):
    d = mnist_scenario_data
    assert len(d.train.labels) + len(d.validation.labels) == 60000
    assert len(d.test.labels) == 10000
    assert len(d.validation.labels) == 9000  # 15% held out of train, as the paper
    for split in (d.train, d.validation, d.test):
        assert split.images.shape[1:] == (32, 32, 1) and split.images.dtype == np.float32
        assert split.images.min() == -1.0 and split.images.max() == 1.0
    # Real digits: the test set's label histogram is MNIST's.
    assert np.bincount(d.test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_tasks_hold_their_classes_only(mnist_scenario_data):
    d = mnist_scenario_data
    sc = d.scenario
    seen = set()
    for t in range(sc.num_tasks):
        classes = set(np.unique(d.train.of_classes(sc.task_classes(t)).labels).tolist())
        assert classes == set(sc.task_classes(t))
        assert not classes & seen
        seen |= classes
    assert seen == set(range(10))


def test_permuted_order_is_seeded_and_relabels(mnist_dir):
    a = data.make_scenario("mnist", 2, "permuted", seed=3)
    b = data.make_scenario("mnist", 2, "permuted", seed=3)
    c = data.make_scenario("mnist", 2, "permuted", seed=4)
    assert a.class_order == b.class_order != c.class_order
    assert sorted(a.class_order) == list(range(10))
    test = data.load_split(a, mnist_dir, "test[:2000]")
    natural = data.load_split(data.make_scenario("mnist", 2), mnist_dir, "test[:2000]")
    # Scenario label i is original class class_order[i].
    np.testing.assert_array_equal(np.asarray(a.class_order)[test.labels], natural.labels)


def test_pipeline_batches(mnist_scenario_data):
    part = mnist_scenario_data.train.of_classes(range(0, 1))
    ds = data.make_pipeline(part, 64, shuffle=True, seed=0, drop_remainder=True)
    x, y = next(iter(ds))
    assert x.shape == (64, 32, 32, 1) and set(y.numpy().tolist()) == {0}
    assert sum(1 for _ in ds) == len(part.labels) // 64


@pytest.mark.parametrize("cpt,bad", [(3, True), (0, True), (5, False)])
def test_classes_per_task_must_divide(cpt, bad):
    if bad:
        with pytest.raises(data.DataError, match=f"classes_per_task={cpt}.*allowed: \\[1, 2, 5, 10\\]"):
            data.make_scenario("mnist", cpt)
    else:
        assert data.make_scenario("mnist", cpt).num_tasks == 2


def test_unknown_dataset_rejected():
    with pytest.raises(data.DataError, match="unknown dataset 'mnist2'; allowed: cifar10, fashion_mnist"):
        data.get_spec("mnist2")


# Generated data in TFDS's format (tfds.testing.mock_data): checks the pipelines, not the data.
@pytest.mark.parametrize("dataset,classes", [("svhn_cropped", 10), ("imagenet50", 50)])
def test_generated_tfds_pipelines(dataset, classes, tmp_path):
    cpt = 10 if dataset == "imagenet50" else 2
    scenario = data.make_scenario(dataset, cpt)
    spec = data.get_spec(dataset)
    with tfds.testing.mock_data(num_examples=2000, data_dir=str(tmp_path)):
        split = data.load_split(scenario, str(tmp_path), spec.test_split)
    assert split.images.shape[1:] == (32, 32, 3)
    assert split.labels.min() >= 0 and split.labels.max() < classes
    assert -1.0 <= split.images.min() and split.images.max() <= 1.0
    if dataset == "imagenet50":  # only the 50 chosen classes of imagenet_resized's 1000 survive
        assert 0 < len(split.labels) < 2000
