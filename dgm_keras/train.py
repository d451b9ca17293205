"""Runs a class-incremental experiment end to end.

    python -m dgm_keras.train                                  # DGMw, MNIST, 10 tasks of one class
    python -m dgm_keras.train --flagfile=flags/mnist_dgma.cfg
    python -m dgm_keras.train --dataset=cifar10 --flagfile=flags/cifar10_dgmw.cfg

Every flag value is checked before anything is read or written; a bad one ends the run
with one line naming it and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys

from absl import app, flags, logging

from dgm_keras import config, settings

FLAGS = flags.FLAGS
_HP = config.HyperParams()  # the one place of the defaults; a pair's settings file overrides them
flags.DEFINE_string("dataset", "mnist", f"One of: {', '.join(config.DATASETS)}.")
flags.DEFINE_string("method", "dgmw", f"One of: {', '.join(config.METHOD_NAMES)}.")
flags.DEFINE_string("settings", None, "The settings file flags/<dataset>_<settings>.cfg applied under the command line; "
                    f"default the method's name; one of: {', '.join(settings.KEYS)} (ewc_m: EWC with a memory, ...).")
flags.DEFINE_integer("classes_per_task", 1, "Classes each task brings (1: the paper's 10x1; 2: the 5x2 split).")
flags.DEFINE_string("class_order", "natural", "natural, or permuted (by --seed).")
flags.DEFINE_float("validation_fraction", 0.15, "Share of train held out as validation (whole percent).")
flags.DEFINE_integer("epochs_per_task", _HP.epochs_per_task, "Passes over a task's real training data.")
flags.DEFINE_integer("steps_per_task", _HP.steps_per_task, "If > 0, iterations per task instead of epochs.")
flags.DEFINE_integer("batch_size", _HP.batch_size, "Real images per iteration: the global batch, split across replicas under --strategy.")
flags.DEFINE_string("data_dir", None, "TFDS data dir; default $TFDS_DATA_DIR or ~/tensorflow_datasets.")
flags.DEFINE_string("source", None, "A local copy of --dataset (as prepare_data --source: the CIFAR-10 JPEG tar or "
                    "official archive, Fashion-MNIST IDX folder, SVHN .mat folder) to prepare from when --data_dir lacks it.")
flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs (tb/), results.json; default runs/<run_name>.")
flags.DEFINE_string("export_dir", "savedmodels", "SavedModels land in <export_dir>/<run_name>/{classifier,generator}/<task>.")
flags.DEFINE_string("run_name", None, "Default <dataset>_<method>_<classes_per_task>cpt_seed<seed>.")
flags.DEFINE_integer("seed", _HP.seed, "Seeds weights, sampling, shuffling and a permuted class order.")
flags.DEFINE_integer("checkpoint_every", 200, "Steps between checkpoints within a task (0: only at task ends); rerunning the same command resumes.")
flags.DEFINE_string("resume_from", "latest", "latest: resume from the newest checkpoint; previous: from the one before it "
                    "(when the newest is damaged; the run then goes on from there).")
flags.DEFINE_bool("restart", False, "Set the old run's checkpoints, logs, results and exports aside (moved under "
                  "set_aside/<time>/ in the same folders, never deleted) and start over, e.g. with other learning rates.")
flags.DEFINE_string("strategy", "default", "default (one device), mirrored (the local GPUs, or --cpu_replicas), "
                    "multiworker (MultiWorkerMirroredStrategy; the cluster from TF_CONFIG).")
flags.DEFINE_integer("cpu_replicas", 0, "If > 0, split the CPU into this many logical devices (mirrored without GPUs, for trying it out).")
flags.DEFINE_string("jit_compile", "auto", "XLA for the train step: auto (on with a GPU, off on CPU), true, false.")
flags.DEFINE_integer("ngf", _HP.ngf, "Generator width (4ngf-2ngf-ngf).")
flags.DEFINE_float("g_lr", _HP.g_lr, "Generator Adam learning rate.")
flags.DEFINE_float("d_lr", _HP.d_lr, "Discriminator (and classifier) Adam learning rate.")
flags.DEFINE_float("beta_1", _HP.beta_1, "Adam beta_1.")
flags.DEFINE_float("beta_2", _HP.beta_2, "Adam beta_2.")
flags.DEFINE_float("gp_weight", _HP.gp_weight, "WGAN-GP gradient penalty weight.")
flags.DEFINE_string("d_norm", _HP.d_norm, "Critic normalisation: layer (WGAN-GP's advice) or batch (the reference code).")
flags.DEFINE_float("sparsity_weight", _HP.sparsity_weight, "lambda of DGM's sparsity regulariser R_t (the reference code: 0.08).")
flags.DEFINE_float("mask_init", _HP.mask_init, "Initial value of every mask embedding (> 0: layers start dense).")
flags.DEFINE_float("s_max", _HP.s_max, "Mask scale ceiling.")
flags.DEFINE_float("ac_weight", _HP.ac_weight, "Weight of the AC-GAN classification term in the generator loss; default the "
                   "method's: always 1 for mergan; for dgmw/dgma 0 with one class a task (the reference code), 1 with several.")
flags.DEFINE_string("mask_gradient", _HP.mask_gradient, "DGM masks: annealed (HAT's s ramp; its clipped compensation "
                    "vanishes once |s*e| > 50, so masks stop learning early in a task) or constant (the compensated "
                    "gradient at every step: masks learn for the whole task).")
flags.DEFINE_string("classifier", _HP.classifier, "DGM's classifier: shared (the critic's trunk and a classifier "
                    "head, the paper) or separate (a network of the same shape with a trunk of its own).")
flags.DEFINE_string("classifier_steps", _HP.classifier_steps, "DGM's classifier updates per iteration: combined (one, "
                    "on real + replay) or reference (the reference code's t+1 steps of --batch_size images at task t).")
flags.DEFINE_string("classifier_data", _HP.classifier_data, "What DGM's classifier steps learn the current task "
                    "from, beside the replay: real (its real images, the paper) or generated (the generator's images of "
                    "it, so that no class is told apart by looking real; needs the classifier's own steps).")
flags.DEFINE_float("c_lr", _HP.c_lr, "Adam learning rate of DGM's own classifier steps (--classifier=separate or "
                   "--classifier_steps=reference).")
flags.DEFINE_string("generator_bn", _HP.generator_bn, "DGM's per-task generator batch norm: moving (the moving "
                    "average as training left it) or reestimate (exact statistics at the task's end).")
flags.DEFINE_string("replay", _HP.replay, "DGM's replay: fixed (a set drawn when a task begins, the reference "
                    "code) or fresh (drawn anew inside every iteration, from each past task's masks and head).")
flags.DEFINE_integer("replay_batch_size", _HP.replay_batch_size, "Replayed images of past classes per iteration.")
flags.DEFINE_integer("replay_per_class", _HP.replay_per_class, "Replay images drawn per past class at a task's start (0: as many as the task's real images per class).")
flags.DEFINE_bool("reinit_discriminator", _HP.reinit_discriminator, "Re-initialise D at every task (the reference code for MNIST/SVHN; unstable at short budgets).")
flags.DEFINE_integer("memory_per_class", _HP.memory_per_class, "ewc/si/rwalk: real images kept per past class and replayed (the paper's -M variants); 0: none.")
flags.DEFINE_float("ewc_lambda", _HP.ewc_lambda, "EWC penalty strength.")
flags.DEFINE_float("ewc_gamma", _HP.ewc_gamma, "Online EWC: decay in [0, 1] of the accumulated Fisher at each new task.")
flags.DEFINE_string("ewc_fisher", _HP.ewc_fisher, "EWC's Fisher: empirical (the data's labels) or sampled (labels from the model's softmax, in expectation, as in the paper).")
flags.DEFINE_float("si_c", _HP.si_c, "SI penalty strength c.")
flags.DEFINE_float("si_xi", _HP.si_xi, "SI damping xi of the importance's denominator.")
flags.DEFINE_float("rwalk_lambda", _HP.rwalk_lambda, "RWalk penalty strength.")
flags.DEFINE_float("rwalk_alpha", _HP.rwalk_alpha, "RWalk: moving-average rate in [0, 1] of the empirical Fisher.")
flags.DEFINE_integer("rwalk_fisher_update_after", _HP.rwalk_fisher_update_after, "RWalk: steps between updates of the running Fisher and of the path scores (the authors' fisher_update_after).")
flags.DEFINE_integer("icarl_memory", _HP.icarl_memory, "iCaRL: total exemplars K, shared equally by the classes seen so far.")
flags.DEFINE_string("mergan_mode", _HP.mergan_mode, f"MeRGAN: {', '.join(config.MERGAN_MODES)} (joint retraining with replay, or replay alignment).")
flags.DEFINE_float("alignment_weight", _HP.alignment_weight, "MeRGAN-RA: weight of the L2 alignment to the previous generator.")


class FlagError(ValueError):
    pass


FLOAT32_MAX = 3.4028234663852886e38
FLOAT_FLAGS = ("validation_fraction", "g_lr", "d_lr", "c_lr", "beta_1", "beta_2", "gp_weight", "sparsity_weight", "mask_init",
               "s_max", "ac_weight", "ewc_lambda", "ewc_gamma", "si_c", "si_xi", "rwalk_lambda", "rwalk_alpha",
               "alignment_weight")


def check_flags(values: dict) -> None:
    """Raises FlagError with one line for the first bad value."""
    def bad(name, allowed):
        raise FlagError(f"--{name}={values[name]!r} is not allowed; allowed: {allowed}")

    if values["dataset"] not in config.DATASETS:
        bad("dataset", ", ".join(config.DATASETS))
    for name in FLOAT_FLAGS:  # nan, inf and values float32 cannot hold end in a NaN loss, not in an answer
        value = values[name]
        if value is not None and not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
            bad(name, f"a finite number float32 holds (|x| <= {FLOAT32_MAX:.4g})")
    if values["seed"] < 0:
        bad("seed", "an integer >= 0")
    if values["method"] not in config.METHOD_NAMES:
        bad("method", ", ".join(config.METHOD_NAMES))
    if values["class_order"] not in ("natural", "permuted"):
        bad("class_order", "natural, permuted")
    if values["d_norm"] not in ("layer", "batch"):
        bad("d_norm", "layer, batch")
    for name, allowed in (("mask_gradient", config.MASK_GRADIENTS), ("classifier", config.CLASSIFIERS),
                          ("classifier_steps", config.CLASSIFIER_STEPS),
                          ("classifier_data", config.CLASSIFIER_DATA), ("generator_bn", config.GENERATOR_BN),
                          ("replay", config.REPLAY_MODES)):
        if values[name] not in allowed:
            bad(name, ", ".join(allowed))
    if values["classifier_data"] == "generated" and (values["classifier"], values["classifier_steps"]) == (
            "shared", "combined"):
        bad("classifier_data", "real with --classifier=shared --classifier_steps=combined (generated needs the "
            "classifier's own steps: --classifier=separate or --classifier_steps=reference)")
    if values["strategy"] not in config.STRATEGIES:
        bad("strategy", ", ".join(config.STRATEGIES))
    if values["strategy"] != "default" and values["method"] not in config.DISTRIBUTED_METHODS:
        bad("strategy", f"default for --method={values['method']} (distributed training is implemented for "
            f"{', '.join(config.DISTRIBUTED_METHODS)})")
    if values["cpu_replicas"] < 0:
        bad("cpu_replicas", "0 or a positive integer")
    if values["jit_compile"] not in ("auto", "true", "false"):
        bad("jit_compile", "auto, true, false")
    if values["mergan_mode"] not in config.MERGAN_MODES:
        bad("mergan_mode", ", ".join(config.MERGAN_MODES))
    if values["ewc_fisher"] not in ("empirical", "sampled"):
        bad("ewc_fisher", "empirical, sampled")
    if values["rwalk_fisher_update_after"] <= 0:
        bad("rwalk_fisher_update_after", "a positive integer")
    if values["icarl_memory"] <= 0:
        bad("icarl_memory", "a positive integer")
    if values["memory_per_class"] < 0:
        bad("memory_per_class", "0 or a positive integer")
    for name in ("ewc_lambda", "si_c", "si_xi", "rwalk_lambda", "alignment_weight"):
        if not values[name] >= 0:
            bad(name, "a number >= 0")
    for name in ("ewc_gamma", "rwalk_alpha"):
        if not 0 <= values[name] <= 1:
            bad(name, "a number in [0, 1]")
    for name in ("classes_per_task", "epochs_per_task", "batch_size", "replay_batch_size"):
        if values[name] <= 0:
            bad(name, "a positive integer")
    for name in ("steps_per_task", "replay_per_class", "checkpoint_every"):
        if values[name] < 0:
            bad(name, "0 or a positive integer")
    for name in ("ngf",):
        if values[name] is not None and values[name] <= 0:
            bad(name, "a positive integer")
    for name in ("g_lr", "d_lr", "c_lr", "s_max"):
        if values[name] is not None and not values[name] > 0:
            bad(name, "a positive number")
    for name in ("gp_weight", "ac_weight", "sparsity_weight"):
        if values[name] is not None and not values[name] >= 0:
            bad(name, "a number >= 0")
    for name in ("beta_1", "beta_2"):
        if not 0 <= values[name] < 1:
            bad(name, "a number in [0, 1)")
    divisors = config.task_split_divisors(values["dataset"])
    if values["classes_per_task"] not in divisors:
        bad("classes_per_task", f"a divisor of the {max(divisors)} classes of {values['dataset']}: "
            + ", ".join(map(str, divisors)))
    if config.validation_percent(values["validation_fraction"]) is None:
        bad("validation_fraction", "a whole percent in [0, 1), e.g. 0.15")
    data_dir = values["data_dir"]
    if os.path.exists(data_dir) and (not os.path.isdir(data_dir) or not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK)):
        bad("data_dir", "a readable and writable folder (or a path that can be created)")
    data_parent = next(p for p in _ancestors(data_dir) if os.path.exists(p))
    if not os.path.isdir(data_parent):
        bad("data_dir", f"a path under a folder ({data_parent!r} is a file)")
    for name in ("workdir", "export_dir"):
        path = values[name]
        if os.path.exists(path) and not os.path.isdir(path):
            bad(name, "a folder (this path is a file)")
        parent = next(p for p in _ancestors(path) if os.path.exists(p))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            bad(name, f"a path under a writable folder ({parent!r} is not one)")


def _ancestors(path):
    path = os.path.abspath(path)
    while True:
        yield path
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def resolve(values: dict, given=()) -> tuple[dict, dict]:
    """The run's values and where each came from.

    Three layers, the later winning: the defaults (``config.HyperParams`` and the flag
    definitions), the settings file of (dataset, settings key) (``dgm_keras/settings.py``), and
    the flags in ``given`` (what the user typed, flagfiles included). Then the defaults that
    depend on other values (the method's AC weight, paths, the run name). Returns
    ``(values, {"file": ..., "sources": {flag: "default" | file | "command line"}})``."""
    values = dict(values)
    sources = {name: "command line" if name in given else "default" for name in values}
    file = None
    if values["dataset"] in config.DATASETS and values["method"] in config.METHOD_NAMES:
        key = values.get("settings") or values["method"]
        try:
            loaded = settings.load(values["dataset"], key)
        except settings.SettingsError as err:
            raise FlagError(str(err)) from None
        file = settings.relative(settings.path(values["dataset"], key))
        method_in_file = loaded["method"][0]
        if "method" in given and values["method"] != method_in_file:
            raise FlagError(f"--method={values['method']!r} is not allowed with --settings={key!r}; allowed: "
                            f"--method={method_in_file} (what {file} is for), or no --method")
        for name, (raw, where) in loaded.items():
            if name not in values:
                raise FlagError(f"{where}: --{name} is not a flag of dgm_keras.train")
            if name in given:
                continue
            try:
                values[name] = raw if isinstance(raw, bool) else FLAGS[name].parser.parse(raw)
            except ValueError as err:
                raise FlagError(f"{where}: --{name}={raw} is not allowed: {err}") from None
            sources[name] = where.rsplit(":", 1)[0]
    if values["steps_per_task"] > 0:
        if "epochs_per_task" in given and "steps_per_task" in given:
            raise FlagError(f"--epochs_per_task={values['epochs_per_task']} and --steps_per_task={values['steps_per_task']} "
                            "are not allowed together; allowed: one of them (steps replace epochs)")
        # What runs: one pass of steps_per_task steps a task (base.ContinualMethod.task_steps).
        values["epochs_per_task"] = 1
        sources["epochs_per_task"] = "implied by --steps_per_task (one pass of that many steps)"
    if values.get("ac_weight") is None:
        values["ac_weight"] = config.default_ac_weight(values["method"], values["classes_per_task"])
        sources["ac_weight"] = f"default of {values['method']} with {values['classes_per_task']} class(es) a task"
    values["data_dir"] = values["data_dir"] or config.default_data_dir()
    values["run_name"] = values["run_name"] or (
        f"{values['dataset']}_{values['method']}_{values['classes_per_task']}cpt_seed{values['seed']}")
    values["workdir"] = values["workdir"] or os.path.join("runs", values["run_name"])
    return values, {"file": file, "sources": sources}


def describe_settings(values: dict, origin: dict) -> str:
    """What the run takes from its settings file and from the command line, for the first lines it prints."""
    def listed(source):
        names = [n for n, s in origin["sources"].items() if s == source and n in HYPERPARAMETER_FLAGS]
        return " ".join(f"{n}={values[n]}" for n in names) or "nothing"

    lines = [f"train: {values['dataset']}, {values['method']}, {values['classes_per_task']} class(es) a task; "
             f"settings {origin['file']}"]
    if origin["file"]:
        lines.append(f"  from {origin['file']}: {listed(origin['file'])}")
    lines.append(f"  from the command line: {listed('command line')}")
    return "\n".join(lines)


def use_xla(setting: str) -> bool:
    """XLA where it measures faster: on GPUs; on this CPU at DGM's widths it was about 3x slower."""
    if setting != "auto":
        return setting == "true"
    import tensorflow as tf  # noqa: PLC0415

    return bool(tf.config.list_physical_devices("GPU"))


FLAG_NAMES = ("dataset", "method", "settings", "classes_per_task", "class_order", "validation_fraction", "epochs_per_task",
              "steps_per_task", "batch_size", "checkpoint_every", "data_dir", "source", "workdir", "export_dir", "run_name", "seed", "jit_compile",
              "resume_from", "restart",
              "ngf", "g_lr", "d_lr", "beta_1", "beta_2", "gp_weight", "d_norm", "sparsity_weight", "mask_init", "s_max", "ac_weight",
              "mask_gradient", "classifier", "classifier_steps", "classifier_data", "c_lr", "generator_bn", "replay", "replay_batch_size", "replay_per_class", "reinit_discriminator", "memory_per_class", "ewc_lambda",
              "ewc_gamma", "ewc_fisher", "si_c", "si_xi", "rwalk_lambda", "rwalk_alpha", "rwalk_fisher_update_after", "icarl_memory", "mergan_mode",
              "alignment_weight", "strategy", "cpu_replicas")
# The flags that change what is learned (not where it is written or on which devices).
HYPERPARAMETER_FLAGS = tuple(n for n in FLAG_NAMES if n not in (
    "settings", "data_dir", "source", "workdir", "export_dir", "run_name", "checkpoint_every", "strategy", "cpu_replicas", "jit_compile",
    "resume_from", "restart"))


def check_run_flags(values: dict) -> None:
    """--resume_from and --restart, then whether the run's folders can be written (a probe file
    written and removed: a folder that passes check_flags may still refuse, e.g. under /sys)."""
    from dgm_keras import runfolders  # noqa: PLC0415 (no TensorFlow in it)

    if values["resume_from"] not in ("latest", "previous"):
        raise FlagError(f"--resume_from={values['resume_from']!r} is not allowed; allowed: latest, previous")
    if values["restart"] and values["resume_from"] != "latest":
        raise FlagError(f"--resume_from={values['resume_from']!r} is not allowed with --restart; allowed: latest")
    try:
        runfolders.probe_writable(values["workdir"], "workdir")
        runfolders.probe_writable(os.path.join(values["export_dir"], values["run_name"]), "export_dir")
    except runfolders.FolderError as err:
        raise FlagError(str(err)) from None


def main(argv):
    if len(argv) > 1:
        sys.exit(f"train: unexpected arguments {argv[1:]}; pass everything as --flags")
    try:
        values, origin = resolve({name: FLAGS[name].value for name in FLAG_NAMES},
                                 given={name for name in FLAG_NAMES if FLAGS[name].present})
        check_flags(values)
        check_run_flags(values)
    except FlagError as err:
        sys.exit(f"train: {err}")
    print(describe_settings(values, origin), flush=True)
    try:
        start(values, origin)
    except KeyboardInterrupt:
        from dgm_keras import checkpointing  # noqa: PLC0415

        sys.exit(f"train: interrupted; {checkpointing.resume_point(values['workdir'])}; rerun the same command to resume")


def start(values: dict, origin: dict) -> None:
    """Everything after the flags: TensorFlow, the data, the run."""
    import keras  # noqa: PLC0415 (after the flags: a bad flag fails in a second, not after TF's import)
    import tensorflow as tf  # noqa: PLC0415

    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")

    from dgm_keras import checkpointing, data, distribution, runfolders, runner  # noqa: PLC0415

    if values["cpu_replicas"]:
        distribution.use_cpu_replicas(values["cpu_replicas"])  # before anything initialises the devices

    keras.utils.set_random_seed(values["seed"])
    hp = config.HyperParams(**{f.name: values[f.name] for f in dataclasses.fields(config.HyperParams)
                               if f.name in values and f.name != "jit_compile"},
                            jit_compile=use_xla(values["jit_compile"]))
    cfg = runner.RunConfig(
        dataset=values["dataset"], method=values["method"], classes_per_task=values["classes_per_task"],
        class_order=values["class_order"], validation_fraction=values["validation_fraction"],
        data_dir=values["data_dir"], workdir=values["workdir"], export_dir=values["export_dir"],
        run_name=values["run_name"], hp=hp, flags=values, settings=origin, checkpoint_every=values["checkpoint_every"],
        strategy=values["strategy"], resume_from=values["resume_from"], restart=values["restart"],
        source=values["source"])
    try:
        runner.run(cfg)
    except (data.DataError, checkpointing.CheckpointError, runner.TrainingDiverged, runfolders.FolderError) as err:
        sys.exit(f"train: {err}")


def check_flagfiles(argv: list[str]) -> None:
    """absl's own error for an unknown flag in a --flagfile names neither the file nor the line."""
    for arg in argv[1:]:
        if arg.startswith("--flagfile="):
            for name, (_, where) in settings.read_flagfile(arg.split("=", 1)[1]).items():
                if name not in FLAGS:
                    raise FlagError(f"{where}: --{name} is not a flag of dgm_keras.train (--helpfull lists them)")


if __name__ == "__main__":
    try:
        check_flagfiles(sys.argv)
    except (FlagError, settings.SettingsError) as err:
        sys.exit(f"train: {err}")
    app.run(main)
