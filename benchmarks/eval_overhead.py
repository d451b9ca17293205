"""Seconds an epoch-end evaluation takes (19,000 images, D with 10 classes): the classifier
called eagerly, against through a ``tf.function`` (what ContinualMethod.classifier returns);
rounds alternated.

    python benchmarks/eval_overhead.py
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dgm_keras  # noqa: E402,F401  (oneDNN on before TensorFlow loads)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from dgm_keras import evaluation, networks  # noqa: E402

IMAGES, ROUNDS = 19_000, 3


def main():
    model = networks.Discriminator(10, name="d").build_all(1)
    images = np.random.default_rng(0).uniform(-1, 1, (IMAGES, 32, 32, 1)).astype(np.float32)

    def eager(x):
        return model.classify(x, training=False)

    ways = {"eager": eager, "compiled": tf.function(eager, reduce_retracing=True)}
    for classify in ways.values():
        evaluation.predict(classify, images[:2500])  # traces both batch shapes
    times = {name: [] for name in ways}
    for _ in range(ROUNDS):
        for name, classify in ways.items():
            start = time.perf_counter()
            evaluation.predict(classify, images)
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"{name}: {np.median(values):.2f} s an evaluation (rounds: {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
