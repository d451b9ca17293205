"""What a person watching a run sees while a task trains: the task's progress, the losses that
say whether it is healthy, and when the whole run should end.

On a terminal (``--progress=bar``, or ``auto`` when stdout is one) one line is redrawn at most
every ``BAR_SECONDS``; elsewhere (CI logs, ``nohup``; ``--progress=line``) one line is printed
as each task's training ends. Values are read between compiled chunks (``chunks``), never per
step, so the bar costs no speed.
"""

from __future__ import annotations

import sys
import time

from dgm_keras import chunks

MODES = ("auto", "bar", "line", "none")
BAR_SECONDS = 0.5
# The losses shown, where the trainer logs them: the critic's and generator's objectives and the
# classifier's (DGM, DGR, MeRGAN), or the classifier's single loss (the other baselines).
SHOWN = ("d_loss", "g_loss", "cls_loss", "loss")


def resolve_mode(mode: str, stream=None) -> str:
    """``auto``: a redrawn bar on a terminal, one line a task otherwise."""
    if mode not in MODES:
        raise ValueError(f"--progress={mode!r} is not allowed; allowed: {', '.join(MODES)}")
    if mode != "auto":
        return mode
    stream = stream or sys.stdout
    return "bar" if hasattr(stream, "isatty") and stream.isatty() else "line"


def duration(seconds: float) -> str:
    """4s, 3m05s, 2h07m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class RunClock:
    """The run's steps (all tasks) and this process's pace, for the run's ETA: a resumed run
    counts the steps done before it as done, and times only its own."""

    def __init__(self, total_steps: int, done_before: int):
        self.total, self.done_before, self.start = total_steps, done_before, time.time()

    def eta(self, done: int) -> float | None:
        """Seconds until the run's last step at this process's pace (evaluations and exports
        between tasks included), None before the first step."""
        ran = done - self.done_before
        if ran <= 0:
            return None
        return (self.total - done) * (time.time() - self.start) / ran


class TaskProgress(chunks.ChunkCallback):
    """The progress of task ``task`` (0-based) of ``num_tasks``, ``total`` steps, from ``start``."""

    def __init__(self, task: int, num_tasks: int, total: int, start: int, run_step: int, clock: RunClock,
                 mode: str, stream=None):
        super().__init__(start)
        self.task, self.num_tasks, self.total, self.run_step, self.clock = task, num_tasks, total, run_step, clock
        self.mode, self.stream = mode, stream or sys.stdout
        self.started, self.drawn = time.time(), 0.0

    def reached(self, before, done, logs):
        if self.mode == "none":
            return
        last = done >= self.total
        if self.mode == "bar" and (last or time.time() - self.drawn >= BAR_SECONDS):
            self.drawn = time.time()
            self.stream.write("\r" + self.line(done, logs) + ("\n" if last else ""))
            self.stream.flush()
        elif self.mode == "line" and last:
            self.stream.write(self.line(done, logs) + "\n")
            self.stream.flush()

    def line(self, done: int, logs) -> str:
        width = 20
        filled = width * done // max(self.total, 1)
        losses = self.losses(logs)
        shown = [k for k in SHOWN if k in losses] or list(losses)[:3]
        eta = self.clock.eta(self.run_step + done)
        run = 100 * (self.run_step + done) / max(self.clock.total, 1)
        return (f"task {self.task + 1}/{self.num_tasks} [{'=' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                f"{duration(time.time() - self.started)}  " + " ".join(f"{k} {losses[k]:.4g}" for k in shown)
                + f"  | run {run:.0f}%, ETA {'?' if eta is None else duration(eta)}")
