"""Continual-learning metrics: the accuracy matrix and what is read off it.

``matrix[i][j]`` is the test accuracy on the classes of task j after learning task i
(j <= i; None above the diagonal). A_t is the accuracy over the test images of all classes
seen after task t, with no task identity given.
"""

from __future__ import annotations

import numpy as np

from dgm_keras import data


def predict(classifier, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Predicted scenario-order labels."""
    preds = [np.argmax(np.asarray(classifier(images[i:i + batch_size])), axis=-1)
             for i in range(0, len(images), batch_size)]
    return np.concatenate(preds) if preds else np.zeros((0,), np.int64)


def evaluate_after_task(classifier, split: data.SplitArrays, scenario: data.Scenario, task: int) -> dict:
    """Per-class and per-task accuracy, and A_t, on ``split`` restricted to the seen classes."""
    seen = range(0, scenario.seen_classes(task))
    part = split.of_classes(seen)
    correct = predict(classifier, part.images) == part.labels
    per_class = [float(np.mean(correct[part.labels == c])) for c in seen]
    per_task = []
    for j in range(task + 1):
        cls = scenario.task_classes(j)
        mask = (part.labels >= cls.start) & (part.labels < cls.stop)
        per_task.append(float(np.mean(correct[mask])))
    return {"accuracy": float(np.mean(correct)), "per_class": per_class, "per_task": per_task}


def summarise(matrix: list[list[float]]) -> dict:
    """A_t, average forgetting and backward transfer of a (lower-triangular) accuracy matrix."""
    t = len(matrix) - 1
    last = matrix[-1]
    if t == 0:
        return {"forgetting": 0.0, "backward_transfer": 0.0}
    forgetting = [max(matrix[i][j] for i in range(j, t)) - last[j] for j in range(t)]
    bwt = [last[j] - matrix[j][j] for j in range(t)]
    return {"forgetting": float(np.mean(forgetting)), "backward_transfer": float(np.mean(bwt))}


def format_table(matrix: list[list[float]], accuracies: list[float], title: str) -> str:
    """The accuracy matrix as text: a row per task learned, a column per task scored, then A_t."""
    n = len(matrix)
    lines = [title, "after | " + " ".join(f"T{j + 1:<5d}" for j in range(n)) + " |  A_t"]
    for i, row in enumerate(matrix):
        cells = " ".join(f"{100 * v:6.2f}" for v in row) + " " * 7 * (n - len(row))
        lines.append(f"T{i + 1:<4d} | {cells}| {100 * accuracies[i]:6.2f}")
    return "\n".join(lines)


# A task "ends near chance" when one of its own classes, just learned, is scored at most
# CHANCE_FACTOR x chance_level: a run that diverged while its losses stayed finite (a learning
# rate far too high) ends there, and a warning says so.
CHANCE_FACTOR = 1.5


def chance_level(seen_classes: int) -> float:
    """What a class scores when nothing was learned of it: 1/K, guessing among the K seen classes."""
    return 1.0 / seen_classes


def class_near_chance(per_class: list[float], task_classes: range) -> int | None:
    """The task's weakest class if it scores at most CHANCE_FACTOR x chance, else None.

    Judged class by class, not on the task's mean: a classifier that collapsed onto one class
    scores 1/c on the mean of a c-class task, as much as a healthy one on hard classes (CIFAR-10
    5x2 joint training, deer and dog: 54.75% on the mean, each class far above 1/K), but 0 on
    its other classes; one that guesses scores 1/K on each. Never with one class seen (every
    answer is right), so a first task of one class is not judged."""
    seen = len(per_class)
    if seen < 2:
        return None
    weakest = min(task_classes, key=lambda c: per_class[c])
    return weakest if per_class[weakest] <= CHANCE_FACTOR * chance_level(seen) else None
