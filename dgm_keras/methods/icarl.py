"""iCaRL (Rebuffi et al., CVPR 2017) on the shared classifier: the discriminator's trunk is the
feature extractor, its growing classifier head gives iCaRL's sigmoid outputs.

- Training: the current task's images together with the exemplar memory, one shuffled set as
  in the paper; binary cross-entropy on sigmoid outputs, with one-hot targets for the new
  classes and, for the old classes, the previous network's sigmoid outputs (distillation).
- Memory: a fixed total of K = ``hp.icarl_memory`` exemplars; after a task each of the t seen
  classes keeps m = K // t: old classes keep the first m of theirs (herding order), new
  classes get m picked by herding on L2-normalised features.
- Classification: nearest mean of exemplars (NME). The paper also averages the features of
  each exemplar with those of its horizontal flip; here nothing is flipped, since digits
  (MNIST, SVHN) are not mirror-symmetric.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from dgm_keras import data, distribution, expansion, gan, memory, networks
from dgm_keras.methods import base, supervised


def l2_normalise(x):
    return x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-12)


def nme_logits(features, means):
    """-||f(x)/|f(x)| - mu_y||^2 for every class y: a logit whose argmax is the nearest class
    mean (``means`` rows are already unit vectors), so the runner and the export, which expect
    logits, score exactly iCaRL's NME rule."""
    f = l2_normalise(features)
    return (2.0 * ops.matmul(f, ops.transpose(means)) - ops.sum(ops.square(means), axis=-1)
            - ops.sum(ops.square(f), axis=-1, keepdims=True))


def icarl_loss(logits, targets):
    """Binary cross-entropy of every seen class's sigmoid output, summed over classes as in the
    paper, averaged over the batch."""
    return ops.mean(ops.sum(ops.binary_crossentropy(targets, logits, from_logits=True), axis=-1))


class NearestMeanClassifier(keras.Model):
    """What is evaluated and exported: the trunk, plus the class means as a non-trainable
    variable, so a SavedModel of this object predicts exactly like the live NME. Rebuilt with
    the discriminator when classes grow (a built layer cannot take new state)."""

    def __init__(self, discriminator: networks.Discriminator, feature_size: int, **kwargs):
        super().__init__(**kwargs)
        self.discriminator = discriminator
        self.class_means = self.add_weight(shape=(discriminator.num_classes, feature_size), initializer="zeros",
                                           trainable=False, name="class_means")

    def call(self, images):
        return nme_logits(self.discriminator.features(images, training=False), self.class_means)

    def build(self, *args, **kwargs):
        """The discriminator is built and the means are created in ``__init__``."""
        self.built = True


class ICaRLTrainer(supervised.ClassifierTrainer):
    """One task of iCaRL. ``previous`` (the network as the last task ended) is frozen: its
    outputs, computed in the compiled step, enter the loss as constants (``stop_gradient``)
    and it is not in the optimizer.

    Only the loss is logged: the head's argmax is not iCaRL's classifier, and with one class
    per task it means little (the first task's single output only ever saw positives, and
    distillation hands that on), while the nearest mean of exemplars is what is evaluated.
    """

    def __init__(self, discriminator: networks.Discriminator, previous: networks.Discriminator | None, **kwargs):
        super().__init__(discriminator, **kwargs)
        self.previous = previous

    @property
    def metrics(self):
        return [self.loss_tracker]

    def targets(self, images, labels):
        """One-hot over the seen classes; the old classes' entries replaced by the previous
        network's sigmoid outputs, for every image (new ones and exemplars alike)."""
        onehot = ops.one_hot(labels, self.discriminator.num_classes)
        if self.previous is None:
            return onehot
        old = ops.sigmoid(self.previous.classify(images, training=False))
        return ops.concatenate([old, onehot[:, self.previous.num_classes:]], axis=-1)

    def task_loss(self, images, labels, training=True):
        logits = self.discriminator.classify(images, training=training)
        return icarl_loss(logits, ops.stop_gradient(self.targets(images, labels)))

    def train_step(self, batch):
        x, y = batch
        variables = self.discriminator.head_variables("classifier")
        with tf.GradientTape() as tape:
            loss = self.task_loss(x, y)
            scaled = distribution.scale_loss(loss)
        self.cls_optimizer.apply(tape.gradient(scaled, variables), variables)
        self.loss_tracker.update_state(loss)
        return {m.name: m.result() for m in self.metrics}


class ICaRL(supervised.Supervised):
    """Fine-tuning's classifier and task stream (``pipeline``, ``task_steps`` over
    ``task_data``), plus exemplars, distillation and the nearest-mean classifier."""

    def __init__(self, scenario: data.Scenario, channels: int, hp: base.HyperParams):
        super().__init__(scenario, channels, hp, joint=False)
        self.name = "icarl"
        if hp.icarl_memory < scenario.num_classes:
            raise ValueError(f"icarl_memory={hp.icarl_memory} leaves classes without exemplars; "
                             f"use at least {scenario.num_classes} (one per class)")
        self.memory = memory.ExemplarMemory()
        self.herding: dict[int, np.ndarray] = {}  # class -> its kept images' indices among its training images
        self.nme: NearestMeanClassifier | None = None
        self.task_train: data.SplitArrays | None = None  # set while a task is learned
        self.task: int | None = None  # the task being learned, with ``task_train``
        self.memory_sizes: list[int] = []
        self.exemplars_per_class: list[list[int]] = []

    # -- features and means
    def features(self, images: np.ndarray, batch: int = 1000) -> np.ndarray:
        return np.concatenate([ops.convert_to_numpy(self.disc.features(images[i:i + batch], training=False))
                               for i in range(0, len(images), batch)])

    def feature_size(self) -> int:
        return int(self.features(np.zeros((1, data.IMAGE_SIZE, data.IMAGE_SIZE, self.channels), np.float32)).shape[1])

    def class_means(self, images_by_class: dict[int, np.ndarray]) -> np.ndarray:
        """[classes, D]: per class, the mean of its images' L2-normalised features, normalised
        again (iCaRL's mu_y), with the current network."""
        means = [l2_normalise(ops.mean(l2_normalise(self.features(images_by_class[c])), axis=0))
                 for c in sorted(images_by_class)]
        return ops.convert_to_numpy(ops.stack(means)).astype(np.float32)

    def _class_images(self, train: data.SplitArrays, label: int) -> np.ndarray:
        return train.of_classes(range(label, label + 1)).images

    # -- the task loop
    def begin_task(self, task, train):
        previous = self.disc
        seen = self.scenario.seen_classes(task)
        self.disc = (networks.make_discriminator(seen, self.hp, self.channels)
                     if previous is None else expansion.grow_discriminator(previous, seen, self.channels))
        self.nme = NearestMeanClassifier(self.disc, self.feature_size(), name="nearest_mean_classifier")
        self.task_train, self.task = train, task
        kept = self.memory.arrays()
        self.task_data = train if kept is None else data.SplitArrays(
            np.concatenate([train.images, kept.images]), np.concatenate([train.labels, kept.labels]))
        self.trainer = ICaRLTrainer(self.disc, previous)
        self.trainer.compile(gan.adam(self.hp, self.hp.d_lr),
                             jit_compile=self.hp.jit_compile)

    def exemplars_if_ended(self, task) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        """The exemplar sets ``end_task`` would keep if the task ended now, with the network as
        it is now: every seen class gets m = K // t; old classes keep the first m of theirs,
        the task's new classes get m picked by herding. Returns (images per class, the new
        classes' herding orders). One definition for the task's end and for the epoch ends the
        validation selector scores, so the selected figure belongs to a classifier that could
        be exported."""
        per_class = self.hp.icarl_memory // self.scenario.seen_classes(task)
        kept = {label: images[:per_class] for label, images in self.memory.images.items()}
        orders = {}
        for label in self.scenario.task_classes(task):
            images = self._class_images(self.task_train, label)
            orders[label] = memory.herding_order(self.features(images), per_class)
            kept[label] = images[orders[label]]
        return kept, orders

    def end_task(self, task):
        kept, orders = self.exemplars_if_ended(task)
        self.memory.images = kept
        self.herding.update(orders)
        self.nme.class_means.assign(self.class_means(self.memory.images))
        self.task_train, self.task = None, None
        self.memory_sizes.append(len(self.memory))
        self.exemplars_per_class.append([len(self.memory.images[c]) for c in self.memory.classes()])

    # -- what is evaluated and exported
    def classifier(self):
        """NME logits (negative squared distances to the class means; see ``nme_logits``).

        While a task is learned (the runner's validation selector scores each epoch) this is
        the classifier that would be exported if the task ended now: the means of the exemplar
        sets ``end_task`` would keep (``exemplars_if_ended``), with the network as it is now.
        Means over all of the task's training images would score a model that never exists.
        """
        if self.task_train is None:
            return self.nme
        kept, _ = self.exemplars_if_ended(self.task)
        means, disc = self.class_means(kept), self.disc
        return lambda images: nme_logits(disc.features(images, training=False), means)

    def classifier_model(self):
        return self.nme

    # -- checkpoints: the exemplars are indices into their task's training images
    def state(self):
        return {"classes": None if self.disc is None else self.disc.num_classes,
                "exemplars": {str(c): self.herding[c][:len(self.memory.images[c])].tolist()
                              for c in self.memory.classes()},
                "memory_sizes": self.memory_sizes, "exemplars_per_class": self.exemplars_per_class}

    def set_state(self, state, task_data):
        if state["classes"] is None:
            return
        self.disc = networks.make_discriminator(state["classes"], self.hp, self.channels)
        self.nme = NearestMeanClassifier(self.disc, self.feature_size(), name="nearest_mean_classifier")
        for label, indices in state["exemplars"].items():
            label = int(label)
            self.herding[label] = np.asarray(indices, np.int64)
            self.memory.images[label] = self._class_images(task_data(self.scenario.task_of_class(label)),
                                                           label)[self.herding[label]]
        self.memory_sizes, self.exemplars_per_class = list(state["memory_sizes"]), list(state["exemplars_per_class"])

    def report(self):
        return {"memory_budget": self.hp.icarl_memory, "memory_size_after_task": self.memory_sizes,
                "exemplars_per_class_after_task": self.exemplars_per_class}
