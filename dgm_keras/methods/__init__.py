"""The continual-learning methods, by their --method name."""

from __future__ import annotations

from dgm_keras import data
from dgm_keras.methods import base


def _dgmw(scenario, channels, hp):
    from dgm_keras.methods import dgm  # noqa: PLC0415

    return dgm.DGM(scenario, channels, hp, mask_mode="weight")


def _dgma(scenario, channels, hp):
    from dgm_keras.methods import dgm  # noqa: PLC0415

    return dgm.DGM(scenario, channels, hp, mask_mode="activation")


def _joint(scenario, channels, hp):
    from dgm_keras.methods import supervised  # noqa: PLC0415

    return supervised.Supervised(scenario, channels, hp, joint=True)


def _finetune(scenario, channels, hp):
    from dgm_keras.methods import supervised  # noqa: PLC0415

    return supervised.Supervised(scenario, channels, hp, joint=False)


METHODS = {"dgmw": _dgmw, "dgma": _dgma, "joint": _joint, "finetune": _finetune}


def make_method(name: str, scenario: data.Scenario, channels: int, hp: base.HyperParams) -> base.ContinualMethod:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(METHODS)}")
    return METHODS[name](scenario, channels, hp)
