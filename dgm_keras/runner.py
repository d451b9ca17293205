"""The class-incremental experiment: scenario -> method -> task loop -> evaluation, logs, exports.

``run`` is what ``python -m dgm_keras.train`` calls once its flags are checked.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import time

import numpy as np
import tensorflow as tf

from dgm_keras import checkpointing, data, distribution, evaluation, export, monitoring
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
    return {
        "complete": False, "method": cfg.method, "scenario": scenario.to_dict(), "flags": cfg.flags,
        "settings": cfg.settings, "hyperparameters": dataclasses.asdict(hp), "versions": package_versions(),
        "counts": {"train": len(splits.train.labels), "test": len(splits.test.labels),
                   "validation": 0 if splits.validation is None else len(splits.validation.labels)},
        "accuracy_matrix": [], "A_t": [], "per_class_accuracy": [],
        "accuracy_matrix_selected": [], "A_t_selected": [],
        # Accuracy on the real validation split of the seen classes: the model as the task ends,
        # and the best epoch's (the one the selected figures score). Settings are chosen on these.
        "A_t_validation": [], "A_t_validation_selected": [],
        "task_seconds": [], "checkpoint_seconds": [], "exports": [], "resumed_at": [],
    }


def run(cfg: RunConfig, log=print) -> dict:
    """The task loop. Rerunning the same command after a kill resumes from ``<workdir>/checkpoints``.

    All of it runs in ``cfg.strategy``'s scope, so that every network, trainer and optimizer the
    method makes (at its start and at each task's) holds distributed variables. The strategy is
    made first: MultiWorkerMirroredStrategy must exist before TensorFlow runs anything."""
    with distribution.make_strategy(cfg.strategy).scope():
        return _run_tasks(cfg, log)


def _run_tasks(cfg: RunConfig, log) -> dict:
    ckpts = checkpointing.RunCheckpoints(cfg.workdir, run_identity(cfg))
    state = ckpts.load()  # before anything is written: a foreign or corrupt checkpoint stops here
    results_path = os.path.join(cfg.workdir, "results.json")
    if state and state.get("complete"):
        if not _is_complete(results_path):  # killed between the last checkpoint and results.json
            atomic_write_json(results_path, state["results"])
        log(f"{cfg.workdir} holds a complete run; results: {results_path}")
        return state["results"]
    data.ensure_prepared(cfg.dataset, cfg.data_dir)
    names = data.label_names(cfg.dataset, cfg.data_dir)
    scenario = data.make_scenario(cfg.dataset, cfg.classes_per_task, cfg.class_order, cfg.hp.seed, names)
    splits = data.load_scenario_data(scenario, cfg.data_dir, cfg.validation_fraction)
    spec = data.get_spec(cfg.dataset)
    method = make_method(cfg.method, scenario, spec.channels, cfg.hp)
    export_root = os.path.join(cfg.export_dir, cfg.run_name)

    def task_data(task):
        return splits.train.of_classes(scenario.task_classes(task))

    def lasting():
        return {**method.trackables(), "keras_global_seed": checkpointing.global_seed_state()}

    results = fresh_results(cfg, scenario, splits, method.hp)
    first_task = 0
    resume = None  # the step checkpoint to resume within ``first_task``
    if state:
        if state["step"]:  # read in full now, so a damaged one stops the run before anything is written
            ckpts.verify(state["step"]["checkpoint"])
        if state["task_done"] >= 0:
            method.set_state(state["method_state"], task_data)
            ckpts.restore(lasting(), state["task_checkpoint"])
            results = state["results"]
        first_task = state["task_done"] + 1
        resume = state["step"] if state["step"] and state["step"]["task"] == first_task else None
        where = f"task {first_task + 1}" + (f", step {resume['step']}" if resume else "")
        results["resumed_at"].append(where)
        log(f"resuming {cfg.workdir} at {where}")
    os.makedirs(cfg.workdir, exist_ok=True)
    writer = tf.summary.create_file_writer(os.path.join(cfg.workdir, "tb"))

    step = 0  # run-wide step axis of the TensorBoard losses
    for task in range(first_task):
        epochs, steps = method.steps_for(len(task_data(task).labels))
        step += epochs * steps
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
        try:
            losses = method.train_task(task, train, callbacks, start_step=start_step)
        except checkpointing.NonFiniteLoss as err:
            kept = ckpts.state["step"] or {}
            last = (f"task {kept['task'] + 1} step {kept['step']}" if kept else
                    f"end of task {ckpts.state['task_done'] + 1}" if ckpts.state["task_done"] >= 0 else "none yet")
            raise TrainingDiverged(f"task {task + 1}: {err}; the run stopped and its last good checkpoint ({last}) "
                                   f"is kept in {ckpts.directory}; lower the learning rates or check the data") from None
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

        exported = {"classifier": export.export_classifier(
            method.classifier_model(), method.classifier(), scenario, task, spec.channels,
            os.path.join(export_root, "classifier"))}
        samples = None
        gen = method.generator()
        if gen is not None:
            exported["generator"] = export.export_generator(gen, scenario, task, os.path.join(export_root, "generator"))
            labels = np.repeat(np.arange(scenario.seen_classes(task)), cfg.samples_per_class)
            samples = method.sample(labels, seed=cfg.hp.seed)
        results["exports"].append(exported)
        monitoring.log_task(writer, task, strict["accuracy"], results["accuracy_matrix"], results["method_report"],
                            samples, cfg.samples_per_class, results["method_report"].get("reserved_fraction_last"))
        results["complete"] = task == scenario.num_tasks - 1
        results["checkpoint_seconds"].append(round(ckpts.seconds - ckpt_before, 2))
        ckpts.save_task(task, lasting(), method.state(), results)
        results["checkpoint_seconds"][-1] = round(ckpts.seconds - ckpt_before, 2)  # with the task-end save
        atomic_write_json(results_path, results)
        log(f"task {task + 1}/{scenario.num_tasks}: A_{scenario.seen_classes(task)} = {100 * strict['accuracy']:.2f} "
            f"(selected {100 * selected['accuracy']:.2f}) in {results['task_seconds'][-1]:.1f} s")

    log(evaluation.format_table(results["accuracy_matrix"], results["A_t"], "Accuracy (%), strict: the model as each task ends"))
    log(evaluation.format_table(results["accuracy_matrix_selected"], results["A_t_selected"],
                                "Accuracy (%), selected: best epoch on real validation data of seen classes"))
    log(f"A_{scenario.num_classes} strict {100 * results['A_t'][-1]:.2f}, selected {100 * results['A_t_selected'][-1]:.2f}; "
        f"forgetting {100 * results['forgetting']:.2f}, backward transfer {100 * results['backward_transfer']:.2f}")
    log(f"results: {results_path}; exports: {export_root}")
    return results
