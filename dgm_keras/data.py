"""Datasets and class-incremental scenarios.

Everything is read through TensorFlow Datasets (``tfds.load``), so a user with internet
gets the data as usual and a machine without it uses the builds that
``dgm_keras.prepare_data`` writes into the same data dir. A scenario is data: which
classes, in which order, grouped into tasks; one ``tf.data`` pipeline per task.

Labels are remapped to the scenario's order: the classes of task t are
``[t * classes_per_task, (t + 1) * classes_per_task)``. A growing classifier head then
only ever appends rows, and the class names travel with the scenario.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from typing import Sequence

import numpy as np
import tensorflow as tf

from dgm_keras import config

IMAGE_SIZE = config.IMAGE_SIZE


DatasetSpec, DATASETS = config.DatasetSpec, config.DATASETS


class DataError(ValueError):
    """A dataset or scenario request that cannot be served; the message is one line."""


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; allowed: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


@dataclasses.dataclass(frozen=True)
class Scenario:
    """Which classes each task brings. ``class_order[i]`` is the original label of class i."""

    dataset: str
    class_order: tuple[int, ...]
    classes_per_task: int
    class_names: tuple[str, ...]  # in scenario order

    @property
    def num_tasks(self) -> int:
        return len(self.class_order) // self.classes_per_task

    @property
    def num_classes(self) -> int:
        return len(self.class_order)

    def task_classes(self, task: int) -> range:
        """Scenario-order labels of ``task`` (0-based)."""
        return range(task * self.classes_per_task, (task + 1) * self.classes_per_task)

    def seen_classes(self, task: int) -> int:
        """How many classes the model knows after ``task`` (0-based)."""
        return (task + 1) * self.classes_per_task

    def task_of_class(self, label: int) -> int:
        return label // self.classes_per_task

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "class_order": list(self.class_order),
            "class_names": list(self.class_names),
            "classes_per_task": self.classes_per_task,
            "num_tasks": self.num_tasks,
            "tasks": [list(self.task_classes(t)) for t in range(self.num_tasks)],
        }


def make_scenario(dataset: str, classes_per_task: int, class_order: str = "natural", seed: int = 0,
                  class_names: Sequence[str] | None = None) -> Scenario:
    """Builds the task split; ``class_order`` is ``natural`` or ``permuted`` (by ``seed``)."""
    spec = get_spec(dataset)
    divisors = config.task_split_divisors(dataset)
    if classes_per_task not in divisors:
        raise DataError(f"classes_per_task={classes_per_task} must divide the {len(spec.classes)} classes of "
                        f"{dataset}; allowed: {divisors}")
    if class_order == "natural":
        order = spec.classes
    elif class_order == "permuted":
        order = tuple(int(c) for c in np.random.default_rng(seed).permutation(spec.classes))
    else:
        raise DataError(f"unknown class_order {class_order!r}; allowed: natural, permuted")
    names = tuple(class_names[c] if class_names else str(c) for c in order)
    return Scenario(dataset, order, classes_per_task, names)


@dataclasses.dataclass
class SplitArrays:
    """One split in memory: images float32 [N, 32, 32, C] in [-1, 1], labels int32 in scenario order."""

    images: np.ndarray
    labels: np.ndarray

    def of_classes(self, classes: range) -> "SplitArrays":
        keep = (self.labels >= classes.start) & (self.labels < classes.stop)
        return SplitArrays(self.images[keep], self.labels[keep])


def preprocess_images(images: tf.Tensor) -> tf.Tensor:
    """uint8 [N, H, W, C] -> float32 [N, 32, 32, C] in [-1, 1] (MNIST's 28x28 resized, bilinear)."""
    x = tf.cast(images, tf.float32) / 127.5 - 1.0
    if x.shape[1] != IMAGE_SIZE or x.shape[2] != IMAGE_SIZE:
        x = tf.clip_by_value(tf.image.resize(x, (IMAGE_SIZE, IMAGE_SIZE), antialias=True), -1.0, 1.0)
    return x


def _tfds():
    import tensorflow_datasets as tfds  # imported lazily: 2-3 s, not needed by every module

    # TFDS's progress bars redraw a line with escape codes: fine on a terminal, litter (``[A``)
    # in a log file or CI output, so they are shown only when stderr is a terminal.
    tfds.display_progress_bar(enable=sys.stderr.isatty())
    return tfds


default_data_dir = config.default_data_dir


def is_prepared(dataset: str, data_dir: str) -> bool:
    # Asked of a data dir without the dataset's folder, TFDS's builder logs a warning ("Variant
    # folder ... has no dataset_info.json") on a fresh machine's first run: answer that case here.
    name = get_spec(dataset).tfds_name
    return os.path.isdir(os.path.join(data_dir, name)) and _tfds().builder(name, data_dir=data_dir).is_prepared()


def download_host_reachable(dataset: str, timeout: float = 3.0) -> bool:
    """Whether TFDS's download host for ``dataset`` answers at all: offline, TFDS itself spends
    minutes in retries before it fails, and the user should read the offline advice at once."""
    try:
        with socket.create_connection((get_spec(dataset).download_host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_prepared(dataset: str, data_dir: str, source: str | None = None) -> None:
    """Makes ``tfds.load(..., download=False)`` work: from ``source`` (a local file or folder, as
    ``prepare_data --source``), the offline builder for MNIST, else TFDS's download."""
    if is_prepared(dataset, data_dir):
        return
    if source is not None or dataset == "mnist":
        from dgm_keras import prepare_data  # noqa: PLC0415 (heavy, only when needed)

        try:
            prepare_data.prepare(dataset, data_dir, source)
        except prepare_data.SourceError as err:
            raise DataError(str(err)) from None
        return
    if not download_host_reachable(dataset):
        raise DataError(f"dataset {dataset!r} is not in data_dir {data_dir!r} and its download host "
                        f"{get_spec(dataset).download_host} cannot be reached (offline?); "
                        f"{offline_advice(dataset, data_dir)}")
    tfds = _tfds()
    builder = tfds.builder(get_spec(dataset).tfds_name, data_dir=data_dir)
    try:
        builder.download_and_prepare()
    except Exception as err:  # network errors come in many types; the message says what to do
        raise DataError(f"dataset {dataset!r} is not in data_dir {data_dir!r} and TFDS could not fetch it "
                        f"({type(err).__name__}); {offline_advice(dataset, data_dir)}") from err


def offline_advice(dataset: str, data_dir: str) -> str:
    """What works without a network for ``dataset``: prepare_data where it has a builder, else TFDS's manual_dir."""
    spec = get_spec(dataset)
    if dataset == "imagenet50":
        return (f"put the files of TFDS's {spec.tfds_name} in its manual_dir ({os.path.join(data_dir, 'downloads', 'manual')}: "
                f"Imagenet32_train.zip and Imagenet32_val.zip from image-net.org) and rerun (docs/DATA.md)")
    return (f"prepare it offline with `python -m dgm_keras.prepare_data --dataset={dataset} --source=PATH` "
            f"(source: {spec.offline_source}), or give the same --source=PATH to train")


def label_names(dataset: str, data_dir: str) -> list[str]:
    spec = get_spec(dataset)
    builder = _tfds().builder(spec.tfds_name, data_dir=data_dir)
    names = builder.info.features["label"].names
    return [names[c] for c in spec.classes]


def load_split(scenario: Scenario, data_dir: str, split: str) -> SplitArrays:
    """Reads ``split`` (a TFDS split string, slicing allowed) of the scenario's classes into memory."""
    tfds = _tfds()
    spec = get_spec(scenario.dataset)
    remap = np.full(max(spec.classes) + 1 if spec.name != "imagenet50" else 1000, -1, np.int32)
    remap[list(scenario.class_order)] = np.arange(scenario.num_classes, dtype=np.int32)
    try:
        return _read_split(tfds, spec, remap, split, data_dir)
    except (tf.errors.DataLossError, tf.errors.NotFoundError) as err:  # a cut or missing record file, not a bug of ours
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise DataError(f"the prepared {spec.tfds_name} in {data_dir!r} is damaged or incomplete ({type(err).__name__}: "
                        f"{first}); remove {os.path.join(data_dir, spec.tfds_name.split('/')[0])} and prepare it again: "
                        f"{offline_advice(scenario.dataset, data_dir)}") from None


def _read_split(tfds, spec, remap, split, data_dir) -> SplitArrays:
    ds = tfds.load(spec.tfds_name, split=split, data_dir=data_dir, download=False, as_supervised=True)
    images, labels = [], []
    # Relabelled and filtered a batch at a time in NumPy (per example in tf.data, it took about
    # as long as decoding the images); the order of the examples is kept.
    for x, y in ds.batch(4096).as_numpy_iterator():
        y = remap[y.astype(np.int64)]
        keep = y >= 0
        if keep.any():
            images.append(preprocess_images(x[keep]).numpy())
            labels.append(y[keep])
    if not images:
        raise DataError(f"split {split!r} of {spec.tfds_name} holds no examples of the scenario's classes")
    return SplitArrays(np.concatenate(images), np.concatenate(labels).astype(np.int32))


@dataclasses.dataclass
class ScenarioData:
    scenario: Scenario
    train: SplitArrays
    validation: SplitArrays | None
    test: SplitArrays


def load_scenario_data(scenario: Scenario, data_dir: str, validation_fraction: float) -> ScenarioData:
    """Train, a validation split held out of train (the last ``validation_fraction``), and test."""
    spec = get_spec(scenario.dataset)
    percent = config.validation_percent(validation_fraction)
    if percent is None:
        raise DataError(f"validation_fraction={validation_fraction} must be a whole percent in [0, 1), e.g. 0.15")
    train_split = f"train[:{100 - percent}%]" if percent else "train"
    train = load_split(scenario, data_dir, train_split)
    validation = load_split(scenario, data_dir, f"train[{100 - percent}%:]") if percent else None
    test = load_split(scenario, data_dir, spec.test_split)
    return ScenarioData(scenario, train, validation, test)


def make_pipeline(arrays: SplitArrays, batch_size: int, shuffle: bool, seed: int | None = None,
                  drop_remainder: bool = False) -> tf.data.Dataset:
    """One task's pipeline: cached, shuffled (reshuffled each pass), batched, prefetched.

    Autotuning is off: with it, each ``fit`` call waited ~40 s for the autotune thread
    when the iterator was destroyed (TENSORFLOW-NOTES.md); the pipeline is never the
    bottleneck here.
    """
    ds = tf.data.Dataset.from_tensor_slices((arrays.images, arrays.labels)).cache()
    if shuffle:
        ds = ds.shuffle(len(arrays.labels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(2)
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)
