"""The networks: DGM's masked conditional generator, the plain generator of the
generative-replay baselines, and the two-headed discriminator.

Both are rebuilt, never mutated, when they grow (``expansion.py``): a Keras layer that is
already built cannot take new state.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from dgm_keras import config
from dgm_keras import layers as masked

NZ = 128  # latent size; the one-hot label is written into its first entries
# The critic's normalisation. The reference code used batch norm; the WGAN-GP paper advises
# against it (the penalty is per sample, batch norm couples samples, and fake batches pollute
# the moving statistics the classifier is evaluated with). Layer norm is the default.
NORMS = {"batch": layers.BatchNormalization, "layer": lambda name: layers.LayerNormalization(axis=(1, 2, 3), name=name)}


def count_weights(model: keras.Model) -> int:
    """Trainable weights, without DGM's mask embeddings (a past task keeps its masks as bits)."""
    return int(sum(math.prod(v.shape) for v in model.trainable_variables if "mask_embedding" not in v.path))


def write_label(z, labels, num_classes: int):
    """Writes the one-hot label into the first ``num_classes`` entries of z (the reference's conditioning)."""
    onehot = ops.one_hot(labels, num_classes, dtype=z.dtype)
    return ops.concatenate([onehot, z[:, num_classes:]], axis=-1)


class Generator(keras.Model):
    """G(z, y): three masked transposed convs (shared, protected by masks), then a per-task
    batch norm and a per-task output layer to 32x32 with tanh.

    ``widths`` are the masked layers' output units (4*ngf, 2*ngf, ngf at the start; they grow).
    ``head_widths[t]`` is how many channels of the last masked layer task t's head reads
    (its width when the task began; later channels are off for it).
    """

    def __init__(self, widths, num_classes: int, channels: int, mask_mode: str = "weight",
                 num_past_tasks: int = 0, head_widths=None, nz: int = NZ, mask_init: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.widths = tuple(int(w) for w in widths)
        self.num_classes, self.channels, self.mask_mode = num_classes, channels, mask_mode
        self.num_past_tasks, self.nz, self.mask_init = int(num_past_tasks), nz, float(mask_init)
        self.head_widths = tuple(head_widths) if head_widths is not None else (self.widths[-1],) * (num_past_tasks + 1)
        if len(self.head_widths) != num_past_tasks + 1:
            raise ValueError(f"head_widths has {len(self.head_widths)} entries for {num_past_tasks + 1} tasks")
        self.masked_layers = [
            masked.MaskedConv2DTranspose(self.widths[0], 4, 1, "valid", mask_mode=mask_mode,
                                         num_past_tasks=num_past_tasks, embedding_init=mask_init,
                                         name="masked_convt_0"),
            masked.MaskedConv2DTranspose(self.widths[1], 4, 2, "same", mask_mode=mask_mode,
                                         num_past_tasks=num_past_tasks, embedding_init=mask_init,
                                         name="masked_convt_1"),
            masked.MaskedConv2DTranspose(self.widths[2], 4, 2, "same", mask_mode=mask_mode,
                                         num_past_tasks=num_past_tasks, embedding_init=mask_init,
                                         name="masked_convt_2"),
        ]
        self.task_norms = [layers.BatchNormalization(name=f"task_bn_{t}") for t in range(num_past_tasks + 1)]
        self.task_outputs = [layers.Conv2DTranspose(channels, 4, 2, "same", activation="tanh", name=f"task_out_{t}")
                             for t in range(num_past_tasks + 1)]

    def latent(self, z, labels):
        return write_label(z, labels, self.num_classes)

    def head_inputs(self, z, labels, s=1.0, task=None):
        """What the task's head (batch norm, output layer) reads: the masked layers' output."""
        head = self.num_past_tasks if task is None else task
        x = ops.reshape(self.latent(z, labels), (-1, 1, 1, self.nz))
        for layer in self.masked_layers:
            x = ops.relu(layer(x, s=s, task=task))
        return x[..., : self.head_widths[head]]

    def call(self, z, labels, s=1.0, task=None, training=False):
        """``task=None`` trains/uses the current task (the last head); an int uses that past task."""
        head = self.num_past_tasks if task is None else task
        x = self.head_inputs(z, labels, s=s, task=task)
        x = ops.relu(self.task_norms[head](x, training=training))
        return self.task_outputs[head](x)

    def build(self, *args, **kwargs):
        """Variables are created by ``build_all`` (a real call per head); nothing to infer from shapes."""
        self.built = True

    def build_all(self):
        """Creates every variable (one call per head), as subclassed models need a real call."""
        z = ops.zeros((2, self.nz))
        y = ops.zeros((2,), dtype="int32")
        for t in range(self.num_past_tasks + 1):
            self(z, y, task=None if t == self.num_past_tasks else t)
        return self

    def get_config(self):
        return dict(widths=self.widths, num_classes=self.num_classes, channels=self.channels,
                    mask_mode=self.mask_mode, num_past_tasks=self.num_past_tasks,
                    head_widths=self.head_widths, nz=self.nz, mask_init=self.mask_init, name=self.name)


class PlainGenerator(keras.Model):
    """``Generator``'s architecture without masks, task heads or growth: three transposed
    convs, a batch norm and the tanh output layer. The generator of the generative-replay
    baselines (DGR: unconditional, ``num_classes=0``; MeRGAN: conditional like DGM's), so
    that they differ from DGM only in how the memory is kept, not in the network.

    ``call`` takes (and ignores) ``task`` so that it serves ``export.export_generator``:
    one generator holds every task.
    """

    def __init__(self, widths, num_classes: int, channels: int, nz: int = NZ, **kwargs):
        super().__init__(**kwargs)
        self.widths, self.num_classes, self.channels, self.nz = tuple(int(w) for w in widths), int(num_classes), channels, nz
        self.body = [layers.Conv2DTranspose(self.widths[0], 4, 1, "valid", name="convt_0"),
                     layers.Conv2DTranspose(self.widths[1], 4, 2, "same", name="convt_1"),
                     layers.Conv2DTranspose(self.widths[2], 4, 2, "same", name="convt_2")]
        self.norm = layers.BatchNormalization(name="bn")
        self.out = layers.Conv2DTranspose(channels, 4, 2, "same", activation="tanh", name="out")

    def call(self, z, labels=None, task=None, training=False):
        del task
        return self.out(ops.relu(self.norm(self.norm_inputs(z, labels), training=training)))

    def norm_inputs(self, z, labels=None):
        """What the batch norm normalises (for ``gan.exact_batch_norm``)."""
        x = write_label(z, labels, self.num_classes) if self.num_classes else z
        x = ops.reshape(x, (-1, 1, 1, self.nz))
        for layer in self.body:
            x = ops.relu(layer(x))
        return x

    def build(self, *args, **kwargs):
        self.built = True

    def build_all(self):
        self(ops.zeros((2, self.nz)), ops.zeros((2,), dtype="int32"))
        return self

    def get_config(self):
        return dict(widths=self.widths, num_classes=self.num_classes, channels=self.channels, nz=self.nz,
                    name=self.name)


# The discriminator's trunk (--d_trunk). "strided": conv 5x5/2 32-64-128, the paper's and the reference
# code's, built to be a WGAN-GP critic. "pooled": conv 3x3 32-64-64 with max pooling and a dense 64, the
# TensorFlow CNN tutorial's classifier (here with our norm and LeakyReLU): the tutorial's own network,
# trained alike on all of CIFAR-10, reached 69.35% test against the strided trunk's 62.49%
# (benchmarks/classifier_capacity.py). As DGMw's trunk on CIFAR-10 5x2 it measured level on validation
# at 1.6x the step time, so strided stays the default (docs/RESULTS.md, session 16).


class Discriminator(keras.Model):
    """A trunk (``config.D_TRUNKS``; normalised, LeakyReLU), a WGAN critic head and an auxiliary classifier
    head over the ``num_classes`` classes seen so far (the continual classifier that is evaluated,
    exported and served)."""

    def __init__(self, num_classes: int, widths=None, norm: str = "layer", trunk: str = "strided", **kwargs):
        super().__init__(**kwargs)
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r}; allowed: {', '.join(NORMS)}")
        if trunk not in config.D_TRUNKS:
            raise ValueError(f"trunk={trunk!r}; allowed: {', '.join(config.D_TRUNKS)}")
        default_widths = {"strided": (32, 64, 128), "pooled": (32, 64, 64)}[trunk]
        self.num_classes, self.norm, self.trunk_kind = int(num_classes), norm, trunk
        self.widths = tuple(widths or default_widths)
        self.trunk = []
        for i, w in enumerate(self.widths):
            conv = (layers.Conv2D(w, 5, 2, "same", name=f"conv_{i}") if trunk == "strided"
                    else layers.Conv2D(w, 3, name=f"conv_{i}"))
            self.trunk += [conv, NORMS[norm](name=f"norm_{i}"), layers.LeakyReLU(0.2)]
            if trunk == "pooled" and i < len(self.widths) - 1:
                self.trunk.append(layers.MaxPooling2D(name=f"pool_{i}"))
        self.flatten = layers.Flatten()
        self.dense = [layers.Dense(64, name="fc"), layers.LeakyReLU(0.2)] if trunk == "pooled" else []
        self.critic = layers.Dense(1, name="critic")
        self.classifier = layers.Dense(self.num_classes, name="classifier")

    def features(self, x, training=False):
        for layer in self.trunk:
            x = layer(x, training=training) if isinstance(layer, layers.BatchNormalization) else layer(x)
        x = self.flatten(x)
        for layer in self.dense:
            x = layer(x)
        return x

    def call(self, x, training=False):
        h = self.features(x, training)
        return ops.squeeze(self.critic(h), -1), self.classifier(h)

    def classify(self, x, training=False):
        return self.classifier(self.features(x, training))

    def head_variables(self, head: str) -> list:
        """Trainable variables of the trunk and one head ("critic" or "classifier"): what a
        network used through that head alone trains (the other head gets no gradient)."""
        other = {"critic": self.classifier, "classifier": self.critic}[head]
        skip = {id(v) for v in other.trainable_variables}
        return [v for v in self.trainable_variables if id(v) not in skip]

    def build(self, *args, **kwargs):
        self.built = True

    def build_all(self, channels: int):
        self(ops.zeros((2, 32, 32, channels)))
        return self

    def get_config(self):
        return dict(num_classes=self.num_classes, widths=self.widths, norm=self.norm, trunk=self.trunk_kind,
                    name=self.name)


def make_discriminator(classes: int, hp, channels: int, name: str = "discriminator") -> Discriminator:
    """A discriminator (or classifier, solver, critic) with ``classes`` outputs, of the run's
    ``hp.d_norm`` and ``hp.d_trunk``: the one place every method builds one."""
    return Discriminator(classes, norm=hp.d_norm, trunk=hp.d_trunk, name=name).build_all(channels)


def rebuild_discriminator(classes: int | None, hp, channels: int, name: str = "discriminator"):
    """As ``make_discriminator``, or None where the checkpoint holds none yet, for a checkpoint to fill."""
    return None if classes is None else make_discriminator(classes, hp, channels, name)

