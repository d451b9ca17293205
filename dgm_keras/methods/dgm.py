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
    """One task of DGM: ``fit`` on batches of real current-task images (zipped with replay)."""

    LOSSES = ("d_loss", "g_loss", "wasserstein", "gradient_penalty", "cls_loss", "replay_cls_loss",
              "sparsity", "mask_scale", "mask_usage")

    def __init__(self, generator: networks.Generator, discriminator: networks.Discriminator,
                 task_classes: range, num_past_classes: int, total_steps: int, hp: base.HyperParams,
                 sparsity_weight: float, **kwargs):
        super().__init__(self.LOSSES, seed=hp.seed * 1000 + num_past_classes, **kwargs)
        self.generator, self.discriminator, self.hp = generator, discriminator, hp
        self.class_lo, self.class_hi = task_classes.start, task_classes.stop
        self.num_past_classes, self.total_steps = num_past_classes, total_steps
        self.sparsity_weight = sparsity_weight
        # Fixed for the whole task: what past tasks reserved, as constants of the step.
        self._protect = protection_multipliers(generator)
        self._free = [{k: 1.0 - r.numpy() for k, r in layer.reserved().items()} for layer in generator.masked_layers]
        self._free_total = max(1.0, float(sum(np.sum(f) for d in self._free for f in d.values())))
        past_heads = {f"task_bn_{t}" for t in range(generator.num_past_tasks)} | {
            f"task_out_{t}" for t in range(generator.num_past_tasks)}
        self.g_vars = [v for v in generator.trainable_variables if v.path.split("/")[1] not in past_heads]
        self.embedding_vars = {v.path for layer in generator.masked_layers for v in layer.embeddings.values()}

    @property
    def d_vars(self):
        return self.discriminator.trainable_variables

    # -- pieces of the step
    def sample_current(self, n):
        """Latents and current-task labels of this replica's ``n`` rows (distribution.own_rows)."""
        z = distribution.own_rows(lambda rows: keras.random.normal((rows, self.generator.nz), seed=self.seed_gen), n)
        y = distribution.own_rows(lambda rows: keras.random.randint(
            (rows,), self.class_lo, self.class_hi, seed=self.seed_gen, dtype="int32"), n)
        return z, y

    def sparsity(self, s):
        """R_t = sum m_t (1 - M_<t) / sum (1 - M_<t): using free capacity costs, re-use is free."""
        used, total_on = 0.0, 0.0
        for layer, free in zip(self.generator.masked_layers, self._free):
            for name, m in layer.current_masks(s).items():
                used += ops.sum(m * free[name])
                total_on += ops.sum(m)
        return used / self._free_total, total_on

    def train_step(self, batch):
        """One iteration: the critic step, then the generator step, in one compiled function."""
        s = mask_scale(self.task_step, self.total_steps, self.hp.s_max)
        values = self.critic_step(batch, s)
        values.update(self.generator_step(ops.shape(values.pop("real_x"))[0], s))
        return self.record(values)

    def critic_step(self, batch, s):
        """WGAN-GP on the current task, plus the classifier on real and replayed images."""
        real_x, real_y, replay_x, replay_y = gan.split_batch(batch, self.num_past_classes > 0)
        n = ops.shape(real_x)[0]
        seen = self.class_hi - self.class_lo + self.num_past_classes
        z, y = self.sample_current(n)
        fake = ops.stop_gradient(self.generator(z, y, s=s, training=True))
        with tf.GradientTape() as tape:
            critic_real, logits = self.discriminator(
                ops.concatenate([real_x, replay_x], 0) if self.num_past_classes else real_x, training=True)
            critic_fake, _ = self.discriminator(fake, training=True)
            wasserstein = ops.mean(critic_real[:n]) - ops.mean(critic_fake)
            gp = gan.gradient_penalty(lambda x: self.discriminator(x, training=True)[0], real_x, fake, self.seed_gen)
            total_cls, cls_loss, replay_loss = gan.balanced_cls_loss(
                self.ce, logits, real_y, replay_y, (self.class_hi - self.class_lo) / seen)
            d_loss = -wasserstein + self.hp.gp_weight * gp + total_cls
            scaled = distribution.scale_loss(d_loss)
        d_vars = self.discriminator.trainable_variables
        self.d_optimizer.apply(tape.gradient(scaled, d_vars), d_vars)
        return dict(d_loss=d_loss, wasserstein=wasserstein, gradient_penalty=gp, cls_loss=cls_loss,
                    replay_cls_loss=replay_loss, real_x=real_x)

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
        return dict(g_loss=g_loss, sparsity=reg, mask_scale=s, mask_usage=total_on / self._mask_entries())

    def shape_generator_grad(self, variable, grad, s):
        """Protection (zero update of reserved weights) and HAT's compensation of embeddings."""
        if grad is None:
            return ops.zeros_like(variable)
        if variable.path in self._protect:
            return grad * self._protect[variable.path]
        if variable.path in self.embedding_vars:
            return compensate_embedding_grad(grad, variable, s, self.hp.s_max)
        return grad

    def _mask_entries(self):
        return float(sum(np.prod(m.shape) for layer in self.generator.masked_layers for m in layer.embeddings.values()))


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
        self.disc = None
        self.sizes, self.mask_bytes, self.replay_counts, self.reserved_fraction = [], [], [], []
        self.trainer = None

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
        if self.disc is None:
            self.disc = networks.Discriminator(seen, norm=self.hp.d_norm, name="discriminator").build_all(self.channels)
        else:
            self.disc = expansion.grow_discriminator(self.disc, seen, self.channels, fresh=self.hp.reinit_discriminator)
        per_class = gan.replay_per_class(self.hp, train, self.scenario.classes_per_task)
        self.replay = self.replay_arrays(task, per_class) if task else None
        self.replay_counts.append(0 if self.replay is None else len(self.replay.labels))
        epochs, steps = self.task_steps(train)
        weight = self.hp.sparsity_weight * expansion.generator_size(self.gen) / self.initial_size
        self.trainer = DGMTrainer(self.gen, self.disc, self.scenario.task_classes(task),
                                  task * self.scenario.classes_per_task, epochs * steps, self.hp, weight)
        self.trainer.compile(*gan.optimizers(self.hp), jit_compile=self.hp.jit_compile)

    def pipeline(self, task, train) -> tf.data.Dataset:
        return gan.replay_pipeline(train, self.replay, self.hp, task)

    def end_task(self, task):
        # Kept as one uint8 (a boolean) per masked entry; as packed bits it would be an eighth.
        self.mask_bytes.append({layer.name: int(sum(np.prod(e.shape) for e in layer.embeddings.values()))
                                for layer in self.gen.masked_layers})
        self.gen = expansion.expand_generator(self.gen)
        self.sizes.append(expansion.generator_size(self.gen))
        self.reserved_fraction.append({layer.name: float(1.0 - expansion.free_capacity(layer) / sum(
            int(np.prod(m.shape[1:])) for m in layer.past_masks.values())) for layer in self.gen.masked_layers})

    # -- what is evaluated and exported
    def classifier_model(self):
        return self.disc

    def generator(self):
        return self.gen

    # -- checkpoints
    def state(self):
        return {"generator": {k: list(v) if isinstance(v, tuple) else v for k, v in self.gen.get_config().items()},
                "discriminator_classes": None if self.disc is None else self.disc.num_classes,
                "sizes": self.sizes, "mask_bytes": self.mask_bytes, "replay_counts": self.replay_counts,
                "reserved_fraction": self.reserved_fraction}

    def set_state(self, state, task_data):
        self.gen = networks.Generator(**state["generator"]).build_all()
        classes = state["discriminator_classes"]
        self.disc = networks.rebuild_discriminator(classes, self.hp.d_norm, self.channels)
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
