"""A run's own folders: ``<workdir>`` and its export folder ``<export_dir>/<run_name>``.

- Who owns an export folder: ``<export_dir>/<run_name>/run.json`` records the run that writes
  there (its id, kept in ``<workdir>/checkpoints/state.json``, its workdir and its identity:
  ``runner.run_identity``). Another run is refused before it trains, so a folder's versions
  never come from two runs; the same run resuming writes on.
- Whether both folders can be written: a probe file is written and removed before training.
- ``--restart``: the old run's files are moved (never deleted) under ``set_aside/<time>/``
  inside the same folders.

No TensorFlow here: train.py probes the folders before importing it, so the check takes a second.
"""

from __future__ import annotations

import json
import os
import time

RUN_FILE = "run.json"  # in the export folder: the run that writes there
FORMAT = 1
SET_ASIDE = "set_aside"
WORKDIR_ITEMS = ("checkpoints", "tb", "results.json")  # what a run writes in its workdir
EXPORT_ITEMS = ("classifier", "generator", RUN_FILE)  # ... and in its export folder
# The scenario and method first when saying what differs: they are what a user mixed up most.
FIRST = ("dataset", "method", "classes_per_task", "class_order")


class FolderError(ValueError):
    """A run folder that this run must not or cannot write; the message is one line."""


def first_difference(recorded: dict, now: dict) -> tuple[str, int] | None:
    """The setting to name when two identities differ, and how many differ."""
    diff = sorted((k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k)),
                  key=lambda k: (k not in FIRST, FIRST.index(k) if k in FIRST else 0, k))
    return (diff[0], len(diff)) if diff else None


def _created_dirs(path: str) -> list[str]:
    """The folders ``os.makedirs(path)`` would create, outermost first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing[::-1]


def probe_writable(path: str, flag: str) -> None:
    """Writes and removes a probe file in ``path`` (creating the missing folders, and removing
    them again): raises FolderError with one line when that fails. Leaves everything as it was."""
    created = _created_dirs(path)
    probe = os.path.join(path, f".write-probe-{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "w") as f:
            f.write("probe")
        os.remove(probe)
    except OSError as err:
        reason = f"{type(err).__name__}: {err.strerror or err}"
        raise FolderError(f"--{flag}: {path} cannot be written ({reason}); use a folder this user can write") from None
    finally:
        for folder in reversed(created):
            try:
                os.rmdir(folder)
            except OSError:
                pass


def exported_versions(export_root: str) -> list[str]:
    """``classifier/3``, ``generator/1``...: the versions a server would load from the folder."""
    found = []
    for model in ("classifier", "generator"):
        folder = os.path.join(export_root, model)
        if os.path.isdir(folder):
            found += [f"{model}/{name}" for name in sorted(os.listdir(folder), key=lambda n: (len(n), n)) if name.isdigit()]
    return found


def read_owner(export_root: str) -> dict | None:
    """The export folder's ``run.json``; None when it has none. Raises FolderError when unreadable."""
    path = os.path.join(export_root, RUN_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            owner = json.load(f)
        owner["run_id"], owner["identity"]  # noqa: B018 (both must be there)
        return owner
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FolderError(f"{path} is corrupt ({type(err).__name__}); move {export_root} away, or use another "
                          "--run_name or --export_dir") from None


def check_export_folder(export_root: str, run_id: str | None, identity: dict, resuming: bool) -> None:
    """Raises FolderError when the export folder holds versions of another run.

    ``run_id``: this run's id, None for a fresh run (which owns nothing yet). A folder without
    versions is free (the run claims it). One with versions but no ``run.json`` was written
    before exports recorded their run: a resuming run takes it over, a fresh one is refused."""
    versions = exported_versions(export_root)
    if not versions:
        return
    owner = read_owner(export_root)
    todo = f"use another --run_name or --export_dir, or move {export_root} away"
    if owner is None:
        if resuming:
            return
        raise FolderError(f"{export_root} holds exports ({', '.join(versions[:3])}{', ...' if len(versions) > 3 else ''}) "
                          f"that this fresh run did not write; {todo}")
    if owner["run_id"] == run_id and not first_difference(owner["identity"], identity):
        return
    what = f"checkpoints in {owner.get('workdir', '?')}"
    differ = first_difference(owner["identity"], identity)
    if differ:
        k, n = differ
        what += f"; {k}={owner['identity'].get(k)!r} there, {identity.get(k)!r} now ({n} setting(s) differ)"
    raise FolderError(f"{export_root} holds the exports of another run ({what}); {todo}")


def claim_export_folder(export_root: str, run_id: str, identity: dict, workdir: str) -> None:
    """Records this run as the folder's owner (written atomically; only when it changes)."""
    owner = {"format": FORMAT, "run_id": run_id, "workdir": os.path.abspath(workdir), "identity": identity}
    path = os.path.join(export_root, RUN_FILE)
    try:
        current = read_owner(export_root)
    except FolderError:
        current = None
    if current is not None and {k: current.get(k) for k in owner} == owner:
        return
    os.makedirs(export_root, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(dict(owner, written=time.strftime("%Y-%m-%dT%H:%M:%S%z")), f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def recorded_run_id(state_path: str) -> str | None:
    """The run id in a ``state.json``, if it can be read."""
    try:
        with open(state_path) as f:
            return json.load(f).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def set_aside(workdir: str, export_root: str, run_id: str | None) -> list[str]:
    """``--restart``: moves the old run's files (checkpoints, TensorBoard logs, results.json;
    its exported versions and run.json) under ``set_aside/<time>/`` in the same folders.
    Returns the new places. Raises FolderError, before moving anything, when the export folder
    belongs to a run of another workdir (that run's exports are not this run's to move)."""
    owner = read_owner(export_root) if exported_versions(export_root) else None
    if owner is not None and owner["run_id"] != run_id and owner.get("workdir") != os.path.abspath(workdir):
        raise FolderError(f"{export_root} holds the exports of another run (checkpoints in {owner.get('workdir', '?')}); "
                          f"--restart only sets aside this run's own; use another --run_name or --export_dir, "
                          f"or move {export_root} away")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for root, items in ((workdir, WORKDIR_ITEMS), (export_root, EXPORT_ITEMS)):
        present = [name for name in items if os.path.lexists(os.path.join(root, name))]
        if not present:
            continue
        dest = os.path.join(root, SET_ASIDE, stamp)
        n = 1
        while os.path.exists(dest):
            n += 1
            dest = os.path.join(root, SET_ASIDE, f"{stamp}-{n}")
        os.makedirs(dest)
        for name in present:
            os.replace(os.path.join(root, name), os.path.join(dest, name))
        moved.append(dest)
    return moved
