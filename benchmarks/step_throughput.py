"""Train-step throughput of DGM: iterations/s and real images/s, first and tenth task.

An iteration is everything done for one real batch: the critic step (WGAN-GP with the
gradient penalty, plus classification of the real batch and a replay batch of past
classes) and the generator step (adversarial loss + sparsity regulariser, protection and
HAT compensation). The tenth task is reached by nine expansions with masks that reserve
``--reserved`` of each layer's free entries, as a real run's tasks do.

    python benchmarks/step_throughput.py                       # all combinations
    python benchmarks/step_throughput.py --modes=weight --shapes=mnist --xla=false
    python benchmarks/step_throughput.py --steps_per_execution=1,10,50   # chunk sizes
    python benchmarks/step_throughput.py --smoke                # tiny: checks the script runs

Prints one line per configuration: seconds per iteration over --steps timed iterations run
through ``fit`` as a run does (after --warmup untimed ones, which include tracing), it/s and
images/s; on a GPU, the peak GPU memory of the process so far. No callback runs per batch:
the timed ``fit`` is one call, in chunks of ``steps_per_execution`` steps.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dgm_keras  # noqa: E402,F401  (oneDNN on before TensorFlow loads)
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("modes", ["weight", "activation"], "weight (DGMw), activation (DGMa).")
flags.DEFINE_list("shapes", ["mnist", "cifar10"], "mnist (32x32x1), cifar10 (32x32x3).")
flags.DEFINE_list("xla", ["false", "true"], "jit_compile settings to measure.")
flags.DEFINE_list("tasks", ["1", "2", "10"], "Task numbers to measure (1-based).")
flags.DEFINE_list("schedules", ["combined", "reference"], "DGM's classifier schedules (--classifier_steps): combined "
                  "(one D step an iteration) or reference (the reference code's t+1 classifier steps plus the critic step).")
flags.DEFINE_list("d_trunks", ["strided"], "Discriminator trunks (--d_trunk): strided (the paper's), pooled.")
flags.DEFINE_integer("batch_size", 64, "Real images per iteration.")
flags.DEFINE_integer("steps", 40, "Timed iterations.")
flags.DEFINE_integer("warmup", 5, "Untimed iterations after compilation.")
flags.DEFINE_float("reserved", 0.5, "Share of free entries each simulated past task reserves.")
flags.DEFINE_bool("breakdown", False, "Also time the critic step and the generator step alone (not XLA).")
flags.DEFINE_list("steps_per_execution", ["10"], "Steps per compiled call to measure (dgm_keras.chunks).")
flags.DEFINE_bool("whole_task", False, "Also time a whole task of the main command (DGMw, MNIST 10x1, the defaults, "
                  "real data) at each of --tasks: the replay drawn at its start, its iterations with the epoch-end "
                  "validation scoring, its end (averages, expansion), the test evaluation and the two exports.")
flags.DEFINE_list("replays", ["fixed"], "--whole_task: DGM's replay rules to time (--replay): fixed (drawn at the task's "
                  "start), fresh (drawn inside every iteration).")
flags.DEFINE_integer("epochs_per_task", 0, "--whole_task: epochs of the timed task (0: the main command's).")
flags.DEFINE_string("data_dir", None, "TFDS data dir holding MNIST, for --whole_task (default: train's).")
flags.DEFINE_bool("smoke", False, "Tiny and fast (batch 8, 2 timed steps, widths as given): checks the script, "
                  "measures nothing.")


def simulate_past_tasks(method, task: int, rng) -> None:
    """Brings ``method``'s generator to task ``task``: for each past task, masks that reserve
    ``--reserved`` of each layer's free entries, then the expansion a real task end makes."""
    from dgm_keras import expansion  # noqa: PLC0415

    for _ in range(task - 1):
        for layer in method.gen.masked_layers:
            free = {k: 1 - r.numpy() for k, r in layer.reserved().items()}
            for name, e in layer.embeddings.items():
                take = (rng.random(e.shape) < FLAGS.reserved) & (free[name] > 0)
                e.assign(np.where(take, 1.0, -1.0).astype(np.float32))
        method.gen = expansion.expand_generator(method.gen)


def whole_task(task: int, splits, scenario, replay: str = "fixed") -> dict:
    """Seconds of each part of one task of the main command, as ``runner`` runs it (without
    checkpoints and TensorBoard): a task costs more than its iterations."""
    import dataclasses  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from dgm_keras import config, evaluation, export, monitoring  # noqa: PLC0415
    from dgm_keras.methods import dgm  # noqa: PLC0415

    hp = config.with_method_defaults("dgmw", 1, config.HyperParams())
    hp = dataclasses.replace(hp, jit_compile=config.use_xla("auto"), replay=replay,  # as the command resolves it
                             epochs_per_task=FLAGS.epochs_per_task or hp.epochs_per_task)
    method = dgm.DGM(scenario, 1, hp, mask_mode="weight")
    simulate_past_tasks(method, task, np.random.default_rng(0))
    train, t = splits.train.of_classes(scenario.task_classes(task - 1)), task - 1
    parts, clock = {}, time.perf_counter

    def timed(name, fn):
        start = clock()
        out = fn()
        parts[name] = clock() - start
        return out

    timed("task start (replay draw)", lambda: method.begin_task(t, train))
    selector = monitoring.ValidationSelector(method.classifier, splits.validation, splits.test, scenario, t)
    timed("iterations + epoch-end scoring", lambda: method.train_task(t, train, [selector]))
    timed("task end (averages, expansion)", lambda: method.end_task(t))
    timed("test evaluation", lambda: evaluation.evaluate_after_task(method.classifier(), splits.test, scenario, t))
    with tempfile.TemporaryDirectory() as out:
        timed("exports", lambda: (
            export.export_classifier(method.classifier_model(), method.classifier(), scenario, t, 1, f"{out}/c"),
            export.export_generator(method.generator(), scenario, t, f"{out}/g")))
    epochs, steps = method.task_steps(train)
    return {"parts": parts, "steps": epochs * steps, "replay": method.replay_counts[-1],
            "schedule": f"{hp.classifier_steps}+{hp.classifier_data}, replay {replay}"}


def measure(mode: str, channels: int, task: int, xla: bool, schedule: str, chunk: int,
            trunk: str = "strided") -> tuple[float, float, dict]:
    from dgm_keras import data, expansion  # noqa: PLC0415
    from dgm_keras.methods import base, dgm  # noqa: PLC0415

    scenario = data.make_scenario("mnist", 1)
    warmup, steps = (-(-n // chunk) * chunk for n in (FLAGS.warmup, FLAGS.steps))  # whole chunks
    hp = base.HyperParams(batch_size=FLAGS.batch_size, replay_batch_size=FLAGS.batch_size,
                          steps_per_task=warmup + steps, jit_compile=xla,
                          ngf=6 if mode == "weight" else 20, replay_per_class=256 if not FLAGS.smoke else 8,
                          s_max=1e4 if mode == "weight" else 1e5, classifier_steps=schedule,
                          classifier_data="real", d_trunk=trunk)  # the reference code's work: the current task from real images
    method = dgm.DGM(scenario, channels, hp, mask_mode=mode)
    rng = np.random.default_rng(0)
    simulate_past_tasks(method, task, rng)
    images = rng.uniform(-1, 1, (FLAGS.batch_size * 8, 32, 32, channels)).astype(np.float32)
    train = data.SplitArrays(images, np.full(len(images), task - 1, np.int32))
    method.begin_task(task - 1, train)
    method.trainer.steps_per_execution = chunk
    stream = method.pipeline(task - 1, train)
    start = time.perf_counter()
    method.trainer.fit(stream, epochs=1, steps_per_epoch=warmup, verbose=0)  # traces (the first step's cost)
    first = time.perf_counter() - start
    start = time.perf_counter()
    method.trainer.fit(stream, epochs=1, steps_per_epoch=steps, verbose=0)
    per_step = (time.perf_counter() - start) / steps
    info = {"generator_size": expansion.generator_size(method.gen), "widths": method.gen.widths,
            "peak_gpu_mb": peak_gpu_mb()}
    if FLAGS.breakdown:
        info["parts"] = part_times(method.trainer, next(iter(method.pipeline(task - 1, train))))
    return per_step, first, info


def peak_gpu_mb() -> float | None:
    """This process's peak GPU memory so far (MiB), None without a GPU."""
    import tensorflow as tf  # noqa: PLC0415

    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20


def part_times(trainer, batch) -> dict:
    """Median seconds of the critic step and of the generator step, each compiled alone."""
    import tensorflow as tf  # noqa: PLC0415

    s = tf.constant(100.0)
    parts = {"critic": tf.function(lambda b: trainer.critic_step(b, s)),
             "generator": tf.function(lambda: trainer.generator_step(FLAGS.batch_size, s))}
    out = {}
    for name, fn in parts.items():
        call = (lambda: fn(batch)) if name == "critic" else fn
        for _ in range(3):
            call()
        times = []
        for _ in range(FLAGS.steps):
            t = time.perf_counter()
            tf.nest.map_structure(lambda x: x.numpy(), call())
            times.append(time.perf_counter() - t)
        out[name] = float(np.median(times))
    return out


def main(argv):
    del argv
    from dgm_keras import quiet  # noqa: PLC0415

    quiet.tensorflow_imported()  # the table without TensorFlow's start-up notices or TFDS's INFO lines
    if FLAGS.smoke:
        FLAGS.batch_size, FLAGS.steps, FLAGS.warmup = 8, 2, 1
        FLAGS.steps_per_execution = ["1"]
    channels = {"mnist": 1, "cifar10": 3}
    print("method shape   trunk   task xla   schedule  D steps chunk s/it    it/s   images/s  warm-up(s)  G size  "
          "peak GPU MiB  widths")
    configs = [(m, sh, tr, x, int(t), sc, int(c)) for m in FLAGS.modes for sh in FLAGS.shapes for tr in FLAGS.d_trunks
               for x in FLAGS.xla for t in FLAGS.tasks for sc in FLAGS.schedules for c in FLAGS.steps_per_execution]
    for mode, shape, trunk, xla, task, schedule, chunk in configs:
        per_step, first, info = measure(mode, channels[shape], task, xla == "true", schedule, chunk, trunk)
        name = "dgmw" if mode == "weight" else "dgma"
        d_steps = 1 + (task if schedule == "reference" else 0)  # optimizer steps on D (and classifier) an iteration
        peak = "-" if info["peak_gpu_mb"] is None else f"{info['peak_gpu_mb']:.0f}"
        print(f"{name:6s} {shape:7s} {trunk:7s} {task:4d} {xla:5s} {schedule:9s} {d_steps:7d} {chunk:5d} {per_step:.4f} "
              f"{1 / per_step:7.2f} {FLAGS.batch_size / per_step:9.1f}  {first:10.1f}  {info['generator_size']:6d}  "
              f"{peak:>12s}  {info['widths']}", flush=True)
        if "parts" in info:
            print("       critic step {critic:.4f} s, generator step {generator:.4f} s".format(**info["parts"]), flush=True)
    if FLAGS.whole_task:
        from dgm_keras import config, data  # noqa: PLC0415

        scenario, data_dir = data.make_scenario("mnist", 1), FLAGS.data_dir or config.default_data_dir()
        data.ensure_prepared("mnist", data_dir, None)  # built offline where missing, as train does
        splits = data.load_scenario_data(scenario, data_dir, 0.1)
        epochs = f", {FLAGS.epochs_per_task} epochs a task" if FLAGS.epochs_per_task else ""
        print(f"\nwhole task of the main command (DGMw, MNIST 10x1, defaults{epochs}), seconds:")
        for task, replay in [(int(t), r) for t in sorted({int(t) for t in FLAGS.tasks}) for r in FLAGS.replays]:
            out = whole_task(task, splits, scenario, replay)
            parts = "  ".join(f"{k} {v:.1f}" for k, v in out["parts"].items())
            print(f"task {task:2d} ({out['schedule']}, {out['steps']} iterations, {out['replay']} replayed images): "
                  f"total {sum(out['parts'].values()):.1f}  {parts}", flush=True)


if __name__ == "__main__":
    app.run(main)
