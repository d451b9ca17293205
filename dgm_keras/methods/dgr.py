"""DGR, Deep Generative Replay (Shin et al., NeurIPS 2017): an unconditional WGAN-GP
generator as the memory, and a solver that labels what it replays.

The solver is the classifier every method is compared on (``networks.Discriminator``'s
trunk and growing classifier head). The generator is ``networks.PlainGenerator`` without
a label, with its own critic (a ``networks.Discriminator`` used through its critic head).

At the start of task t > 0 the generator, as task t-1 left it, draws the replay set and
the solver, as task t-1 left it, labels it (argmax over the classes seen before t). Then,
in one compiled step per batch:
- the solver learns real current images and the replay, each seen class weighing the same;
- the critic and the generator learn the same mixture, weighted so that every seen class
  weighs the same: the generator must keep drawing the old classes as well as the new.

The generator and its critic are trained further, not copied: their previous state is
needed only to draw the replay set, which is done before the task's first step.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from keras import ops

from dgm_keras import data, distribution, expansion, gan, networks
from dgm_keras.methods import base


class DGRTrainer(gan.GANTrainer):
    """One task of DGR: ``fit`` on real current-task batches (zipped with replay batches)."""

    LOSSES = ("d_loss", "g_loss", "wasserstein", "gradient_penalty", "cls_loss", "replay_cls_loss")

    def __init__(self, generator: networks.PlainGenerator, critic: networks.Discriminator,
                 solver: networks.Discriminator, task_classes: range, num_past_classes: int, hp: base.HyperParams,
                 **kwargs):
        super().__init__(self.LOSSES, seed=hp.seed * 1000 + num_past_classes, **kwargs)
        self.generator, self.critic, self.solver, self.hp = generator, critic, solver, hp
        self.num_past_classes = num_past_classes
        self.current_share = len(task_classes) / (len(task_classes) + num_past_classes)
        self.g_vars = generator.trainable_variables
        # One optimizer for the critic and the solver: their variables are disjoint and Adam is
        # per variable, so this is two Adam updates at the critic's learning rate.
        self.d_vars = critic.head_variables("critic") + solver.head_variables("classifier")
        self.average_weights(self.g_vars, solver)

    def score(self, images):
        return self.critic(images, training=True)[0]

    def train_step(self, batch):
        """The solver and the critic step, then the generator step, in one compiled function."""
        real_x, real_y, replay_x, replay_y = gan.split_batch(batch, self.num_past_classes > 0)
        images = real_x if replay_x is None else ops.concatenate([real_x, replay_x], 0)
        weights = gan.mixture_weights(ops.shape(real_x)[0], None if replay_x is None else ops.shape(replay_x)[0],
                                      self.current_share)
        values = self.discriminator_step(images, real_y, replay_y, weights, gan.batch_parts(real_x, replay_x))
        values.update(self.generator_step(ops.shape(images)[0]))
        self.update_weight_averages()
        return self.record(values)

    def discriminator_step(self, images, real_y, replay_y, weights, parts):
        """Under a strategy (``distribution``): each fake and interpolation weight pairs with the
        image one device pairs it with (``parts``), and the loss, a replica's mean, is scaled."""
        fake = ops.stop_gradient(self.generator(gan.latents(self.generator.nz, parts, self.seed_gen), training=True))
        with tf.GradientTape() as tape:
            wasserstein = ops.sum(weights * self.score(images)) - ops.mean(self.score(fake))
            gp = gan.gradient_penalty(self.score, images, fake, self.seed_gen, weights, parts)
            d_loss = -wasserstein + self.hp.gp_weight * gp
            logits = self.solver.classify(images, training=True)
            total_cls, cls_loss, replay_loss = gan.balanced_cls_loss(self.ce, logits, real_y, replay_y,
                                                                     self.current_share)
            scaled = distribution.scale_loss(d_loss + total_cls)
        self.d_optimizer.apply(tape.gradient(scaled, self.d_vars), self.d_vars)
        return dict(d_loss=d_loss, wasserstein=wasserstein, gradient_penalty=gp, cls_loss=cls_loss,
                    replay_cls_loss=replay_loss)

    def generator_step(self, n):
        z = gan.latents(self.generator.nz, n, self.seed_gen)
        with tf.GradientTape() as tape:
            g_loss = -ops.mean(self.score(self.generator(z, training=True)))
            scaled = distribution.scale_loss(g_loss)
        self.g_optimizer.apply(tape.gradient(scaled, self.g_vars), self.g_vars)
        return dict(g_loss=g_loss)


class DGR(base.ContinualMethod):
    """The continual method: one generator and its critic trained on, one solver that grows."""

    name = "dgr"

    def __init__(self, scenario: data.Scenario, channels: int, hp: base.HyperParams):
        super().__init__(scenario, channels, hp)
        self.gen = networks.PlainGenerator((4 * hp.ngf, 2 * hp.ngf, hp.ngf), 0, channels,
                                           name="generator").build_all()
        self.critic = networks.make_discriminator(1, hp, channels, "critic")
        self.solver = None
        self.replay = None
        self.replay_label_counts: list[list[int]] = []

    def replay_arrays(self, task: int, per_class: int) -> data.SplitArrays:
        """Images of the generator as it stands, labelled by the solver as it stands (both as
        the previous task left them): the argmax over the classes seen before ``task``."""
        past = self.scenario.seen_classes(task - 1)
        images = gan.sample_images(self.gen, past * per_class, seed=self.hp.seed + task)
        logits = np.concatenate([ops.convert_to_numpy(self.solver.classify(images[i:i + 2048], training=False))
                                 for i in range(0, len(images), 2048)])
        return data.SplitArrays(images, np.argmax(logits[:, :past], axis=1).astype(np.int32))

    def begin_task(self, task, train):
        if task:
            self.replay = self.replay_arrays(task, gan.replay_per_class(self.hp, train, self.scenario.classes_per_task))
            self.replay_label_counts.append(np.bincount(self.replay.labels, minlength=task).tolist())
        else:
            self.replay = None
            self.replay_label_counts.append([])
        seen = self.scenario.seen_classes(task)
        self.solver = (networks.make_discriminator(seen, self.hp, self.channels, "solver")
                       if self.solver is None else expansion.grow_discriminator(self.solver, seen, self.channels))
        self.trainer = DGRTrainer(self.gen, self.critic, self.solver, self.scenario.task_classes(task),
                                  task * self.scenario.classes_per_task, self.hp)
        self.trainer.compile(*gan.optimizers(self.hp), jit_compile=self.hp.jit_compile)
        self.begin_averaging()

    def pipeline(self, task, train) -> tf.data.Dataset:
        return gan.replay_pipeline(train, self.replay, self.hp, task)

    def end_task(self, task):
        gan.end_plain_generator_task(self, task, None)

    # -- what is evaluated and exported
    def classifier_model(self):
        return self.solver

    def sample(self, labels, seed):
        raise NotImplementedError("DGR's generator is unconditional: it cannot draw given classes; "
                                  "its replay is labelled by the solver (DGR.replay_arrays)")

    def parameter_counts(self):
        return {"classifier": networks.count_weights(self.solver), "generator": networks.count_weights(self.gen)}

    # -- checkpoints
    def trackables(self):
        return {"classifier": self.solver, "generator": self.gen, "critic": self.critic}

    def state(self):
        return {"solver_classes": None if self.solver is None else self.solver.num_classes,
                "replay_label_counts": self.replay_label_counts}

    def set_state(self, state, task_data):
        classes = state["solver_classes"]
        self.solver = networks.rebuild_discriminator(classes, self.hp, self.channels, name="solver")
        self.replay_label_counts = [list(c) for c in state["replay_label_counts"]]

    def report(self):
        return {
            "generator_size": networks.count_weights(self.gen),
            "critic_size": networks.count_weights(self.critic),
            "generator_widths": list(self.gen.widths),
            # Per task: how many replayed images the old solver gave each past class. An
            # unconditional generator that forgets a class shows here as a count near 0.
            "replay_label_counts_per_task": self.replay_label_counts,
            "replay_images_per_task": [int(sum(c)) for c in self.replay_label_counts],
        }
