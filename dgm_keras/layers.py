"""Masked layers: the synaptic plasticity of DGM.

A masked layer holds its kernel and bias, the real-valued mask embedding of the task being
learned (trainable) and the binary masks of every past task (not trainable), packed 32
entries an int32 word (``PackedMasks``: an eighth of one uint8 an entry; unpacked in-graph
with bit ops where a past task's mask or their union is used). It knows
nothing of schedules: the method passes the mask scale ``s`` and decides which task's mask
to use, and owns annealing, compensation and protection (the HAT split of approach and
network).

- ``mask_mode="weight"`` (DGMw): one embedding per weight (kernel and bias); the layer
  computes with ``W * m``.
- ``mask_mode="activation"`` (DGMa): one embedding per output unit; the output is
  multiplied by ``m``.

The mask is ``threshold(sigmoid(s * e)) = [s * e > 0]`` in the forward pass and has the
gradient of ``sigmoid(s * e)`` in the backward pass (straight-through).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

MASK_MODES = ("weight", "activation")


@tf.custom_gradient
def hard_threshold(scaled: tf.Tensor):
    """Binary mask ``[scaled > 0]``; backward: the derivative of ``sigmoid(scaled)``."""
    mask = tf.cast(scaled > 0, scaled.dtype)

    def grad(upstream):
        # sigmoid(x) * sigmoid(-x), not sig * (1 - sig): in float32 sigmoid(x) rounds to 1 for
        # x > ~17 and the latter would vanish long before HAT's compensation clip at 50.
        return upstream * tf.sigmoid(scaled) * tf.sigmoid(-scaled)

    return mask, grad


def packed_size(shape) -> int:
    """int32 words that one task's binary mask of ``shape`` takes, 32 entries a word."""
    return -(-int(np.prod(shape, dtype=np.int64)) // 32)


def pack_bits(masks: np.ndarray) -> np.ndarray:
    """[T, *shape] of 0/1 -> [T, packed_size(shape)] int32, entries in row-major order, the first
    in a word's highest bit; the tail bits of the last word are 0.

    int32 words, not uint8 bytes (the same memory): MultiWorkerMirroredStrategy broadcasts every
    variable's initial value from worker 0, and its collective broadcast rejects uint8."""
    masks = np.asarray(masks)
    if masks.size and not np.isin(masks, (0, 1)).all():
        raise ValueError("binary masks hold only 0 and 1")
    words = packed_size(masks.shape[1:])
    packed = np.zeros((masks.shape[0], 4 * words), np.uint8)
    flat = np.packbits(masks.reshape(masks.shape[0], -1).astype(np.uint8), axis=1)
    packed[:, : flat.shape[1]] = flat
    return packed.view(">i4").astype(np.int32)


def unpack_numpy(packed: np.ndarray, shape) -> np.ndarray:
    """The inverse of ``pack_bits`` in NumPy: [T, words] int32 -> [T, *shape] uint8."""
    packed = np.asarray(packed, np.int32)
    size = int(np.prod(shape, dtype=np.int64))
    as_bytes = packed.astype(">i4").view(np.uint8).reshape(packed.shape[0], 4 * packed.shape[1])
    return np.unpackbits(as_bytes, axis=1, count=size).reshape((packed.shape[0], *shape))


def unpack_bits(packed, shape) -> tf.Tensor:
    """In-graph inverse of ``pack_bits`` for one task's row (or the leading axes' rows):
    [..., packed_size(shape)] int32 -> [..., *shape] uint8."""
    packed = tf.convert_to_tensor(packed)
    shifts = tf.range(31, -1, -1, dtype=tf.int32)  # made here: a module-level tensor would start
    # TensorFlow's runtime at import, before MultiWorkerMirroredStrategy may configure it
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(packed[..., None], shifts), 1)  # arithmetic shift: & 1 holds
    lead = tf.shape(packed)[:-1]
    flat = tf.reshape(bits, tf.concat([lead, [-1]], 0))[..., : int(np.prod(shape, dtype=np.int64))]
    return tf.cast(tf.reshape(flat, tf.concat([lead, tf.constant(shape, tf.int32)], 0)), tf.uint8)


class PackedMasks:
    """The binary masks of every past task for one masked tensor, stored packed in ``packed``
    (an int32 variable [T, packed_size(shape)], checkpointed and exported like any weight) and
    read as if it were the uint8 array [T, *shape]: ``masks[t]`` (in-graph unpack of one
    task), ``union()`` (bitwise OR of the packed rows, then one unpack), ``numpy()`` and
    ``assign`` (packs), ``shape`` and ``dtype`` of the unpacked array."""

    dtype = "uint8"

    def __init__(self, packed, shape):
        self.packed, self.mask_shape = packed, tuple(int(d) for d in shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.packed.shape[0]), *self.mask_shape)

    def __getitem__(self, task):
        return unpack_bits(tf.convert_to_tensor(self.packed)[task], self.mask_shape)

    def union(self) -> tf.Tensor:
        """M_<t: entries any past task kept (zeros when there is none)."""
        if self.shape[0] == 0:
            return tf.zeros(self.mask_shape, tf.uint8)
        packed = tf.convert_to_tensor(self.packed)
        union = packed[0]
        for task in range(1, self.shape[0]):  # a handful of tasks: OR a byte row at a time
            union = tf.bitwise.bitwise_or(union, packed[task])
        return unpack_bits(union, self.mask_shape)

    def numpy(self) -> np.ndarray:
        return unpack_numpy(self.packed.numpy(), self.mask_shape)

    def assign(self, masks) -> None:
        masks = np.asarray(masks)
        if masks.shape != self.shape:
            raise ValueError(f"masks of shape {masks.shape} do not fit {self.shape}")
        self.packed.assign(pack_bits(masks))


class MaskedLayer(keras.layers.Layer):
    """Base of the masked layers; subclasses give the kernel layout and the linear op."""

    in_axis: int  # kernel axis of input units
    out_axis: int  # kernel axis of output units

    def __init__(self, units: int, mask_mode: str = "weight", num_past_tasks: int = 0,
                 use_bias: bool = True, embedding_init: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode={mask_mode!r}; allowed: {', '.join(MASK_MODES)}")
        if units <= 0:
            raise ValueError(f"units={units} must be positive")
        self.units = int(units)
        self.mask_mode = mask_mode
        self.num_past_tasks = int(num_past_tasks)
        self.use_bias = use_bias
        self.embedding_init = float(embedding_init)

    # -- subclass hooks
    def kernel_shape(self, in_units: int) -> tuple[int, ...]:
        raise NotImplementedError

    def linear(self, inputs, kernel):
        raise NotImplementedError

    # -- state
    def build(self, input_shape):
        in_units = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=self.kernel_shape(in_units),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros") if self.use_bias else None
        self.embeddings, self.past_masks = {}, {}
        for name, shape in self.mask_shapes().items():
            # A small positive constant: every entry starts on (a dense layer) and the task's
            # gradients and the sparsity regulariser switch off what it does not need. HAT's
            # N(0, 1) leaves masks at random half-subsets at short budgets: Adam moves an
            # embedding by about the learning rate a step, too little to cross zero.
            self.embeddings[name] = self.add_weight(
                name=f"mask_embedding_{name}", shape=shape,
                initializer=keras.initializers.Constant(self.embedding_init))
            packed = self.add_weight(
                name=f"past_masks_{name}", shape=(self.num_past_tasks, packed_size(shape)), dtype="int32",
                initializer="zeros", trainable=False)
            self.past_masks[name] = PackedMasks(packed, shape)

    def mask_shapes(self) -> dict[str, tuple[int, ...]]:
        """What is masked: every weight (DGMw) or every output unit (DGMa)."""
        if self.mask_mode == "activation":
            return {"units": (self.units,)}
        shapes = {"kernel": tuple(self.kernel.shape)}
        if self.use_bias:
            shapes["bias"] = (self.units,)
        return shapes

    def fan_in(self) -> int:
        """Weights feeding one output unit (bias included)."""
        return int(np.prod(self.kernel.shape)) // self.units + int(self.use_bias)

    # -- masks
    def current_masks(self, s) -> dict[str, tf.Tensor]:
        return {name: hard_threshold(tf.convert_to_tensor(e) * s) for name, e in self.embeddings.items()}

    def task_masks(self, task: int) -> dict[str, tf.Tensor]:
        if not 0 <= task < self.num_past_tasks:
            raise ValueError(f"task={task}: this layer holds masks of tasks 0..{self.num_past_tasks - 1}")
        return {name: tf.cast(m[task], self.compute_dtype) for name, m in self.past_masks.items()}

    def reserved(self) -> dict[str, tf.Tensor]:
        """M_<t: the union of past tasks' binary masks (zeros before the first task ends)."""
        return {name: tf.cast(m.union(), self.compute_dtype) for name, m in self.past_masks.items()}

    def binary_current_masks(self) -> dict[str, np.ndarray]:
        """The current task's mask as it ends (binarised at s_max: the sign of e)."""
        return {name: (e.numpy() > 0).astype(np.uint8) for name, e in self.embeddings.items()}

    def past_mask_bytes(self) -> int:
        """Bytes the past tasks' masks take, all tasks together (packed)."""
        return sum(4 * int(np.prod(m.packed.shape)) for m in self.past_masks.values())

    def mask_bytes_per_task(self) -> int:
        """Bytes one task's binary masks take in this layer, packed 32 entries an int32 word
        (an eighth of a byte an entry, rounded up to whole words): what DGM reports as
        ``past_mask_bytes_per_task_per_layer``."""
        return sum(4 * packed_size(shape) for shape in self.mask_shapes().values())

    # -- forward
    def call(self, inputs, s=1.0, task=None):
        """``task=None``: the current task's mask at scale ``s``; an int: that past task's binary mask."""
        masks = self.current_masks(s) if task is None else self.task_masks(task)
        kernel, bias = self.kernel, self.bias
        if self.mask_mode == "weight":
            kernel = kernel * masks["kernel"]
            if self.use_bias:
                bias = bias * masks["bias"]
        out = self.linear(inputs, kernel)
        if self.use_bias:
            out = out + bias
        if self.mask_mode == "activation":
            out = out * masks["units"]
        return out

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, mask_mode=self.mask_mode, num_past_tasks=self.num_past_tasks,
                      use_bias=self.use_bias, embedding_init=self.embedding_init)
        return config


@keras.saving.register_keras_serializable(package="dgm_keras")
class MaskedDense(MaskedLayer):
    in_axis, out_axis = 0, 1

    def kernel_shape(self, in_units):
        return (in_units, self.units)

    def linear(self, inputs, kernel):
        return ops.matmul(inputs, kernel)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)


class _MaskedConvBase(MaskedLayer):
    def __init__(self, filters: int, kernel_size: int, strides: int = 1, padding: str = "same", **kwargs):
        kwargs.pop("units", None)
        super().__init__(units=filters, **kwargs)
        self.kernel_size, self.strides, self.padding = int(kernel_size), int(strides), padding

    @property
    def filters(self) -> int:
        return self.units

    def get_config(self):
        config = super().get_config()
        config.pop("units")
        config.update(filters=self.units, kernel_size=self.kernel_size, strides=self.strides, padding=self.padding)
        return config


@keras.saving.register_keras_serializable(package="dgm_keras")
class MaskedConv2D(_MaskedConvBase):
    in_axis, out_axis = 2, 3

    def kernel_shape(self, in_units):
        return (self.kernel_size, self.kernel_size, in_units, self.units)

    def linear(self, inputs, kernel):
        return ops.conv(inputs, kernel, strides=self.strides, padding=self.padding)

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        size = (lambda d: d if d is None else (math.ceil(d / self.strides) if self.padding == "same"
                                               else (d - self.kernel_size) // self.strides + 1))
        return (n, size(h), size(w), self.units)


@keras.saving.register_keras_serializable(package="dgm_keras")
class MaskedConv2DTranspose(_MaskedConvBase):
    in_axis, out_axis = 3, 2  # Keras' transposed-conv kernels are (h, w, out, in)

    def kernel_shape(self, in_units):
        return (self.kernel_size, self.kernel_size, self.units, in_units)

    def linear(self, inputs, kernel):
        return ops.conv_transpose(inputs, kernel, strides=self.strides, padding=self.padding)

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        size = (lambda d: d if d is None else (d * self.strides if self.padding == "same"
                                               else (d - 1) * self.strides + self.kernel_size))
        return (n, size(h), size(w), self.units)
