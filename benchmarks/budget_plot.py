"""How the last task's accuracy grows with the training budget: a table and an SVG plot.

    python benchmarks/budget_plot.py --out=docs/cifar10_budget.svg --target=56.21 \
        --series="ngf 12=runs/sweep/s11_cifar_budget/ngf12_e2,runs/sweep/s9_cifar_lambda/lam8_ngf12,..."

Each series is ``label=dir,dir,...``: one folder per budget, each a sweep variant (``seed*/``
beneath it) or a single run (``results.json`` in it). A point is the mean (± std over the
complete seeds) of the last task's **validation** accuracy at that run's epochs a task: the
budget is a measurement, not a choice, but the test split is kept for settings already chosen.
A straight line in log(epochs) through each series' points says roughly where a target would
be reached; past the measured range that is an extrapolation, and the table says so.
No plotting library: the SVG is written by hand, so the project needs nothing more.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sweep import results_of  # noqa: E402 (the sweep's reader, one way to read a run)


def runs_in(folder: str) -> list[dict]:
    """The complete runs of a budget's folder: itself, or its seed* subfolders."""
    found = [results_of(folder)] if os.path.exists(os.path.join(folder, "results.json")) else [
        results_of(d) for d in sorted(glob.glob(os.path.join(folder, "seed*")))]
    return [r for r in found if r and r.get("complete")]


def point(folder: str) -> dict:
    runs = runs_in(folder)
    if not runs:
        raise SystemExit(f"budget_plot: {folder}: no complete run (results.json with complete: true, in it or in seed*/)")
    epochs = {r["hyperparameters"]["epochs_per_task"] for r in runs}
    if len(epochs) != 1:
        raise SystemExit(f"budget_plot: {folder}: runs of different budgets {sorted(epochs)}; expected one")
    last = [100 * r["A_t_validation"][-1] for r in runs]
    return {"folder": folder, "epochs": epochs.pop(), "seeds": len(runs), "mean": statistics.mean(last),
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


def svg(series: list[tuple[str, list[dict]]], target: float | None, title: str) -> str:
    width, height, left, right, top, bottom = 640, 400, 60, 170, 40, 50
    epochs = [p["epochs"] for _, pts in series for p in pts]
    x_lo, x_hi = math.log(min(epochs)) - 0.2, math.log(max(epochs)) + 0.2
    y_hi = max([p["mean"] + p["std"] for _, pts in series for p in pts] + [target or 0]) * 1.1
    y_hi = 10 * math.ceil(y_hi / 10)

    def x(e):
        return left + (math.log(e) - x_lo) / (x_hi - x_lo) * (width - left - right)

    def y(a):
        return height - bottom - a / y_hi * (height - top - bottom)

    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2 - right / 2:.0f}" y="20" text-anchor="middle" font-size="14">{title}</text>',
           f'<line x1="{left}" y1="{y(0):.1f}" x2="{width - right}" y2="{y(0):.1f}" stroke="black"/>',
           f'<line x1="{left}" y1="{y(0):.1f}" x2="{left}" y2="{y(y_hi):.1f}" stroke="black"/>',
           f'<text x="{(left + width - right) / 2:.0f}" y="{height - 12}" text-anchor="middle">epochs a task (log scale)</text>',
           f'<text transform="translate(16,{(top + height - bottom) / 2:.0f}) rotate(-90)" text-anchor="middle">'
           'validation A(last task), %</text>']
    for tick in range(0, int(y_hi) + 1, 10):
        out.append(f'<line x1="{left - 4}" y1="{y(tick):.1f}" x2="{left}" y2="{y(tick):.1f}" stroke="black"/>'
                   f'<text x="{left - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick}</text>')
    for e in sorted(set(epochs)):
        out.append(f'<line x1="{x(e):.1f}" y1="{y(0):.1f}" x2="{x(e):.1f}" y2="{y(0) + 4:.1f}" stroke="black"/>'
                   f'<text x="{x(e):.1f}" y="{y(0) + 18:.1f}" text-anchor="middle">{e}</text>')
    if target is not None:
        out.append(f'<line x1="{left}" y1="{y(target):.1f}" x2="{width - right}" y2="{y(target):.1f}" '
                   'stroke="gray" stroke-dasharray="6,4"/>'
                   f'<text x="{width - right + 6}" y="{y(target) + 4:.1f}" fill="gray">paper {target:.2f}</text>')
    for i, (label, points) in enumerate(series):
        colour = colours[i % len(colours)]
        points = sorted(points, key=lambda p: p["epochs"])
        path = " ".join(f"{x(p['epochs']):.1f},{y(p['mean']):.1f}" for p in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for p in points:
            cx, cy = x(p["epochs"]), y(p["mean"])
            if p["std"]:
                out.append(f'<line x1="{cx:.1f}" y1="{y(p["mean"] - p["std"]):.1f}" x2="{cx:.1f}" '
                           f'y2="{y(p["mean"] + p["std"]):.1f}" stroke="{colour}"/>')
            out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{colour}"/>'
                       f'<text x="{cx + 6:.1f}" y="{cy - 6:.1f}" fill="{colour}">{p["mean"]:.1f}</text>')
        out.append(f'<text x="{width - right + 6}" y="{top + 20 + 18 * i}" fill="{colour}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def parse_series(text: str) -> tuple[str, list[str]]:
    label, sep, folders = text.partition("=")
    if not sep or not label or not folders:
        raise SystemExit(f"budget_plot: --series={text!r}: expected label=dir,dir,...")
    return label, folders.split(",")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", action="append", required=True, help="label=dir,dir,... (one dir a budget); repeat")
    parser.add_argument("--target", type=float, default=None, help="a reference figure in %% (a dashed line)")
    parser.add_argument("--title", default="Accuracy after the last task against the budget")
    parser.add_argument("--out", default="", help="where to write the SVG (none if empty)")
    args = parser.parse_args()
    series = [(label, [point(f) for f in folders]) for label, folders in map(parse_series, args.series)]
    print(table(series, args.target))
    if args.out:
        with open(args.out, "w") as f:
            f.write(svg(series, args.target, args.title))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
