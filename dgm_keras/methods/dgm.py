"""DGM: Dynamic Generative Memory, with weight masks (DGMw) or activation masks (DGMa).

``DGMTrainer`` is the training model of one task: it holds the generator and the
discriminator, ``compile`` takes their optimizers, and ``train_step`` is one iteration
(the critic step with the gradient penalty and the classification of real and replayed
images, then the generator step with the sparsity regulariser), all in one compiled
function. ``DGM`` is the continual method around it: replay at the start of a task,
binarising, expansion and a new trainer at its end.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from dgm_keras import config, data, distribution, expansion, gan, networks
from dgm_keras.methods import base


def mask_scale(step, total_steps, s_max):
    """HAT's annealing of s from 1/s_max to s_max, over the task's steps (ends at s_max however short)."""
    progress = ops.minimum(ops.cast(step, "float32") / max(total_steps - 1, 1), 1.0)
    return 1.0 / s_max + (s_max - 1.0 / s_max) * progress


def compensate_embedding_grad(grad, embedding, s, s_max):
    """HAT's gradient compensation: the embedding's gradient no longer depends on s."""
    num = ops.cosh(ops.clip(s * embedding, -50.0, 50.0)) + 1.0
    den = ops.cosh(embedding) + 1.0
    return grad * (s_max / s) * num / den


def fresh_replay_per_task(hp, past_tasks: int) -> int:
    """Images of each past task in a freshly drawn replay batch: as the fixed set's pipeline gives,
    ``replay_batch_size`` in all (combined schedule) or ``batch_size`` per task (the reference's)."""
    return hp.batch_size if hp.classifier_steps == "reference" else max(1, hp.replay_batch_size // past_tasks)


def protection_multipliers(generator: networks.Generator) -> dict[str, np.ndarray]:
    """Per weight variable: 0 where past tasks reserved the weight, 1 where it is free.

    DGMw: a weight is reserved if any past mask kept it. DGMa (HAT): a weight is reserved if
    both its output unit and its input unit are (the latent's inputs count as reserved).
    """
    out = {}
    prev_units = None
    for layer in generator.masked_layers:
        reserved = {k: v.numpy() for k, v in layer.reserved().items()}
        if layer.mask_mode == "weight":
            out[layer.kernel.path] = 1.0 - reserved["kernel"]
            out[layer.bias.path] = 1.0 - reserved["bias"]
            continue
        units = reserved["units"]
        in_units = np.ones(layer.kernel.shape[layer.in_axis]) if prev_units is None else prev_units
        shape = [1] * len(layer.kernel.shape)
        out_b, in_b = list(shape), list(shape)
        out_b[layer.out_axis], in_b[layer.in_axis] = -1, -1
        both = np.minimum(units.reshape(out_b), in_units.reshape(in_b))
        out[layer.kernel.path] = (1.0 - np.broadcast_to(both, layer.kernel.shape)).astype(np.float32)
        out[layer.bias.path] = 1.0 - units
        prev_units = units
    return {k: v.astype(np.float32) for k, v in out.items()}


class DGMTrainer(gan.GANTrainer):
    """One task of DGM: ``fit`` on batches of real current-task images (zipped with replay).

    The classifier that is evaluated is ``classifier``: the discriminator itself (its
    classifier head on the critic's trunk, the paper) or a network of its own
    (``--classifier=separate``). It learns from the real batch and the replay either inside
    the critic step (``--classifier_steps=combined``: one step, every seen class weighted
    alike) or, as the reference code, in t+1 steps of its own before the critic step
    (``reference``: real and replay permuted and cut into batches of ``batch_size``). With
    ``--classifier_data=generated`` its steps see the current task as the generator draws it
    instead of its real images: every class then comes from the generator, and "looks real"
    no longer tells the current task from the past ones (with real images it did, and real
    test images of past classes were pulled to the current one: docs/RESULTS.md).
    """

    LOSSES = ("d_loss", "g_loss", "wasserstein", "gradient_penalty", "cls_loss", "replay_cls_loss",
              "sparsity", "mask_scale", "mask_usage")

    def __init__(self, generator: networks.Generator, discriminator: networks.Discriminator,
                 task_classes: range, num_past_classes: int, total_steps: int, hp: base.HyperParams,
                 sparsity_weight: float, classifier: networks.Discriminator | None = None, **kwargs):
        super().__init__(self.LOSSES, seed=hp.seed * 1000 + num_past_classes, **kwargs)
        self.generator, self.discriminator, self.hp = generator, discriminator, hp
        self.classifier = discriminator if classifier is None else classifier
        self.separate = self.classifier is not discriminator
        self.class_lo, self.class_hi = task_classes.start, task_classes.stop
        self.num_past_classes, self.total_steps = num_past_classes, total_steps
        self.sparsity_weight = sparsity_weight
        # What past tasks reserved, fixed for the task: variables of the step, not constants baked into its graph.
        self._protect = {path: keras.Variable(m, trainable=False, name="protect")
                         for path, m in protection_multipliers(generator).items()}
        free = [{k: 1.0 - r.numpy() for k, r in layer.reserved().items()} for layer in generator.masked_layers]
        self._free_total = max(1.0, float(sum(np.sum(f) for d in free for f in d.values())))
        self._free = [{k: keras.Variable(f, trainable=False, name="free") for k, f in d.items()} for d in free]
        self._layer_weights = config.layer_weights(hp.sparsity_layer_weights)
        self._entries = float(sum(np.prod(m.shape) for layer in generator.masked_layers for m in layer.embeddings.values()))
        past_heads = {f"task_bn_{t}" for t in range(generator.num_past_tasks)} | {
            f"task_out_{t}" for t in range(generator.num_past_tasks)}
        self.g_vars = [v for v in generator.trainable_variables if v.path.split("/")[1] not in past_heads]
        self.embedding_vars = {v.path for layer in generator.masked_layers for v in layer.embeddings.values()}
        # Weight averages (--generator_ema, --classifier_ema): the masks stay the task's own last ones.
        self.average_weights([v for v in self.g_vars if v.path not in self.embedding_vars], self.classifier)
        # The critic step classifies too when the classifier is the critic's trunk with the combined
        # schedule, and (for the AC term of G's loss) when G needs the critic's labels.
        self.critic_classifies = (not self.separate and hp.classifier_steps == "combined") or (
            self.separate and bool(hp.ac_weight))
        # --classifier_head_lr: in the combined step the classifier head takes its own optimizer; the
        # critic's terms do not reach it, so the trunk and critic head keep --d_lr and the head moves at its rate.
        self.head_apart = bool(hp.classifier_head_lr) and self.critic_classifies and not self.separate
        self.head_vars = self.discriminator.classifier.trainable_variables if self.head_apart else []

    @property
    def d_vars(self):
        """The critic's trunk and head, and the classifier head where the critic step classifies (and
        its optimizer steps it)."""
        return self.discriminator.trainable_variables if self.critic_classifies and not self.head_apart else (
            self.discriminator.head_variables("critic"))

    @property
    def c_vars(self):
        return self.classifier.head_variables("classifier")

    def compile(self, g_optimizer, d_optimizer, c_optimizer=None, jit_compile=False):
        """``c_optimizer``: the classifier's own steps, or (in the combined step, shared classifier) the
        classifier head's share of the critic step (--classifier_head_lr)."""
        super().compile(g_optimizer, d_optimizer, jit_compile=jit_compile)
        self.c_optimizer = c_optimizer
        if c_optimizer is not None:
            c_optimizer.build(self.head_vars if self.head_apart else self.c_vars)

    def scale(self):
        """s of the current step: HAT's ramp, or 1 where the compensated gradient is used throughout
        (the forward mask is the sign of the embedding whatever s is; s only shapes the gradient)."""
        if self.hp.mask_gradient == "constant":
            return ops.ones(())
        return mask_scale(self.task_step, self.total_steps, self.hp.s_max)

    # -- pieces of the step
    def sample_current(self, n):
        """Latents and current-task labels of this replica's ``n`` rows (distribution.own_rows)."""
        z = distribution.own_rows(lambda rows: keras.random.normal((rows, self.generator.nz), seed=self.seed_gen), n)
        y = distribution.own_rows(lambda rows: keras.random.randint(
            (rows,), self.class_lo, self.class_hi, seed=self.seed_gen, dtype="int32"), n)
        return z, y

    def sparsity(self, s):
        """R_t = sum m_t (1 - M_<t) / sum (1 - M_<t): using free capacity costs, re-use is free
        (each layer's term times its ``--sparsity_layer_weights``)."""
        used, total_on = 0.0, 0.0
        for layer, free, price in zip(self.generator.masked_layers, self._free, self._layer_weights, strict=True):
            for name, m in layer.current_masks(s).items():
                used += price * ops.sum(m * free[name])
                total_on += ops.sum(m)
        return used / self._free_total, total_on

    def train_step(self, batch):
        """One iteration: the classifier steps (if separate from the critic's), the critic step,
        then the generator step, in one compiled function."""
        s = self.scale()
        if self.hp.replay == "fresh" and self.num_past_classes:
            batch = (batch, self.fresh_replay())
        values = {}
        if not (self.hp.classifier_steps == "combined" and not self.separate):
            values.update(self.classifier_steps(batch))
        values.update(self.critic_step(batch, s))
        values.update(self.generator_step(ops.shape(values.pop("real_x"))[0], s))
        self.update_weight_averages()
        return self.record(values)

    def kept_average(self, variable, average):
        """Entries that past tasks reserved keep their bits (their average may differ in the last bit)."""
        protect = self._protect.get(variable.path)
        return average if protect is None else ops.where(protect > 0, average, variable)

    def classifier_steps(self, batch):
        """The classifier on real and replayed images, in steps of its own optimizer."""
        real_x, real_y, replay_x, replay_y = gan.split_batch(batch, self.num_past_classes > 0)
        n = ops.shape(real_x)[0]
        seen = self.class_hi - self.class_lo + self.num_past_classes
        share = (self.class_hi - self.class_lo) / seen
        if self.hp.classifier_data == "generated":  # the current task as the generator draws it, like the replay
            z, real_y = self.sample_current(n)
            real_x = ops.stop_gradient(self.generator(z, real_y, s=self.scale(), training=True))
        if self.num_past_classes == 0 or self.hp.classifier_steps == "combined":
            # One step; real rows first, then replay, every seen class weighted alike (as the critic step does).
            chunks = [(real_x if replay_x is None else ops.concatenate([real_x, replay_x], 0), real_y, replay_y)]
        else:  # the reference: real + one replay batch per past task, permuted, in batches of n
            x, y = ops.concatenate([real_x, replay_x], 0), ops.concatenate([real_y, replay_y], 0)
            order = keras.random.shuffle(ops.arange(ops.shape(y)[0]), seed=self.seed_gen)
            x, y = ops.take(x, order, axis=0), ops.take(y, order, axis=0)
            # t+1 equal chunks of what this replica holds: batch_size images each on one device; under
            # a strategy each replica holds its share of every part, so its chunks are as many, smaller.
            steps = self.reference_steps()
            size = (ops.shape(y)[0] + steps - 1) // steps
            chunks = [(x[i * size:(i + 1) * size], y[i * size:(i + 1) * size], None) for i in range(steps)]
        losses = []
        for x, y, replay_part in chunks:
            with tf.GradientTape() as tape:
                logits = self.classifier.classify(x, training=True)
                loss = gan.balanced_cls_loss(self.ce, logits, y, replay_part, share)[0] if replay_part is not None \
                    else self.ce(y, logits)
                scaled = distribution.scale_loss(loss)
            self.c_optimizer.apply(tape.gradient(scaled, self.c_vars), self.c_vars)
            losses.append(loss)
        loss = ops.mean(ops.stack(losses))
        return dict(cls_loss=loss)  # real and replay together: replay_cls_loss is logged by the critic step only

    def fresh_replay(self):
        """A replay batch drawn now: images of every past task from its own masks and head, as many
        per task as the schedule's replay batch holds (``replay_batch_size`` in all for the combined
        schedule, ``batch_size`` per past task for the reference's)."""
        cpt = self.class_hi - self.class_lo
        past_tasks = self.num_past_classes // cpt
        n = fresh_replay_per_task(self.hp, past_tasks)
        xs, ys = [], []
        for t in range(past_tasks):
            z = keras.random.normal((n, self.generator.nz), seed=self.seed_gen)
            y = keras.random.randint((n,), t * cpt, (t + 1) * cpt, seed=self.seed_gen, dtype="int32")
            xs.append(ops.stop_gradient(self.generator(z, y, task=t, training=False)))
            ys.append(y)
        return ops.concatenate(xs, 0), ops.concatenate(ys, 0)

    def reference_steps(self) -> int:
        """t+1: one classifier step for the real batch and one per past task's replay batch."""
        return 1 + self.num_past_classes // max(1, self.class_hi - self.class_lo)

    def critic_step(self, batch, s):
        """WGAN-GP on the current task (plus the classifier on real and replayed images where the
        critic's trunk is the classifier and the schedule is combined)."""
        real_x, real_y, replay_x, replay_y = gan.split_batch(batch, self.num_past_classes > 0)
        n = ops.shape(real_x)[0]
        seen = self.class_hi - self.class_lo + self.num_past_classes
        z, y = self.sample_current(n)
        fake = ops.stop_gradient(self.generator(z, y, s=s, training=True))
        with_replay = self.critic_classifies and self.num_past_classes > 0
        with tf.GradientTape() as tape:
            critic_real, logits = self.discriminator(
                ops.concatenate([real_x, replay_x], 0) if with_replay else real_x, training=True)
            critic_fake, _ = self.discriminator(fake, training=True)
            wasserstein = ops.mean(critic_real[:n]) - ops.mean(critic_fake)
            gp = gan.gradient_penalty(lambda x: self.discriminator(x, training=True)[0], real_x, fake, self.seed_gen)
            d_loss = -wasserstein + self.hp.gp_weight * gp
            out = dict(wasserstein=wasserstein, gradient_penalty=gp, real_x=real_x)
            if self.critic_classifies:
                total_cls, cls_loss, replay_loss = gan.balanced_cls_loss(
                    self.ce, logits, real_y, replay_y if with_replay else None, (self.class_hi - self.class_lo) / seen)
                d_loss += total_cls
                if not self.separate:
                    out.update(cls_loss=cls_loss, replay_cls_loss=replay_loss)
            scaled = distribution.scale_loss(d_loss)
        d_vars = self.d_vars
        grads = tape.gradient(scaled, d_vars + self.head_vars)
        self.d_optimizer.apply(grads[:len(d_vars)], d_vars)
        if self.head_apart:
            self.c_optimizer.apply(grads[len(d_vars):], self.head_vars)
        out["d_loss"] = d_loss
        return out

    def generator_step(self, n, s):
        """Fool the critic, spend little free capacity; reserved weights get no update."""
        z, y = self.sample_current(n)
        with tf.GradientTape() as tape:
            fake = self.generator(z, y, s=s, training=True)
            critic_fake, fake_logits = self.discriminator(fake, training=True)
            reg, total_on = self.sparsity(s)
            g_loss = -ops.mean(critic_fake) + self.sparsity_weight * reg
            if self.hp.ac_weight:
                g_loss += self.hp.ac_weight * self.ce(y, fake_logits)
            scaled = distribution.scale_loss(g_loss)  # the shared sparsity term too: its gradients are summed
        grads = tape.gradient(scaled, self.g_vars)
        grads = [self.shape_generator_grad(v, g, s) for v, g in zip(self.g_vars, grads)]
        grads, _ = tf.clip_by_global_norm(grads, self.hp.grad_clip_norm)
        self.g_optimizer.apply(grads, self.g_vars)
        for v in self.g_vars:
            if v.path in self.embedding_vars:
                v.assign(ops.clip(v, -self.hp.embedding_clip, self.hp.embedding_clip))
        return dict(g_loss=g_loss, sparsity=reg, mask_scale=s, mask_usage=total_on / self._entries)

    def shape_generator_grad(self, variable, grad, s):
        """Protection (zero update of reserved weights) and HAT's compensation of embeddings."""
        if grad is None:
            return ops.zeros_like(variable)
        if variable.path in self._protect:
            return grad * self._protect[variable.path]
        if variable.path in self.embedding_vars:
            return compensate_embedding_grad(grad, variable, s, self.hp.s_max)
        return grad


class DGM(base.ContinualMethod):
    """The continual method: one growing generator, one discriminator whose head grows."""

    name = "dgmw"

    def __init__(self, scenario: data.Scenario, channels: int, hp: base.HyperParams, mask_mode: str = "weight"):
        name = "dgmw" if mask_mode == "weight" else "dgma"
        super().__init__(scenario, channels, config.with_method_defaults(name, scenario.classes_per_task, hp))
        self.name = name
        hp = self.hp
        ngf = hp.ngf
        self.gen = networks.Generator((4 * ngf, 2 * ngf, ngf), scenario.num_classes, channels, mask_mode,
                                      mask_init=hp.mask_init, name="generator").build_all()
        self.initial_size = expansion.generator_size(self.gen)
        self.disc = self.cls = None  # cls: the separate classifier (--classifier=separate)
        self.sizes, self.mask_bytes, self.replay_counts, self.reserved_fraction = [], [], [], []
        self.trainer = None
        self._averaging = None  # the trainer whose classifier averages the selector scores, while its task trains

    # -- replay
    def sample(self, labels: np.ndarray, seed: int, batch: int = 2048) -> np.ndarray:
        """Images of the given (seen, past) classes, each from its task's binary mask."""
        rng = np.random.default_rng(seed)
        out = np.zeros((len(labels), 32, 32, self.channels), np.float32)
        tasks = np.array([self.scenario.task_of_class(int(c)) for c in labels])
        for t in np.unique(tasks):
            idx = np.nonzero(tasks == t)[0]
            head = None if t == self.gen.num_past_tasks else int(t)
            for i in range(0, len(idx), batch):
                part = idx[i:i + batch]
                z = rng.standard_normal((len(part), self.gen.nz)).astype(np.float32)
                out[part] = ops.convert_to_numpy(self.gen(z, labels[part].astype(np.int32), s=self.hp.s_max,
                                                          task=head, training=False))
        return out

    def replay_arrays(self, task: int, per_class: int) -> data.SplitArrays:
        past = task * self.scenario.classes_per_task
        labels = np.repeat(np.arange(past, dtype=np.int32), per_class)
        return data.SplitArrays(self.sample(labels, seed=self.hp.seed + task), labels)

    # -- the task loop
    def begin_task(self, task, train):
        seen = self.scenario.seen_classes(task)
        self.disc = self.grown(self.disc, seen, "discriminator")
        if self.hp.classifier == "separate":
            self.cls = self.grown(self.cls, seen, "classifier")
        per_class = gan.replay_per_class(self.hp, train, self.scenario.classes_per_task)
        self.replay = self.replay_arrays(task, per_class) if task and self.hp.replay == "fixed" else None
        epochs, steps = self.task_steps(train)
        if self.hp.replay == "fresh" and task:  # drawn inside the step: count what the task will draw
            self.replay_counts.append(epochs * steps * fresh_replay_per_task(self.hp, task) * task)
        else:
            self.replay_counts.append(0 if self.replay is None else len(self.replay.labels))
        weight = self.hp.sparsity_weight * expansion.generator_size(self.gen) / self.initial_size
        self.trainer = DGMTrainer(self.gen, self.disc, self.scenario.task_classes(task),
                                  task * self.scenario.classes_per_task, epochs * steps, self.hp, weight,
                                  classifier=self.cls)
        own_steps = self.hp.classifier == "separate" or self.hp.classifier_steps == "reference"
        c_optimizer = gan.adam(self.hp, self.hp.c_lr) if own_steps else (
            gan.adam(self.hp, self.hp.classifier_head_lr) if self.trainer.head_apart else None)
        self.trainer.compile(*gan.optimizers(self.hp), c_optimizer, jit_compile=self.hp.jit_compile)
        self.begin_averaging()

    def grown(self, net, seen, name):
        """The discriminator (or separate classifier) with a head over the ``seen`` classes."""
        if net is None:
            return networks.make_discriminator(seen, self.hp, self.channels, name)
        return expansion.grow_discriminator(net, seen, self.channels, fresh=self.hp.reinit_discriminator and
                                            name == "discriminator")

    def pipeline(self, task, train) -> tf.data.Dataset:
        replay_batch = self.hp.replay_batch_size
        if self.hp.classifier_steps == "reference" and task:
            replay_batch = self.hp.batch_size * task  # one batch per past task, as the reference code
        return gan.replay_pipeline(train, self.replay, self.hp, task, replay_batch)

    def end_task(self, task):
        self.end_averaging()
        # Averaged weights need statistics of their own: the moving ones were gathered under the live weights.
        if self.hp.generator_bn == "reestimate" or self.hp.generator_ema:
            self.reestimate_generator_bn(task)
        # Kept as packed bits (layers.PackedMasks): 4 * ceil(n / 32) bytes for a layer's n masked entries.
        self.mask_bytes.append({layer.name: layer.mask_bytes_per_task() for layer in self.gen.masked_layers})
        self.gen = expansion.expand_generator(self.gen)
        self.sizes.append(expansion.generator_size(self.gen))
        self.reserved_fraction.append({layer.name: float(1.0 - expansion.free_capacity(layer) / sum(
            int(np.prod(m.shape[1:])) for m in layer.past_masks.values())) for layer in self.gen.masked_layers})

    def reestimate_generator_bn(self, task, num=4096, batch=512):
        """Sets the task head's batch-norm statistics to the exact mean and variance of its inputs
        under the task's final mask: the moving average (momentum 0.99) has seen only the task's
        few hundred steps and still leans on its initial 0 and 1, which replay and exports use."""
        classes = np.array(list(self.scenario.task_classes(task)), np.int32)
        gan.exact_batch_norm(self.gen.task_norms[self.gen.num_past_tasks],
                             lambda z, y: self.gen.head_inputs(z, y, s=self.hp.s_max), self.gen.nz,
                             lambda rng, n: classes[rng.integers(0, len(classes), n)], self.hp.seed * 7919 + task,
                             num, batch)

    # -- what is evaluated and exported
    def classifier_model(self):
        return self.disc if self.cls is None else self.cls

    def trackables(self):
        out = super().trackables()
        if self.cls is not None and self.disc is not None:
            out["discriminator"] = self.disc
        return out

    def generator(self):
        return self.gen

    # -- checkpoints
    def state(self):
        return {"generator": {k: list(v) if isinstance(v, tuple) else v for k, v in self.gen.get_config().items()},
                "discriminator_classes": None if self.disc is None else self.disc.num_classes,
                "classifier_classes": None if self.cls is None else self.cls.num_classes,
                "sizes": self.sizes, "mask_bytes": self.mask_bytes, "replay_counts": self.replay_counts,
                "reserved_fraction": self.reserved_fraction}

    def set_state(self, state, task_data):
        self.gen = networks.Generator(**state["generator"]).build_all()
        classes = state["discriminator_classes"]
        self.disc = networks.rebuild_discriminator(classes, self.hp, self.channels)
        self.cls = networks.rebuild_discriminator(state.get("classifier_classes"), self.hp, self.channels,
                                                  name="classifier")
        self.sizes, self.mask_bytes = list(state["sizes"]), list(state["mask_bytes"])
        self.replay_counts, self.reserved_fraction = list(state["replay_counts"]), list(state["reserved_fraction"])

    def report(self):
        return {
            "generator_size_initial": self.initial_size,
            "generator_size_after_task": self.sizes,
            "generator_widths": list(self.gen.widths),
            "past_mask_bytes_per_task_per_layer": self.mask_bytes,
            "replay_images_per_task": self.replay_counts,
            "reserved_fraction_per_task": self.reserved_fraction,
            "reserved_fraction_last": self.reserved_fraction[-1] if self.reserved_fraction else {},
        }
