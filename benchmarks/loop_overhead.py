"""Python overhead a step of ``fit``'s loop: a tiny model (a step is ~0.1 ms of compute), 600
steps, a callback that reads the logs per batch (what LossLogger and StepCheckpointer did) at
1 step a call, against the chunk callbacks (dgm_keras.chunks) at 1 and at 10 steps a call;
rounds alternated.

    python benchmarks/loop_overhead.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dgm_keras  # noqa: E402,F401  (oneDNN on before TensorFlow loads)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from dgm_keras import checkpointing, monitoring  # noqa: E402

STEPS, ROUNDS = 600, 3


class PerBatchLogs(keras.callbacks.Callback):
    """What the loss logger and the step checkpointer did before: every log to a float, every step."""

    def on_train_batch_end(self, batch, logs=None):
        {name: float(value) for name, value in logs.items()}


def main():
    writer = tf.summary.create_file_writer(tempfile.mkdtemp(prefix="loop_overhead_"))
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile("sgd", "mse")

    def stream():
        ones = np.ones((64, 2), np.float32)
        return tf.data.Dataset.from_tensor_slices((ones, ones[:, :1])).batch(1).repeat()

    def chunk_callbacks():
        return [monitoring.LossLogger(writer, 0), checkpointing.StepCheckpointer(200, lambda step: None, 0, STEPS, STEPS)]

    setups = {"per-batch logs, 1 step a call": (1, lambda: [PerBatchLogs()]),
              "chunk callbacks, 1 step a call": (1, chunk_callbacks),
              "chunk callbacks, 10 steps a call": (10, chunk_callbacks)}
    times = {name: [] for name in setups}
    for _ in range(ROUNDS):
        for name, (chunk, callbacks) in setups.items():
            model.steps_per_execution, model.train_function = chunk, None
            model.fit(stream(), epochs=1, steps_per_epoch=20, verbose=0)  # traces
            start = time.perf_counter()
            model.fit(stream(), epochs=1, steps_per_epoch=STEPS, callbacks=callbacks(), verbose=0)
            times[name].append(1000 * (time.perf_counter() - start) / STEPS)
    for name, values in times.items():
        print(f"{name}: {np.median(values):.3f} ms a step (rounds: {', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
