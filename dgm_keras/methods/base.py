"""The small interface every continual-learning method implements.

The runner (``dgm_keras.runner``) owns the scenario, evaluation, logging, checkpoints and
exports; a method owns its networks and how a task is learned. Adding a method is one module
here, registered in ``methods/__init__.py``, plus its flagfiles.
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from dgm_keras import chunks, config, data, distribution, networks


HyperParams = config.HyperParams


def fit_steps(trainer: keras.Model, make_dataset: Callable[[], tf.data.Dataset], epochs: int, steps: int,
              callbacks: list[keras.callbacks.Callback], start_step: int = 0,
              max_chunk: int = chunks.MAX_STEPS_PER_EXECUTION) -> dict:
    """Runs steps ``start_step`` .. ``epochs * steps`` of a task on the repeated stream ``make_dataset()``.

    With ``steps_per_epoch`` set, Keras keeps one iterator across epochs, so step k of a task
    always sees batch k of the stream; skipping ``start_step`` batches makes a resumed task
    see exactly the batches an uninterrupted one would. A partial first epoch is its own
    ``fit`` call so that epoch ends (where validation selection scores) stay where they were.
    Each call gets a newly made dataset: a second iterator over the same one would reshuffle
    differently from the uninterrupted stream. Steps run in chunks of
    ``chunks.steps_per_execution`` (at most ``max_chunk``) per compiled call: one return to
    Python a chunk.
    """
    chunks.check_callbacks(callbacks)
    distribution.prepare_for_fit(trainer)
    chunk = chunks.steps_per_execution(steps, start_step, min(max_chunk, distribution.max_steps_per_call(trainer)))
    if trainer.steps_per_execution != chunk:  # set after compile (which resets it); retraces once
        trainer.steps_per_execution, trainer.train_function = chunk, None
    epoch, into = divmod(start_step, steps)
    history = None
    if into:
        history = trainer.fit(make_dataset().skip(start_step), initial_epoch=epoch, epochs=epoch + 1,
                              steps_per_epoch=steps - into, callbacks=callbacks, verbose=0, shuffle=False)
        epoch += 1
    if epoch < epochs:
        history = trainer.fit(make_dataset().skip(epoch * steps), initial_epoch=epoch, epochs=epochs,
                              steps_per_epoch=steps, callbacks=callbacks, verbose=0, shuffle=False)
    return {} if history is None else {k: float(v[-1]) for k, v in history.history.items()}


class ContinualMethod:
    """begin_task -> train_task -> end_task, once per task; ``classifier`` is what is evaluated.

    Methods whose task is one ``fit`` of ``self.trainer`` on ``self.pipeline(...)`` need not
    override ``train_task``; resuming mid-task then works through ``fit_steps``.
    """

    name = "base"
    trainer: keras.Model | None = None
    # The trainer (a ``gan.GANTrainer``) whose averaged classifier is scored while its task trains.
    _averaging: keras.Model | None = None

    def __init__(self, scenario: data.Scenario, channels: int, hp: HyperParams):
        self.scenario, self.channels, self.hp = scenario, channels, hp

    def begin_task(self, task: int, train: data.SplitArrays) -> None:
        raise NotImplementedError

    def pipeline(self, task: int, train: data.SplitArrays) -> tf.data.Dataset:
        """The task's repeated, seeded batch stream that ``trainer.train_step`` consumes."""
        raise NotImplementedError

    def train_task(self, task: int, train: data.SplitArrays, callbacks: list[keras.callbacks.Callback],
                   start_step: int = 0, max_chunk: int = chunks.MAX_STEPS_PER_EXECUTION) -> dict:
        """Learns the task (from step ``start_step`` when resuming, in compiled chunks of at most
        ``max_chunk`` steps); returns the last logged losses."""
        epochs, steps = self.task_steps(train)
        return fit_steps(self.trainer, lambda: self.pipeline(task, train), epochs, steps, callbacks, start_step,
                         max_chunk)

    def end_task(self, task: int) -> None:
        raise NotImplementedError

    def classifier(self) -> Callable:
        """images float32 [N, 32, 32, C] in [-1, 1] -> logits over the classes seen so far.

        While a task trains with ``--classifier_ema`` (``begin_averaging``), the averaged classifier
        (``gan.GANTrainer.averaged_classify``): what the task ends with, so what the validation
        selector must score. Otherwise the shared backbone's classifier head, ``classifier_model().classify``,
        compiled once per model (a grown network is a new model): the runner scores ~19k
        images at every epoch's end, which eager layer calls made several times slower.
        """
        if self._averaging is not None:
            if getattr(self, "_averaged_for", None) is not self._averaging:
                self._averaged_classify, self._averaged_for = self._averaging.averaged_classify(), self._averaging
            return self._averaged_classify
        model = self.classifier_model()
        if getattr(self, "_classify_for", None) is not model:
            self._classify = tf.function(lambda images: model.classify(images, training=False), reduce_retracing=True)
            self._classify_for = model
        return self._classify

    def begin_averaging(self) -> None:
        """After ``self.trainer`` (a ``gan.GANTrainer``) is compiled: ``classifier`` scores its averages."""
        self._averaging = self.trainer if self.trainer._c_average else None

    def end_averaging(self) -> None:
        """When the task ends: the averages become the weights, and ``classifier`` the live one."""
        self.trainer.swap_in_averages()
        self._averaging = None

    def classifier_model(self) -> keras.Model:
        """The Keras object whose variables the exported classifier carries."""
        raise NotImplementedError

    def generator(self):
        """The generator to export, or None for methods without one."""
        return None

    def sample(self, labels, seed: int):
        """Generated images of the given seen classes (methods with a generator only)."""
        raise NotImplementedError(f"{self.name} has no generator")

    # -- checkpoints (dgm_keras/checkpointing.py)
    def state(self) -> dict:
        """JSON: what ``set_state`` needs to rebuild this method's objects with the shapes
        they have after the last finished task, plus its bookkeeping for ``report``."""
        return {}

    def set_state(self, state: dict, task_data: Callable[[int], data.SplitArrays]) -> None:
        """Rebuilds the objects ``state`` describes (variables are read in afterwards);
        ``task_data(t)`` gives task t's training arrays, for methods that keep past data."""

    def trackables(self) -> dict:
        """Everything with lasting variables, after a task has ended."""
        out = {"classifier": self.classifier_model()}
        if self.generator() is not None:
            out["generator"] = self.generator()
        return out

    def step_trackables(self) -> dict:
        """Within a task: the lasting state plus the task's trainer (optimizer slots, step
        counters, seed generators; ``checkpointing`` adds each model's variable list)."""
        return {**self.trackables(), "trainer": self.trainer}

    def parameter_counts(self) -> dict:
        """Trainable weights of what is evaluated (classifier) and of the generator (0 if none)."""
        gen = self.generator()
        return {"classifier": networks.count_weights(self.classifier_model()),
                "generator": 0 if gen is None else networks.count_weights(gen)}

    def report(self) -> dict:
        """Method-specific figures for results.json (sizes, mask usage)."""
        return {}

    def task_steps(self, train: data.SplitArrays) -> tuple[int, int]:
        """(epochs, steps per epoch) of the task whose real training images are ``train``."""
        return self.steps_for(len(train.labels))

    def planned_steps(self, sizes: list[int]) -> list[int]:
        """Steps of every task of the run, from each task's count of real training images (the
        run's ETA, the run-wide step axis)."""
        return [epochs * steps for epochs, steps in map(self.steps_for, sizes)]

    def steps_for(self, num_examples: int) -> tuple[int, int]:
        """(epochs, steps per epoch) of a task with ``num_examples`` real training images."""
        if self.hp.steps_per_task > 0:
            return 1, self.hp.steps_per_task
        return self.hp.epochs_per_task, max(1, num_examples // self.hp.batch_size)
