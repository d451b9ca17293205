"""The pieces of a WGAN-GP (Gulrajani et al. 2017) that DGM, DGR and MeRGAN share.

Each method's trainer is a ``GANTrainer``: a ``keras.Model`` whose ``train_step`` does the
critic step and then the generator step in one compiled function, whose ``compile`` takes
the two optimizers, and whose losses are ``keras.metrics.Mean`` trackers. Replay enters
all three the same way: a fixed set of generated past-class images drawn when a task
begins, batched beside the real batch, and weighted so that every seen class counts the
same however many images of it a batch holds.
"""

from __future__ import annotations

import math

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


AVERAGING_METHODS = ("dgmw", "dgma", "dgr", "mergan")  # the methods --generator_ema and --classifier_ema act on


def unreached_decays(method: str, hp, task_steps: int, sources: dict) -> list[str]:
    """One line per weight average whose chosen decay (a flag the user set, not a default) the
    warmup rule never reaches within the run's shortest task (``task_steps`` steps): such a run is the same as
    one at the cap (0.99 and 0.995 gave identical runs; docs/RESULTS.md, session 25)."""
    if method not in AVERAGING_METHODS or task_steps < 1:
        return []
    cap = task_steps / (hp.ema_warmup + task_steps - 1)  # (1 + k) / (warmup + k) at the task's last step
    lines = []
    for name in ("generator_ema", "classifier_ema"):
        decay = getattr(hp, name)
        if decay and decay > cap and sources.get(name, "default") != "default":
            needed = math.ceil((hp.ema_warmup * decay - 1) / (1 - decay) - 1e-9) + 1
            lines.append(f"warning: --{name}={decay:g} is never reached: the decay at a task's step k is min(decay, "
                         f"(1 + k) / (ema_warmup + k)), {cap:.4f} at the last step of this run's shortest task ({task_steps} "
                         f"steps, --ema_warmup={hp.ema_warmup:g}); it needs {needed:,} steps a task, or a lower --ema_warmup")
    return lines


def update_averages(averages: list, variables: list, decay: float, step, warmup: float = 10.0) -> None:
    """One step of an exponential moving average at ``average_decay``."""
    if not averages:
        return
    d = average_decay(decay, step, warmup)
    for average, v in zip(averages, variables):
        average.assign(d * average + (1.0 - d) * v)


def exact_batch_norm(norm, inputs_of, nz: int, labels_of, seed: int, num: int = 4096, batch: int = 512) -> None:
    """Sets ``norm``'s moving statistics to the exact mean and variance of its inputs over ``num``
    draws: ``inputs_of(z, y)`` gives those inputs for latents z and labels y (``labels_of(rng, n)``,
    or None for an unconditional generator). The moving average (momentum 0.99) has seen only a
    task's few hundred steps, still leans on its initial 0 and 1, and was gathered under the live
    weights, not the averaged ones that replay and exports use."""
    rng = np.random.default_rng(seed)
    feats = []
    for _ in range(0, num, batch):
        z = rng.standard_normal((batch, nz)).astype(np.float32)
        feats.append(ops.convert_to_numpy(inputs_of(z, None if labels_of is None else labels_of(rng, batch))))
    feats = np.concatenate(feats).astype(np.float64)
    norm.moving_mean.assign(feats.mean(axis=(0, 1, 2)).astype(np.float32))
    norm.moving_variance.assign(feats.var(axis=(0, 1, 2)).astype(np.float32))


def end_plain_generator_task(method, task: int, labels_of) -> None:
    """A task's end for DGR and MeRGAN (``networks.PlainGenerator``): the weight averages become
    the weights, and the generator's batch norm gets the statistics of the weights it now has
    (``labels_of`` draws the labels it is re-estimated on; None: unconditional)."""
    method.end_averaging()
    hp = method.hp
    if hp.generator_ema or hp.generator_bn == "reestimate":
        exact_batch_norm(method.gen.norm, method.gen.norm_inputs, method.gen.nz, labels_of, hp.seed * 7919 + task)


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

    # -- Polyak averages of the weights (--generator_ema, --classifier_ema)
    def average_weights(self, generator_vars: list, classifier: keras.Model) -> None:
        """Keeps moving averages of ``generator_vars`` and of ``classifier``'s weights (at the decays
        of ``self.hp``; 0: none), which ``swap_in_averages`` makes the weights when the task ends. They
        are attributes of the trainer, so step checkpoints carry them and a resumed task averages on."""
        self.g_averaged, self.averaged_classifier = list(generator_vars), classifier
        self._g_average = moving_averages(self.g_averaged, self.hp.generator_ema, "g_average")
        self._c_average = moving_averages(classifier.trainable_variables, self.hp.classifier_ema, "c_average")

    def update_weight_averages(self) -> None:
        """One step of both averages, before ``record`` counts the step."""
        update_averages(self._g_average, self.g_averaged, self.hp.generator_ema, self.task_step, self.hp.ema_warmup)
        update_averages(self._c_average, self.averaged_classifier.trainable_variables, self.hp.classifier_ema,
                        self.task_step, self.hp.ema_warmup)

    def kept_average(self, variable, average):
        """What ``variable`` becomes when the averages are swapped in (DGM keeps reserved entries)."""
        del variable
        return average

    def swap_in_averages(self) -> None:
        """When the task ends, the averaged weights become the weights."""
        for v, average in zip(self.g_averaged, self._g_average):
            v.assign(self.kept_average(v, average))
        for v, average in zip(self.averaged_classifier.trainable_variables, self._c_average):
            v.assign(average)

    def averaged_classify(self):
        """logits from the classifier's averaged weights, without touching its live ones: what
        the task would end with if it ended now, so that the validation selector scores at an
        epoch's end the classifier that is evaluated strictly and exported (``swap_in_averages``)."""
        classifier = self.averaged_classifier
        mapping = list(zip(classifier.trainable_variables, self._c_average))

        def classify(images):
            with keras.StatelessScope(state_mapping=[(v, average.value) for v, average in mapping]):
                return classifier.classify(images, training=False)

        return tf.function(classify, reduce_retracing=True)

    def record(self, values: dict) -> dict:
        """Counts the iteration and feeds the loss trackers; returns what ``fit`` logs."""
        self.task_step.assign_add(1)
        for k, v in values.items():
            self.trackers[k].update_state(v)
        return {k: t.result() for k, t in self.trackers.items()}
