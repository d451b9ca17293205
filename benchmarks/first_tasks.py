"""A quick ablation harness: the first few MNIST tasks of DGM under chosen hyperparameters,
with A_t and how recognisable the replay is (the referee of replay_quality.py).

    python benchmarks/first_tasks.py --tasks=3 --set=d_norm=batch --set=steps_per_task=250
    python benchmarks/first_tasks.py --tasks=3 --set=d_norm=layer --set=steps_per_task=250

Prints one line per task: seconds, A_t and accuracy per task on the real *validation* split
(hyperparameters are chosen there, never on test), share of replay the referee
recognises per class, the last Wasserstein estimate and gradient penalty, mask usage and
the generator's widths.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dgm_keras  # noqa: E402,F401  (oneDNN on before TensorFlow loads)
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from dgm_keras import config  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("tasks", 3, "How many of the ten one-class tasks to run.")
flags.DEFINE_multi_string("set", [], "A HyperParams field as name=value (repeatable).")
flags.DEFINE_string("mode", "weight", "weight (DGMw) or activation (DGMa).")
flags.DEFINE_string("data_dir", None, "TFDS data dir.")
flags.DEFINE_string("referee", ".data/mnist_referee.keras", "Cached referee classifier.")


def hyperparams(settings) -> config.HyperParams:
    fields = {f.name: f.type for f in dataclasses.fields(config.HyperParams)}
    values = {}
    for item in settings:
        name, _, raw = item.partition("=")
        if name not in fields:
            raise app.UsageError(f"--set {item!r}: unknown field; allowed: {', '.join(fields)}")
        kind = {"int": int, "float": float, "bool": lambda v: v.lower() == "true"}.get(fields[name], str)
        values[name] = kind(raw)
    return config.HyperParams(**values)


def main(argv):
    del argv
    import keras  # noqa: PLC0415
    from replay_quality import referee  # noqa: PLC0415

    from dgm_keras import data, evaluation  # noqa: PLC0415
    from dgm_keras.methods import dgm  # noqa: PLC0415

    hp = hyperparams(FLAGS.set)
    keras.utils.set_random_seed(hp.seed)
    data_dir = FLAGS.data_dir or data.default_data_dir()
    data.ensure_prepared("mnist", data_dir)
    judge = referee(FLAGS.referee, data_dir)
    scenario = data.make_scenario("mnist", 1)
    splits = data.load_scenario_data(scenario, data_dir, 0.15)
    method = dgm.DGM(scenario, 1, hp, mask_mode=FLAGS.mode)
    for task in range(FLAGS.tasks):
        train = splits.train.of_classes(scenario.task_classes(task))
        start = time.time()
        method.begin_task(task, train)
        losses = method.train_task(task, train, [])
        method.end_task(task)
        seconds = time.time() - start
        scores = evaluation.evaluate_after_task(method.classifier(), splits.validation, scenario, task)
        recognised = []
        for c in range(task + 1):
            samples = method.sample(np.full(300, c, np.int32), seed=hp.seed + 7)
            recognised.append(float(np.mean(np.argmax(judge.predict(samples, verbose=0), -1) == c)))
        print(f"task {task + 1}: {seconds:.0f} s, validation A_t {100 * scores['accuracy']:.2f}, "
              f"per task {[round(100 * a, 1) for a in scores['per_task']]}, "
              f"replay recognised {[round(100 * r) for r in recognised]}, W {losses['wasserstein']:.1f}, "
              f"GP {losses['gradient_penalty']:.2f}, mask usage {losses['mask_usage']:.2f}, "
              f"widths {method.gen.widths}", flush=True)


if __name__ == "__main__":
    app.run(main)
