"""Nothing in a task's loop reads a tensor per step: steps run in compiled chunks that end on
every epoch's end, and the callbacks (checkpoints, the NaN stop, the loss log) act between
chunks, from hooks that Keras calls without per-batch logs."""

import io
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from dgm_keras import checkpointing, chunks
from dgm_keras.methods import base


@pytest.mark.parametrize("steps,start,most,want", [
    (12, 0, 10, 6), (78, 0, 10, 6), (89, 0, 10, 1), (5, 0, 2, 1), (12, 0, 4, 4), (10, 0, 10, 10),
    (12, 6, 10, 6),  # a resume at a chunk end keeps the uninterrupted run's chunk
    (12, 16, 10, 4),  # 16 = epoch 1, step 4: chunks must end on 4 (and on 12)
    (3, 0, 10, 3),
])
def test_chunks_divide_the_epoch_and_the_resume_point(steps, start, most, want):
    assert chunks.steps_per_execution(steps, start, most) == want


def test_a_bad_chunk_request_is_one_line():
    with pytest.raises(ValueError, match="steps_per_execution: steps_per_epoch=0 and most=10 must be >= 1"):
        chunks.steps_per_execution(0)


def _tiny_trainer():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(keras.optimizers.SGD(0.01), "mse")
    return model


def _stream(nan_at=None):
    """A repeated stream of 1-row batches; batch ``nan_at`` (0-based) is NaN."""
    x = np.ones((24, 2), np.float32)
    if nan_at is not None:
        x[nan_at] = np.nan
    return lambda: tf.data.Dataset.from_tensor_slices((x, np.ones((24, 1), np.float32))).batch(1)


class _Calls(keras.callbacks.Callback):
    """Counts the train-function calls (one a chunk) by the hook Keras calls once per call."""

    def __init__(self):
        super().__init__()
        self.begins = []

    def on_train_batch_begin(self, batch, logs=None):
        self.begins.append(batch)


def test_checkpoints_fall_on_chunk_ends_and_steps_are_exact():
    trainer, saves, calls = _tiny_trainer(), [], _Calls()
    ckpt = checkpointing.StepCheckpointer(4, saves.append, 0, steps_per_epoch=6, total_steps=12)
    base.fit_steps(trainer, _stream(), epochs=2, steps=6, callbacks=[calls, ckpt], max_chunk=3)
    assert trainer.steps_per_execution == 3
    assert int(trainer.optimizer.iterations) == 12  # no chunk ran past an epoch's end
    assert calls.begins == [0, 3, 0, 3]  # two compiled calls an epoch
    # 4 is crossed in the chunk 4-6, which ends the epoch (saved at its end); 8 in 7-9; 12 is
    # the task's last step (the task-end checkpoint follows).
    assert saves == [6, 9]
    # Resumed at step 6 (a chunk end), the rest of the task gives the same saves.
    trainer, saves = _tiny_trainer(), []
    ckpt = checkpointing.StepCheckpointer(4, saves.append, 6, steps_per_epoch=6, total_steps=12)
    base.fit_steps(trainer, _stream(), epochs=2, steps=6, callbacks=[ckpt], start_step=6, max_chunk=3)
    assert saves == [9] and int(trainer.optimizer.iterations) == 6


@pytest.mark.parametrize("every,max_chunk,message,saved", [
    (1, 3, "in steps 4-6", [3]), (1, 1, "at step 5", [1, 2, 3, 4]),  # checked before every save
    (0, 1, "in steps 1-10", []),  # no saves: checked every 10 steps (and at epoch ends)
])
def test_a_nan_stops_the_task_before_any_save_of_its_steps(every, max_chunk, message, saved):
    trainer, saves = _tiny_trainer(), []
    ckpt = checkpointing.StepCheckpointer(every, saves.append, 0, steps_per_epoch=12, total_steps=12)
    with pytest.raises(checkpointing.NonFiniteLoss, match=f"^loss = nan {message} of the task$"):
        base.fit_steps(trainer, _stream(nan_at=4), epochs=1, steps=12, callbacks=[ckpt], max_chunk=max_chunk)
    assert saves == saved  # nothing of the chunk with the NaN
    assert int(trainer.optimizer.iterations) == int(message.split("-")[-1].split()[-1])  # stopped there


def test_a_callback_with_a_per_batch_log_hook_is_refused():
    # Every task's fit goes through fit_steps, which refuses such a callback before training:
    # so every run in this suite (tests/test_end_to_end.py, test_resume.py, ...) would fail if
    # one of the runner's callbacks read the logs per batch.
    class PerBatch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    trainer = _tiny_trainer()
    with pytest.raises(TypeError, match="^PerBatch overrides on_train_batch_end: it would read the logs at every step"):
        base.fit_steps(trainer, _stream(), epochs=1, steps=6, callbacks=[_Calls(), PerBatch()])
    assert int(trainer.optimizer.iterations) == 0


def test_the_bar_redraws_one_line_on_a_terminal():
    from dgm_keras import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    assert progress.resolve_mode("auto", out) == "bar" and progress.resolve_mode("auto", io.StringIO()) == "line"
    clock = progress.RunClock(total_steps=40, done_before=0)
    bar = progress.TaskProgress(task=1, num_tasks=4, total=10, start=0, run_step=10, clock=clock, mode="bar", stream=out)
    bar.set_params({"steps": 10})
    bar.losses = lambda logs: {"d_loss": 1.5, "g_loss": -0.25, "wasserstein": 3.0}
    bar.on_epoch_begin(0)
    bar.on_train_batch_begin(5)  # a chunk of 5 steps done
    bar.on_epoch_end(0, {})
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    first, last = text.split("\r")[1:]
    assert first.startswith("task 2/4 [==========..........] 5/10 ") and "d_loss 1.5 g_loss -0.25  | run 38%, ETA " in first
    assert "wasserstein" not in first and last.startswith("task 2/4 [====================] 10/10 ")
    assert "| run 50%, ETA " in last
    with pytest.raises(ValueError, match="--progress='loud' is not allowed; allowed: auto, bar, line, none"):
        progress.resolve_mode("loud")
    assert [progress.duration(s) for s in (4.2, 185, 7620)] == ["4s", "3m05s", "2h07m"]
