"""Lists the runs under a folder: dataset, method, split, seed, how far, A_t strict.

    python -m dgm_keras.runs                   # the runs under runs/
    python -m dgm_keras.runs --root=runs/benchmark --json

A run is a folder holding ``results.json`` (written after every task) or, for a run killed
before its first task ended, ``checkpoints/state.json``. Runs set aside by ``--restart``
(``set_aside/``) are left out. Reads files only: no TensorFlow, it answers in a second.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags

from dgm_keras import cli

FLAGS = flags.FLAGS
GROUP = "dgm_keras.runs"
SKIP = ("set_aside", "checkpoints", "tb", "savedmodels", "classifier", "generator")


def define_flags():
    flags.DEFINE_string("root", "runs", "Folder to search (every level below it).", module_name=GROUP)
    flags.DEFINE_bool("json", False, "Print one JSON object a run instead of the table.", module_name=GROUP)


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def describe(workdir: str) -> dict | None:
    """One run's line, from its results.json (or its state.json); None when neither is readable."""
    results = _read(os.path.join(workdir, "results.json"))
    if results is None:
        state = _read(os.path.join(workdir, "checkpoints", "state.json")) or {}
        results = state.get("results")
        identity = state.get("identity") or {}
        if results is None:
            if not identity:
                return None
            results = {"method": identity.get("method"), "A_t": [],
                       "scenario": {"dataset": identity.get("dataset"), "classes_per_task": identity.get("classes_per_task"),
                                    "num_tasks": None}, "hyperparameters": {"seed": identity.get("seed")}}
    scenario = results.get("scenario", {})
    flags_ = results.get("flags", {})
    seed = results.get("hyperparameters", {}).get("seed", flags_.get("seed"))
    tasks, done = scenario.get("num_tasks"), len(results.get("A_t", []))
    settings = flags_.get("settings") or results.get("method")
    return {"workdir": workdir, "dataset": scenario.get("dataset"), "method": results.get("method"),
            "settings": settings, "split": f"{tasks}x{scenario.get('classes_per_task')}" if tasks else "?",
            "seed": seed, "complete": bool(results.get("complete")), "tasks_done": done, "num_tasks": tasks,
            "A_t": results["A_t"][-1] if done else None, "started_at": results.get("started_at")}


def find_runs(root: str) -> list[dict]:
    """Follows symbolic links, so a folder of links to chosen runs (say, one sweep's variant and
    another's) can be plotted or listed as one set; each real folder is read once, so a link back
    up the tree does not loop."""
    runs, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = sorted(d for d in subfolders if d not in SKIP)
        if "results.json" in files or os.path.exists(os.path.join(folder, "checkpoints", "state.json")):
            run = describe(folder)
            if run is not None:
                runs.append(run)
    return runs


def table(runs: list[dict], root: str) -> str:
    rows = [("run", "dataset", "method", "split", "seed", "state", "A_t strict")]
    for r in runs:
        state = "complete" if r["complete"] else f"task {r['tasks_done']} of {r['num_tasks'] or '?'}"
        method = r["method"] if r["settings"] in (None, r["method"]) else f"{r['method']} ({r['settings']})"
        rows.append((os.path.relpath(r["workdir"], root), str(r["dataset"]), str(method), r["split"], str(r["seed"]),
                     state, "-" if r["A_t"] is None else f"{100 * r['A_t']:.2f}%"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def main(argv):
    del argv  # cli.run refuses extra arguments
    root = FLAGS.root
    if not os.path.isdir(root):
        sys.exit(f"runs: --root={root!r}: no such folder; allowed: a folder of runs (train writes runs/<run_name>)")
    runs = find_runs(root)
    if FLAGS.json:
        for run in runs:
            print(json.dumps(run))
    elif not runs:
        print(f"runs: no runs under {root} (a run is a folder with results.json or checkpoints/state.json)")
    else:
        print(table(runs, root))


def run() -> None:
    """The command (``python -m dgm_keras.runs``, or ``dgm-runs`` once installed)."""
    define_flags()
    cli.run(main, "runs", __doc__, [GROUP])


if __name__ == "__main__":
    run()
