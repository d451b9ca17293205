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
  names complete checkpoints. It also records the run's id (which its export folder
  records too: ``runfolders``), whether the newest finished task is exported yet, and the
  state before the newest checkpoint (``previous``): ``--resume_from=previous`` resumes
  from it when the newest checkpoint is damaged.

Networks grow between tasks, so a restore first rebuilds the method to the recorded shapes
(``ContinualMethod.set_state``), then reads the variables into it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import keras
import tensorflow as tf
from keras.src.random import seed_generator

from dgm_keras import chunks, config, runfolders

STATE_FILE = "state.json"
FORMAT = 2  # 2: past masks stored as packed bits (layers.PackedMasks); format-1 checkpoints hold uint8 masks
RESTART = "or rerun with --restart to set the old run aside and start over"


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


# state.json's fields and their types, checked before anything reads them: a file that is valid
# JSON but not ours (edited by hand, another tool's) must stop the run with one line, not a traceback.
_STATE_FIELDS = {"format": int, "identity": dict, "task_done": int, "task_checkpoint": (str, type(None)),
                 "method_state": (dict, type(None)), "results": (dict, type(None)), "step": (dict, type(None))}
_STEP_FIELDS = {"task": int, "step": int, "checkpoint": str}


def check_state_schema(state) -> None:
    """Raises ValueError naming the first field of ``state`` that is missing or of the wrong type."""
    def check(obj, fields, where):
        if not isinstance(obj, dict):
            raise ValueError(f"{where} is a {type(obj).__name__}, expected an object")
        for name, kind in fields.items():
            if name not in obj:
                raise ValueError(f"{where} lacks {name!r}")
            if not isinstance(obj[name], kind) or isinstance(obj[name], bool) and kind is int:
                raise ValueError(f"{where}[{name!r}] is {type(obj[name]).__name__}")

    check(state, _STATE_FIELDS, "state")
    if state["step"] is not None:
        check(state["step"], _STEP_FIELDS, "state['step']")
    if state["task_done"] >= 0 and (state["task_checkpoint"] is None or state["method_state"] is None
                                    or state["results"] is None):
        raise ValueError(f"state records task {state['task_done'] + 1} done but no checkpoint, method state or results")


def resume_point(workdir: str) -> str:
    """Where a rerun of ``workdir``'s run would resume, as state.json records it, for the Ctrl-C line."""
    try:
        with open(os.path.join(workdir, "checkpoints", STATE_FILE)) as f:
            state = json.load(f)
        check_state_schema(state)
    except (OSError, ValueError):
        return "nothing was checkpointed yet"
    if state["step"] is not None:
        return f"the last checkpoint is task {state['step']['task'] + 1} step {state['step']['step']}"
    if state["task_done"] >= 0:
        return f"the last checkpoint is the end of task {state['task_done'] + 1}"
    return "nothing was checkpointed yet"


class RunCheckpoints:
    def __init__(self, workdir: str, identity: dict):
        self.directory = os.path.join(workdir, "checkpoints")
        self.identity = identity
        self.seconds = 0.0  # time spent saving, for the overhead figure
        self.state = {"task_done": -1, "task_checkpoint": None, "method_state": None, "results": None, "step": None}
        self.run_id = None  # recorded in state.json; None until this run has one

    @property
    def state_path(self) -> str:
        return os.path.join(self.directory, STATE_FILE)

    def load(self) -> dict | None:
        """The recorded state, or None for a fresh run (also when state.json names no checkpoint
        yet: there is nothing to resume, the flags may change). Raises CheckpointError when it
        is unreadable or belongs to another run."""
        if not os.path.exists(self.state_path):
            return None
        try:
            with open(self.state_path) as f:
                state = json.load(f)
            check_state_schema(state)
            recorded = state["identity"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{self.state_path} is corrupt ({type(err).__name__}: {err}); move the folder "
                                  f"{self.directory} away, use another --workdir, {RESTART}") from None
        if state.get("format") != FORMAT:
            raise CheckpointError(f"{self.state_path} has format {state.get('format')!r}, this code reads {FORMAT}; "
                                  f"use another --workdir, {RESTART}")
        self.run_id = state.get("run_id")
        if state.get("task_done", -1) < 0 and not state.get("step"):
            return None  # written at the start of a run that stopped before its first checkpoint
        # The scenario and method first: they are what a user mixed up, more often than a learning rate.
        # A setting added to the code after the checkpoint was written is absent from its identity; at
        # its default (which runs what the code did before it) it is not a difference (d_trunk, session 16).
        added = {k: v for k, v in dataclasses.asdict(config.HyperParams()).items()
                 if k in self.identity and k not in recorded}
        recorded = {**added, **recorded}
        differ = runfolders.first_difference(recorded, self.identity)
        if differ:
            k, n = differ
            raise CheckpointError(
                f"the checkpoint in {self.directory} belongs to another run: {k}={recorded.get(k)!r} there, "
                f"{self.identity.get(k)!r} now ({n} setting(s) differ); rerun with the same flags, "
                f"use another --workdir, {RESTART}")
        self.state = state
        return state

    def _unusable(self, path: str, err: Exception, remedy: str | None = None) -> CheckpointError:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        remedy = remedy or f"move {self.directory} away, use another --workdir, {RESTART}"
        return CheckpointError(f"checkpoint {path} is truncated, corrupt or does not match this run ({first}); {remedy}")

    def verify(self, name: str, remedy: str | None = None) -> None:
        """Reads every tensor of checkpoint ``name``: truncation shows here, not mid-run."""
        path = os.path.join(self.directory, name)
        try:
            reader = tf.train.load_checkpoint(path)
            for key in reader.get_variable_to_shape_map():
                reader.get_tensor(key)
        except Exception as err:  # noqa: BLE001 (TF raises OpError, ValueError, IndexError...)
            raise self._unusable(path, err, remedy) from None

    def verify_state(self, state: dict, remedy: str | None = None) -> None:
        """Reads every checkpoint a resume from ``state`` restores (its step's, its task's)."""
        if state.get("step"):
            self.verify(state["step"]["checkpoint"], remedy)
        if state.get("task_done", -1) >= 0:
            self.verify(state["task_checkpoint"], remedy)

    def usable(self, state: dict | None) -> bool:
        try:
            self.verify_state(state or {})
        except CheckpointError:
            return False
        return bool(state)

    def use(self, state: dict) -> dict:
        """Resume from ``state`` (the recorded ``previous``) instead of the newest."""
        self.state = dict(state, previous=None)
        return self.state

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

    def _previous(self) -> dict | None:
        """The state now recorded, as the ``previous`` of the next checkpoint (the managers keep
        the checkpoints it names: each keeps its two newest)."""
        if self.state.get("task_done", -1) < 0 and not self.state.get("step"):
            return None
        return {k: v for k, v in self.state.items() if k not in ("previous", "format", "identity", "run_id")}

    def save_task(self, task: int, trackables: dict, method_state: dict, results: dict, exported: bool = True) -> None:
        """``exported``: False when the task's exports follow (``mark_exported`` records them):
        a rerun after a failed export then exports the task without training it again."""
        path = self._save("tasks", trackables, task)
        self.write_state({"task_done": task, "task_checkpoint": path, "method_state": method_state,
                          "results": results, "step": None, "exported": exported,
                          "complete": bool(results.get("complete")), "previous": self._previous()})

    def mark_exported(self, results: dict) -> None:
        self.write_state(dict(self.state, results=results, exported=True, complete=bool(results.get("complete"))))

    def save_step(self, task: int, step: int, trackables: dict, extra: dict) -> None:
        path = self._save("steps", trackables, task * 1_000_000 + step)
        self.write_state(dict(self.state, step={"task": task, "step": step, "checkpoint": path, **extra},
                              previous=self._previous()))

    def write_state(self, state: dict) -> None:
        start = time.time()
        os.makedirs(self.directory, exist_ok=True)
        self.state = state
        payload = dict(state, format=FORMAT, identity=self.identity, run_id=self.run_id)
        tmp = f"{self.state_path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)
        self.seconds += time.time() - start


def describe(state: dict) -> str:
    """Where a resume from ``state`` starts: "task 2 step 4", "end of task 1", "none yet"."""
    step = state.get("step")
    if step:
        return f"task {step['task'] + 1} step {step['step']}"
    return f"end of task {state['task_done'] + 1}" if state.get("task_done", -1) >= 0 else "none yet"


class NonFiniteLoss(RuntimeError):
    pass


class StepCheckpointer(chunks.ChunkCallback):
    """Saves through ``save(step)`` at the first chunk end at or after every ``every``-th step of
    a task (never at its last step: the task-end checkpoint follows; at every multiple exactly
    when a chunk is one step), and stops the run at the first NaN or Inf loss, before anything
    of that step is saved.

    The losses (the trackers' means over the epoch so far: a non-finite step leaves them
    non-finite) are read before every save, at every epoch's end and at the first chunk end
    after every ``check_every``-th step, so the message names the steps since the last check;
    reading them at every step would cost as much as the per-batch logs this avoids. At an
    epoch's last step the save waits for ``on_epoch_end``, so that callbacks listed before
    this one (the validation selector) have scored the epoch the checkpoint closes.
    """

    def __init__(self, every: int, save, start_step: int, steps_per_epoch: int, total_steps: int,
                 check_every: int = 10):
        super().__init__(start_step)
        self.every, self.save, self.check_every, self.checked = every, save, check_every, start_step
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps

    def reached(self, before, done, logs):
        save = chunks.crossed(before, done, self.every) and done < self.total_steps and (
            logs is not None or done % self.steps_per_epoch)
        if save or logs is not None or chunks.crossed(before, done, self.check_every):
            self._check(done, logs)
        if save:
            self.save(done)

    def _check(self, done, logs):
        bad = {name: value for name, value in self.losses(logs).items() if not math.isfinite(value)}
        if bad:  # every term that blew up, so the message points at the one to fix (a penalty, a loss)
            self.model.stop_training = True
            terms = ", ".join(f"{name} = {value}" for name, value in bad.items())
            where = f"at step {done}" if done - self.checked == 1 else f"in steps {self.checked + 1}-{done}"
            raise NonFiniteLoss(f"{terms} {where} of the task")
        self.checked = done
