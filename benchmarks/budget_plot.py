"""How the last task's accuracy grows with the training budget: a table and a plot.

    python benchmarks/budget_plot.py --out=docs/plots/budget_cifar10.png --target=56.21 \
        --series="ngf 12=runs/sweep/s11_cifar_budget/ngf12_e2,runs/sweep/s9_cifar_lambda/lam8_ngf12,..."

Each series is ``label=dir,dir,...``: one folder per budget, each a sweep variant (``seed*/``
beneath it) or a single run (``results.json`` in it); ``dir+dir+...`` joins the runs of one
budget kept in several places (the harness's seeds, each in its own ``--workdir``). A point is the mean (± std over the
complete seeds) of the last task's **validation** accuracy at that run's epochs a task: the
budget is a measurement, not a choice, but the test split is kept for settings already chosen.
A straight line in log(epochs) through each series' points says roughly where a target would
be reached; past the measured range that is an extrapolation, and the table says so.
The figure is drawn by ``dgm_keras.figures`` like every other plot of the project.

Runs are deleted long before a plot stops mattering, so ``--out`` also writes the points it drew
beside the figure (``<out>.json``: per series, each budget's epochs, seeds, mean, std, minutes and
where it came from); ``--recorded=<that json>`` draws them again and ``--series`` adds new budgets
to them, so a plot grows by one run without the runs of its earlier points.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sweep import results_of  # noqa: E402 (the sweep's reader, one way to read a run)


def runs_in(folder: str) -> list[dict]:
    """The complete runs of a budget's folder: itself, or its seed* subfolders."""
    found = [results_of(folder)] if os.path.exists(os.path.join(folder, "results.json")) else [
        results_of(d) for d in sorted(glob.glob(os.path.join(folder, "seed*")))]
    return [r for r in found if r and r.get("complete")]


def point(folder: str) -> dict:
    runs = [r for part in folder.split("+") for r in runs_in(part)]
    if not runs:
        raise SystemExit(f"budget_plot: {folder}: no complete run (results.json with complete: true, in it or in seed*/)")
    epochs = {r["hyperparameters"]["epochs_per_task"] for r in runs}
    if len(epochs) != 1:
        raise SystemExit(f"budget_plot: {folder}: runs of different budgets {sorted(epochs)}; expected one")
    last = [100 * r["A_t_validation"][-1] for r in runs]
    return {"source": folder, "epochs": epochs.pop(), "seeds": len(runs), "mean": statistics.mean(last),
            "std": statistics.stdev(last) if len(last) > 1 else 0.0,
            "minutes": statistics.mean(sum(r["task_seconds"]) / 60 for r in runs)}


def log_fit(points: list[dict]) -> tuple[float, float] | None:
    """(a, b) of A = a + b·ln(epochs), least squares; None below two budgets."""
    xs = [math.log(p["epochs"]) for p in points]
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.mean(xs), statistics.mean(p["mean"] for p in points)
    b = sum((x - mx) * (p["mean"] - my) for x, p in zip(xs, points)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def epochs_for(fit: tuple[float, float] | None, target: float) -> float | None:
    if fit is None or fit[1] <= 0:
        return None
    return math.exp((target - fit[0]) / fit[1])


def table(series: list[tuple[str, list[dict]]], target: float | None) -> str:
    lines = ["| series | epochs a task | seeds | validation A(last) | training min |", "|---|---|---|---|---|"]
    for label, points in series:
        for p in points:
            spread = f" ± {p['std']:.2f}" if p["seeds"] > 1 else " (1 seed)"
            lines.append(f"| {label} | {p['epochs']} | {p['seeds']} | {p['mean']:.2f}{spread} | {p['minutes']:.1f} |")
    for label, points in series:
        fit = log_fit(points)
        if fit is None:
            continue
        text = f"{label}: A(last) ≈ {fit[0]:.2f} + {fit[1]:.2f}·ln(epochs a task)"
        needed = epochs_for(fit, target) if target is not None else None
        if needed is not None:
            beyond = " (extrapolated beyond the measured range)" if needed > max(p["epochs"] for p in points) else ""
            text += f"; {target:.2f} at about {needed:,.0f} epochs a task{beyond}"
        lines.append("")
        lines.append(text)
    return "\n".join(lines)


def parse_series(text: str) -> tuple[str, list[str]]:
    label, sep, folders = text.partition("=")
    if not sep or not label or not folders:
        raise SystemExit(f"budget_plot: --series={text!r}: expected label=dir,dir,...")
    return label, folders.split(",")


POINT_KEYS = ("epochs", "seeds", "mean", "std", "minutes", "source")


def read_recorded(path: str) -> tuple[dict, list[tuple[str, list[dict]]]]:
    """The file's title and target, and its series: a points file that ``--out`` wrote (or one written
    by hand from recorded figures)."""
    try:
        with open(path) as f:
            recorded = json.load(f)
        series = [(str(label), [{k: p[k] for k in POINT_KEYS} for p in points])
                  for label, points in recorded["series"].items()]
        if not all(isinstance(p["epochs"], (int, float)) and isinstance(p["mean"], (int, float))
                   for _, points in series for p in points):
            raise TypeError("epochs and mean must be numbers")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SystemExit(f"budget_plot: --recorded={path}: not a points file ({type(e).__name__}: {e}); expected "
                         f'{{"series": {{label: [{{{", ".join(POINT_KEYS)}}}, ...]}}}}, as --out writes it')
    return {k: recorded.get(k) for k in ("title", "target")}, series


def merge(series: list[tuple[str, list[dict]]]) -> list[tuple[str, list[dict]]]:
    """One entry per label, in first-seen order; a budget given twice in one series is refused."""
    merged: dict[str, list[dict]] = {}
    for label, points in series:
        have = merged.setdefault(label, [])
        for p in points:
            twice = [q for q in have if q["epochs"] == p["epochs"]]
            if twice:
                raise SystemExit(f"budget_plot: series {label!r}: {p['epochs']} epochs a task given twice "
                                 f"({twice[0]['source']} and {p['source']}); expected one point a budget")
            have.append(p)
    return [(label, sorted(points, key=lambda p: p["epochs"])) for label, points in merged.items()]


def points_path(out: str) -> str:
    return os.path.splitext(out)[0] + ".json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", action="append", default=[], help="label=dir,dir,... (one dir a budget, or dir+dir+... for one budget's runs in several places); repeat")
    parser.add_argument("--recorded", default="", help="a points file that --out wrote (<out>.json): its points are drawn too")
    parser.add_argument("--target", type=float, default=None, help="a reference figure in %% (a dashed line; "
                        "default: --recorded's)")
    parser.add_argument("--title", default=None, help="the figure's title (default: --recorded's, or a generic one)")
    parser.add_argument("--out", default="", help="where to write the figure (.png, .svg, .pdf; none if empty)")
    args = parser.parse_args()
    if not args.series and not args.recorded:
        raise SystemExit("budget_plot: nothing to draw: give --series=label=dir,... or --recorded=<points file>")
    header, series = read_recorded(args.recorded) if args.recorded else ({}, [])
    args.title = args.title or header.get("title") or "Accuracy after the last task against the budget"
    args.target = header.get("target") if args.target is None else args.target
    series = merge(series + [(label, [point(f) for f in folders]) for label, folders in map(parse_series, args.series)])
    if args.out and os.path.exists(points_path(args.out)):
        try:
            read_recorded(points_path(args.out))
        except SystemExit:  # never overwrite a file that is not an earlier plot's points
            raise SystemExit(f"budget_plot: --out={args.out}: {points_path(args.out)} exists and is not a points file; "
                             "expected a free name or an earlier plot's points") from None
    print(table(series, args.target))
    if args.out:
        from dgm_keras import figures  # noqa: PLC0415 (matplotlib only when a figure is asked for)

        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        figures.save(figures.budget_curves({label: [(p["epochs"], p["mean"], p["std"]) for p in points]
                                            for label, points in series}, args.title, args.target), args.out)
        partial = points_path(args.out) + ".partial"  # written whole, then renamed: --recorded may be this file
        with open(partial, "w") as f:
            json.dump({"title": args.title, "target": args.target, "series": dict(series)}, f, indent=1)
        os.replace(partial, points_path(args.out))
        print(f"\nwrote {args.out} and its points, {points_path(args.out)}")


if __name__ == "__main__":
    main()
