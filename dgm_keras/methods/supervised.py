"""The bounds of the comparison: joint training (all data seen so far) and fine-tuning
(the current task's data only), on the same classifier DGM evaluates (the discriminator's
trunk and growing classifier head)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from dgm_keras import data, expansion, networks
from dgm_keras.methods import base


class ClassifierTrainer(keras.Model):
    """Cross-entropy on the classifier head; the critic head is unused."""

    def __init__(self, discriminator: networks.Discriminator, **kwargs):
        super().__init__(**kwargs)
        self.discriminator = discriminator
        self.loss_tracker = keras.metrics.Mean(name="cls_loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="train_accuracy")
        self.ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy]

    def compile(self, optimizer, jit_compile=False):
        super().compile(jit_compile=jit_compile)
        self.cls_optimizer = optimizer
        optimizer.build(self.discriminator.trainable_variables)

    def train_step(self, batch):
        x, y = batch
        variables = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.discriminator.classify(x, training=True)
            loss = self.ce(y, logits)
        self.cls_optimizer.apply(tape.gradient(loss, variables), variables)
        self.loss_tracker.update_state(loss)
        self.accuracy.update_state(y, logits)
        return {m.name: m.result() for m in self.metrics}


class Supervised(base.ContinualMethod):
    def __init__(self, scenario, channels, hp, joint: bool):
        super().__init__(scenario, channels, hp)
        self.joint = joint
        self.name = "joint" if joint else "finetune"
        self.disc = None
        self.seen: list[data.SplitArrays] = []

    def begin_task(self, task, train):
        seen = self.scenario.seen_classes(task)
        self.disc = (networks.Discriminator(seen, norm=self.hp.d_norm, name="discriminator").build_all(self.channels) if self.disc is None
                     else expansion.grow_discriminator(self.disc, seen, self.channels))
        self.trainer = ClassifierTrainer(self.disc)
        self.trainer.compile(keras.optimizers.Adam(self.hp.d_lr, beta_1=self.hp.beta_1, beta_2=self.hp.beta_2),
                             jit_compile=self.hp.jit_compile)

    def train_task(self, task, train, callbacks):
        self.seen.append(train)
        if self.joint:
            train = data.SplitArrays(np.concatenate([s.images for s in self.seen]),
                                     np.concatenate([s.labels for s in self.seen]))
        epochs, steps = self.steps_for(len(train.labels))
        ds = data.make_pipeline(train, self.hp.batch_size, shuffle=True, seed=self.hp.seed + task,
                                drop_remainder=True).repeat()
        history = self.trainer.fit(ds, epochs=epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=0, shuffle=False)
        return {k: float(v[-1]) for k, v in history.history.items()}

    def end_task(self, task):
        if not self.joint:
            self.seen.clear()

    def classifier(self):
        disc = self.disc
        return lambda images: disc.classify(images, training=False)

    def classifier_model(self):
        return self.disc
