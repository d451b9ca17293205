"""Masked layers: the hard threshold, where gradients go, past masks, serialisation."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from dgm_keras import layers as masked


def test_hard_threshold_is_binary_with_sigmoid_gradient():
    x = tf.constant([-3.0, -0.1, 0.2, 4.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = masked.hard_threshold(x)
    np.testing.assert_array_equal(y.numpy(), [0, 0, 1, 1])
    sig = tf.sigmoid(x).numpy()
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), sig * (1 - sig), rtol=1e-5)


@pytest.mark.parametrize("cls,shape,kw", [
    (masked.MaskedDense, (3, 5), dict(units=4)),
    (masked.MaskedConv2D, (2, 8, 8, 3), dict(filters=4, kernel_size=3, strides=2)),
    (masked.MaskedConv2DTranspose, (2, 4, 4, 3), dict(filters=4, kernel_size=4, strides=2)),
])
@pytest.mark.parametrize("mode", ["weight", "activation"])
def test_forward_uses_mask_and_gradients_reach_embeddings(cls, shape, kw, mode):
    layer = cls(mask_mode=mode, **kw)
    x = tf.random.normal(shape, seed=0)
    layer(x)
    rng = np.random.default_rng(0)
    for emb in layer.embeddings.values():  # a mixed mask, as training leaves it
        emb.assign(rng.normal(size=emb.shape).astype(np.float32))
    e = layer.embeddings["kernel" if mode == "weight" else "units"]
    with tf.GradientTape() as tape:
        out = layer(x, s=1.0)
        loss = tf.reduce_sum(out ** 2)
    grads = dict(zip([v.path for v in layer.trainable_variables], tape.gradient(loss, layer.trainable_variables)))
    assert out.shape == layer.compute_output_shape(shape)
    assert grads[e.path] is not None and float(tf.reduce_sum(tf.abs(grads[e.path]))) > 0
    # The forward pass is the same layer with the binary mask applied by hand.
    m = (e.numpy() > 0).astype(np.float32)
    if mode == "weight":
        ref_kernel = layer.kernel.numpy() * m
        ref = layer.linear(x, ref_kernel) + layer.bias * (layer.embeddings["bias"].numpy() > 0)
    else:
        ref = (layer.linear(x, layer.kernel) + layer.bias) * m
    np.testing.assert_allclose(out.numpy(), np.asarray(ref), atol=1e-5)


def test_all_off_mask_silences_the_layer_and_blocks_weight_gradients():
    layer = masked.MaskedDense(4, mask_mode="weight")
    x = tf.ones((2, 3))
    layer(x)
    for e in layer.embeddings.values():
        e.assign(-tf.ones_like(e))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, s=10.0))
    g = tape.gradient(loss, layer.kernel)
    assert float(tf.reduce_sum(tf.abs(layer(x)))) == 0.0
    assert float(tf.reduce_sum(tf.abs(g))) == 0.0


def test_past_task_masks_select_their_weights():
    layer = masked.MaskedDense(2, mask_mode="weight", num_past_tasks=2, use_bias=False)
    x = tf.ones((1, 2))
    layer(x)
    layer.kernel.assign([[1.0, 2.0], [3.0, 4.0]])
    layer.past_masks["kernel"].assign(np.array([[[1, 0], [0, 0]], [[0, 0], [0, 1]]], np.uint8))
    np.testing.assert_array_equal(layer(x, task=0).numpy(), [[1.0, 0.0]])
    np.testing.assert_array_equal(layer(x, task=1).numpy(), [[0.0, 4.0]])
    np.testing.assert_array_equal(layer.reserved()["kernel"].numpy(), [[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="task=2: this layer holds masks of tasks 0..1"):
        layer(x, task=2)


def test_config_round_trip_and_save_load_keep_masks(tmp_path):
    inp = keras.Input((6, 6, 2))
    layer = masked.MaskedConv2D(3, 3, 1, mask_mode="weight", num_past_tasks=1, name="mc")
    model = keras.Model(inp, layer(inp))
    layer.past_masks["kernel"].assign(np.random.default_rng(0).integers(0, 2, layer.past_masks["kernel"].shape).astype(np.uint8))
    clone = masked.MaskedConv2D.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 2)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_array_equal(loaded.get_layer("mc").past_masks["kernel"].numpy(),
                                  layer.past_masks["kernel"].numpy())
    assert loaded.get_layer("mc").past_masks["kernel"].dtype == "uint8"


def test_bad_mode_rejected():
    with pytest.raises(ValueError, match="mask_mode='bits'; allowed: weight, activation"):
        masked.MaskedDense(3, mask_mode="bits")


@pytest.mark.parametrize("shape", [(1,), (31,), (32,), (33,), (3, 5, 2), (4, 4, 6, 13)])
def test_past_masks_are_packed_bits_read_back_exactly(shape):
    # Stored 32 entries an int32 word; every read (one task in-graph, the union, numpy) gives
    # the uint8 masks that were assigned, whatever the size's remainder mod 32 (the first
    # entry is a word's sign bit, which an arithmetic shift must not smear).
    rng = np.random.default_rng(len(shape))
    masks = (rng.random((3, *shape)) < 0.4).astype(np.uint8)
    masks[0].flat[0] = 1
    packed = tf.Variable(np.zeros((3, masked.packed_size(shape)), np.int32))
    view = masked.PackedMasks(packed, shape)
    view.assign(masks)
    assert packed.shape == (3, math.ceil(np.prod(shape) / 32)) and view.shape == masks.shape
    np.testing.assert_array_equal(view.numpy(), masks)
    for t in range(3):
        np.testing.assert_array_equal(view[t].numpy(), masks[t])
    np.testing.assert_array_equal(view.union().numpy(), masks.max(axis=0))
    jit = tf.function(lambda: (view[1], view.union()), jit_compile=True)()  # the bit ops compile under XLA
    np.testing.assert_array_equal(jit[0].numpy(), masks[1])
    np.testing.assert_array_equal(jit[1].numpy(), masks.max(axis=0))
    with pytest.raises(ValueError, match="binary masks hold only 0 and 1"):
        view.assign(masks * 2)


def test_mask_bytes_per_task_are_an_eighth_rounded_up_to_words():
    layer = masked.MaskedConv2DTranspose(6, 4, 2, mask_mode="weight", num_past_tasks=2)
    layer(tf.zeros((1, 4, 4, 13)))
    kernel, bias = 4 * 4 * 6 * 13, 6
    assert layer.mask_bytes_per_task() == 4 * math.ceil(kernel / 32) + 4 * math.ceil(bias / 32) == 156 + 4
    assert layer.past_mask_bytes() == 2 * layer.mask_bytes_per_task()
    assert sum(4 * int(np.prod(v.shape)) for v in layer.non_trainable_variables) == layer.past_mask_bytes()
    units = masked.MaskedDense(13, mask_mode="activation", num_past_tasks=1)
    units(tf.zeros((1, 5)))
    assert units.mask_bytes_per_task() == 4
