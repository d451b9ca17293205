"""The class-incremental experiment: scenario -> method -> task loop -> evaluation, logs, exports.

``run`` is what ``python -m dgm_keras.train`` calls once its flags are checked.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import time
import uuid

import numpy as np
import tensorflow as tf

from dgm_keras import (checkpointing, chunks, data, distribution, evaluation, export, gan, monitoring, progress, provenance,
                       runfolders)
from dgm_keras.methods import base, make_method

PACKAGES = ("tensorflow", "keras", "tensorflow-datasets", "tensorboard", "absl-py", "numpy")


@dataclasses.dataclass
class RunConfig:
    dataset: str
    method: str
    classes_per_task: int
    class_order: str
    validation_fraction: float
    data_dir: str
    workdir: str
    export_dir: str
    run_name: str
    hp: base.HyperParams
    flags: dict  # every flag as the run resolved it, for results.json
    settings: dict = dataclasses.field(default_factory=dict)  # the settings file and each flag's source (train.resolve)
    samples_per_class: int = 8
    checkpoint_every: int = 200  # steps between checkpoints within a task; 0: only at task ends
    strategy: str = "default"  # config.STRATEGIES; not part of a run's identity: a run may resume under another
    resume_from: str = "latest"  # or "previous": the checkpoint before the newest (when that one is damaged)
    restart: bool = False  # set the old run's files aside (never deleted) and start over
    source: str | None = None  # a local copy of the dataset to prepare from when data_dir lacks it
    progress: str = "auto"  # progress.MODES: a bar on a terminal, a line a task otherwise


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def atomic_write_json(path: str, payload: dict) -> None:
    """Write to a temporary name, then rename: a kill never leaves half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _is_complete(results_path: str) -> bool:
    try:
        with open(results_path) as f:
            return bool(json.load(f).get("complete"))
    except (OSError, ValueError):
        return False


class TrainingDiverged(RuntimeError):
    """A NaN or Inf loss: the run stops; the last good checkpoint stays as it was."""


def run_identity(cfg: RunConfig) -> dict:
    """What a checkpoint must agree on to be resumed by this run (not paths, not XLA)."""
    hp = {k: v for k, v in dataclasses.asdict(cfg.hp).items() if k != "jit_compile"}
    return {"dataset": cfg.dataset, "method": cfg.method, "classes_per_task": cfg.classes_per_task,
            "class_order": cfg.class_order, "validation_fraction": cfg.validation_fraction, **hp}


def fresh_results(cfg: RunConfig, scenario, splits, hp) -> dict:
    """``hp``: the hyperparameters as the method runs them (its defaults filled)."""
    hyperparameters = dataclasses.asdict(hp)
    return {
        "complete": False, "method": cfg.method, "scenario": scenario.to_dict(),
        "units": provenance.UNITS,
        "started_at": provenance.now(), "finished_at": None, "code_version": provenance.code_version(),
        # Each value once: the hyperparameters as the method ran them (its defaults filled, jit_compile
        # as resolved), and the flags that are not hyperparameters (scenario, paths, devices) as resolved.
        "flags": {k: v for k, v in cfg.flags.items() if k not in hyperparameters},
        "settings": cfg.settings, "hyperparameters": hyperparameters, "versions": package_versions(),
        "counts": {"train": len(splits.train.labels), "test": len(splits.test.labels),
                   "validation": 0 if splits.validation is None else len(splits.validation.labels)},
        "accuracy_matrix": [], "A_t": [], "per_class_accuracy": [],
        "accuracy_matrix_selected": [], "A_t_selected": [],
        # Accuracy on the real validation split of the seen classes: the model as the task ends,
        # and the best epoch's (the one the selected figures score). Settings are chosen on these.
        "A_t_validation": [], "A_t_validation_selected": [],
        "task_seconds": [], "checkpoint_seconds": [], "exports": [], "resumed_at": [],
        "warnings": [],  # e.g. a task that ended near chance on its own classes (evaluation.near_chance)
    }


def _resume_point(ckpts: checkpointing.RunCheckpoints, state: dict, resume_from: str, log) -> dict:
    """The state to resume from: the newest, or with ``--resume_from=previous`` the one before.
    Reads every checkpoint it names (nothing is written): a damaged newest checkpoint stops the
    run with one line, which offers the previous one when that is readable."""
    previous = state.get("previous")
    if resume_from == "previous":
        if not previous:
            raise checkpointing.CheckpointError(
                f"--resume_from=previous: {ckpts.state_path} records no checkpoint before the newest "
                f"({checkpointing.describe(state)}); rerun without --resume_from, {checkpointing.RESTART}")
        ckpts.verify_state(previous, remedy=f"no older one is kept; use another --workdir, {checkpointing.RESTART}")
        log(f"resuming from the previous checkpoint ({checkpointing.describe(previous)}) as --resume_from=previous asks; "
            f"the newest ({checkpointing.describe(state)}) is not used and will be overwritten")
        return ckpts.use(previous)
    try:
        ckpts.verify_state(state)
    except checkpointing.CheckpointError:
        if not ckpts.usable(previous):
            raise
        ckpts.verify_state(state, remedy=f"rerun with --resume_from=previous to resume from the checkpoint before it "
                                         f"({checkpointing.describe(previous)}), {checkpointing.RESTART}")
        raise
    return state


FULL_MASK_WARNING = 0.99  # share of the free weights a DGM task's masks keep, at and above which it is warned


def run(cfg: RunConfig, log=print) -> dict:
    """The task loop. Rerunning the same command after a kill resumes from ``<workdir>/checkpoints``.

    All of it runs in ``cfg.strategy``'s scope, so that every network, trainer and optimizer the
    method makes (at its start and at each task's) holds distributed variables. The strategy is
    made first: MultiWorkerMirroredStrategy must exist before TensorFlow runs anything."""
    writers = []  # closed however the run ends, so TensorBoard's files are complete after a stop
    try:
        with distribution.make_strategy(cfg.strategy).scope():
            return _run_tasks(cfg, log, writers)
    finally:
        for writer in writers:
            writer.close()


def _run_tasks(cfg: RunConfig, log, writers: list) -> dict:
    identity = run_identity(cfg)
    ckpts = checkpointing.RunCheckpoints(cfg.workdir, identity)
    export_root = os.path.join(cfg.export_dir, cfg.run_name)
    if cfg.restart:
        for path, flag in ((cfg.workdir, "workdir"), (export_root, "export_dir")):
            runfolders.probe_writable(path, flag)
        try:
            moved = runfolders.set_aside(cfg.workdir, export_root, runfolders.recorded_run_id(ckpts.state_path))
        except OSError as err:
            raise runfolders.FolderError(f"--restart: setting the old run aside failed ({type(err).__name__}: {err})") from None
        log(f"--restart: the old run's files are set aside in {' and '.join(moved)}" if moved else
            "--restart: nothing to set aside; starting a fresh run")
        state = None
    else:
        state = ckpts.load()  # before anything is written: a foreign or corrupt checkpoint stops here
    results_path = os.path.join(cfg.workdir, "results.json")
    if state and state.get("complete"):
        if not _is_complete(results_path):  # killed between the last checkpoint and results.json
            atomic_write_json(results_path, state["results"])
        log(f"{cfg.workdir} holds a complete run; results: {results_path}")
        return state["results"]
    if state:
        state = _resume_point(ckpts, state, cfg.resume_from, log)
    elif cfg.resume_from == "previous":
        raise checkpointing.CheckpointError(f"--resume_from=previous: {ckpts.directory} holds no checkpoint to resume; "
                                            "rerun without --resume_from")
    # The export folder: this run's, or free; then both folders writable. All before training.
    runfolders.check_export_folder(export_root, ckpts.run_id, identity, resuming=bool(state))
    for path, flag in ((cfg.workdir, "workdir"), (export_root, "export_dir")):
        runfolders.probe_writable(path, flag)
    data.ensure_prepared(cfg.dataset, cfg.data_dir, cfg.source)
    names = data.label_names(cfg.dataset, cfg.data_dir)
    scenario = data.make_scenario(cfg.dataset, cfg.classes_per_task, cfg.class_order, cfg.hp.seed, names)
    splits = data.load_scenario_data(scenario, cfg.data_dir, cfg.validation_fraction)
    spec = data.get_spec(cfg.dataset)
    method = make_method(cfg.method, scenario, spec.channels, cfg.hp)

    def task_data(task):
        return splits.train.of_classes(scenario.task_classes(task))

    def lasting():
        return {**method.trackables(), "keras_global_seed": checkpointing.global_seed_state()}

    results = fresh_results(cfg, scenario, splits, method.hp)
    first_task = 0
    resume = None  # the step checkpoint to resume within ``first_task``
    if state:
        if state["task_done"] >= 0:
            method.set_state(state["method_state"], task_data)
            ckpts.restore(lasting(), state["task_checkpoint"])
            results = state["results"]
            results.setdefault("warnings", [])
        first_task = state["task_done"] + 1
        resume = state["step"] if state["step"] and state["step"]["task"] == first_task else None
        where = f"task {first_task + 1}" + (f", step {resume['step']}" if resume else "")
        results["resumed_at"].append(where)
        log(f"resuming {cfg.workdir} at {where}")
    os.makedirs(cfg.workdir, exist_ok=True)
    if ckpts.run_id is None:  # a fresh run (or one checkpointed before runs had ids): record its id first
        ckpts.run_id = uuid.uuid4().hex
        ckpts.write_state(ckpts.state)
    writer = tf.summary.create_file_writer(os.path.join(cfg.workdir, "tb"))
    writers.append(writer)
    monitoring.log_run(writer, results, cfg.run_name)
    resuming = bool(state)

    def finish(task):
        """Exports the checkpointed task, then records it: a failed export costs no training. The
        export folder is claimed at the first export (checked again: another run may have taken it
        since this one started)."""
        try:
            runfolders.check_export_folder(export_root, ckpts.run_id, identity, resuming)
        except runfolders.FolderError as err:
            raise runfolders.FolderError(f"task {task + 1}: {err}; the task is checkpointed: rerun with that done "
                                         "to export it and continue") from None
        try:
            runfolders.claim_export_folder(export_root, ckpts.run_id, identity, cfg.workdir)
            exported = {"classifier": export.export_classifier(
                method.classifier_model(), method.classifier(), scenario, task, spec.channels,
                os.path.join(export_root, "classifier"))}
            gen = method.generator()
            if gen is not None:
                exported["generator"] = export.export_generator(gen, scenario, task, os.path.join(export_root, "generator"))
        except (OSError, tf.errors.OpError) as err:
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise runfolders.FolderError(f"task {task + 1}: exporting to {export_root} failed ({type(err).__name__}: "
                                         f"{reason}); the task is checkpointed: rerun the same command to export it "
                                         "and continue") from None
        samples = None
        if gen is not None:
            labels = np.repeat(np.arange(scenario.seen_classes(task)), cfg.samples_per_class)
            samples = method.sample(labels, seed=cfg.hp.seed)
        results["exports"].append(exported)
        monitoring.log_task(writer, task, results, samples, cfg.samples_per_class)
        results["complete"] = task == scenario.num_tasks - 1
        if results["complete"]:
            results["finished_at"] = provenance.now()
        ckpts.mark_exported(results)
        atomic_write_json(results_path, results)

    if state and state["task_done"] >= 0 and state.get("exported") is False:
        log(f"task {state['task_done'] + 1} was checkpointed but not exported; exporting it now")
        finish(state["task_done"])

    task_total = method.planned_steps([len(task_data(t).labels) for t in range(scenario.num_tasks)])
    step = sum(task_total[:first_task])  # run-wide step axis of the TensorBoard losses and the progress
    clock = progress.RunClock(sum(task_total), step + (resume["step"] if resume else 0))
    show = progress.resolve_mode(cfg.progress)
    for warning in gan.unreached_decays(cfg.method, cfg.hp, min(task_total), cfg.settings.get("sources", {})):
        log(warning)
        if warning not in results["warnings"]:  # once, however often the run is resumed
            results["warnings"].append(warning)
    for task in range(first_task, scenario.num_tasks):
        train = task_data(task)
        start = time.time()
        ckpt_before = ckpts.seconds
        method.begin_task(task, train)
        epochs, steps = method.task_steps(train)
        selector = None
        if splits.validation is not None:
            selector = monitoring.ValidationSelector(method.classifier, splits.validation, splits.test, scenario, task)
        start_step, earlier_seconds = 0, 0.0
        if resume is not None:
            ckpts.restore({**lasting(), **method.step_trackables()}, resume["checkpoint"])
            start_step, earlier_seconds = resume["step"], resume["seconds"]
            if selector is not None and resume["selector"] is not None:
                selector.best_val, selector.best = resume["selector"]
            resume = None

        def save_step(at, task=task, start=start, earlier=earlier_seconds, selector=selector):
            ckpts.save_step(task, at, {**lasting(), **method.step_trackables()}, {
                "seconds": earlier + time.time() - start,
                "selector": None if selector is None or selector.best is None else [selector.best_val, selector.best]})

        callbacks = [monitoring.LossLogger(writer, step + start_step)]
        callbacks += [selector] if selector is not None else []
        callbacks.append(checkpointing.StepCheckpointer(cfg.checkpoint_every, save_step, start_step, steps, epochs * steps))
        callbacks.append(progress.TaskProgress(task, scenario.num_tasks, epochs * steps, start_step, step, clock, show))
        try:
            # A chunk never spans more than the checkpoint interval: checkpoints at chunk ends
            # then fall on the interval's multiples wherever the interval divides the epoch.
            losses = method.train_task(task, train, callbacks, start_step=start_step, max_chunk=min(
                chunks.MAX_STEPS_PER_EXECUTION, cfg.checkpoint_every or chunks.MAX_STEPS_PER_EXECUTION))
        except checkpointing.NonFiniteLoss as err:
            if ckpts.state["step"] or ckpts.state["task_done"] >= 0:
                raise TrainingDiverged(
                    f"task {task + 1}: {err}; the run stopped and its last good checkpoint "
                    f"({checkpointing.describe(ckpts.state)}) is kept in {ckpts.directory}; rerunning resumes it as it is: "
                    "to lower the learning rates (--d_lr, --g_lr) add --restart, which sets this run aside and starts over, "
                    "or check the data") from None
            raise TrainingDiverged(f"task {task + 1}: {err}; the run stopped before its first checkpoint, so nothing "
                                   "is kept; lower the learning rates (--d_lr, --g_lr) or check the data, and rerun") from None
        step += epochs * steps
        method.end_task(task)
        results["task_seconds"].append(round(earlier_seconds + time.time() - start, 2))

        strict = evaluation.evaluate_after_task(method.classifier(), splits.test, scenario, task)
        selected = selector.best if selector is not None and selector.best is not None else strict
        results["accuracy_matrix"].append(strict["per_task"])
        results["A_t"].append(strict["accuracy"])
        results["per_class_accuracy"].append(strict["per_class"])
        results["accuracy_matrix_selected"].append(selected["per_task"])
        results["A_t_selected"].append(selected["accuracy"])
        if splits.validation is not None:  # what choices of settings are made on (never on test)
            results["A_t_validation"].append(
                evaluation.evaluate_after_task(method.classifier(), splits.validation, scenario, task)["accuracy"])
            results["A_t_validation_selected"].append(selector.best_val)
        results["last_losses"] = losses
        results.update({f"{k}": v for k, v in evaluation.summarise(results["accuracy_matrix"]).items()})
        results.update({f"{k}_selected": v for k, v in evaluation.summarise(results["accuracy_matrix_selected"]).items()})
        results["method_report"] = method.report()
        results["parameters"] = method.parameter_counts()
        weak = evaluation.class_near_chance(strict["per_class"], scenario.task_classes(task))
        if weak is not None:
            seen = scenario.seen_classes(task)
            warning = (f"warning: task {task + 1} ends near chance on its own class {scenario.class_names[weak]}: "
                       f"{100 * strict['per_class'][weak]:.2f}% (chance {100 * evaluation.chance_level(seen):.2f}% among "
                       f"the {seen} seen classes, warned at <= {evaluation.CHANCE_FACTOR}x); the training diverged, was "
                       "far too short, or cannot tell this class apart: try lower learning rates (--d_lr, --g_lr) or more steps")
            results["warnings"].append(warning)
            log(warning)
        if losses.get("sparsity", 0.0) >= FULL_MASK_WARNING:
            # DGM: no mask entry switched off, so the expansion doubles the free capacity: short tasks
            # (Adam moves an embedding about one learning rate a step, from --mask_init) grow the
            # generator geometrically and every later task is slower (CIFAR-10, 2 epochs a task: 30.8M
            # weights after 9 tasks; docs/RESULTS.md). Adam's step does not grow with the gradient, so a
            # larger --sparsity_weight cannot make up for too few steps.
            sizes = results["method_report"].get("generator_size_after_task") or [0]
            hp = method.hp
            warning = (f"warning: task {task + 1}'s masks kept {100 * losses['sparsity']:.0f}% of the generator's free "
                       f"weights (none learned to switch off in its {epochs * steps} steps), so the generator grew to "
                       f"{sizes[-1]:,} weights; an embedding starts at --mask_init={hp.mask_init:g} and moves about one "
                       f"learning rate ({hp.g_lr:g}) a step, so switching off takes at least "
                       f"{math.ceil(hp.mask_init / hp.g_lr)} steps: give each task more steps (--epochs_per_task, "
                       "--steps_per_task) or a lower --mask_init")
            results["warnings"].append(warning)
            log(warning)

        results["complete"] = False  # until the task is exported
        results["checkpoint_seconds"].append(round(ckpts.seconds - ckpt_before, 2))
        ckpts.save_task(task, lasting(), method.state(), results, exported=False)
        results["checkpoint_seconds"][-1] = round(ckpts.seconds - ckpt_before, 2)  # with the task-end save
        finish(task)
        # Test and validation side by side: settings are chosen on validation, so it is printed as well.
        on_validation = (f", validation {100 * results['A_t_validation'][-1]:.2f}" if splits.validation is not None else "")
        log(f"task {task + 1}/{scenario.num_tasks}: test A_{scenario.seen_classes(task)} = {100 * strict['accuracy']:.2f} "
            f"(selected {100 * selected['accuracy']:.2f}){on_validation} in {results['task_seconds'][-1]:.1f} s")

    log(evaluation.format_table(results["accuracy_matrix"], results["A_t"], "Accuracy (%), strict: the model as each task ends"))
    log(evaluation.format_table(results["accuracy_matrix_selected"], results["A_t_selected"],
                                "Accuracy (%), selected: best epoch on real validation data of seen classes"))
    log(f"A_{scenario.num_classes} strict {100 * results['A_t'][-1]:.2f}, selected {100 * results['A_t_selected'][-1]:.2f}; "
        f"forgetting {100 * results['forgetting']:.2f}, backward transfer {100 * results['backward_transfer']:.2f}")
    log(f"results: {results_path}; exports: {export_root}")
    return results
