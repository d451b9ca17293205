"""What results.json says about itself: its units, when the run ran, and which code ran it.

A figure is only as good as what it can be traced to: a results.json read months later (or
by ``dgm_keras.plots``) must say whether 0.52 is a fraction or a percentage, when it was
made, and from which commit, without the console log that printed it.
"""

from __future__ import annotations

import datetime
import os
import subprocess

import dgm_keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

UNITS = {
    "accuracy": "fractions in [0, 1]: accuracy_matrix[_selected], A_t[_selected|_validation|_validation_selected], "
                "per_class_accuracy, forgetting[_selected], backward_transfer[_selected] (the console prints them "
                "as percentages)",
    "accuracy_matrix": "row i: after learning task i+1; column j: accuracy on the test images of task j+1's classes",
    "per_class_accuracy": "row i: after task i+1; column c: class c in the scenario's order (scenario.class_names)",
    "task_seconds": "wall-clock seconds of each task's training and evaluation (a resumed task: summed over its runs)",
    "checkpoint_seconds": "of task_seconds, the seconds spent writing checkpoints",
    "started_at": "UTC, ISO 8601, when the run first started (a resume keeps it); finished_at: when its last task "
                  "was exported (null until then)",
    "last_losses": "the training losses of the last task finished, each the mean of its tracker over that task's "
                   "last fit call: its last epoch (with --steps_per_task: all its steps; after a resume within the "
                   "task: the steps since the resume); in the losses' own units",
    "generator_size_after_task": "parameters of the generator after each task (method_report)",
    "parameters": "trainable weights of the classifier and of the generator (0 if none) after the last task finished",
}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def code_version() -> dict:
    """The package version, and the git commit of the checkout it runs from when there is one
    (``dirty``: files differ from that commit). No git or no repository: ``git_commit`` None."""
    version = {"package": dgm_keras.__version__, "git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return version
        status = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return version
    version["git_commit"] = commit.stdout.strip()
    version["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    return version
