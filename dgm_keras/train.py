"""Runs a class-incremental experiment end to end.

    python -m dgm_keras.train                                  # DGMw, MNIST, 10 tasks of one class
    python -m dgm_keras.train --method=dgma                    # DGMa (flags/mnist_dgma.cfg)
    python -m dgm_keras.train --dataset=cifar10 --classes_per_task=2

Every (dataset, method) pair runs with its settings file flags/<dataset>_<method>.cfg under
what you type. Every flag value is checked before anything is read or written; a bad one
ends the run with one line naming it and what is allowed. Outputs: <workdir>/results.json,
<workdir>/tb/ (TensorBoard), <export_dir>/<run_name>/{classifier,generator}/<task>/.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import logging

from dgm_keras import config, settings
from dgm_keras.train_flags import (FLAG_NAMES, FLAGS, HYPERPARAMETER_FLAGS, FlagError,  # noqa: F401 (the entry point's names)
                                   check_flags)

def resolve(values: dict, given=()) -> tuple[dict, dict]:
    """The run's values and where each came from.

    Three layers, the later winning: the defaults (``config.HyperParams`` and the flag
    definitions), the settings file of (dataset, settings key) (``dgm_keras/settings.py``), and
    the flags in ``given`` (what the user typed, flagfiles included: a set, or ``given_sources``'
    mapping to the file each came from). Then the defaults that depend on other values (the
    method's AC weight, paths, the run name). Returns
    ``(values, {"file": ..., "sources": {flag: "default" | file | "command line"}})``."""
    values = dict(values)
    named = given if isinstance(given, dict) else {}
    sources = {name: named.get(name, "command line") if name in given else "default" for name in values}
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
    for name, value in zip(("classifier_steps", "classifier_data"), config.default_classifier_pair(
            values["classes_per_task"], values["classifier"], values.get("classifier_steps"), values.get("classifier_data"))):
        if values.get(name) is None:
            values[name] = value
            sources[name] = f"default with {values['classes_per_task']} class(es) a task"
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
    given_files = sorted({s for s in origin["sources"].values()  # --flagfile ones (the others are labels, not files)
                          if s != origin["file"] and os.path.isfile(os.path.join(settings.ROOT, s))})
    lines += [f"  from {file} (--flagfile): {listed(file)}" for file in given_files]
    lines.append(f"  from the command line: {listed('command line')}")
    return "\n".join(lines)


def check_run_flags(values: dict) -> None:
    """Whether the run's folders can be written (a probe file written and removed: a folder
    that passes check_flags may still refuse, e.g. under /sys)."""
    from dgm_keras import runfolders  # noqa: PLC0415 (no TensorFlow in it)

    try:
        runfolders.probe_writable(values["workdir"], "workdir")
        runfolders.probe_writable(os.path.join(values["export_dir"], values["run_name"]), "export_dir")
    except runfolders.FolderError as err:
        raise FlagError(str(err)) from None


def main(argv):
    if len(argv) > 1:
        sys.exit(f"train: unexpected arguments {argv[1:]}; pass everything as --flags")
    try:
        typed = given_sources(sys.argv)
        values, origin = resolve({name: FLAGS[name].value for name in FLAG_NAMES},
                                 given={name: typed.get(name, "command line") for name in FLAG_NAMES if FLAGS[name].present})
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
    from dgm_keras import quiet  # noqa: PLC0415

    quiet.tensorflow_imported(show_all=values["tf_log"])  # after the flags: a bad flag fails in a second
    import keras  # noqa: PLC0415

    logging.set_verbosity(logging.INFO if values["tf_log"] else logging.WARNING)

    from dgm_keras import checkpointing, data, distribution, runfolders, runner  # noqa: PLC0415

    if values["cpu_replicas"]:
        distribution.use_cpu_replicas(values["cpu_replicas"])  # before anything initialises the devices

    keras.utils.set_random_seed(values["seed"])
    hp = config.HyperParams(**{f.name: values[f.name] for f in dataclasses.fields(config.HyperParams)
                               if f.name in values and f.name != "jit_compile"},
                            jit_compile=config.use_xla(values["jit_compile"]))
    cfg = runner.RunConfig(
        dataset=values["dataset"], method=values["method"], classes_per_task=values["classes_per_task"],
        class_order=values["class_order"], validation_fraction=values["validation_fraction"],
        data_dir=values["data_dir"], workdir=values["workdir"], export_dir=values["export_dir"],
        run_name=values["run_name"], hp=hp, flags=values, settings=origin, checkpoint_every=values["checkpoint_every"],
        strategy=values["strategy"], resume_from=values["resume_from"], restart=values["restart"],
        source=values["source"],
        progress=FLAGS.progress)
    try:
        runner.run(cfg)
    except (data.DataError, checkpointing.CheckpointError, runner.TrainingDiverged, runfolders.FolderError) as err:
        sys.exit(f"train: {err}")


def given_sources(argv: list[str]) -> dict[str, str]:
    """``{flag: where it was given}`` for the flags of ``argv``: the flagfile (nested ones
    included) a value came from, or "command line"; a later argument wins, as in absl. So a run
    of ``--flagfile=flags/cifar10_dgmw_long.cfg`` records its values as that file's, not as typed."""
    sources: dict[str, str] = {}
    for arg in argv[1:]:
        if arg.startswith("--flagfile="):
            for name, (_, where) in settings.read_flagfile(arg.split("=", 1)[1]).items():
                sources[name] = where.rsplit(":", 1)[0]
        elif arg.startswith("--"):
            name = arg[2:].split("=", 1)[0]
            if "=" not in arg and name.startswith("no") and name[2:] in FLAGS and name not in FLAGS:
                name = name[2:]
            sources[name] = "command line"
    return sources


def check_flagfiles(argv: list[str]) -> None:
    """absl's own error for an unknown flag in a --flagfile names neither the file nor the line."""
    for arg in argv[1:]:
        if arg.startswith("--flagfile="):
            for name, (_, where) in settings.read_flagfile(arg.split("=", 1)[1]).items():
                if name not in FLAGS:
                    raise FlagError(f"{where}: --{name} is not a flag of dgm_keras.train (--helpfull lists them)")


def run() -> None:
    """The command (``python -m dgm_keras.train``, or ``dgm-train`` once installed)."""
    from dgm_keras import cli, train_flags  # noqa: PLC0415

    try:
        check_flagfiles(sys.argv)
    except (FlagError, settings.SettingsError) as err:
        sys.exit(f"train: {err}")
    cli.run(main, "train", __doc__, train_flags.GROUPS)


if __name__ == "__main__":
    run()
