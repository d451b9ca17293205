"""The small interface every continual-learning method implements.

The runner (``dgm_keras.runner``) owns the scenario, evaluation, logging and exports; a
method owns its networks and how a task is learned. Adding a method is one module here,
registered in ``methods/__init__.py``, plus its flagfiles.
"""

from __future__ import annotations

from typing import Callable

import keras

from dgm_keras import config, data, networks


HyperParams = config.HyperParams


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

    def sample(self, labels, seed: int):
        """Generated images of the given seen classes (methods with a generator only)."""
        raise NotImplementedError(f"{self.name} has no generator")

    def parameter_counts(self) -> dict:
        """Trainable weights of what is evaluated (classifier) and of the generator (0 if none)."""
        gen = self.generator()
        return {"classifier": networks.count_weights(self.classifier_model()),
                "generator": 0 if gen is None else networks.count_weights(gen)}

    def report(self) -> dict:
        """Method-specific figures for results.json (sizes, mask usage)."""
        return {}

    def steps_for(self, num_examples: int) -> tuple[int, int]:
        """(epochs, steps per epoch) of a task with ``num_examples`` real training images."""
        if self.hp.steps_per_task > 0:
            return 1, self.hp.steps_per_task
        return self.hp.epochs_per_task, max(1, num_examples // self.hp.batch_size)
