"""TensorBoard summaries and the callbacks that feed them; nothing here runs inside the step."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from dgm_keras import chunks, evaluation, figures


class LossLogger(chunks.ChunkCallback):
    """Writes the loss trackers' running means (over the epoch so far) at the first chunk end at
    or after every ``every``-th step, on a run-wide step axis; reads no tensor in between."""

    def __init__(self, writer, start_step: int, every: int = 10):
        super().__init__(start_step)
        self.writer, self.every = writer, every

    def reached(self, before, done, logs):
        if chunks.crossed(before, done, self.every):
            with self.writer.as_default(step=done):
                for name, value in self.losses(logs).items():
                    tf.summary.scalar(f"train/{name}", value)


class ValidationSelector(keras.callbacks.Callback):
    """The authors' protocol: score on test at the epoch with the best accuracy on *real*
    held-out data of every seen class (it peeks at past real data; reported beside the strict figure)."""

    def __init__(self, classifier_fn, validation, test, scenario, task):
        super().__init__()
        self.classifier_fn, self.validation, self.test = classifier_fn, validation, test
        self.scenario, self.task = scenario, task
        self.best_val, self.best = -1.0, None

    def on_epoch_end(self, epoch, logs=None):
        classify = self.classifier_fn()
        val = evaluation.evaluate_after_task(classify, self.validation, self.scenario, self.task)["accuracy"]
        if val > self.best_val:
            self.best_val = val
            self.best = evaluation.evaluate_after_task(classify, self.test, self.scenario, self.task)


def _grid(images: np.ndarray, rows: int) -> np.ndarray:
    """[R*C, H, W, ch] in [-1, 1] -> one [1, R*H, C*W, ch] image in [0, 1]."""
    n, h, w, c = images.shape
    cols = n // rows
    grid = images[: rows * cols].reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)
    return ((grid + 1.0) / 2.0)[None]


def _png_image(png: bytes):
    """PNG bytes as the [1, H, W, 4] batch ``tf.summary.image`` takes."""
    return tf.image.decode_png(png, channels=4)[None]


def _markdown_table(values: dict, header: str) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in values.items())
    return f"| {header} | value |\n|---|---|\n{rows}"


def log_run(writer, results: dict, run_name: str) -> None:
    """The run's flags, settings and hyperparameters: as text (TEXT tab) and for the HParams
    tab, whose table then compares runs of a logdir by them (with A_t as a metric)."""
    from tensorboard.plugins.hparams import api as hparams  # noqa: PLC0415

    with writer.as_default(step=0):
        tf.summary.text("run/flags", _markdown_table(results["flags"], "flag"))
        tf.summary.text("run/hyperparameters", _markdown_table(results["hyperparameters"], "hyperparameter"))
        origin = results.get("settings") or {}
        tf.summary.text("run/settings", f"settings file: {origin.get('file')}\n\n" + _markdown_table(
            {k: v for k, v in origin.get("sources", {}).items() if v != "default"}, "flag not at its default: from"))
        flat = {"method": results["method"], "dataset": results["scenario"]["dataset"],
                "classes_per_task": results["scenario"]["classes_per_task"]}
        flat.update({k: v for k, v in results["hyperparameters"].items() if isinstance(v, (bool, int, float, str))})
        hparams.hparams(flat, trial_id=run_name)
    writer.flush()


def log_task(writer, task: int, results: dict, samples: np.ndarray | None, samples_per_class: int) -> None:
    """Per-task summaries: A_t (strict, selected, on validation), forgetting and backward
    transfer so far, per-class accuracy, the accuracy matrix as a labelled heatmap, samples of
    every seen class, mask usage per layer and the generator's size."""
    step = task + 1
    report = results["method_report"]
    names = results["scenario"]["class_names"]
    with writer.as_default(step=step):
        tf.summary.scalar("eval/A_t", results["A_t"][task])
        tf.summary.scalar("eval/A_t_selected", results["A_t_selected"][task])
        if len(results["A_t_validation"]) > task:
            tf.summary.scalar("eval/A_t_validation", results["A_t_validation"][task])
        tf.summary.scalar("eval/forgetting", results["forgetting"])
        tf.summary.scalar("eval/backward_transfer", results["backward_transfer"])
        for label, accuracy in enumerate(results["per_class_accuracy"][task]):
            tf.summary.scalar(f"per_class/{label:02d}_{names[label]}", accuracy)
        tf.summary.image("eval/accuracy_matrix", _png_image(figures.png(figures.accuracy_heatmap(
            results["accuracy_matrix"], f"Accuracy (%) after task {step}, strict"))))
        if samples is not None:
            tf.summary.image("samples/all_seen_classes", _grid(samples, len(samples) // samples_per_class))
        for layer, used in (report.get("reserved_fraction_last") or {}).items():
            tf.summary.scalar(f"masks/reserved_fraction/{layer}", used)
        sizes = report.get("generator_size_after_task")
        if sizes:
            tf.summary.scalar("generator/size", sizes[-1])
    writer.flush()
