"""The bounds of the comparison: joint training (all data seen so far) and fine-tuning
(the current task's data only), on the same classifier DGM evaluates (the discriminator's
trunk and growing classifier head)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from dgm_keras import data, distribution, expansion, gan, networks
from dgm_keras.methods import base


class ClassifierTrainer(keras.Model):
    """Cross-entropy on the classifier head; the critic head is unused."""

    def __init__(self, discriminator: networks.Discriminator, **kwargs):
        super().__init__(**kwargs)
        self.discriminator = discriminator
        self.loss_tracker = keras.metrics.Mean(name="cls_loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="train_accuracy")
        self.ce = distribution.sparse_cross_entropy
        self.built = True  # no call() to trace: fit under a strategy would try to build one

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy]

    def compile(self, optimizer, jit_compile=False):
        super().compile(jit_compile=jit_compile)
        self.cls_optimizer = optimizer
        optimizer.build(self.discriminator.head_variables("classifier"))

    def train_step(self, batch):
        x, y = batch
        variables = self.discriminator.head_variables("classifier")
        with tf.GradientTape() as tape:
            logits = self.discriminator.classify(x, training=True)
            loss = self.ce(y, logits)
            scaled = distribution.scale_loss(loss)
        self.cls_optimizer.apply(tape.gradient(scaled, variables), variables)
        self.loss_tracker.update_state(loss)
        self.accuracy.update_state(y, logits)
        return {m.name: m.result() for m in self.metrics}


class Supervised(base.ContinualMethod):
    def __init__(self, scenario, channels, hp, joint: bool):
        super().__init__(scenario, channels, hp)
        self.joint = joint
        self.name = "joint" if joint else "finetune"
        self.disc = None
        self.seen: list[data.SplitArrays] = []  # joint: every task's training data so far

    def begin_task(self, task, train):
        seen = self.scenario.seen_classes(task)
        self.disc = (networks.make_discriminator(seen, self.hp, self.channels) if self.disc is None
                     else expansion.grow_discriminator(self.disc, seen, self.channels))
        self.seen = [*self.seen, train] if self.joint else [train]
        self.task_data = self.seen[0] if len(self.seen) == 1 else data.SplitArrays(
            np.concatenate([s.images for s in self.seen]), np.concatenate([s.labels for s in self.seen]))
        self.trainer = ClassifierTrainer(self.disc)
        self.trainer.compile(gan.adam(self.hp, self.hp.d_lr),
                             jit_compile=self.hp.jit_compile)

    def task_steps(self, train):
        """Joint training's epoch covers everything seen so far (set by ``begin_task``)."""
        return self.steps_for(len(self.task_data.labels))

    def planned_steps(self, sizes):
        """Joint training's tasks grow: each covers every task so far."""
        return super().planned_steps(list(np.cumsum(sizes)) if self.joint else sizes)

    def pipeline(self, task, train):
        return data.make_pipeline(self.task_data, self.hp.batch_size, shuffle=True, seed=self.hp.seed + task,
                                  drop_remainder=True).repeat()

    def end_task(self, task):
        pass

    def state(self):
        return {"classes": None if self.disc is None else self.disc.num_classes, "tasks_seen": len(self.seen)}

    def set_state(self, state, task_data):
        self.disc = networks.rebuild_discriminator(state["classes"], self.hp, self.channels)
        self.seen = [task_data(t) for t in range(state["tasks_seen"])] if self.joint else []

    def classifier_model(self):
        return self.disc
