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

from dgm_keras import data, evaluation, export, monitoring
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
    flags: dict  # every flag as given, for results.json
    samples_per_class: int = 8


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


def run(cfg: RunConfig, log=print) -> dict:
    data.ensure_prepared(cfg.dataset, cfg.data_dir)
    names = data.label_names(cfg.dataset, cfg.data_dir)
    scenario = data.make_scenario(cfg.dataset, cfg.classes_per_task, cfg.class_order, cfg.hp.seed, names)
    splits = data.load_scenario_data(scenario, cfg.data_dir, cfg.validation_fraction)
    spec = data.get_spec(cfg.dataset)
    method = make_method(cfg.method, scenario, spec.channels, cfg.hp)
    os.makedirs(cfg.workdir, exist_ok=True)
    writer = tf.summary.create_file_writer(os.path.join(cfg.workdir, "tb"))
    export_root = os.path.join(cfg.export_dir, cfg.run_name)

    results = {
        "complete": False, "method": cfg.method, "scenario": scenario.to_dict(), "flags": cfg.flags,
        "hyperparameters": dataclasses.asdict(cfg.hp), "versions": package_versions(),
        "counts": {"train": len(splits.train.labels), "test": len(splits.test.labels),
                   "validation": 0 if splits.validation is None else len(splits.validation.labels)},
        "accuracy_matrix": [], "A_t": [], "per_class_accuracy": [],
        "accuracy_matrix_selected": [], "A_t_selected": [],
        "task_seconds": [], "exports": [],
    }
    results_path = os.path.join(cfg.workdir, "results.json")
    step = 0
    for task in range(scenario.num_tasks):
        train = splits.train.of_classes(scenario.task_classes(task))
        start = time.time()
        method.begin_task(task, train)
        callbacks = [monitoring.LossLogger(writer, step)]
        selector = None
        if splits.validation is not None:
            selector = monitoring.ValidationSelector(method.classifier, splits.validation, splits.test, scenario, task)
            callbacks.append(selector)
        losses = method.train_task(task, train, callbacks)
        epochs, steps = method.steps_for(len(train.labels))
        step += epochs * steps
        method.end_task(task)
        results["task_seconds"].append(round(time.time() - start, 2))

        strict = evaluation.evaluate_after_task(method.classifier(), splits.test, scenario, task)
        selected = selector.best if selector is not None and selector.best is not None else strict
        results["accuracy_matrix"].append(strict["per_task"])
        results["A_t"].append(strict["accuracy"])
        results["per_class_accuracy"].append(strict["per_class"])
        results["accuracy_matrix_selected"].append(selected["per_task"])
        results["A_t_selected"].append(selected["accuracy"])
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
        atomic_write_json(results_path, results)
        log(f"task {task + 1}/{scenario.num_tasks}: A_{scenario.seen_classes(task)} = {100 * strict['accuracy']:.2f} "
            f"(selected {100 * selected['accuracy']:.2f}) in {results['task_seconds'][-1]:.1f} s")

    results["complete"] = True
    atomic_write_json(results_path, results)
    log(evaluation.format_table(results["accuracy_matrix"], results["A_t"], "Accuracy (%), strict: the model as each task ends"))
    log(evaluation.format_table(results["accuracy_matrix_selected"], results["A_t_selected"],
                                "Accuracy (%), selected: best epoch on real validation data of seen classes"))
    log(f"A_{scenario.num_classes} strict {100 * results['A_t'][-1]:.2f}, selected {100 * results['A_t_selected'][-1]:.2f}; "
        f"forgetting {100 * results['forgetting']:.2f}, backward transfer {100 * results['backward_transfer']:.2f}")
    log(f"results: {results_path}; exports: {export_root}")
    return results
