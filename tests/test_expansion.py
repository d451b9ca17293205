"""Expansion: past tasks' outputs unchanged, free capacity restored, sizes as the formula says."""

import math

import numpy as np
import pytest
import tensorflow as tf

from dgm_keras import expansion, networks
from dgm_keras.methods import dgm


def _trained_like(gen, seed):
    """Does what a task's training may do: a random sparse mask, new values for every free weight."""
    rng = np.random.default_rng(seed)
    free = dgm.protection_multipliers(gen)
    for layer in gen.masked_layers:
        for e in layer.embeddings.values():
            e.assign(np.where(rng.random(e.shape) < 0.3, 1.0, -1.0).astype(np.float32))
        for v in (layer.kernel, layer.bias):
            fresh = rng.normal(size=v.shape).astype(np.float32) * 0.3
            v.assign(np.where(free[v.path] > 0, fresh, v.numpy()))
    return gen


@pytest.mark.parametrize("mode", ["weight", "activation"])
def test_past_tasks_unchanged_and_capacity_restored(mode):
    gen = networks.Generator((12, 8, 4), 10, 1, mode, name="generator").build_all()
    z = tf.random.normal((6, networks.NZ), seed=1)
    y = tf.constant([0, 1, 0, 1, 0, 1])
    outputs = {}
    for task in range(3):
        gen = _trained_like(gen, task)
        outputs[task] = gen(z, y, s=1e4, training=False).numpy()  # current task, binary masks at s_max
        free_before = [expansion.free_capacity(layer) for layer in gen.masked_layers]
        fan_in = [layer.fan_in() for layer in gen.masked_layers]
        reserved_now = [expansion.newly_reserved(layer) for layer in gen.masked_layers]
        old_widths, old_size = gen.widths, expansion.generator_size(gen)
        gen = expansion.expand_generator(gen)
        for t, want in outputs.items():  # every past task, from the grown network
            np.testing.assert_allclose(gen(z, y, task=t, training=False).numpy(), want, atol=1e-5)
        for i, layer in enumerate(gen.masked_layers):
            grown = gen.widths[i] - old_widths[i]
            want_growth = reserved_now[i] if mode == "activation" else math.ceil(reserved_now[i] / fan_in[i])
            assert grown == want_growth
            # Free entries now = free before the task - what it reserved + the new units'
            # entries + entries added because the layer's input grew.
            in_growth = 0 if i == 0 else gen.widths[i - 1] - old_widths[i - 1]
            if mode == "weight":
                k = layer.kernel_size ** 2
                added_inputs = in_growth * k * old_widths[i]
                expect = free_before[i] - reserved_now[i] + grown * (layer.fan_in()) + added_inputs
            else:
                expect = free_before[i] - reserved_now[i] + grown
            assert expansion.free_capacity(layer) == expect
            assert expansion.free_capacity(layer) - (added_inputs if mode == "weight" else 0) >= free_before[i]
        # Parameter count: the kernels' and biases' shapes follow the widths.
        widths = (networks.NZ,) + gen.widths
        masked_params = sum(16 * widths[i] * widths[i + 1] + widths[i + 1] for i in range(3))
        heads = sum(2 * w + 16 * w * 1 + 1 for w in gen.head_widths)  # BN gamma/beta, output conv + bias
        assert expansion.generator_size(gen) == masked_params + heads
        assert expansion.generator_size(gen) >= old_size


def test_discriminator_head_grows_keeping_old_rows():
    d = networks.Discriminator(2).build_all(1)
    x = tf.random.normal((3, 32, 32, 1), seed=2)
    before = d.classify(x).numpy()
    d2 = expansion.grow_discriminator(d, 4, 1)
    after = d2.classify(x).numpy()
    assert after.shape == (3, 4)
    np.testing.assert_allclose(after[:, :2], before, atol=1e-5)
