"""The pieces of a WGAN-GP (Gulrajani et al. 2017) that DGM, DGR and MeRGAN share.

Each method's trainer is a ``GANTrainer``: a ``keras.Model`` whose ``train_step`` does the
critic step and then the generator step in one compiled function, whose ``compile`` takes
the two optimizers, and whose losses are ``keras.metrics.Mean`` trackers. Replay enters
all three the same way: a fixed set of generated past-class images drawn when a task
begins, batched beside the real batch, and weighted so that every seen class counts the
same however many images of it a batch holds.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from dgm_keras import config, data, distribution


def adam(hp: config.HyperParams, learning_rate: float) -> keras.optimizers.Adam:
    """An Adam with the run's betas; fresh for every task's trainer (its variables may be new)."""
    return keras.optimizers.Adam(learning_rate, beta_1=hp.beta_1, beta_2=hp.beta_2)


def optimizers(hp: config.HyperParams) -> tuple[keras.optimizers.Optimizer, keras.optimizers.Optimizer]:
    """(generator, critic) Adam optimizers."""
    return adam(hp, hp.g_lr), adam(hp, hp.d_lr)


def replay_per_class(hp: config.HyperParams, train: data.SplitArrays, classes_per_task: int) -> int:
    """Replayed images per past class: ``hp.replay_per_class``, else as many as the current
    task has real training images per class (the reference code's rule)."""
    return hp.replay_per_class or max(1, len(train.labels) // classes_per_task)


def replay_pipeline(train: data.SplitArrays, replay: data.SplitArrays | None, hp: config.HyperParams,
                    task: int, replay_batch: int | None = None) -> tf.data.Dataset:
    """Batches of real current-task images, zipped with batches of replay once there is a past."""
    real = data.make_pipeline(train, hp.batch_size, shuffle=True, seed=hp.seed + task, drop_remainder=True).repeat()
    if replay is None:
        return real
    past = data.make_pipeline(replay, replay_batch or hp.replay_batch_size, shuffle=True, seed=hp.seed + 1000 + task,
                              drop_remainder=True).repeat()
    return tf.data.Dataset.zip((real, past))


def split_batch(batch, has_replay: bool):
    """(real_x, real_y, replay_x, replay_y); the replay pair is (None, None) on the first task."""
    if has_replay:
        (real_x, real_y), (replay_x, replay_y) = batch
        return real_x, real_y, replay_x, replay_y
    real_x, real_y = batch
    return real_x, real_y, None, None


def batch_parts(real_x, replay_x) -> list:
    """The row counts of the parts of a batch of real rows followed by replayed ones (``replay_x``
    None: real only), for draws paired with its rows (``distribution.own_rows``)."""
    return [ops.shape(real_x)[0]] + ([] if replay_x is None else [ops.shape(replay_x)[0]])


def latents(nz: int, rows, seed):
    """This replica's latents of ``rows`` rows (a count, or a batch's parts: ``batch_parts``),
    drawn from the trainer's ``seed`` generator as one device draws them (``distribution.own_rows``)."""
    return distribution.own_rows(lambda n: keras.random.normal((n, nz), seed=seed), rows)


def mixture_weights(num_real, num_replay, current_share: float):
    """Per-image weights (summing to 1) of a batch of ``num_real`` real images followed by
    ``num_replay`` replayed ones: the real part weighs ``current_share`` (the current task's
    share of the seen classes) and the replay the rest, so a weighted mean over the batch is
    an expectation over seen classes in equal proportion."""
    if num_replay is None:
        return ops.full((num_real,), 1.0 / ops.cast(num_real, "float32"))
    real = ops.full((num_real,), current_share / ops.cast(num_real, "float32"))
    replay = ops.full((num_replay,), (1.0 - current_share) / ops.cast(num_replay, "float32"))
    return ops.concatenate([real, replay], 0)


def balanced_cls_loss(ce, logits, real_y, replay_y, current_share: float):
    """Cross-entropy of ``logits`` (real rows first, then replay rows) in which each seen class
    weighs the same: (total, real part, replay part)."""
    n = ops.shape(real_y)[0]
    cls_loss = ce(real_y, logits[:n])
    total = current_share * cls_loss
    if replay_y is None:
        return total, cls_loss, ops.zeros(())
    replay_loss = ce(replay_y, logits[n:])
    return total + (1.0 - current_share) * replay_loss, cls_loss, replay_loss


def moving_averages(variables, decay: float, name: str) -> list:
    """Non-trainable copies of ``variables`` for their Polyak average (none when ``decay`` is 0).
    Attributes of a trainer, so step checkpoints carry them and a resumed task averages on."""
    if not decay:
        return []
    # From a NumPy copy: a Keras variable made from another's ``.value`` shares its TF variable.
    return [keras.Variable(np.array(v.numpy()), trainable=False, name=name, aggregation="only_first_replica")
            for v in variables]


def average_decay(decay: float, step, warmup: float = 10.0):
    """The decay at a task's ``step``: min(decay, (1 + step) / (warmup + step)), TensorFlow's
    ExponentialMovingAverage rule at warmup 10, so a task's first weights, far from where it ends,
    fade within a few steps. It reaches ``decay`` only after (warmup * decay - 1) / (1 - decay)
    steps: 890 for 0.99 at warmup 10, more than a 237-step task has (it ends at 0.964 there)."""
    step = ops.cast(step, "float32")
    return ops.minimum(decay, (1.0 + step) / (warmup + step))


def update_averages(averages: list, variables: list, decay: float, step, warmup: float = 10.0) -> None:
    """One step of an exponential moving average at ``average_decay``."""
    if not averages:
        return
    d = average_decay(decay, step, warmup)
    for average, v in zip(averages, variables):
        average.assign(d * average + (1.0 - d) * v)


def gradient_penalty(critic, real, fake, seed, weights=None, parts=None):
    """WGAN-GP: (||grad_x D(x_hat)|| - 1)^2 on random interpolates x_hat of paired real and
    fake images, averaged over the batch (or weighted by ``weights``, which sum to 1).

    ``critic`` maps images to one score each; ``seed`` is the trainer's SeedGenerator (the
    interpolation draws from it, so a trainer's steps are reproducible). ``parts``: the row
    counts of the parts ``real`` concatenates (``distribution.own_rows``), if more than one.
    """
    eps = distribution.own_rows(lambda rows: keras.random.uniform((rows, 1, 1, 1), seed=seed),
                                ops.shape(real)[0] if parts is None else parts)
    x_hat = eps * real + (1.0 - eps) * fake
    with tf.GradientTape() as tape:
        tape.watch(x_hat)
        scores = critic(x_hat)
    grads = tape.gradient(scores, x_hat)
    norm = ops.sqrt(ops.sum(ops.square(grads), axis=(1, 2, 3)) + 1e-12)
    penalty = ops.square(norm - 1.0)
    return ops.mean(penalty) if weights is None else ops.sum(weights * penalty)


def sample_images(generator, num: int, seed: int, labels: np.ndarray | None = None, batch: int = 2048) -> np.ndarray:
    """``num`` images of a ``networks.PlainGenerator`` in inference mode (of ``labels`` if it is
    conditional), z drawn from a NumPy stream seeded by ``seed``: the same seed, the same images."""
    z = np.random.default_rng(seed).standard_normal((num, generator.nz)).astype(np.float32)
    parts = [ops.convert_to_numpy(generator(z[i:i + batch], None if labels is None else labels[i:i + batch],
                                            training=False)) for i in range(0, num, batch)]
    return np.concatenate(parts) if parts else np.zeros((0, 32, 32, generator.channels), np.float32)


class GANTrainer(keras.Model):
    """The shape every method's trainer shares. Subclasses set ``g_vars`` and ``d_vars`` (what
    each optimizer updates) before ``compile`` and end ``train_step`` with ``record``.

    ``task_step`` counts the task's iterations; ``seed_gen`` is the task's random stream (a
    different one per task: its seed is given), created here and not while tracing, as it
    holds a state variable.
    """

    def __init__(self, loss_names, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.task_step = keras.Variable(0, dtype="int64", trainable=False, name="task_step")
        self.seed_gen = keras.random.SeedGenerator(seed)
        self.trackers = {n: keras.metrics.Mean(name=n) for n in loss_names}
        self.ce = distribution.sparse_cross_entropy  # the replica's mean: steps scale once (distribution.scale_loss)
        self.built = True  # no call() to trace: fit under a strategy would try to build one

    @property
    def metrics(self):
        return list(self.trackers.values())

    def compile(self, g_optimizer, d_optimizer, jit_compile=False):
        super().compile(jit_compile=jit_compile)
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        # Built here so that no optimizer variable is created inside the traced step.
        g_optimizer.build(self.g_vars)
        d_optimizer.build(self.d_vars)

    def record(self, values: dict) -> dict:
        """Counts the iteration and feeds the loss trackers; returns what ``fit`` logs."""
        self.task_step.assign_add(1)
        for k, v in values.items():
            self.trackers[k].update_state(v)
        return {k: t.result() for k, t in self.trackers.items()}
