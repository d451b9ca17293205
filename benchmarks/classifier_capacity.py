"""Is DGM's classifier network as good as a network of its size should be? A same-machine check.

    python benchmarks/classifier_capacity.py --dataset=cifar10 --epochs=10

Trains, on the run's training split (the training set less its validation tenth) with all
classes at once, for the same epochs, batch and optimizer:
- **ours**: the discriminator's trunk and classifier head (conv 5x5/2 32-64-128, layer norm, a
  dense head: the classifier every method of the harness evaluates and exports);
- **pooled**: the same with ``--d_trunk=pooled`` (the tutorial's convolutions, pooling and dense
  64, with our layer norm and LeakyReLU);
- **tutorial**: the TensorFlow CNN tutorial's network (conv 3x3 32-64-64 with max pooling,
  dense 64; tensorflow.org/tutorials/images/cnn), for which the tutorial reports "a test
  accuracy of over 70%" on CIFAR-10 after 10 epochs: the literature figure of a network of
  about our size, reproduced here rather than quoted.
Prints each network's weights, validation and test accuracy, and seconds. Joint training in
the harness sees each class for fewer epochs (class t for 5 epochs in each of the tasks
t..10), so this is the network's capacity at this budget, not the harness's JT figure.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dgm_keras  # noqa: E402,F401  (oneDNN on before TensorFlow loads)
from absl import app, flags  # noqa: E402

from dgm_keras import config, data  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "cifar10", list(config.DATASETS), "The dataset (all its classes at once).")
flags.DEFINE_integer("epochs", 10, "Epochs for each network (the tutorial's 10).", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Batch size for each network.", lower_bound=1)
flags.DEFINE_float("lr", 1e-3, "Adam's learning rate for each network (Keras' default, the tutorial's).")
flags.DEFINE_float("validation_fraction", 0.1, "Held out of train, as the runs do (CIFAR-10's settings: 0.1).")
flags.DEFINE_list("networks", ["ours", "pooled", "tutorial"], "Which networks: ours, pooled, tutorial.")
flags.DEFINE_string("data_dir", None, "TFDS data dir.")
flags.DEFINE_integer("seed", 0, "Seed of initialisation and shuffling.")


def tutorial_network(input_shape, classes: int):
    import keras  # noqa: PLC0415

    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(classes)])


def main(argv):
    del argv
    import keras  # noqa: PLC0415

    from replay_quality import project_classifier  # noqa: PLC0415

    data_dir = FLAGS.data_dir or data.default_data_dir()
    data.ensure_prepared(FLAGS.dataset, data_dir)
    classes = len(config.DATASETS[FLAGS.dataset].classes)
    d = data.load_scenario_data(data.make_scenario(FLAGS.dataset, classes), data_dir, FLAGS.validation_fraction)
    shape = d.train.images.shape[1:]
    print(f"{FLAGS.dataset}: {len(d.train.labels)} training, {len(d.validation.labels)} validation, "
          f"{len(d.test.labels)} test images; {FLAGS.epochs} epochs, batch {FLAGS.batch_size}, Adam {FLAGS.lr}")
    for name in FLAGS.networks:
        keras.utils.set_random_seed(FLAGS.seed)
        optimizer = keras.optimizers.Adam(FLAGS.lr)
        if name in ("ours", "pooled"):
            model = project_classifier(shape, classes, "layer", optimizer, "strided" if name == "ours" else "pooled")
        elif name == "tutorial":
            model = tutorial_network(shape, classes)
            model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        else:
            raise SystemExit(f"classifier_capacity: --networks={name!r} is not allowed; allowed: ours, pooled, tutorial")
        start = time.time()
        model.fit(d.train.images, d.train.labels, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, verbose=0, shuffle=True)
        seconds = time.time() - start
        val = model.evaluate(d.validation.images, d.validation.labels, verbose=0)[1]
        test = model.evaluate(d.test.images, d.test.labels, verbose=0)[1]
        print(f"{name}: {model.count_params():,} weights; validation {100 * val:.2f}%, test {100 * test:.2f}% "
              f"after {FLAGS.epochs} epochs ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    app.run(main)
