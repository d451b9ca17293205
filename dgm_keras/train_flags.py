"""The flags of ``python -m dgm_keras.train``, grouped by what they are for, each with its rule.

The rules are absl's own: ``DEFINE_enum`` for a choice, ``lower_bound``/``upper_bound`` for a
range, ``register_validator`` / ``register_multi_flags_validator`` for the rest, so absl checks
the command line and flagfiles as it parses them and ``--helpfull`` shows what is allowed.
A run's values are not all typed, though: a settings file fills some and defaults fill others
(``train.resolve``), so ``check_flags`` runs the very same parsers and validators again on the
resolved values. Either way a bad value ends with one line naming it and what is allowed:
``--batch_size=0 is not allowed; allowed: a positive integer``.

Nothing here imports TensorFlow, so a bad flag fails in a second.
"""

from __future__ import annotations

import math
import os

from absl import flags

from dgm_keras import config, settings
from dgm_keras.cli import allowed, bad_value

FLAGS = flags.FLAGS
_HP = config.HyperParams()  # the one place of the defaults; a pair's settings file overrides them
FLOAT32_MAX = 3.4028234663852886e38

# --helpfull lists the flags by these groups (absl groups flags by the "module" that defines them).
DATA = "dgm_keras.train (1 of 4): data and scenario"
DGM = "dgm_keras.train (2 of 4): DGM (dgmw, dgma) and the GANs of dgr, mergan"
BASELINES = "dgm_keras.train (3 of 4): baselines (ewc, si, rwalk, icarl, mergan)"
RUN = "dgm_keras.train (4 of 4): run, outputs and devices"
GROUPS = (DATA, DGM, BASELINES, RUN)


class FlagError(ValueError):
    """A bad flag value; the message is one line naming it and what is allowed."""


def _rule(name: str, ok, allowed: str) -> None:
    """An absl validator whose failure is our one line (None: not given, resolved later)."""
    def checker(value):
        if value is None or ok(value):
            return True
        raise flags.ValidationError(bad_value(name, value, allowed))

    flags.register_validator(name, checker)


def _finite(name: str) -> None:
    """nan, inf and values float32 cannot hold end in a NaN loss, not in an answer (absl's
    bounds let nan through: every comparison with it is false)."""
    _rule(name, lambda v: math.isfinite(v) and abs(v) <= FLOAT32_MAX,
          f"a finite number float32 holds (|x| <= {FLOAT32_MAX:.4g})")


def _float(name, default, help, group, lower=None, upper=None, **kw):
    flags.DEFINE_float(name, default, help, lower_bound=lower, upper_bound=upper, module_name=group, **kw)
    _finite(name)


def _dgm_option(name, allowed, help):
    """One of DGM's choices beside the paper's (config.HyperParams holds its default)."""
    flags.DEFINE_enum(name, getattr(_HP, name), list(allowed), help, module_name=DGM)


def _methods_help() -> str:
    return "; ".join(f"{name}: {what}" for name, what in config.METHODS.items())


# -- data and scenario
flags.DEFINE_enum("dataset", "mnist", list(config.DATASETS), "The dataset (through TFDS).", module_name=DATA)
flags.DEFINE_enum("method", "dgmw", list(config.METHOD_NAMES), f"The method. {_methods_help()}.", module_name=DATA)
flags.DEFINE_string("settings", None, "The settings file flags/<dataset>_<settings>.cfg applied under the command line; "
                    f"default the method's name; one of: {', '.join(settings.KEYS)} (ewc_m: EWC with a memory, ...).",
                    module_name=DATA)
flags.DEFINE_integer("classes_per_task", 1, "Classes each task brings (1: the paper's 10x1; 2: the 5x2 split); "
                     "a divisor of the dataset's classes.", lower_bound=1, module_name=DATA)
flags.DEFINE_enum("class_order", "natural", ["natural", "permuted"], "natural, or permuted (by --seed).", module_name=DATA)
_float("validation_fraction", 0.15, "Share of train held out as validation (whole percent).", DATA)
_rule("validation_fraction", lambda v: config.validation_percent(v) is not None, "a whole percent in [0, 1), e.g. 0.15")
flags.DEFINE_integer("epochs_per_task", _HP.epochs_per_task, "Passes over a task's real training data.",
                     lower_bound=1, module_name=DATA)
flags.DEFINE_integer("steps_per_task", _HP.steps_per_task, "If > 0, iterations per task instead of epochs.",
                     lower_bound=0, module_name=DATA)
flags.DEFINE_integer("batch_size", _HP.batch_size, "Real images per iteration: the global batch, split across replicas "
                     "under --strategy.", lower_bound=1, module_name=DATA)
flags.DEFINE_string("data_dir", None, "TFDS data dir; default $TFDS_DATA_DIR or ~/tensorflow_datasets.", module_name=DATA)
flags.DEFINE_string("source", None, "A local copy of --dataset (as prepare_data --source: the CIFAR-10 JPEG tar or "
                    "official archive, Fashion-MNIST IDX folder, SVHN .mat folder) to prepare from when --data_dir lacks "
                    "it.", module_name=DATA)
flags.DEFINE_integer("seed", _HP.seed, "Seeds weights, sampling, shuffling and a permuted class order.",
                     lower_bound=0, module_name=DATA)

# -- DGM and the GANs
flags.DEFINE_integer("ngf", _HP.ngf, "Generator width (4ngf-2ngf-ngf).", lower_bound=1, module_name=DGM)
_float("g_lr", _HP.g_lr, "Generator Adam learning rate (> 0).", DGM)
_rule("g_lr", lambda v: v > 0, "a positive number")
_float("d_lr", _HP.d_lr, "Discriminator (and classifier) Adam learning rate (> 0).", DGM)
_rule("d_lr", lambda v: v > 0, "a positive number")
for _name in ("beta_1", "beta_2"):
    _float(_name, getattr(_HP, _name), f"Adam {_name}, in [0, 1).", DGM)
    _rule(_name, lambda v: 0 <= v < 1, "a number in [0, 1)")
_float("gp_weight", _HP.gp_weight, "WGAN-GP gradient penalty weight (10: the WGAN-GP paper's, chosen on validation; "
       "the DGM reference code's 1 is in its *_paper flagfiles).", DGM, lower=0)
flags.DEFINE_enum("d_norm", _HP.d_norm, ["layer", "batch"],
                  "Critic normalisation: layer (WGAN-GP's advice) or batch (the reference code).", module_name=DGM)
flags.DEFINE_enum("d_trunk", _HP.d_trunk, list(config.D_TRUNKS),
                  "The discriminator's trunk, which the classifier shares (or, with --classifier=separate, copies): "
                  "strided (conv 5x5/2 32-64-128, the paper's critic) or pooled (conv 3x3 32-64-64 with max pooling "
                  "and a dense 64, the TensorFlow CNN tutorial's classifier).", module_name=DGM)
_float("sparsity_weight", _HP.sparsity_weight, "lambda of DGM's sparsity regulariser R_t (the reference code: 0.08).",
       DGM, lower=0)
flags.DEFINE_string("sparsity_layer_weights", _HP.sparsity_layer_weights, "DGM: lambda's multiplier for each of the "
                   "generator's three masked layers, first to last, as three comma-separated numbers >= 0 (1,1,1: the "
                   "paper's R_t; 1,1,0: the last masked layer's free entries cost nothing).", module_name=DGM)
_rule("sparsity_layer_weights", lambda v: config.layer_weights(v) is not None,
      "three comma-separated finite numbers >= 0, one per masked layer, e.g. 1,1,1")
_float("mask_init", _HP.mask_init, "Initial value of every mask embedding (> 0: layers start dense).", DGM)
_float("s_max", _HP.s_max, "Mask scale ceiling (> 0).", DGM)
_rule("s_max", lambda v: v > 0, "a positive number")
_float("ac_weight", _HP.ac_weight, "Weight of the AC-GAN classification term in the generator loss; default the "
       "method's: always 1 for mergan; for dgmw/dgma 0 with one class a task (the reference code), 1 with several.",
       DGM, lower=0)
_dgm_option("mask_gradient", config.MASK_GRADIENTS, "DGM masks: annealed (HAT's s "
            "ramp; its clipped compensation vanishes once |s*e| > 50, so masks stop learning early in a task) or "
            "constant (the compensated gradient at every step: masks learn for the whole task).")
_dgm_option("classifier", config.CLASSIFIERS, "DGM's classifier: shared (the critic's trunk "
            "and a classifier head, the paper) or separate (a network of the same shape with a trunk of its own).")
_dgm_option("classifier_steps", config.CLASSIFIER_STEPS, "DGM's classifier updates per "
            "iteration: combined (one, on real + replay) or reference (the reference code's t+1 steps of "
            "--batch_size images at task t). Default: combined (since session 21; reference with one class a task before).")
_dgm_option("classifier_data", config.CLASSIFIER_DATA, "What DGM's classifier steps "
            "learn the current task from, beside the replay: real (its real images, the paper) or generated (the "
            "generator's images of it, so that no class is told apart by looking real; needs the classifier's own "
            "steps). Default by scenario: generated with one class a task (where the classifier takes its own "
            "steps), else real.")
_float("c_lr", _HP.c_lr, "Adam learning rate of DGM's own classifier steps (--classifier=separate or "
       "--classifier_steps=reference) (> 0).", DGM)
_rule("c_lr", lambda v: v > 0, "a positive number")
_float("classifier_head_lr", _HP.classifier_head_lr, "Adam learning rate of the classifier head's own optimizer in "
       "DGM's combined step (--classifier=shared --classifier_steps=combined), the trunk and critic head keeping "
       "--d_lr; 0: one optimizer for the whole discriminator (the paper).", DGM, lower=0)
_dgm_option("generator_bn", config.GENERATOR_BN, "The generator's batch norm (DGM: the task's head; DGR, "
            "MeRGAN: its one): moving (the moving average as training left it) or reestimate (exact statistics at "
            "the task's end; always so with --generator_ema).")
for _name, _what in (("generator_ema", "the generator's free weights (not its masks), swapped in when a task ends, "
                                   "before replay and export"),
                     ("classifier_ema", "the classifier's weights (with the shared trunk: the whole discriminator), "
                                    "swapped in when a task ends, before evaluation and export")):
    _float(_name, getattr(_HP, _name), f"DGM, DGR, MeRGAN: decay in [0, 1) of a moving average of {_what}; 0: off "
           "(the papers, and the *_paper flagfiles).", DGM)
    _rule(_name, lambda v: 0 <= v < 1, "a number in [0, 1) (0: off)")
_float("ema_warmup", _HP.ema_warmup, "DGM, DGR, MeRGAN: the weight averages' decay at a task's step k is min(decay, (1 + k) / "
       "(ema_warmup + k)) (> 1; 10 is TensorFlow's rule, which reaches 0.99 after 890 steps; 2 reaches it after 98).",
       DGM)
_rule("ema_warmup", lambda v: v > 1, "a number > 1 (at 1 the averages never move)")
_dgm_option("replay", config.REPLAY_MODES, "DGM's replay: fixed (a set drawn when a task begins, "
            "the reference code) or fresh (drawn anew inside every iteration, from each past task's masks and "
            "head).")
flags.DEFINE_integer("replay_batch_size", _HP.replay_batch_size, "Replayed images of past classes per iteration.",
                     lower_bound=1, module_name=DGM)
flags.DEFINE_integer("replay_per_class", _HP.replay_per_class, "Replay images drawn per past class at a task's start "
                     "(0: as many as the task's real images per class).", lower_bound=0, module_name=DGM)
flags.DEFINE_bool("reinit_discriminator", _HP.reinit_discriminator, "Re-initialise D at every task (the reference code "
                  "for MNIST/SVHN; unstable at short budgets).", module_name=DGM)

# -- baselines
flags.DEFINE_integer("memory_per_class", _HP.memory_per_class, "ewc/si/rwalk: real images kept per past class and "
                     "replayed (the paper's -M variants); 0: none.", lower_bound=0, module_name=BASELINES)
_float("ewc_lambda", _HP.ewc_lambda, "EWC penalty strength.", BASELINES, lower=0)
_float("ewc_gamma", _HP.ewc_gamma, "Online EWC: decay in [0, 1] of the accumulated Fisher at each new task.",
       BASELINES, lower=0, upper=1)
flags.DEFINE_enum("ewc_fisher", _HP.ewc_fisher, ["empirical", "sampled"], "EWC's Fisher: empirical (the data's labels) "
                  "or sampled (labels from the model's softmax, in expectation, as in the paper).", module_name=BASELINES)
_float("si_c", _HP.si_c, "SI penalty strength c.", BASELINES, lower=0)
_float("si_xi", _HP.si_xi, "SI damping xi of the importance's denominator.", BASELINES, lower=0)
_float("rwalk_lambda", _HP.rwalk_lambda, "RWalk penalty strength.", BASELINES, lower=0)
_float("rwalk_alpha", _HP.rwalk_alpha, "RWalk: moving-average rate in [0, 1] of the empirical Fisher.",
       BASELINES, lower=0, upper=1)
flags.DEFINE_integer("rwalk_fisher_update_after", _HP.rwalk_fisher_update_after, "RWalk: steps between updates of the "
                     "running Fisher and of the path scores (the authors' fisher_update_after).",
                     lower_bound=1, module_name=BASELINES)
flags.DEFINE_integer("icarl_memory", _HP.icarl_memory, "iCaRL: total exemplars K, shared equally by the classes seen "
                     "so far.", lower_bound=1, module_name=BASELINES)
flags.DEFINE_enum("mergan_mode", _HP.mergan_mode, list(config.MERGAN_MODES), "MeRGAN: jtr (joint retraining with "
                  "replay) or ra (replay alignment).", module_name=BASELINES)
_float("alignment_weight", _HP.alignment_weight, "MeRGAN-RA: weight of the L2 alignment to the previous generator.",
       BASELINES, lower=0)

# -- run, outputs and devices
flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs (tb/), results.json; default runs/<run_name>.",
                    module_name=RUN)
flags.DEFINE_string("export_dir", "savedmodels", "SavedModels land in <export_dir>/<run_name>/{classifier,generator}/"
                    "<task>.", module_name=RUN)
flags.DEFINE_string("run_name", None, "Default <dataset>_<method>_<classes_per_task>cpt_seed<seed>.", module_name=RUN)
flags.DEFINE_integer("checkpoint_every", 200, "Steps between checkpoints within a task (0: only at task ends); "
                     "rerunning the same command resumes.", lower_bound=0, module_name=RUN)
flags.DEFINE_enum("resume_from", "latest", ["latest", "previous"], "latest: resume from the newest checkpoint; previous: "
                  "from the one before it (when the newest is damaged; the run then goes on from there).", module_name=RUN)
flags.DEFINE_bool("restart", False, "Set the old run's checkpoints, logs, results and exports aside (moved under "
                  "set_aside/<time>/ in the same folders, never deleted) and start over, e.g. with other learning rates.",
                  module_name=RUN)
flags.DEFINE_enum("strategy", "default", list(config.STRATEGIES), "default (one device), mirrored (the local GPUs, or "
                  "--cpu_replicas), multiworker (MultiWorkerMirroredStrategy; the cluster from TF_CONFIG).", module_name=RUN)
flags.DEFINE_integer("cpu_replicas", 0, "If > 0, split the CPU into this many logical devices (mirrored without GPUs, "
                     "for trying it out).", lower_bound=0, module_name=RUN)
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA for the train step: auto (on with a GPU, off "
                  "on CPU), true, false.", module_name=RUN)
flags.DEFINE_bool("tf_log", False, "Show TensorFlow's start-up notices and its INFO and WARNING logs (oneDNN, CUDA "
                  "probing, CPU features); hidden by default. Errors are always shown.", module_name=RUN)
flags.DEFINE_enum("progress", "auto", ["auto", "bar", "line", "none"], "While a task trains: bar (one line redrawn: "
                  "the task's steps, its losses, the run's ETA), line (that line once a task), none; auto: bar on a "
                  "terminal, line otherwise (logs). Not --verbosity: absl's logging owns that name.", module_name=RUN)


# -- rules on several flags, and on paths (these need the resolved values: a default path is filled later)
def _ancestors(path):
    path = os.path.abspath(path)
    while True:
        yield path
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def _check_data_dir(path):
    if os.path.exists(path) and (not os.path.isdir(path) or not os.access(path, os.R_OK | os.W_OK | os.X_OK)):
        raise flags.ValidationError(bad_value("data_dir", path, "a readable and writable folder (or a path that can be "
                                                                "created)"))
    parent = next(p for p in _ancestors(path) if os.path.exists(p))
    if not os.path.isdir(parent):
        raise flags.ValidationError(bad_value("data_dir", path, f"a path under a folder ({parent!r} is a file)"))
    return True


def _check_output_dir(name):
    def check(path):
        if path is None:
            return True
        if os.path.exists(path) and not os.path.isdir(path):
            raise flags.ValidationError(bad_value(name, path, "a folder (this path is a file)"))
        parent = next(p for p in _ancestors(path) if os.path.exists(p))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise flags.ValidationError(bad_value(name, path, f"a path under a writable folder ({parent!r} is not one)"))
        return True
    return check


def _check_split(values):
    dataset, classes = values["dataset"], values["classes_per_task"]
    if dataset not in config.DATASETS or classes is None:
        return True
    divisors = config.task_split_divisors(dataset)
    if classes not in divisors:
        raise flags.ValidationError(bad_value("classes_per_task", classes, f"a divisor of the {max(divisors)} classes of "
                                              f"{dataset}: " + ", ".join(map(str, divisors))))
    return True


def _check_strategy(values):
    if values["strategy"] != "default" and values["method"] not in config.DISTRIBUTED_METHODS:
        raise flags.ValidationError(bad_value(
            "strategy", values["strategy"], f"default for --method={values['method']} (distributed training is "
            f"implemented for {', '.join(config.DISTRIBUTED_METHODS)})"))
    return True


def check_classifier_data(values):
    """(Run again by ``check_flags`` once ``train.resolve`` has filled the defaults by scenario.)"""
    if values["classifier_data"] == "generated" and (values["classifier"], values["classifier_steps"]) == (
            "shared", "combined"):
        raise flags.ValidationError(bad_value(
            "classifier_data", values["classifier_data"], "real with --classifier=shared --classifier_steps=combined "
            "(generated needs the classifier's own steps: --classifier=separate or --classifier_steps=reference)"))
    if values["classifier_head_lr"] and values["classifier_steps"] is not None and (
            values["classifier"], values["classifier_steps"]) != ("shared", "combined"):
        raise flags.ValidationError(bad_value(
            "classifier_head_lr", values["classifier_head_lr"], "0 unless --classifier=shared "
            "--classifier_steps=combined (the classifier's own steps take --c_lr)"))
    return True


def _check_restart(values):
    if values["restart"] and values["resume_from"] != "latest":
        raise flags.ValidationError(f"--resume_from={values['resume_from']!r} is not allowed with --restart; allowed: latest")
    return True


flags.register_validator("data_dir", lambda p: p is None or _check_data_dir(p))
flags.register_validator("workdir", _check_output_dir("workdir"))
flags.register_validator("export_dir", _check_output_dir("export_dir"))
flags.register_multi_flags_validator(["dataset", "classes_per_task"], _check_split)
flags.register_multi_flags_validator(["strategy", "method"], _check_strategy)
flags.register_multi_flags_validator(["restart", "resume_from"], _check_restart)
flags.register_multi_flags_validator(["classifier_data", "classifier", "classifier_steps", "classifier_head_lr"],
                                     check_classifier_data)

FLAG_NAMES = ("dataset", "method", "settings", "classes_per_task", "class_order", "validation_fraction", "epochs_per_task",
              "steps_per_task", "batch_size", "checkpoint_every", "data_dir", "source", "workdir", "export_dir", "run_name",
              "seed", "jit_compile", "resume_from", "restart",
              "ngf", "g_lr", "d_lr", "beta_1", "beta_2", "gp_weight", "d_norm", "d_trunk", "sparsity_weight", "sparsity_layer_weights", "mask_init", "s_max",
              "ac_weight", "mask_gradient", "classifier", "classifier_steps", "classifier_data", "c_lr", "classifier_head_lr", "generator_bn", "generator_ema", "classifier_ema", "ema_warmup", "replay",
              "replay_batch_size", "replay_per_class", "reinit_discriminator", "memory_per_class", "ewc_lambda",
              "ewc_gamma", "ewc_fisher", "si_c", "si_xi", "rwalk_lambda", "rwalk_alpha", "rwalk_fisher_update_after",
              "icarl_memory", "mergan_mode", "alignment_weight", "strategy", "cpu_replicas", "tf_log")
# The flags that change what is learned (not where it is written, on which devices, or what is shown).
HYPERPARAMETER_FLAGS = tuple(n for n in FLAG_NAMES if n not in (
    "settings", "data_dir", "source", "workdir", "export_dir", "run_name", "checkpoint_every", "strategy", "cpu_replicas",
    "jit_compile", "resume_from", "restart", "tf_log"))


# -- the same rules on resolved values
def check_flags(values: dict) -> None:
    """Runs every flag's parser check (enum, bounds) and validator on ``values`` (a run's
    resolved flags); raises FlagError with one line for the first bad value."""
    for name in FLAG_NAMES:  # each value alone first (enum, bounds), then the rules that read several
        value = values[name]
        if value is not None and not isinstance(value, bool):
            try:
                FLAGS[name].parser.parse(value)
            except ValueError:
                raise FlagError(bad_value(name, value, allowed(name))) from None
    done = set()
    for name in FLAG_NAMES:
        value = values[name]
        for validator in FLAGS[name].validators:
            if id(validator) in done:
                continue
            done.add(id(validator))
            several = hasattr(validator, "flag_names")  # absl's MultiFlagsValidator, which it does not export
            arg = {n: values[n] for n in validator.get_flags_names()} if several else value
            try:
                ok = validator.checker(arg)
            except flags.ValidationError as err:
                raise FlagError(str(err)) from None
            if not ok:
                raise FlagError(f"--{name}={value!r}: {validator.message}")
