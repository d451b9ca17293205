"""MeRGAN, Memory Replay GANs (Wu et al., NeurIPS 2018): a conditional WGAN-GP generator
with an AC-GAN discriminator, kept from forgetting by its own replay.

The discriminator is DGM's two-headed ``networks.Discriminator`` (its classifier head is the
evaluated classifier, grown as classes arrive); the generator is ``networks.PlainGenerator``
conditioned as DGM's (one-hot label in z), with no masks and no growth. At the start of
task t > 0 a frozen copy of the generator, G_prev, is taken, and:
- ``jtr`` (joint retraining with replay): G_prev draws a replay set with the same number of
  images for every past class; G and D are trained on real current images and the replay
  together, every seen class weighing the same (the critic's real/fake scores, the
  generator's labels and AC-GAN term, and D's classifier all cover past and current classes);
- ``ra`` (replay alignment): the same, plus, at each generator step, (z, y) with y drawn
  from the past classes and ``alignment_weight * E||G(z, y) - G_prev(z, y)||^2`` (summed
  over pixels) added to the generator's loss. Both sides in inference mode, so the term is
  0 when G equals G_prev and it aligns the images G will replay and serve.

The reference code's RA trains G and D on current data only and keeps its classifier
elsewhere; here D's classifier is the evaluated one, so RA keeps JTR's replay and adds the
alignment (as the brief of this project asks).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from dgm_keras import config, data, distribution, expansion, gan, networks
from dgm_keras.methods import base


def frozen_copy(generator: networks.PlainGenerator, name: str) -> networks.PlainGenerator:
    """A copy with the same values that no optimizer can update; its batch norm runs in
    inference mode whatever ``training`` says (Keras freezes a non-trainable one)."""
    copy = networks.PlainGenerator(**{**generator.get_config(), "name": name}).build_all()
    copy.set_weights(generator.get_weights())
    copy.trainable = False
    return copy


class MeRGANTrainer(gan.GANTrainer):
    """One task of MeRGAN: ``fit`` on real current-task batches (zipped with replay batches).

    ``previous`` is G_prev for replay alignment (``ra``), None otherwise (``jtr``, first task).
    """

    LOSSES = ("d_loss", "g_loss", "wasserstein", "gradient_penalty", "cls_loss", "replay_cls_loss", "ac_loss")

    def __init__(self, generator: networks.PlainGenerator, discriminator: networks.Discriminator,
                 previous: networks.PlainGenerator | None, task_classes: range, num_past_classes: int,
                 hp: base.HyperParams, **kwargs):
        names = self.LOSSES + (("alignment",) if previous is not None else ())
        super().__init__(names, seed=hp.seed * 1000 + num_past_classes, **kwargs)
        self.generator, self.discriminator, self.previous, self.hp = generator, discriminator, previous, hp
        self.num_past_classes = num_past_classes
        self.current_share = len(task_classes) / (len(task_classes) + num_past_classes)
        self.g_vars = generator.trainable_variables
        self.d_vars = discriminator.trainable_variables
        self.average_weights(self.g_vars, discriminator)

    def train_step(self, batch):
        """The critic step, then the generator step, in one compiled function."""
        real_x, real_y, replay_x, replay_y = gan.split_batch(batch, self.num_past_classes > 0)
        if replay_x is None:
            images, labels, weights = real_x, real_y, gan.mixture_weights(ops.shape(real_x)[0], None, 1.0)
        else:
            images, labels = ops.concatenate([real_x, replay_x], 0), ops.concatenate([real_y, replay_y], 0)
            weights = gan.mixture_weights(ops.shape(real_x)[0], ops.shape(replay_x)[0], self.current_share)
        parts = gan.batch_parts(real_x, replay_x)
        values = self.critic_step(images, labels, real_y, replay_y, weights, parts)
        values.update(self.generator_step(labels, weights, parts))
        self.update_weight_averages()
        return self.record(values)

    def critic_step(self, images, labels, real_y, replay_y, weights, parts):
        """WGAN-GP on the class-balanced mix (fakes of the same labels), plus D's classifier.
        Under a strategy (``distribution``): each latent and interpolation weight pairs with the
        row one device pairs it with (``parts``), and the loss, a replica's mean, is scaled."""
        fake = ops.stop_gradient(self.generator(gan.latents(self.generator.nz, parts, self.seed_gen), labels,
                                                training=True))
        with tf.GradientTape() as tape:
            critic_real, logits = self.discriminator(images, training=True)
            critic_fake, _ = self.discriminator(fake, training=True)
            wasserstein = ops.sum(weights * critic_real) - ops.sum(weights * critic_fake)
            gp = gan.gradient_penalty(lambda x: self.discriminator(x, training=True)[0], images, fake,
                                      self.seed_gen, weights, parts)
            total_cls, cls_loss, replay_loss = gan.balanced_cls_loss(self.ce, logits, real_y, replay_y,
                                                                     self.current_share)
            d_loss = -wasserstein + self.hp.gp_weight * gp + total_cls
            scaled = distribution.scale_loss(d_loss)
        self.d_optimizer.apply(tape.gradient(scaled, self.d_vars), self.d_vars)
        return dict(d_loss=d_loss, wasserstein=wasserstein, gradient_penalty=gp, cls_loss=cls_loss,
                    replay_cls_loss=replay_loss)

    def generator_step(self, labels, weights, parts):
        z = gan.latents(self.generator.nz, parts, self.seed_gen)
        z_align = y_align = None
        if self.previous is not None:  # replay_batch_size in all, split over the replicas
            rows = distribution.replica_rows(self.hp.replay_batch_size)
            z_align = gan.latents(self.generator.nz, rows, self.seed_gen)
            y_align = distribution.own_rows(lambda n: keras.random.randint(
                (n,), 0, self.num_past_classes, seed=self.seed_gen, dtype="int32"), rows)
        with tf.GradientTape() as tape:
            losses = self.generator_losses(z, labels, weights, z_align, y_align)
            scaled = distribution.scale_loss(losses["g_loss"])
        self.g_optimizer.apply(tape.gradient(scaled, self.g_vars), self.g_vars)
        return losses

    def generator_losses(self, z, labels, weights, z_align=None, y_align=None) -> dict:
        """Fool the critic and be classified as ``labels`` (AC-GAN), on the class-balanced mix;
        with ``previous`` (RA), plus the alignment to it on (z_align, y_align)."""
        critic_fake, logits = self.discriminator(self.generator(z, labels, training=True), training=True)
        per_image_ce = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        ac_loss = ops.sum(weights * per_image_ce)
        g_loss = -ops.sum(weights * critic_fake) + self.hp.ac_weight * ac_loss
        out = dict(ac_loss=ac_loss)
        if self.previous is not None:
            out["alignment"] = self.alignment(z_align, y_align)
            g_loss += self.hp.alignment_weight * out["alignment"]
        return dict(g_loss=g_loss, **out)

    def alignment(self, z, labels):
        """E ||G(z, y) - G_prev(z, y)||^2 (sum over pixels, mean over the batch), both in inference mode."""
        diff = self.generator(z, labels, training=False) - self.previous(z, labels, training=False)
        return ops.mean(ops.sum(ops.square(diff), axis=(1, 2, 3)))


class MeRGAN(base.ContinualMethod):
    """The continual method: one conditional generator, one discriminator whose head grows."""

    name = "mergan"

    def __init__(self, scenario: data.Scenario, channels: int, hp: base.HyperParams):
        super().__init__(scenario, channels, config.with_method_defaults("mergan", scenario.classes_per_task, hp))
        hp = self.hp
        if hp.mergan_mode not in config.MERGAN_MODES:
            raise ValueError(f"mergan_mode={hp.mergan_mode!r}; allowed: {', '.join(config.MERGAN_MODES)}")
        self.gen = networks.PlainGenerator((4 * hp.ngf, 2 * hp.ngf, hp.ngf), scenario.num_classes, channels,
                                           name="generator").build_all()
        self.disc = None
        self.previous = None
        self.replay = None
        self.replay_counts: list[int] = []

    def sample(self, labels, seed):
        labels = np.asarray(labels, np.int32)
        return gan.sample_images(self.gen, len(labels), seed, labels)

    def begin_task(self, task, train):
        past = task * self.scenario.classes_per_task
        if task:
            self.previous = frozen_copy(self.gen, "previous_generator")
            per_class = gan.replay_per_class(self.hp, train, self.scenario.classes_per_task)
            labels = np.repeat(np.arange(past, dtype=np.int32), per_class)
            self.replay = data.SplitArrays(gan.sample_images(self.previous, len(labels), self.hp.seed + task, labels),
                                           labels)
        self.replay_counts.append(0 if self.replay is None else len(self.replay.labels))
        seen = self.scenario.seen_classes(task)
        self.disc = (networks.make_discriminator(seen, self.hp, self.channels)
                     if self.disc is None else
                     expansion.grow_discriminator(self.disc, seen, self.channels, fresh=self.hp.reinit_discriminator))
        aligned = self.previous if self.hp.mergan_mode == "ra" else None
        self.trainer = MeRGANTrainer(self.gen, self.disc, aligned, self.scenario.task_classes(task), past, self.hp)
        self.trainer.compile(*gan.optimizers(self.hp), jit_compile=self.hp.jit_compile)
        self.begin_averaging()

    def pipeline(self, task, train) -> tf.data.Dataset:
        return gan.replay_pipeline(train, self.replay, self.hp, task)

    def end_task(self, task):
        seen = self.scenario.seen_classes(task)  # the generator draws every class seen so far
        gan.end_plain_generator_task(self, task, lambda rng, n: rng.integers(0, seen, n).astype(np.int32))
        self.previous = None  # only needed while the next task begins; taken again then

    # -- what is evaluated and exported
    def classifier_model(self):
        return self.disc

    def generator(self):
        return self.gen

    # -- checkpoints
    def state(self):
        return {"discriminator_classes": None if self.disc is None else self.disc.num_classes,
                "replay_counts": self.replay_counts}

    def set_state(self, state, task_data):
        classes = state["discriminator_classes"]
        self.disc = networks.rebuild_discriminator(classes, self.hp, self.channels)
        self.replay_counts = list(state["replay_counts"])

    def report(self):
        return {"generator_size": networks.count_weights(self.gen), "generator_widths": list(self.gen.widths),
                "mergan_mode": self.hp.mergan_mode, "replay_images_per_task": self.replay_counts}
