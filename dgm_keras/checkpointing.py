"""Checkpoints of a run, so that rerunning the same command after a kill resumes it.

Under ``<workdir>/checkpoints``:
- ``tasks/``: a ``tf.train.CheckpointManager`` checkpoint after every finished task (the
  method's lasting state: grown networks, masks, importance weights, memories);
- ``steps/``: one every ``--checkpoint_every`` steps within a task (adds the task's trainer:
  optimizer slots, the step counter, its seed generators);
- ``state.json``: what the newest checkpoints are, the run's identity (dataset, scenario,
  method, hyperparameters), the method's shapes to rebuild before restoring, and the
  results so far. It is written atomically *after* the checkpoint it names, and each
  manager keeps the previous checkpoint, so a kill at any moment leaves a state.json that
  names complete checkpoints.

Networks grow between tasks, so a restore first rebuilds the method to the recorded shapes
(``ContinualMethod.set_state``), then reads the variables into it.
"""

from __future__ import annotations

import json
import math
import os
import time

import keras
import tensorflow as tf
from keras.src.random import seed_generator

STATE_FILE = "state.json"
FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run; nothing is overwritten."""


def global_seed_state() -> tf.Variable:
    """Keras' global seed generator (initializers without a seed draw from it): saved so a
    resumed run initialises new layers exactly as an uninterrupted one."""
    return seed_generator.global_seed_generator().state


def with_variable_lists(trackables: dict) -> dict:
    """Adds every Keras layer's variables as a list: in Keras 3.15, layers held in Python lists
    (``Discriminator.trunk``, ``Generator.masked_layers``) are not ``tf.train.Checkpoint``
    dependencies of their model (keras-team/keras#18398), so a model alone would be saved
    without them. Lists are matched by position; the model rebuilt to the recorded shapes
    lists its variables in the same order."""
    out = dict(trackables)
    for name, obj in trackables.items():
        if isinstance(obj, keras.layers.Layer):
            out[f"{name}__variables"] = list(obj.variables)
    return out


class RunCheckpoints:
    def __init__(self, workdir: str, identity: dict):
        self.directory = os.path.join(workdir, "checkpoints")
        self.identity = identity
        self.seconds = 0.0  # time spent saving, for the overhead figure
        self.state = {"task_done": -1, "task_checkpoint": None, "method_state": None, "results": None, "step": None}

    @property
    def state_path(self) -> str:
        return os.path.join(self.directory, STATE_FILE)

    def load(self) -> dict | None:
        """The recorded state, or None for a fresh run. Raises CheckpointError when it is
        unreadable or belongs to another run."""
        if not os.path.exists(self.state_path):
            return None
        try:
            with open(self.state_path) as f:
                state = json.load(f)
            recorded = state["identity"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{self.state_path} is corrupt ({type(err).__name__}: {err}); move the folder "
                                  f"{self.directory} away or use another --workdir") from None
        if state.get("format") != FORMAT:
            raise CheckpointError(f"{self.state_path} has format {state.get('format')!r}, this code reads {FORMAT}; "
                                  "use another --workdir")
        # The scenario and method first: they are what a user mixed up, more often than a learning rate.
        first = ("dataset", "method", "classes_per_task", "class_order")
        diff = sorted((k for k in set(recorded) | set(self.identity) if recorded.get(k) != self.identity.get(k)),
                      key=lambda k: (k not in first, first.index(k) if k in first else 0, k))
        if diff:
            k = diff[0]
            raise CheckpointError(
                f"the checkpoint in {self.directory} belongs to another run: {k}={recorded.get(k)!r} there, "
                f"{self.identity.get(k)!r} now ({len(diff)} setting(s) differ); rerun with the same flags, "
                "or use another --workdir")
        self.state = state
        return state

    def _unusable(self, path: str, err: Exception) -> CheckpointError:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        return CheckpointError(f"checkpoint {path} is truncated, corrupt or does not match this run ({first}); "
                               f"move {self.directory} away or use another --workdir")

    def verify(self, name: str) -> None:
        """Reads every tensor of checkpoint ``name``: truncation shows here, not mid-run."""
        path = os.path.join(self.directory, name)
        try:
            reader = tf.train.load_checkpoint(path)
            for key in reader.get_variable_to_shape_map():
                reader.get_tensor(key)
        except Exception as err:  # noqa: BLE001 (TF raises OpError, ValueError, IndexError...)
            raise self._unusable(path, err) from None

    def restore(self, trackables: dict, name: str) -> None:
        """Reads checkpoint ``name`` (as state.json records it) into ``trackables``; every
        variable they hold must be in it."""
        path = os.path.join(self.directory, name)
        try:
            status = tf.train.Checkpoint(**with_variable_lists(trackables)).restore(path)
            status.assert_existing_objects_matched()
        except Exception as err:  # noqa: BLE001 (TF raises OpError, ValueError, AssertionError, IndexError...)
            raise self._unusable(path, err) from None

    def _save(self, kind: str, trackables: dict, number: int) -> str:
        start = time.time()
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(**with_variable_lists(trackables)),
                                             os.path.join(self.directory, kind),
                                             max_to_keep=2, checkpoint_name=kind[:-1])
        path = manager.save(checkpoint_number=number)
        self.seconds += time.time() - start
        return os.path.relpath(path, self.directory)  # the run's folder may move

    def save_task(self, task: int, trackables: dict, method_state: dict, results: dict) -> None:
        path = self._save("tasks", trackables, task)
        self.write_state({"task_done": task, "task_checkpoint": path, "method_state": method_state,
                          "results": results, "step": None, "complete": bool(results.get("complete"))})

    def save_step(self, task: int, step: int, trackables: dict, extra: dict) -> None:
        path = self._save("steps", trackables, task * 1_000_000 + step)
        self.write_state(dict(self.state, step={"task": task, "step": step, "checkpoint": path, **extra}))

    def write_state(self, state: dict) -> None:
        start = time.time()
        os.makedirs(self.directory, exist_ok=True)
        self.state = state
        payload = dict(state, format=FORMAT, identity=self.identity)
        tmp = f"{self.state_path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)
        self.seconds += time.time() - start


class NonFiniteLoss(RuntimeError):
    pass


class StepCheckpointer(keras.callbacks.Callback):
    """Saves through ``save(step)`` every ``every`` steps of a task (never at its last step:
    the task-end checkpoint follows), and stops the run at the first NaN or Inf loss, before
    anything of that step is saved.

    At an epoch's last step the save waits for ``on_epoch_end``, so that callbacks listed
    before this one (the validation selector) have scored the epoch the checkpoint closes.
    """

    def __init__(self, every: int, save, start_step: int, steps_per_epoch: int, total_steps: int):
        super().__init__()
        self.every, self.save, self.step = every, save, start_step
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps

    def _due(self) -> bool:
        return self.every > 0 and self.step % self.every == 0 and self.step < self.total_steps

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        for name, value in (logs or {}).items():
            if not math.isfinite(float(value)):
                self.model.stop_training = True
                raise NonFiniteLoss(f"{name} = {float(value)} at step {self.step} of the task")
        if self._due() and self.step % self.steps_per_epoch:
            self.save(self.step)

    def on_epoch_end(self, epoch, logs=None):
        if self._due():
            self.save(self.step)
