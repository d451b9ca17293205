"""Which settings a (dataset, method) pair runs with, found the same way by every entry point.

The defaults live in ``config.HyperParams`` (and, for the flags that are not hyperparameters,
in ``train.py``'s flag definitions). A pair's settings file ``flags/<dataset>_<key>.cfg``
holds only where that pair departs from them; ``key`` is a method name or a variant of one
(``ewc_m``: EWC with a memory). ``train`` applies the file of its ``--dataset`` and
``--settings`` (by default ``--method``) under what the user typed, and ``benchmark`` runs
each entry through that same path, so ``python -m dgm_keras.train --dataset=cifar10`` gets
CIFAR-10's settings rather than MNIST's. A pair with no file is an error naming the pair:
a silent fall-back to another dataset's settings is how the wrong figures were made.

Nothing here imports TensorFlow: a missing file fails in a second.
"""

from __future__ import annotations

import os
import re

from dgm_keras import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A checkout's flags/; an installed package (``pip install .``) carries them as dgm_keras/flagfiles.
SETTINGS_DIR = next((d for d in (os.path.join(ROOT, "flags"), os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                           "flagfiles")) if os.path.isdir(d)),
                    os.path.join(ROOT, "flags"))

# Settings keys that are not method names, and their method.
VARIANTS = {"ewc_m": "ewc", "si_m": "si", "rwalk_m": "rwalk", "mergan_ra": "mergan"}
KEYS = (*config.METHOD_NAMES, *VARIANTS)

_LINE = re.compile(r"--([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$")


class SettingsError(ValueError):
    """A missing or malformed settings file; the message is one line naming it."""


def method_of(key: str) -> str:
    return VARIANTS.get(key, key)


def path(dataset: str, key: str) -> str:
    return os.path.join(SETTINGS_DIR, f"{dataset}_{key}.cfg")


def relative(file: str) -> str:
    """A settings file as the user would type it (``flags/mnist_dgma.cfg``)."""
    rel = os.path.relpath(file, ROOT)
    return file if rel.startswith("..") else rel


def available(key: str) -> list[str]:
    """The datasets that have settings for ``key``."""
    return [name for name in config.DATASETS if os.path.exists(path(name, key))]


def read_flagfile(file: str, _seen: tuple[str, ...] = ()) -> dict[str, tuple[str | bool, str]]:
    """``{flag: (raw value, "file:line")}`` of an absl flagfile, nested ``--flagfile`` lines
    included where they stand (a later line wins, as in absl). Booleans may be written
    ``--name`` / ``--noname``; their raw value is then True / False. Nested paths are taken
    relative to the repository root when they do not exist relative to the working directory."""
    if file in _seen:
        raise SettingsError(f"{relative(file)}: includes itself through {' -> '.join(map(relative, _seen))}")
    try:
        with open(file) as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise SettingsError(f"{relative(file)}: cannot be read ({err.strerror})") from None
    values: dict[str, tuple[str | bool, str]] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(("#", "//")):
            continue
        where = f"{relative(file)}:{number}"
        match = _LINE.match(line)
        if not match:
            raise SettingsError(f"{where}: {line!r} is not a flag; allowed: --name=value, --name, --noname, # comments")
        name, raw = match.groups()
        if name == "flagfile" and raw:
            nested = raw if os.path.exists(raw) else os.path.join(ROOT, raw)
            values.update(read_flagfile(nested, (*_seen, file)))
        elif raw is None:  # a boolean: --name or --noname
            values[name[2:] if name.startswith("no") else name] = (not name.startswith("no"), where)
        else:
            values[name] = (raw, where)
    return values


def load(dataset: str, key: str) -> dict[str, tuple[str | bool, str]]:
    """The settings of the pair, checked to belong to it."""
    if key not in KEYS:
        raise SettingsError(f"--settings={key!r} is not allowed; allowed: {', '.join(KEYS)}")
    file = path(dataset, key)
    if not os.path.exists(file):
        others = available(key)
        raise SettingsError(
            f"no settings for --dataset={dataset} with {key}: {relative(file)} does not exist "
            f"(datasets with {key} settings: {', '.join(others) or 'none'}); write that file "
            f"(see flags/README.md) rather than run another dataset's settings")
    values = read_flagfile(file)
    for name, expected in (("dataset", dataset), ("method", method_of(key))):
        given, where = values.get(name, (None, relative(file)))
        if given != expected:
            raise SettingsError(f"{where}: --{name}={given} in the settings of ({dataset}, {key}); expected --{name}={expected}")
    return values
