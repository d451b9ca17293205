"""Training in chunks of steps, and callbacks that act between chunks, never per batch.

``fit`` runs ``steps_per_execution`` steps in one call of the compiled train function and
returns to Python once per such chunk. Nothing of ours reads a tensor per step: callbacks
here (the loss logger, the step checkpointer, the progress bar) learn how many steps are
done from ``on_train_batch_begin``'s step index and ``on_epoch_end``, and read the loss
trackers' running means (``model.get_metrics_result()``) only when they need a value.

They never override ``on_train_batch_end``. With the TensorFlow backend Keras 3.15 never
dispatches callbacks asynchronously (``keras.src.backend.tensorflow.core.IS_THREAD_SAFE`` is
False) and converts the logs to Python floats at every train-function call whatever the
callbacks are (``CallbackList._on_train_batch_end`` -> ``pythonify_logs``); so the per-call
sync is bounded by the chunk size, not by the callbacks. Backends that are thread-safe (JAX)
turn async dispatch off as soon as one callback overrides ``on_train_batch_end``;
``check_callbacks`` refuses such a callback in every task's ``fit`` (``methods.base.fit_steps``).
"""

from __future__ import annotations

import math

import keras

# Steps per compiled call at most. Each chunk ends exactly on an epoch's end (see
# ``steps_per_execution``); 10 keeps the loss log, the NaN check and checkpoints within 10
# steps of where they fall due (docs/RESULTS.md, "Speed", for what larger chunks measured).
MAX_STEPS_PER_EXECUTION = 10


def steps_per_execution(steps_per_epoch: int, start_step: int = 0, most: int = MAX_STEPS_PER_EXECUTION) -> int:
    """The largest divisor of ``steps_per_epoch`` (and of ``start_step``'s place in its epoch,
    when resuming) that is at most ``most``.

    Keras runs whole chunks on a repeated stream, so a chunk that crossed an epoch's end
    would take the next epoch's batches early and end the epoch off its step count. Chunks
    that divide the epoch end on it; checkpoints then fall on chunk ends, so a resumed task
    (``start_step`` a multiple of the chunk) gets the same chunk size as an uninterrupted one.
    """
    if steps_per_epoch < 1 or most < 1:
        raise ValueError(f"steps_per_execution: steps_per_epoch={steps_per_epoch} and most={most} must be >= 1")
    n = math.gcd(steps_per_epoch, start_step % steps_per_epoch) or steps_per_epoch
    return max(k for k in range(1, min(most, n) + 1) if n % k == 0)


PER_BATCH_HOOKS = ("on_train_batch_end", "on_batch_end")


def check_callbacks(callbacks) -> None:
    """Raises TypeError naming the first callback that overrides a per-batch log hook."""
    for callback in callbacks:
        for hook in PER_BATCH_HOOKS:
            if getattr(type(callback), hook) is not getattr(keras.callbacks.Callback, hook):
                raise TypeError(f"{type(callback).__name__} overrides {hook}: it would read the logs at every "
                                "step; act between chunks instead (dgm_keras.chunks.ChunkCallback)")


class ChunkCallback(keras.callbacks.Callback):
    """Calls ``reached(done, logs)`` each time the count of finished steps grows: at every
    chunk's start (``logs`` None) and at every epoch's end (``logs``: the epoch's means).

    ``done`` counts from ``start`` (the steps finished before this ``fit``), across epochs."""

    def __init__(self, start: int = 0):
        super().__init__()
        self.step = self.epoch_start = start

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = self.step

    def on_train_batch_begin(self, batch, logs=None):
        self._advance(self.epoch_start + batch, None)

    def on_epoch_end(self, epoch, logs=None):
        self._advance(self.epoch_start + self.params["steps"], logs or {})

    def _advance(self, done: int, logs):
        if done > self.step:
            before, self.step = self.step, done
            self.reached(before, done, logs)

    def reached(self, before: int, done: int, logs: dict | None) -> None:
        """Steps ``before + 1 .. done`` have finished (``logs`` given at an epoch's end)."""
        raise NotImplementedError

    def losses(self, logs: dict | None) -> dict[str, float]:
        """The epoch's running means: ``logs`` at an epoch's end, else read from the trackers."""
        values = logs if logs is not None else self.model.get_metrics_result()
        return {name: float(value) for name, value in values.items()}


def crossed(before: int, done: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in ``before + 1 .. done``."""
    return every > 0 and done // every > before // every
