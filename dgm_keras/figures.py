"""Figures drawn from a run's numbers, for TensorBoard and for ``dgm_keras.plots``.

matplotlib with its file-only backend (Agg): no display is needed, and nothing here imports
TensorFlow. Each function returns a ``matplotlib.figure.Figure``; ``png`` turns one into bytes.
Accuracies come in as fractions (as in results.json) and are shown as percentages.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed (pyplot keeps every open one alive)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def save(fig, path: str) -> None:
    """Writes the figure in the format its file name says (.png, .pdf, .svg, .jpg) and closes it."""
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def accuracy_heatmap(matrix, title: str = "Accuracy (%) on each task's classes"):
    """The lower-triangular accuracy matrix: a row per task learned, a column per task scored,
    the value in each cell, a colour bar; cells above the diagonal (not yet seen) are blank."""
    n = len(matrix)
    grid = np.full((n, n), np.nan)
    for i, row in enumerate(matrix):
        grid[i, : len(row)] = 100 * np.asarray(row, dtype=float)
    size = max(3.5, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    ticks = range(n)
    ax.set_xticks(ticks, [f"T{j + 1}" for j in ticks])
    ax.set_yticks(ticks, [f"T{i + 1}" for i in ticks])
    ax.set_xlabel("task scored")
    ax.set_ylabel("after learning task")
    ax.set_title(title)
    for i in range(n):
        for j in range(i + 1):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}" if n > 6 else f"{grid[i, j]:.1f}", ha="center", va="center",
                        fontsize=8, color="black" if grid[i, j] > 60 else "white")
    return fig


def curves(series: dict[str, list[float]], title: str, ylabel: str, percent: bool = True):
    """One line per named series over tasks 1..T (e.g. A_t per method)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, values in series.items():
        values = np.asarray(values, dtype=float) * (100 if percent else 1)
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    longest = max((len(v) for v in series.values()), default=1)
    ax.set_xticks(range(1, longest + 1))
    ax.set_xlabel("after task")
    ax.set_ylabel(ylabel)
    if percent:
        ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if series:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def budget_curves(series: dict[str, list[tuple[float, float, float]]], title: str, target: float | None = None,
                  target_label: str = "paper"):
    """Accuracy (%) against epochs a task on a log axis: per series, (epochs, mean, std) points
    with error bars; ``target`` a dashed reference line."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, points in series.items():
        points = sorted(points)
        epochs, means, stds = (np.asarray(v, dtype=float) for v in zip(*points))
        ax.errorbar(epochs, means, yerr=stds, marker="o", capsize=3, label=name)
        for e, m in zip(epochs, means):
            ax.annotate(f"{m:.1f}", (e, m), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if target is not None:
        ax.axhline(target, color="gray", linestyle="--", label=f"{target_label} {target:.2f}")
    ax.set_xscale("log")
    ticks = sorted({e for points in series.values() for e, _, _ in points})
    ax.set_xticks(ticks, [f"{e:g}" for e in ticks])
    ax.minorticks_off()
    ax.set_xlabel("epochs a task (log scale)")
    ax.set_ylabel("validation A (last task), %")
    ax.set_ylim(0, max([target or 0] + [m + s for points in series.values() for _, m, s in points]) * 1.15)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def image_grid(images: np.ndarray, rows: list[str], title: str):
    """``images``: [R, C, H, W, ch] in [-1, 1], a row per class, labelled with ``rows``."""
    r, c = images.shape[:2]
    fig, axes = plt.subplots(r, c, figsize=(0.6 * c + 0.8, 0.6 * r + 0.5), squeeze=False)
    for i in range(r):
        for j in range(c):
            ax = axes[i][j]
            img = (np.clip(images[i, j], -1, 1) + 1) / 2
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                      vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(rows[i], rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig
