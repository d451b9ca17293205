"""Scores an exported classifier on a dataset's test split (or the run's validation images):
per class, per task, confusion matrix.

    python -m dgm_keras.evaluate --model=savedmodels/<run>/classifier/10
    python -m dgm_keras.evaluate --model=savedmodels/<run>/classifier --dataset=mnist --json=scores.json
    python -m dgm_keras.evaluate --model=savedmodels/<run>/classifier/10 --split=validation

The version's scenario (classes a task, class order) comes from the export folder's run.json;
without one, give --classes_per_task, --class_order and --seed. Only the classes the version
has seen are scored, as the run scored them (A_t, no task identity given), so the figure
equals results.json's strict A_t for that task.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from absl import flags

from dgm_keras import cli, config, saved

FLAGS = flags.FLAGS
GROUP = "dgm_keras.evaluate"


def define_flags():
    """Defined only when run as a program: ``train`` has flags of the same names."""
    flags.DEFINE_string("model", None, "An exported classifier: <export_dir>/<run>/classifier/<version> (or the folder "
                        "above the versions: the highest).", module_name=GROUP)
    flags.DEFINE_enum("dataset", None, list(config.DATASETS), "Dataset whose test split is scored; default the run's.",
                      module_name=GROUP)
    flags.DEFINE_string("data_dir", None, "TFDS data dir; default $TFDS_DATA_DIR or ~/tensorflow_datasets.",
                        module_name=GROUP)
    flags.DEFINE_integer("classes_per_task", None, "Default the run's (run.json); 1 without one.", lower_bound=1,
                         module_name=GROUP)
    flags.DEFINE_enum("class_order", None, ["natural", "permuted"], "Default the run's; natural without one.",
                      module_name=GROUP)
    flags.DEFINE_integer("seed", None, "Seed of a permuted class order; default the run's; 0 without one.",
                         lower_bound=0, module_name=GROUP)
    flags.DEFINE_string("json", None, "Also write the scores to this JSON file.", module_name=GROUP)
    flags.DEFINE_enum("split", "test", ["test", "validation"], "test, or validation: the images the run held out of "
                      "its training split (its --validation_fraction, from run.json), where settings are chosen.",
                      module_name=GROUP)


def scores(predicted: np.ndarray, labels: np.ndarray, seen: int, classes_per_task: int) -> dict:
    """A_t, per-class and per-task accuracy (fractions) and the confusion matrix (counts; rows:
    true class, columns: predicted) of scenario-order predictions on ``seen`` classes."""
    correct = predicted == labels
    confusion = np.zeros((seen, seen), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_task = []
    for task in range(seen // classes_per_task):
        mask = (labels >= task * classes_per_task) & (labels < (task + 1) * classes_per_task)
        per_task.append(float(np.mean(correct[mask])))
    return {"accuracy": float(np.mean(correct)), "per_task": per_task,
            "per_class": [float(np.mean(correct[labels == c])) for c in range(seen)],
            "confusion": confusion.tolist(), "images": int(len(labels))}


def format_scores(result: dict, names: list[str], split: str = "test") -> str:
    seen = len(result["per_class"])
    lines = [f"A_{seen} = {100 * result['accuracy']:.2f}% on {result['images']} {split} images of the {seen} classes seen",
             "per task:  " + "  ".join(f"T{t + 1} {100 * a:.2f}" for t, a in enumerate(result["per_task"])),
             "per class: " + "  ".join(f"{names[c]} {100 * a:.2f}" for c, a in enumerate(result["per_class"])),
             "confusion matrix (rows: true class, columns: predicted):"]
    width = max(5, *(len(n) for n in names))
    lines.append(" " * width + " " + " ".join(f"{n[:width]:>{width}}" for n in names))
    for c, row in enumerate(result["confusion"]):
        lines.append(f"{names[c][:width]:>{width}} " + " ".join(f"{v:>{width}d}" for v in row))
    return "\n".join(lines)


def _scenario_settings(version: saved.Version) -> dict:
    run = version.identity
    given = {"dataset": FLAGS.dataset, "classes_per_task": FLAGS.classes_per_task, "class_order": FLAGS.class_order,
             "seed": FLAGS.seed}
    fallback = {"dataset": None, "classes_per_task": 1, "class_order": "natural", "seed": 0}
    values = {k: v if v is not None else run.get(k, fallback[k]) for k, v in given.items()}
    if values["dataset"] is None:
        raise saved.SavedError(f"--model={version.path!r} has no run.json to name its dataset; add --dataset "
                               f"(one of: {', '.join(config.DATASETS)})")
    return values


def _split_name(version: saved.Version, spec) -> str:
    """The TFDS split scored: the test split, or the run's held-out tail of train (data.load_scenario_data)."""
    if FLAGS.split == "test":
        return spec.test_split
    fraction = version.identity.get("validation_fraction")
    percent = config.validation_percent(fraction) if fraction else None
    if not percent:
        raise saved.SavedError(f"--split=validation: the run of {version.shown!r} held out no validation images "
                               f"(validation_fraction {fraction!r} in its run.json); allowed: --split=test")
    return f"train[{100 - percent}%:]"


def main(argv):
    del argv  # cli.run refuses extra arguments
    if not FLAGS.model:
        sys.exit("evaluate: --model is required: an exported classifier, e.g. savedmodels/<run>/classifier/1")
    try:
        version = saved.find(FLAGS.model, "classifier")
        values = _scenario_settings(version)
    except saved.SavedError as err:
        sys.exit(f"evaluate: {err}")

    from dgm_keras import quiet  # noqa: PLC0415

    tf = quiet.tensorflow_imported()
    from dgm_keras import data, evaluation  # noqa: PLC0415

    data_dir = FLAGS.data_dir or config.default_data_dir()
    try:
        classify = saved.signature(version, "serving_default")
        channels = classify.structured_input_signature[1]["images"].shape[-1]
        spec = data.get_spec(values["dataset"])
        if spec.channels != channels:
            raise saved.SavedError(f"--dataset={values['dataset']!r} has {spec.channels}-channel images and the model "
                                   f"takes {channels}; allowed: a dataset of {channels}-channel images")
        data.ensure_prepared(values["dataset"], data_dir)
        scenario = data.make_scenario(values["dataset"], values["classes_per_task"], values["class_order"],
                                      values["seed"], data.label_names(values["dataset"], data_dir))
        test = data.load_split(scenario, data_dir, _split_name(version, spec))
        seen = int(classify(images=tf.zeros([1, data.IMAGE_SIZE, data.IMAGE_SIZE, channels]))["probabilities"].shape[-1])
        if seen > scenario.num_classes or seen % scenario.classes_per_task:
            raise saved.SavedError(f"--model={version.path!r} tells {seen} classes apart, which is not a whole number "
                                   f"of tasks of {scenario.classes_per_task} classes of {values['dataset']}; allowed: "
                                   "the run's --classes_per_task")
        part = test.of_classes(range(seen))
        predicted = evaluation.predict(lambda x: classify(images=tf.constant(x))["probabilities"], part.images)
    except (saved.SavedError, data.DataError) as err:
        sys.exit(f"evaluate: {err}")
    result = scores(predicted, part.labels, seen, scenario.classes_per_task)
    print(f"evaluate: {version.shown} (task {version.version}, {seen} classes seen) on the {values['dataset']} "
          f"{_split_name(version, spec)} split")
    print(format_scores(result, list(scenario.class_names[:seen]), FLAGS.split))
    if FLAGS.json:
        try:
            with open(FLAGS.json, "w") as f:
                json.dump({"model": version.path, "version": version.version, **values, "split": FLAGS.split,
                           "units": "accuracies are fractions; confusion: image counts, rows the true class, columns "
                                    "the predicted one (scenario order)",
                           "class_names": list(scenario.class_names[:seen]), **result}, f, indent=1)
        except OSError as err:
            sys.exit(f"evaluate: --json={FLAGS.json!r} cannot be written ({err.strerror or type(err).__name__})")
        print(f"scores: {FLAGS.json}")


def run() -> None:
    """The command (``python -m dgm_keras.evaluate``, or ``dgm-evaluate`` once installed)."""
    define_flags()
    cli.run(main, "evaluate", __doc__, [GROUP])


if __name__ == "__main__":
    run()
