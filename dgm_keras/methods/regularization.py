"""The regularisation baselines on one growing classifier: EWC, SI (path integral) and RWalk,
each optionally with an episodic memory of real images (the paper's "-M" variants).

All three keep, per classifier parameter, an importance Omega and an anchor theta* (the value the
parameter had when the last task ended), and add ``strength * sum Omega (theta - theta*)^2`` to
the loss of later tasks. They differ in how Omega is measured:

- EWC (Kirkpatrick et al. 2017, online): the diagonal Fisher of the task's data, computed after
  the task on a seeded subset of 1,024 of its images, accumulated as ``F <- gamma F + F_t``.
  ``hp.ewc_fisher`` picks the labels: "empirical" (the default) takes each image's own label;
  "sampled" takes the paper's Fisher, labels drawn from the model's own softmax, in expectation
  over the classes (``sum_k p_k g_k^2``) rather than by one draw per image: as exact, with no
  seed to keep and no sampling noise, at one backward pass per class;
- SI (Zenke et al. 2017): the path integral of the task loss along the training trajectory,
  ``w = sum -g * delta`` per step, divided at the task's end by the squared total move;
- RWalk (Chaudhry et al. 2018): EWC++'s running Fisher (a moving average of squared gradients,
  updated every few steps) plus path scores: the loss change of each interval of steps divided
  by the distance it travelled (``F Delta^2``, the authors' code), clipped at zero; both min-max normalised
  at the task's end (``RiemannianWalk`` says where it follows the authors' code and where not).

The path integrals and the running Fisher are accumulated inside the compiled train step.
The classifier is the discriminator's trunk and growing head, as for every method; in the
class-incremental setting the regularisers end near fine-tuning (the paper's finding): the
softmax over all seen classes is re-fitted to the newest class whatever the weights keep.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from dgm_keras import data, distribution, gan, memory, networks
from dgm_keras.methods import base, supervised

FISHER_EXAMPLES = 1024  # EWC: a seeded subset of the task's images; per-example gradients cost ~2 ms each here
RWALK_EPSILON = 1e-3  # RWalk's damping of an interval's KL distance (the authors' code, PARAM_XI_STEP)
RWALK_NORMALISATION_EPSILON = 1e-32  # keeps a constant Fisher or score at 0 (the authors' code, EPSILON)


def _key(variable) -> str:
    """A variable's path without the model's name: the same across growth."""
    return variable.path.split("/", 1)[-1]


def carried(old: np.ndarray | None, shape) -> np.ndarray:
    """Zeros of ``shape`` with ``old`` in the leading slice: growth only appends units
    (``expansion.carry_weights``' rule), and a new unit belongs to no past task."""
    value = np.zeros(shape, np.float32)
    if old is not None:
        value[tuple(slice(0, d) for d in old.shape)] = old
    return value


class ParameterSlots:
    """Named per-parameter quantities (importance, anchor, accumulators), each a list of
    non-trainable variables aligned with the classifier's variables, and named scalar counters.

    Everything here is in ``variables()``, which the checkpoints save: a resumed run continues
    every accumulator, counters included, exactly where it stopped."""

    def __init__(self, names: tuple[str, ...], counters: tuple[str, ...] = ()):
        self.names = names
        self.params: list = []
        self.slots: dict[str, list] = {name: [] for name in names}
        # Not per parameter: growth leaves them as they are.
        self.counters = {name: keras.Variable(0, dtype="int64", trainable=False, name=name) for name in counters}

    def attach(self, params: list) -> None:
        """Re-aligns every slot with ``params`` (the grown classifier's variables), carrying old values."""
        old = {name: {_key(p): s.numpy() for p, s in zip(self.params, slots)} for name, slots in self.slots.items()}
        self.params = list(params)
        self.slots = {name: [keras.Variable(carried(old[name].get(_key(p)), p.shape), trainable=False,
                                            name=f"{name}_{_key(p).replace('/', '_')}") for p in self.params]
                      for name in self.names}

    def __getitem__(self, name: str) -> list:
        return self.slots[name]

    def variables(self) -> dict[str, list]:
        return {**self.slots, **{name: [counter] for name, counter in self.counters.items()}}


def _squared_gradient_sums(disc: networks.Discriminator, params: list):
    """A compiled ``(x, y, w) -> [sum_i w_i (d log p(y_i | x_i) / d theta)^2 per parameter]``,
    one gradient per example (inference mode); under a strategy, each replica sums its share of
    the examples (``distribution.across_replicas``)."""

    @tf.function(reduce_retracing=True)
    def sums(x, y, w):
        def one(example):
            xi, yi, wi = example
            with tf.GradientTape() as tape:
                log_likelihood = -keras.losses.sparse_categorical_crossentropy(
                    yi[None], disc.classify(xi[None], training=False), from_logits=True)
            return [wi * ops.square(g) for g in tape.gradient(log_likelihood, params)]

        return [ops.sum(g, axis=0) for g in tf.vectorized_map(one, (x, y, w))]

    return distribution.across_replicas(sums)


def empirical_fisher(disc: networks.Discriminator, params: list, arrays: data.SplitArrays,
                     batch_size: int) -> list[np.ndarray]:
    """Diagonal empirical Fisher, per example: the mean over ``arrays`` of the squared gradient
    of each example's log-likelihood of its own label (inference mode)."""
    sums = _squared_gradient_sums(disc, params)
    totals = [np.zeros(p.shape, np.float32) for p in params]
    for x, y in data.make_pipeline(arrays, batch_size, shuffle=False):
        totals = [t + s.numpy() for t, s in zip(totals, sums(x, y, tf.ones(tf.shape(y))))]
    return [t / len(arrays.labels) for t in totals]


def expected_fisher(disc: networks.Discriminator, params: list, arrays: data.SplitArrays,
                    batch_size: int) -> list[np.ndarray]:
    """Diagonal Fisher of the model's own predictive distribution (the EWC paper's): the mean
    over ``arrays`` of ``sum_k p_k(x) (d log p_k(x) / d theta)^2``, the labels' expectation under
    the model's softmax taken exactly. Unlike the empirical Fisher it ignores the data's labels:
    a confident model has a small Fisher whether it is right or wrong."""
    sums = _squared_gradient_sums(disc, params)
    totals = [np.zeros(p.shape, np.float32) for p in params]
    for x, y in data.make_pipeline(arrays, batch_size, shuffle=False):
        probabilities = ops.softmax(disc.classify(x, training=False), axis=-1)
        for k in range(probabilities.shape[-1]):  # one pass per class: a batch's memory, not a batch times classes
            labels = tf.fill(tf.shape(y), tf.constant(k, y.dtype))
            totals = [t + s.numpy() for t, s in zip(totals, sums(x, labels, probabilities[:, k]))]
    return [t / len(arrays.labels) for t in totals]


def min_max_normalised(values: list) -> list:
    """``values`` through the one affine map that sends their smallest entry (over all of them,
    not per layer, as the authors' code) to 0 and their largest to 1."""
    low = ops.min(ops.stack([ops.min(v) for v in values]))
    high = ops.max(ops.stack([ops.max(v) for v in values]))
    return [(v - low) / (high - low + RWALK_NORMALISATION_EPSILON) for v in values]


class Regularizer:
    """Importance and anchor per parameter, and the quadratic penalty they define.

    ``observe_step`` runs inside the compiled train step, after the update; ``consolidate``
    runs once the task has ended and sets the importance and the anchor the next tasks use.
    """

    slot_names: tuple[str, ...] = ("importance", "anchor")
    counter_names: tuple[str, ...] = ()
    observes_steps = False  # whether ``observe_step`` does anything (it needs the global gradients)

    def __init__(self, hp: base.HyperParams):
        self.hp = hp
        self.slots = ParameterSlots(self.slot_names, self.counter_names)
        self.disc = None

    @property
    def strength(self) -> float:
        raise NotImplementedError

    @property
    def params(self) -> list:
        return self.slots.params

    def attach(self, disc: networks.Discriminator) -> None:
        """Follows the classifier as it grows (at the start of each task)."""
        self.disc = disc
        self.slots.attach(disc.head_variables("classifier"))

    def penalty(self):
        """``strength * sum importance (theta - anchor)^2``: zero at the anchor, and free for units
        no past task used (their importance is zero)."""
        terms = [ops.sum(omega * ops.square(p - anchor))
                 for p, omega, anchor in zip(self.params, self.slots["importance"], self.slots["anchor"])]
        return self.strength * ops.sum(ops.stack(terms))

    def observe_step(self, task_grads: list, before: list) -> None:
        """``task_grads``: the step's gradients of the unregularised loss; ``before``: the
        parameters before the step (the move is ``p - before``)."""

    def consolidate(self, task: int, train: data.SplitArrays) -> None:
        """After ``task`` (whose training data is ``train``): new importance, anchor at the current weights."""
        raise NotImplementedError

    def set_anchor(self) -> None:
        for anchor, p in zip(self.slots["anchor"], self.params):
            anchor.assign(p)

    def importance_stats(self) -> dict:
        values = np.concatenate([v.numpy().ravel() for v in self.slots["importance"]])
        return {"mean": float(values.mean()), "max": float(values.max()), "negative_fraction": float((values < 0).mean())}


class FisherPenalty(Regularizer):
    """Online EWC: ``F <- gamma F + F_t``, penalty ``lambda / 2 * sum F (theta - theta*)^2``;
    ``F_t`` the empirical Fisher or, with ``hp.ewc_fisher == "sampled"``, the model's own."""

    fishers = {"empirical": empirical_fisher, "sampled": expected_fisher}

    @property
    def strength(self):
        return self.hp.ewc_lambda / 2.0

    def consolidate(self, task, train):
        if self.hp.ewc_fisher not in self.fishers:
            raise ValueError(f"ewc_fisher={self.hp.ewc_fisher!r}: expected one of {', '.join(self.fishers)}")
        count = min(FISHER_EXAMPLES, len(train.labels))
        pick = np.sort(np.random.default_rng(self.hp.seed * 1000 + task).permutation(len(train.labels))[:count])
        fisher = self.fishers[self.hp.ewc_fisher](self.disc, self.params,
                                                  data.SplitArrays(train.images[pick], train.labels[pick]),
                                                  self.hp.batch_size)
        for omega, f in zip(self.slots["importance"], fisher):
            omega.assign(self.hp.ewc_gamma * omega.numpy() + f)
        self.set_anchor()


class PathIntegral(Regularizer):
    """SI: ``w += -g * delta`` per step; at the task's end ``Omega += w / (Delta^2 + xi)``,
    Delta the task's total move; penalty ``c * sum Omega (theta - theta*)^2``."""

    observes_steps = True
    slot_names = ("importance", "anchor", "path", "task_start")

    @property
    def strength(self):
        return self.hp.si_c

    def attach(self, disc):
        super().attach(disc)
        # Not the anchor: a new unit's anchor is 0, but its move is counted from its initial value.
        for start, p in zip(self.slots["task_start"], self.params):
            start.assign(p)

    def observe_step(self, task_grads, before):
        for w, g, p, b in zip(self.slots["path"], task_grads, self.params, before):
            w.assign_add(-g * (p - b))

    def consolidate(self, task, train):
        for omega, w, p, start in zip(self.slots["importance"], self.slots["path"], self.params,
                                      self.slots["task_start"]):
            omega.assign_add(w / (ops.square(p - start) + self.hp.si_xi))
            w.assign(ops.zeros_like(w))
        self.set_anchor()


class RiemannianWalk(Regularizer):
    """RWalk as the authors' code has it (facebookresearch/agem, ``model/model.py`` and the
    ``RWALK`` branch of ``fc_permute_mnist.py``), with ``K = hp.rwalk_fisher_update_after`` (their
    ``fisher_update_after``: 10 in their MNIST script, 50 in their CIFAR one) and ``alpha =
    hp.rwalk_alpha`` (their ``fisher_ema_decay``, 0.9 in both: despite the name, the weight of the
    new interval, ``F <- (1 - decay) F + decay * mean``):

    - every step, with g the step's gradient of the unregularised loss and delta its move:
      ``path += -g * delta`` (the interval's loss change) and ``grad_squares += g^2``;
    - every K steps, the interval closes: ``task_scores += max(path / (F Delta^2 + eps), 0)``
      with Delta the move since the interval began and F the running Fisher as it stood (zero at
      the very start: the first interval's scores are damped by eps alone, as theirs); then
      ``F <- alpha grad_squares / K + (1 - alpha) F`` (EWC++), and path and grad_squares restart;
    - at the task's end: an unfinished interval is dropped; ``scores`` become the task's scores
      (the first task) or their mean with the previous ones; F and the scores are each min-max
      normalised over all parameters at once, and ``importance = F_n + scores_n``; F itself runs
      on across tasks. Penalty: ``lambda * sum importance (theta - theta*)^2`` (their
      ``synap_stgth``, 1 for RWALK in their MNIST and CIFAR runs).

    The distance is their code's ``F Delta^2``; the paper writes the KL distance as ``0.5 F Delta^2``
    (after min-max normalisation the two differ only in how much eps weighs).

    Where it differs from their code, and why:

    - intervals of exactly K steps, so that ``grad_squares / K`` is the interval's mean: their loop
      closes one before step ``iters`` when ``(iters + 1) % K == 0``, so each task's first interval
      has K - 1 steps (still divided by K);
    - ``grad_squares`` restarts with every interval, as in their EWC loop and in EWC++; their RWALK
      loop only clears it at the task's end, so its "interval mean" grows as a sum over the task;
    - the scores of consecutive tasks are averaged, ``s <- (s + s_t) / 2``, as the paper and their
      comment ("the importance scores are averaged") say; their op is ``assign_add``, which makes
      ``1.5 s + 0.5 s_t`` (their doubling of the first task's scores is the "as they are" here);
    - the classifier head grows: a new task's units start with zero Fisher, scores and importance
      (no past task used them) and their moves count from their initial values; their head is
      fixed and masked. The normalisations span the parameters that exist at the task's end;
    - with a memory ("-M"), g is the gradient of the class-balanced loss of the current and the
      replayed batch; theirs has no memory for RWalk.
    """

    observes_steps = True
    slot_names = ("importance", "anchor", "fisher", "grad_squares", "path", "interval_start", "task_scores",
                  "scores")
    counter_names = ("step",)  # steps of the current task: where the intervals close

    @property
    def strength(self):
        return self.hp.rwalk_lambda

    def attach(self, disc):
        super().attach(disc)
        # A new unit's move is counted from its initial value (as SI's task_start), not from 0.
        for start, p in zip(self.slots["interval_start"], self.params):
            start.assign(p)

    def observe_step(self, task_grads, before):
        for path, squares, g, p, b in zip(self.slots["path"], self.slots["grad_squares"], task_grads, self.params,
                                          before):
            path.assign_add(-g * (p - b))
            squares.assign_add(ops.square(g))
        step = self.slots.counters["step"]
        step.assign_add(1)
        # A tensor condition, decided in the compiled step, not when it is traced.
        tf.cond(ops.equal(step % self.hp.rwalk_fisher_update_after, 0), self.close_interval, lambda: None)

    def close_interval(self) -> None:
        """The interval's clipped scores with the Fisher it began with, then the Fisher's update."""
        alpha, every = self.hp.rwalk_alpha, self.hp.rwalk_fisher_update_after
        for fisher, squares, path, start, scores, p in zip(
                self.slots["fisher"], self.slots["grad_squares"], self.slots["path"], self.slots["interval_start"],
                self.slots["task_scores"], self.params):
            distance = fisher * ops.square(p - start) + RWALK_EPSILON
            scores.assign_add(ops.relu(path / distance))  # an interval that raised the loss earns nothing
            fisher.assign(alpha * squares / every + (1.0 - alpha) * fisher)
            start.assign(p)
            path.assign(ops.zeros_like(path))
            squares.assign(ops.zeros_like(squares))

    def consolidate(self, task, train):
        for scores, new in zip(self.slots["scores"], self.slots["task_scores"]):
            scores.assign(new if task == 0 else 0.5 * (scores + new))
        fisher = min_max_normalised(self.slots["fisher"])
        scores = min_max_normalised(self.slots["scores"])
        for omega, f, s in zip(self.slots["importance"], fisher, scores):
            omega.assign(f + s)
        for name in ("path", "grad_squares", "task_scores"):  # the task's, and an unfinished interval
            for v in self.slots[name]:
                v.assign(ops.zeros_like(v))
        self.slots.counters["step"].assign(0)
        self.set_anchor()


class RegularizedTrainer(supervised.ClassifierTrainer):
    """Cross-entropy (the current batch, balanced with a memory batch when there is one) plus
    the regulariser's penalty, in one compiled step; the regulariser then sees the step."""

    def __init__(self, discriminator: networks.Discriminator, regularizer: Regularizer, current_share: float,
                 with_memory: bool, **kwargs):
        super().__init__(discriminator, **kwargs)
        self.regularizer, self.current_share, self.with_memory = regularizer, current_share, with_memory
        self.penalty_tracker = keras.metrics.Mean(name="penalty")

    @property
    def metrics(self):
        return [*super().metrics, self.penalty_tracker]

    def task_loss(self, batch):
        """(loss, labels, logits). With a memory, each seen class weighs the same, however
        many images of it the batch holds (as ``DGMTrainer.critic_step``)."""
        if not self.with_memory:
            x, y = batch
            logits = self.discriminator.classify(x, training=True)
            return self.ce(y, logits), y, logits
        (x, y), (past_x, past_y) = batch
        n = ops.shape(x)[0]
        logits = self.discriminator.classify(ops.concatenate([x, past_x], 0), training=True)
        loss = self.current_share * self.ce(y, logits[:n]) + (1.0 - self.current_share) * self.ce(past_y, logits[n:])
        return loss, ops.concatenate([y, past_y], 0), logits

    def train_step(self, batch):
        """Under a strategy (``distribution``) both terms are scaled: the penalty, the same on every
        replica, would otherwise count once per replica in the optimizer's summed gradients. The
        regulariser observes the global batch's task gradients (the replicas' summed), as on one
        device: a replica's own are a share of them, and RWalk squares them."""
        reg = self.regularizer
        params = reg.params
        with tf.GradientTape() as tape:
            loss, labels, logits = self.task_loss(batch)
            scaled = distribution.scale_loss(loss)
        task_grads = tape.gradient(scaled, params)
        with tf.GradientTape() as tape:
            penalty = reg.penalty()
            scaled_penalty = distribution.scale_loss(penalty)
        penalty_grads = tape.gradient(scaled_penalty, params)
        before = [tf.convert_to_tensor(p) for p in params]
        self.cls_optimizer.apply([g + h for g, h in zip(task_grads, penalty_grads)], params)
        if reg.observes_steps:
            reg.observe_step(distribution.sum_over_replicas(task_grads), before)
        self.loss_tracker.update_state(loss)
        self.accuracy.update_state(labels, logits)
        self.penalty_tracker.update_state(penalty)
        return {m.name: m.result() for m in self.metrics}


class Regularized(supervised.Supervised):
    """Fine-tuning's classifier and pipeline, plus a regulariser and, with
    ``hp.memory_per_class > 0``, random real images of every past class replayed with each batch."""

    base_name = "regularized"
    regularizer_class = Regularizer

    def __init__(self, scenario, channels, hp):
        super().__init__(scenario, channels, hp, joint=False)
        self.name = self.base_name + ("-m" if hp.memory_per_class else "")
        self.regularizer = self.regularizer_class(hp)
        self.memory = memory.ExemplarMemory()
        self.tasks_done = 0
        self.importance_after_task: list[dict] = []
        self.memory_after_task: list[int] = []

    def begin_task(self, task, train):
        super().begin_task(task, train)  # grows the classifier; its plain trainer is replaced here
        self.regularizer.attach(self.disc)
        share = len(self.scenario.task_classes(task)) / self.scenario.seen_classes(task)
        self.trainer = RegularizedTrainer(self.disc, self.regularizer, share, with_memory=len(self.memory) > 0)
        self.trainer.compile(gan.adam(self.hp, self.hp.d_lr),
                             jit_compile=self.hp.jit_compile)

    def pipeline(self, task, train):
        current = super().pipeline(task, train)
        past = self.memory.arrays()
        if past is None:
            return current
        batch = min(self.hp.replay_batch_size, len(past.labels))  # a memory smaller than a batch still yields one
        replay = data.make_pipeline(past, batch, shuffle=True, seed=self.hp.seed + 1000 + task,
                                    drop_remainder=True).repeat()
        return tf.data.Dataset.zip((current, replay))

    def remember(self, task: int, train: data.SplitArrays) -> None:
        """Keeps ``memory_per_class`` random images of each of the task's classes (seeded per class)."""
        for label in self.scenario.task_classes(task):
            images = train.of_classes(range(label, label + 1)).images
            self.memory.add_class(label, images, self.hp.memory_per_class, seed=self.hp.seed * 1000 + label)

    def end_task(self, task):
        self.regularizer.consolidate(task, self.task_data)
        self.remember(task, self.task_data)
        self.tasks_done = task + 1
        self.importance_after_task.append(self.regularizer.importance_stats())
        self.memory_after_task.append(len(self.memory))

    # -- checkpoints
    def state(self):
        return {**super().state(), "tasks_done": self.tasks_done, "importance_after_task": self.importance_after_task,
                "memory_after_task": self.memory_after_task}

    def set_state(self, state, task_data):
        super().set_state(state, task_data)
        self.tasks_done = state["tasks_done"]
        self.importance_after_task = list(state["importance_after_task"])
        self.memory_after_task = list(state["memory_after_task"])
        self.regularizer = self.regularizer_class(self.hp)
        if self.disc is not None:
            self.regularizer.attach(self.disc)
        self.memory = memory.ExemplarMemory()
        for t in range(self.tasks_done):
            self.remember(t, task_data(t))

    def trackables(self):
        return {**super().trackables(), "regularizer": self.regularizer.slots.variables()}

    def report(self):
        return {"penalty_strength": self.regularizer.strength, "memory_per_class": self.hp.memory_per_class,
                "memory_images": len(self.memory), "memory_images_after_task": self.memory_after_task,
                "importance_after_task": self.importance_after_task}


class EWC(Regularized):
    base_name = "ewc"
    regularizer_class = FisherPenalty


class SI(Regularized):
    base_name = "si"
    regularizer_class = PathIntegral


class RWalk(Regularized):
    base_name = "rwalk"
    regularizer_class = RiemannianWalk
