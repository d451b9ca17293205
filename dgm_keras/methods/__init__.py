"""The continual-learning methods, by their --method name.

Each entry names the module under ``dgm_keras.methods`` and the class implementing
``base.ContinualMethod`` (with its fixed keyword arguments); modules are imported only when
their method is made, so the entry point stays fast and one broken baseline cannot break
another.
"""

from __future__ import annotations

import importlib

from dgm_keras import config

METHODS = {
    "dgmw": ("dgm", "DGM", {"mask_mode": "weight"}),
    "dgma": ("dgm", "DGM", {"mask_mode": "activation"}),
    "joint": ("supervised", "Supervised", {"joint": True}),
    "finetune": ("supervised", "Supervised", {"joint": False}),
    "ewc": ("regularization", "EWC", {}),
    "si": ("regularization", "SI", {}),
    "rwalk": ("regularization", "RWalk", {}),
    "icarl": ("icarl", "ICaRL", {}),
    "dgr": ("dgr", "DGR", {}),
    "mergan": ("mergan", "MeRGAN", {}),
}
assert tuple(METHODS) == config.METHOD_NAMES


def make_method(name: str, scenario, channels: int, hp: config.HyperParams):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(METHODS)}")
    module, cls, kwargs = METHODS[name]
    return getattr(importlib.import_module(f"dgm_keras.methods.{module}"), cls)(scenario, channels, hp, **kwargs)
