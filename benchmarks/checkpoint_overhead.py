"""What checkpointing costs: the share of each task's time spent writing checkpoints.

    python benchmarks/checkpoint_overhead.py -- --classes_per_task=2 --epochs_per_task=1
    python benchmarks/checkpoint_overhead.py --results=runs/mnist_dgmw_1cpt_seed0/results.json

Runs ``python -m dgm_keras.train`` with the flags after ``--`` (into a scratch workdir) or reads
a finished run's results.json, then prints, per task, the seconds spent in checkpoint saves
(every ``--checkpoint_every`` steps and at the task's end) against the task's seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("results", None, "A finished run's results.json; if unset, a run is made.")


def overhead_table(results: dict) -> str:
    every = results.get("flags", {}).get("checkpoint_every")
    lines = [f"checkpoint_every={every} steps", "task | task s | checkpoint s | overhead %"]
    total_task = total_ckpt = 0.0
    for i, (task_s, ckpt_s) in enumerate(zip(results["task_seconds"], results["checkpoint_seconds"])):
        # The task-end save comes after the task's clock stops; count it in the task's time too.
        whole = task_s + ckpt_s
        lines.append(f"{i + 1:4d} | {task_s:6.1f} | {ckpt_s:12.2f} | {100 * ckpt_s / whole:6.2f}")
        total_task, total_ckpt = total_task + whole, total_ckpt + ckpt_s
    lines.append(f" all | {total_task:6.1f} | {total_ckpt:12.2f} | {100 * total_ckpt / total_task:6.2f}")
    return "\n".join(lines)


def main(argv):
    path = FLAGS.results
    if path is None:
        work = tempfile.mkdtemp(prefix="ckpt_overhead_")
        cmd = [sys.executable, "-m", "dgm_keras.train", *argv[1:], f"--workdir={work}/work",
               f"--export_dir={work}/exp"]
        print(" ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ, PYTHONPATH=ROOT))
        path = os.path.join(work, "work", "results.json")
    elif len(argv) > 1:
        sys.exit("checkpoint_overhead: give either --results or training flags after --, not both")
    with open(path) as f:
        print(overhead_table(json.load(f)))


if __name__ == "__main__":
    define_flags()
    app.run(main)
