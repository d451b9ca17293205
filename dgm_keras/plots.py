"""Plots drawn from runs' results.json (never by hand), for docs/ and for a look at a sweep.

    python -m dgm_keras.plots --runs=runs/benchmark --out=docs/plots

For each (dataset, split) among the complete runs under --runs:
- ``A_t_<dataset>_<split>.png``: A_t (strict) after each task, a line per method (the mean
  over seeds where a method ran with several; a run with other hyperparameters, an ablation,
  is a line of its own, labelled with what differs: ``dgmw (d_norm=batch)``);
- ``accuracy_matrix_dgmw_<dataset>_<split>.png``: DGMw's final accuracy matrix, a labelled heatmap;
- ``generator_size_<dataset>_<split>.png``: the generator's parameters after each task, a line
  per method that has a generator that grows or not (DGM grows; DGR and MeRGAN stay);
- ``replay_<method>_<dataset>_<split>.png``: images of every class from the final exported
  generator of DGMw (and of DGMa when there is one), a row per class.
``plots.json`` beside them holds every number drawn, by file, so a figure can be checked
against the runs. Runs that are not complete are left out (and named).
"""

from __future__ import annotations

import collections
import json
import os
import sys

import numpy as np
from absl import flags

from dgm_keras import cli, figures, runs

FLAGS = flags.FLAGS
GROUP = "dgm_keras.plots"
REPLAY_METHODS = ("dgmw", "dgma")


def define_flags():
    flags.DEFINE_string("runs", "runs/benchmark", "Folder of runs (searched at every level).", module_name=GROUP)
    flags.DEFINE_string("out", "docs/plots", "Folder the plots are written to (made if missing).", module_name=GROUP)
    flags.DEFINE_integer("per_class", 8, "Replayed images per class in the replay grids.", lower_bound=1,
                         upper_bound=32, module_name=GROUP)


def load(root: str) -> tuple[list[dict], list[str]]:
    """The complete runs' results (with ``_workdir``), and the workdirs left out as incomplete."""
    complete, partial = [], []
    for run in runs.find_runs(root):
        if not run["complete"]:
            partial.append(run["workdir"])
            continue
        with open(os.path.join(run["workdir"], "results.json")) as f:
            results = json.load(f)
        results["_workdir"] = run["workdir"]
        results["_key"] = run["settings"] or run["method"]
        complete.append(results)
    return complete, partial


def _typed_hyperparameters(results: dict) -> int:
    sources = (results.get("settings") or {}).get("sources", {})
    return sum(1 for name in results["hyperparameters"] if sources.get(name) == "command line")


def label_variants(group: list[dict]) -> None:
    """Sets each run's ``_label``: its settings key, plus what differs from that key's usual
    hyperparameters (``dgmw (d_norm=batch)``), so that ablations are never averaged in as seeds."""
    by_key = collections.defaultdict(list)
    for results in group:
        by_key[results["_key"]].append(results)
    for key, same in by_key.items():
        configs = [{k: v for k, v in r["hyperparameters"].items() if k != "seed"} for r in same]
        texts = [json.dumps(c, sort_keys=True) for c in configs]
        typed = [_typed_hyperparameters(r) for r in same]
        # The usual settings: the most runs, then the fewest hyperparameters typed on the command line.
        usual = json.loads(max(sorted(set(texts)), key=lambda t: (
            texts.count(t), -min(n for n, text in zip(typed, texts) if text == t))))
        for results, config in zip(same, configs):
            differ = [f"{k}={config[k]}" for k in sorted(config) if config[k] != usual.get(k)]
            results["_label"] = f"{key} ({', '.join(differ)})" if differ else key


def _split(results: dict) -> str:
    return f"{results['scenario']['num_tasks']}x{results['scenario']['classes_per_task']}"


def _mean_by_label(group: list[dict], values) -> dict[str, list[float]]:
    by_label = collections.defaultdict(list)
    for results in group:
        series = values(results)
        if series:
            by_label[results["_label"]].append(series)
    return {label: np.mean(np.asarray(s, dtype=float), axis=0).tolist() for label, s in sorted(by_label.items())}


def _resolve(path: str, results: dict) -> str:
    """An export path as the run recorded it (relative to where it ran), found from here."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    recorded = os.path.normpath(results.get("flags", {}).get("workdir") or "")
    workdir = os.path.abspath(results["_workdir"])
    if recorded and not os.path.isabs(recorded) and workdir.endswith(os.sep + recorded):
        return os.path.join(workdir[: -len(recorded)], path)
    return path


def replay_grid(results: dict, per_class: int):
    """Images of every class from the run's last exported generator; None without one."""
    exports = results.get("exports") or []
    path = exports[-1].get("generator") if exports else None
    if not path or not os.path.isdir(_resolve(path, results)):
        return None
    from dgm_keras import quiet  # noqa: PLC0415

    tf = quiet.tensorflow_imported()
    seen = results["scenario"]["num_tasks"] * results["scenario"]["classes_per_task"]
    draw = tf.saved_model.load(_resolve(path, results)).signatures["sample"]
    labels = np.repeat(np.arange(seen, dtype=np.int32), per_class)
    images = draw(labels=tf.constant(labels), seed=tf.constant(0, tf.int64))["images"].numpy()
    names = results["scenario"]["class_names"]
    return images.reshape(seen, per_class, *images.shape[1:]), [f"{c}: {names[c]}" for c in range(seen)]


def draw_all(complete: list[dict], out: str, per_class: int) -> dict:
    """Writes every plot; returns {file: the numbers drawn}."""
    os.makedirs(out, exist_ok=True)
    drawn = {}
    groups = collections.defaultdict(list)
    for results in complete:
        groups[(results["scenario"]["dataset"], _split(results))].append(results)
    for (dataset, split), group in sorted(groups.items()):
        label_variants(group)
        name = f"{dataset}_{split}"
        a_t = _mean_by_label(group, lambda r: r["A_t"])
        figures.save(figures.curves(a_t, f"A_t after each task, {dataset} {split} (strict; mean over seeds)",
                                    "A_t (%)"), os.path.join(out, f"A_t_{name}.png"))
        drawn[f"A_t_{name}.png"] = a_t
        sizes = _mean_by_label(group, lambda r: (r.get("method_report") or {}).get("generator_size_after_task"))
        if sizes:
            figures.save(figures.curves(sizes, f"Generator size after each task, {dataset} {split}", "parameters",
                                        percent=False), os.path.join(out, f"generator_size_{name}.png"))
            drawn[f"generator_size_{name}.png"] = sizes
        dgmw = [r for r in group if r["_label"] == "dgmw"]
        if dgmw:
            first = min(dgmw, key=lambda r: r["hyperparameters"].get("seed", 0))
            figures.save(figures.accuracy_heatmap(first["accuracy_matrix"], f"DGMw, {dataset} {split}: accuracy (%) "
                                                  f"after each task, seed {first['hyperparameters'].get('seed')}"),
                         os.path.join(out, f"accuracy_matrix_dgmw_{name}.png"))
            drawn[f"accuracy_matrix_dgmw_{name}.png"] = first["accuracy_matrix"]
        for method in REPLAY_METHODS:
            chosen = [r for r in group if r["_label"] == method]  # the usual settings, not an ablation
            grid = replay_grid(min(chosen, key=lambda r: r["hyperparameters"].get("seed", 0)), per_class) if chosen else None
            if grid is not None:
                images, rows = grid
                figures.save(figures.image_grid(images, rows, f"{method}: replay of every class after the last task, "
                                                f"{dataset} {split}"), os.path.join(out, f"replay_{method}_{name}.png"))
                drawn[f"replay_{method}_{name}.png"] = {"classes": len(rows), "per_class": per_class}
    with open(os.path.join(out, "plots.json"), "w") as f:
        json.dump(drawn, f, indent=1)
    return drawn


def main(argv):
    del argv  # cli.run refuses extra arguments
    if not os.path.isdir(FLAGS.runs):
        sys.exit(f"plots: --runs={FLAGS.runs!r}: no such folder; allowed: a folder of runs, e.g. runs/benchmark")
    complete, partial = load(FLAGS.runs)
    for workdir in partial:
        print(f"plots: left out (not complete): {workdir}")
    if not complete:
        sys.exit(f"plots: no complete run under {FLAGS.runs}; allowed: a folder holding finished runs' results.json")
    try:
        drawn = draw_all(complete, FLAGS.out, FLAGS.per_class)
    except OSError as err:
        sys.exit(f"plots: --out={FLAGS.out!r} cannot be written ({err.strerror or type(err).__name__})")
    for name in drawn:
        print(os.path.join(FLAGS.out, name))


def run() -> None:
    """The command (``python -m dgm_keras.plots``, or ``dgm-plots`` once installed)."""
    define_flags()
    cli.run(main, "plots", __doc__, [GROUP])


if __name__ == "__main__":
    run()
