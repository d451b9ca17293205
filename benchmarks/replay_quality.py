"""How good is the generator's memory? Two measures of an exported generator's samples.

    python benchmarks/replay_quality.py --generator=savedmodels/<run>/generator/10 --results=<workdir>/results.json
    python benchmarks/replay_quality.py --generator=... --results=... --fit_classifier

1. **Recognised**: per class, the share of samples that an independent classifier (the
   *referee*: a different network from DGM's discriminator, trained on the dataset's whole
   real training set, its test accuracy printed when it is trained) labels as that class.
2. **Learnable** (``--fit_classifier``): the project's classifier network (the
   discriminator's trunk and classifier head) trained from scratch on the samples alone
   (``--per_class`` of every seen class), then scored per class on the run's real
   *validation* split. It bounds what a classifier that knows past classes only through
   replay can reach with this generator: recognisable samples that cover too little of a
   class (one style of 7, say) score high on 1. and low on 2.

Samples are drawn with a seed per class, so two generators are compared on the same latents.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dgm_keras  # noqa: E402,F401  (oneDNN on before TensorFlow loads)
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from dgm_keras import data  # noqa: E402

FLAGS = flags.FLAGS
REFEREE_EPOCHS = {"mnist": 2, "cifar10": 12}


def define_flags():
    """Only when run as a program: first_tasks.py imports the referee and has its own flags."""
    flags.DEFINE_string("generator", None, "Exported generator version folder (…/generator/<task>).")
    flags.DEFINE_string("results", None, "The run's results.json (dataset, class order, validation fraction).")
    flags.DEFINE_enum("dataset", "mnist", list(REFEREE_EPOCHS), "The dataset, when --results is not given.")
    flags.DEFINE_integer("per_class", 1000, "Samples per class.", lower_bound=1)
    flags.DEFINE_bool("fit_classifier", False, "Also train the project's classifier on the samples alone and "
                      "score it on real validation images.")
    flags.DEFINE_integer("fit_epochs", 3, "Epochs of that training.", lower_bound=1)
    flags.DEFINE_string("data_dir", None, "TFDS data dir.")
    flags.DEFINE_string("referee", None, "Where the referee is cached (default .data/<dataset>_referee.keras).")


def referee(path: str | None, data_dir: str, dataset: str = "mnist"):
    """A plain conv net trained on the dataset's real training set; cached, since it never changes."""
    import keras  # noqa: PLC0415

    path = path or f".data/{dataset}_referee.keras"
    if os.path.exists(path):
        return keras.models.load_model(path)
    keras.utils.set_random_seed(0)
    d = data.load_scenario_data(data.make_scenario(dataset, 10), data_dir, 0.0)
    channels = d.train.images.shape[-1]
    if dataset == "mnist":
        body = [keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D()]
    else:  # three blocks of two convs: a colour referee that a 2-block net would leave near 60% on CIFAR-10;
        # widths 32-64-128, a quarter of the 64-128-256 first planned (about 90 CPU-minutes by its size)
        body = []
        for width in (32, 64, 128):
            body += [keras.layers.Conv2D(width, 3, padding="same", activation="relu"),
                     keras.layers.Conv2D(width, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D()]
    model = keras.Sequential([keras.Input((32, 32, channels)), *body, keras.layers.Flatten(),
                              keras.layers.Dropout(0.3), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(d.train.images, d.train.labels, batch_size=128, epochs=REFEREE_EPOCHS[dataset], verbose=0)
    acc = model.evaluate(d.test.images, d.test.labels, verbose=0)[1]
    print(f"referee ({dataset}): test accuracy {100 * acc:.2f}% after {REFEREE_EPOCHS[dataset]} epochs")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    model.save(path)
    return model


def draw(generator_dir: str, classes: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` samples of each of the first ``classes`` (scenario-order) labels, seed = label."""
    import tensorflow as tf  # noqa: PLC0415

    sample = tf.saved_model.load(generator_dir).signatures["sample"]
    images = [sample(labels=tf.fill([per_class], c), seed=tf.constant(c, tf.int64))["images"].numpy()
              for c in range(classes)]
    return np.concatenate(images), np.repeat(np.arange(classes, dtype=np.int32), per_class)


def seen_classes(generator_dir: str) -> int:
    """Classes the export can draw: the generator's version is its task number."""
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(generator_dir))), "run.json")) as f:
        per_task = json.load(f)["identity"]["classes_per_task"]
    return per_task * int(os.path.basename(os.path.normpath(generator_dir)))


def score(images, labels, class_order, ref) -> list[float]:
    """Per scenario label: the share of its samples the referee calls its original class."""
    pred = np.argmax(ref.predict(images, verbose=0), -1)
    return [float(np.mean(pred[labels == c] == original)) for c, original in enumerate(class_order[: labels.max() + 1])]


def project_classifier(input_shape, classes: int, norm: str, optimizer, trunk: str = "strided"):
    """DGM's classifier as a plain Keras model: the discriminator's trunk and classifier head."""
    import keras  # noqa: PLC0415

    from dgm_keras import networks  # noqa: PLC0415

    net = networks.Discriminator(classes, norm=norm, trunk=trunk).build_all(input_shape[-1])
    inputs = keras.Input(input_shape)
    model = keras.Model(inputs, net.classify(inputs))
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def fit_on_samples(images, labels, validation: data.SplitArrays, epochs: int, norm: str) -> list[float]:
    """The project's classifier network trained on ``images`` alone; per-class accuracy on real validation."""
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    classes = int(labels.max()) + 1
    model = project_classifier(images.shape[1:], classes, norm, keras.optimizers.Adam(1e-3, beta_1=0.5))
    model.fit(images, labels, batch_size=64, epochs=epochs, verbose=0, shuffle=True)
    keep = validation.labels < classes
    pred = np.argmax(model.predict(validation.images[keep], verbose=0), -1)
    truth = validation.labels[keep]
    return [float(np.mean(pred[truth == c] == c)) for c in range(classes)]


def main(argv):
    del argv
    run = {}
    if FLAGS.results:
        with open(FLAGS.results) as f:
            run = json.load(f)
    dataset = run.get("scenario", {}).get("dataset", FLAGS.dataset)
    order = run.get("scenario", {}).get("class_order", list(range(10)))
    data_dir = FLAGS.data_dir or data.default_data_dir()
    data.ensure_prepared(dataset, data_dir)
    images, labels = draw(FLAGS.generator, seen_classes(FLAGS.generator), FLAGS.per_class)
    rates = score(images, labels, order, referee(FLAGS.referee, data_dir, dataset))
    for label, rate in enumerate(rates):
        print(f"class {order[label]} (task label {label}): {100 * rate:.1f}% of {FLAGS.per_class} samples recognised")
    print(f"recognised: mean {100 * np.mean(rates):.1f}%")
    if FLAGS.fit_classifier:
        flags_ = run.get("flags", {})
        scenario = data.make_scenario(dataset, run.get("scenario", {}).get("classes_per_task", 1),
                                      flags_.get("class_order", "natural"), flags_.get("seed", 0))
        splits = data.load_scenario_data(scenario, data_dir, flags_.get("validation_fraction", 0.15))
        norm = run.get("hyperparameters", {}).get("d_norm", "layer")
        accs = fit_on_samples(images, labels, splits.validation, FLAGS.fit_epochs, norm)
        print("learnable: the classifier network trained on the samples alone, accuracy on real validation "
              f"per class {[round(100 * a, 1) for a in accs]}, mean {100 * np.mean(accs):.2f}%")


if __name__ == "__main__":
    define_flags()
    flags.mark_flag_as_required("generator")
    app.run(main)
