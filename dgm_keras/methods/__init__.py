"""The continual-learning methods, by their --method name."""

from __future__ import annotations

from dgm_keras import config


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
assert tuple(METHODS) == config.METHOD_NAMES


def make_method(name: str, scenario, channels: int, hp: config.HyperParams):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(METHODS)}")
    return METHODS[name](scenario, channels, hp)
