"""Masked layers: the synaptic plasticity of DGM.

A masked layer holds its kernel and bias, the real-valued mask embedding of the task being
learned (trainable) and the binary masks of every past task (uint8, not trainable). It knows
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
            self.past_masks[name] = self.add_weight(
                name=f"past_masks_{name}", shape=(self.num_past_tasks, *shape), dtype="uint8",
                initializer="zeros", trainable=False)

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
        out = {}
        for name, m in self.past_masks.items():
            shape = tuple(m.shape[1:])
            out[name] = (tf.cast(tf.reduce_max(m, axis=0), self.compute_dtype) if self.num_past_tasks
                         else tf.zeros(shape, self.compute_dtype))
        return out

    def binary_current_masks(self) -> dict[str, np.ndarray]:
        """The current task's mask as it ends (binarised at s_max: the sign of e)."""
        return {name: (e.numpy() > 0).astype(np.uint8) for name, e in self.embeddings.items()}

    def past_mask_bytes(self) -> int:
        return sum(int(np.prod(m.shape)) for m in self.past_masks.values())

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
