"""The small interface every continual-learning method implements.

The runner (``dgm_keras.runner``) owns the scenario, evaluation, logging and exports; a
method owns its networks and how a task is learned. Adding a method is one module here,
registered in ``methods/__init__.py``, plus its flagfiles.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras

from dgm_keras import data


@dataclasses.dataclass
class HyperParams:
    """Every knob a method reads; filled from flags (``flags/*.cfg`` hold the paper's values)."""

    batch_size: int = 64
    epochs_per_task: int = 1
    steps_per_task: int = 0  # > 0 overrides epochs_per_task
    seed: int = 0
    jit_compile: bool = False
    # DGM
    ngf: int = 6
    d_lr: float = 2e-3
    g_lr: float = 2e-3
    beta_1: float = 0.5
    beta_2: float = 0.999
    gp_weight: float = 1.0
    sparsity_weight: float = 0.08
    s_max: float = 1e4
    ac_weight: float = 0.0
    replay_batch_size: int = 64
    replay_per_class: int = 0  # 0: as many as the current task has training images per class
    reinit_discriminator: bool = False
    embedding_clip: float = 6.0
    grad_clip_norm: float = 1e4


class ContinualMethod:
    """begin_task -> train_task -> end_task, once per task; ``classifier`` is what is evaluated."""

    name = "base"

    def __init__(self, scenario: data.Scenario, channels: int, hp: HyperParams):
        self.scenario, self.channels, self.hp = scenario, channels, hp

    def begin_task(self, task: int, train: data.SplitArrays) -> None:
        raise NotImplementedError

    def train_task(self, task: int, train: data.SplitArrays, callbacks: list[keras.callbacks.Callback]) -> dict:
        """Learns the task; returns the last logged losses."""
        raise NotImplementedError

    def end_task(self, task: int) -> None:
        raise NotImplementedError

    def classifier(self) -> Callable:
        """images float32 [N, 32, 32, C] in [-1, 1] -> logits over the classes seen so far."""
        raise NotImplementedError

    def classifier_model(self) -> keras.Model:
        """The Keras object whose variables the exported classifier carries."""
        raise NotImplementedError

    def generator(self):
        """The generator to export, or None for methods without one."""
        return None

    def report(self) -> dict:
        """Method-specific figures for results.json (sizes, mask usage)."""
        return {}

    def steps_for(self, num_examples: int) -> tuple[int, int]:
        """(epochs, steps per epoch) of a task with ``num_examples`` real training images."""
        if self.hp.steps_per_task > 0:
            return 1, self.hp.steps_per_task
        return self.hp.epochs_per_task, max(1, num_examples // self.hp.batch_size)
