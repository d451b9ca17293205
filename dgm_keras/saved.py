"""Reading what a run exported, for the commands that use it (``evaluate``, ``sample``).

A ``--model`` is a version folder (``savedmodels/<run>/classifier/3``) or the model base path
above the versions (``savedmodels/<run>/classifier``: the highest version, as TF Serving picks
it). The export folder's ``run.json`` (written by the run, ``runfolders.py``) says which
scenario the version belongs to (dataset, classes a task, class order, seed); the run's
``results.json`` adds the class names. Every problem is a ``SavedError`` with one line.

Nothing here imports TensorFlow until a model is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os

from dgm_keras import runfolders


class SavedError(ValueError):
    """A --model that is not what the command needs; one line naming it."""


@dataclasses.dataclass(frozen=True)
class Version:
    path: str  # the version folder
    kind: str  # classifier or generator
    version: int  # the task number (1-based)
    run: dict | None  # the export folder's run.json, when there is one
    class_names: list[str] | None  # from the run's results.json, when it can be read

    @property
    def shown(self) -> str:
        """The path as the user would type it: relative when under the working directory."""
        rel = os.path.relpath(self.path)
        return self.path if rel.startswith("..") else rel

    @property
    def identity(self) -> dict:
        return (self.run or {}).get("identity", {})

    def seen_classes(self) -> int | None:
        """Classes this version knows: classes a task x tasks learned (None without run.json)."""
        per_task = self.identity.get("classes_per_task")
        return None if per_task is None else per_task * self.version


def find(model: str, kind: str) -> Version:
    """The version folder ``model`` names (or the highest one below it), checked to be a ``kind``."""
    path = os.path.abspath(model)
    if not os.path.isdir(path):
        raise SavedError(f"--model={model!r}: no such folder; allowed: an export's {kind}/<version> folder, e.g. "
                         f"savedmodels/<run>/{kind}/1")
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        versions = [int(n) for n in os.listdir(path) if n.isdigit() and os.path.isdir(os.path.join(path, n))]
        if not versions:
            raise SavedError(f"--model={model!r} holds neither a SavedModel nor numbered versions; allowed: an "
                             f"export's {kind}/<version> folder, e.g. savedmodels/<run>/{kind}/1")
        path = os.path.join(path, str(max(versions)))
    folder, version = os.path.split(path)
    base, found_kind = os.path.split(folder)
    if not version.isdigit():
        raise SavedError(f"--model={model!r}: {version!r} is not a version number; allowed: {kind}/<version>")
    if found_kind != kind:
        raise SavedError(f"--model={model!r} is a {found_kind!r} export; allowed: a {kind} export "
                         f"(<export_dir>/<run>/{kind}/<version>)")
    try:
        run = runfolders.read_owner(base)
    except runfolders.FolderError:
        run = None
    return Version(path, kind, int(version), run, _class_names(run))


def _class_names(run: dict | None) -> list[str] | None:
    if not run or not run.get("workdir"):
        return None
    try:
        with open(os.path.join(run["workdir"], "results.json")) as f:
            return list(json.load(f)["scenario"]["class_names"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def signature(version: Version, name: str):
    """The loaded SavedModel's signature ``name``."""
    import tensorflow as tf  # noqa: PLC0415

    try:
        loaded = tf.saved_model.load(version.path)
    except (OSError, tf.errors.OpError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise SavedError(f"--model={version.path!r} cannot be loaded ({type(err).__name__}: {first})") from None
    if name not in loaded.signatures:
        raise SavedError(f"--model={version.path!r} has no {name!r} signature (it has {sorted(loaded.signatures)}); "
                         f"allowed: a {version.kind} export of dgm_keras")
    return loaded.signatures[name]
