"""Growing networks between tasks, carrying every old weight and mask across.

Keras cannot add state to a built layer, so growth builds a new model and copies each old
variable into the leading slice of its new, larger counterpart (growth only ever appends
units or inputs, so "leading slice" is the whole rule).
"""

from __future__ import annotations

import math

import numpy as np

from dgm_keras import networks


def _key(variable) -> str:
    """A variable's path without the model's own name, to pair old and new models."""
    return variable.path.split("/", 1)[-1]


def carry_weights(old, new, skip=lambda key: False) -> None:
    """Copies each variable of ``old`` into the leading slice of the same-named one in ``new``."""
    new_vars = {_key(v): v for v in new.variables}
    for v in old.variables:
        key = _key(v)
        if key not in new_vars or skip(key):
            continue
        target = new_vars[key]
        value = np.array(target.numpy())
        old_value = v.numpy()
        if any(o > n for o, n in zip(old_value.shape, value.shape)) or old_value.ndim != value.ndim:
            raise ValueError(f"cannot carry {key}: old shape {old_value.shape} does not fit {value.shape}")
        value[tuple(slice(0, d) for d in old_value.shape)] = old_value
        target.assign(value)


def newly_reserved(layer) -> int:
    """n_t: entries (weights or units) the current task uses that no past task reserved."""
    current = layer.binary_current_masks()
    reserved = {k: r.numpy() for k, r in layer.reserved().items()}
    return int(sum(np.sum(current[k] * (1 - reserved[k])) for k in current))


def free_capacity(layer) -> int:
    """Entries no past task reserved."""
    return int(sum(np.sum(1 - r.numpy()) for r in layer.reserved().values()))


def growth_per_layer(generator) -> list[int]:
    """Units to add to each masked layer so free capacity returns to what it was before the task."""
    growth = []
    for layer in generator.masked_layers:
        n = newly_reserved(layer)
        growth.append(n if layer.mask_mode == "activation" else math.ceil(n / layer.fan_in()))
    return growth


def expand_generator(old: networks.Generator, name: str | None = None) -> networks.Generator:
    """Ends the current task: its binary masks join the past masks, the masked layers grow by
    what it newly reserved, and a fresh head (and fresh mask embeddings) await the next task."""
    growth = growth_per_layer(old)
    widths = tuple(w + g for w, g in zip(old.widths, growth))
    new = networks.Generator(widths, old.num_classes, old.channels, old.mask_mode,
                             num_past_tasks=old.num_past_tasks + 1,
                             head_widths=old.head_widths + (widths[-1],), nz=old.nz, mask_init=old.mask_init,
                             name=name or old.name).build_all()
    # Past masks are packed bits (layers.PackedMasks): a byte's place depends on the layer's
    # shape, so they are carried unpacked, each old mask into the leading slice of its new place.
    carry_weights(old, new, skip=lambda key: "mask_embedding" in key or "past_masks" in key)
    task = old.num_past_tasks
    for old_layer, new_layer in zip(old.masked_layers, new.masked_layers):
        for mask_name, binary in old_layer.binary_current_masks().items():
            past = new_layer.past_masks[mask_name]
            value = np.zeros(past.shape, np.uint8)
            value[(slice(0, task), *(slice(0, d) for d in binary.shape))] = old_layer.past_masks[mask_name].numpy()
            value[(task, *(slice(0, d) for d in binary.shape))] = binary
            past.assign(value)
    return new


def grow_discriminator(old: networks.Discriminator, num_classes: int, channels: int,
                       fresh: bool = False) -> networks.Discriminator:
    """A discriminator whose classifier head covers ``num_classes``; old rows kept unless ``fresh``."""
    new = networks.Discriminator(num_classes, old.widths, old.norm, old.trunk_kind, name=old.name).build_all(channels)
    if not fresh:
        carry_weights(old, new)
    return new


def generator_size(generator: networks.Generator) -> int:
    """Weights of the generator (kernels, biases, norms), without mask embeddings or masks."""
    return networks.count_weights(generator)
