"""TensorBoard summaries and the callbacks that feed them; nothing here runs inside the step."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from dgm_keras import evaluation


class LossLogger(keras.callbacks.Callback):
    """Writes the step's logged losses every ``every`` batches, on a run-wide step axis."""

    def __init__(self, writer, start_step: int, every: int = 10):
        super().__init__()
        self.writer, self.step, self.every = writer, start_step, every

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if logs and self.step % self.every == 0:
            with self.writer.as_default(step=self.step):
                for name, value in logs.items():
                    tf.summary.scalar(f"train/{name}", float(value))


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


def _matrix_image(matrix, cell: int = 24) -> np.ndarray:
    n = len(matrix)
    img = np.zeros((n, n), np.float32)
    for i, row in enumerate(matrix):
        img[i, : len(row)] = row
    return np.kron(img, np.ones((cell, cell), np.float32))[None, :, :, None]


def log_task(writer, task: int, accuracy: float, matrix, report: dict, samples: np.ndarray | None,
             samples_per_class: int, mask_usage: dict[str, float] | None) -> None:
    """Per-task summaries: A_t, the accuracy matrix as an image, samples of every seen class,
    mask usage per layer and the generator's size."""
    step = task + 1
    with writer.as_default(step=step):
        tf.summary.scalar("eval/A_t", accuracy)
        tf.summary.image("eval/accuracy_matrix", _matrix_image(matrix))
        if samples is not None:
            tf.summary.image("samples/all_seen_classes", _grid(samples, len(samples) // samples_per_class))
        for layer, used in (mask_usage or {}).items():
            tf.summary.scalar(f"masks/reserved_fraction/{layer}", used)
        sizes = report.get("generator_size_after_task")
        if sizes:
            tf.summary.scalar("generator/size", sizes[-1])
    writer.flush()
