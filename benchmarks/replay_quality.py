"""How recognisable is the generator's memory? Samples per class from an exported generator,
scored by an independently trained MNIST classifier (a different network from DGM's
discriminator, trained on all of MNIST's training set).

    python benchmarks/replay_quality.py --generator=savedmodels/<run>/generator/10 --per_class=1000

Prints, per class, the share of samples the referee classifies as that class.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from dgm_keras import data  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """Only when run as a program: first_tasks.py imports the referee and has its own flags."""
    flags.DEFINE_string("generator", None, "Exported generator version folder (…/generator/<task>).")
    flags.DEFINE_string("results", None, "The run's results.json (for the class order).")
    flags.DEFINE_integer("per_class", 1000, "Samples per class.")
    flags.DEFINE_string("data_dir", None, "TFDS data dir.")
    flags.DEFINE_string("referee", ".data/mnist_referee.keras", "Where the referee classifier is cached.")


def referee(path: str, data_dir: str):
    """A plain conv net trained on real MNIST (2 epochs); cached, since it never changes."""
    import keras  # noqa: PLC0415

    if os.path.exists(path):
        return keras.models.load_model(path)
    scenario = data.make_scenario("mnist", 10)
    d = data.load_scenario_data(scenario, data_dir, 0.0)
    model = keras.Sequential([
        keras.Input((32, 32, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dropout(0.3), keras.layers.Dense(10),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(d.train.images, d.train.labels, batch_size=128, epochs=2, verbose=0)
    acc = model.evaluate(d.test.images, d.test.labels, verbose=0)[1]
    print(f"referee test accuracy {100 * acc:.2f}%")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    model.save(path)
    return model


def score(generator_dir: str, class_order, per_class: int, ref) -> list[float]:
    import tensorflow as tf  # noqa: PLC0415

    sample = tf.saved_model.load(generator_dir).signatures["sample"]
    rates = []
    for label, original in enumerate(class_order):
        try:
            images = sample(labels=tf.fill([per_class], label), seed=tf.constant(label, tf.int64))["images"]
        except tf.errors.InvalidArgumentError:
            break  # classes beyond what this version has seen
        pred = np.argmax(ref.predict(images.numpy(), verbose=0), -1)
        rates.append(float(np.mean(pred == original)))
    return rates


def main(argv):
    del argv
    data_dir = FLAGS.data_dir or data.default_data_dir()
    data.ensure_prepared("mnist", data_dir)
    order = list(range(10))
    if FLAGS.results:
        with open(FLAGS.results) as f:
            order = json.load(f)["scenario"]["class_order"]
    rates = score(FLAGS.generator, order, FLAGS.per_class, referee(FLAGS.referee, data_dir))
    for label, rate in enumerate(rates):
        print(f"class {order[label]} (task label {label}): {100 * rate:.1f}% of {FLAGS.per_class} samples recognised")
    print(f"mean {100 * np.mean(rates):.1f}%")


if __name__ == "__main__":
    define_flags()
    flags.mark_flag_as_required("generator")
    app.run(main)
