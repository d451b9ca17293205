"""Training on several devices with ``tf.distribute`` (``--strategy``).

``fit`` runs each method's ``train_step`` once per replica on its share of the global batch
and sums the gradients the optimizers receive. Two things are then up to the step, and the
helpers here do them:

- each replica's loss is a mean over its own rows, so it is divided by the number of
  replicas (``scale_loss``): the summed gradients are then the gradient of the mean over the
  global batch, as on one device;
- random draws inside the step (latents, labels, interpolation weights) would be the same on
  every replica, as the seed generators are mirrored. ``own_rows`` draws the whole global
  batch's values on each replica and keeps the replica's own rows, so replicas differ and a
  distributed step draws exactly what one device would on the whole batch.

Statistics a step accumulates from gradients (SI's path integral, RWalk's squared gradients)
need the global batch's gradient, not a replica's share of it: ``sum_over_replicas`` all-reduces
the scaled per-replica gradients into it (the optimizers do the same with the gradients they
are given). A statistic every replica then updates with the same values can live in a variable
with Keras' default aggregation ("none"): in a replicated step each replica updates its own
copy, with no ``merge_call``, so the copies stay equal, and such updates may sit in a
``tf.cond`` (a ``merge_call`` inside one fails).
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf
from keras import ops

from dgm_keras import chunks


def use_cpu_replicas(count: int) -> None:
    """Splits the CPU into ``count`` logical devices (for trying a strategy without GPUs).
    Must run before TensorFlow initialises its devices."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """``default``: no distribution; ``mirrored``: the local GPUs, or the logical CPUs when there
    is no GPU (see ``use_cpu_replicas``); ``multiworker``: the cluster that ``TF_CONFIG`` describes."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}")


def _replica() -> tuple:
    """(this replica's index, number of replicas); (0, 1) outside a replicated step."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        return 0, 1
    return ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync


def scale_loss(loss):
    """The share of a replica's mean loss whose gradients, summed over replicas, equal the
    gradient of the global batch's mean loss."""
    _, count = _replica()
    return loss if count == 1 else loss / count


def own_rows(draw: Callable, rows):
    """This replica's ``rows`` rows of ``draw(rows * replicas)``: ``draw`` makes a random tensor
    with the given number of rows from a (mirrored) seed generator, the same on every replica.

    ``rows`` may be a list of this replica's row counts of the parts its batch concatenates (real
    rows, then replayed ones): ``fit`` splits each part across the replicas, so a replica's rows
    of the one-device batch are its share of each part, and those are the draw's rows it keeps.
    Draws paired with the batch's rows (a fake per image, its interpolation weight) then pair as
    on one device.
    """
    parts = list(rows) if isinstance(rows, (list, tuple)) else [rows]
    total = parts[0] if len(parts) == 1 else sum(parts)
    index, count = _replica()
    if count == 1:
        return draw(total)
    whole = draw(total * count)
    kept, start = [], 0
    for size in parts:
        kept.append(whole[start + index * size:start + (index + 1) * size])
        start += size * count
    return kept[0] if len(kept) == 1 else ops.concatenate(kept, 0)


def replica_rows(global_rows: int) -> int:
    """This replica's share of ``global_rows`` rows drawn inside a step (not split by ``fit``)."""
    _, count = _replica()
    if global_rows % count:
        raise ValueError(f"{global_rows} rows drawn in a step cannot be split evenly over {count} replicas")
    return global_rows // count


def sum_over_replicas(values: list) -> list:
    """The sum over replicas of each of ``values`` (per-replica gradients of ``scale_loss``d
    losses: the global batch's gradients), on every replica; ``values`` with one replica."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return list(values)
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, list(values))


def across_replicas(fn: Callable) -> Callable:
    """``fn`` (tensors of examples, rows first, the last one each row's weight -> a list of
    weighted sums over the rows) callable from cross-replica context, i.e. in the strategy's
    scope outside ``fit`` (a task's end): each replica sums its share of the rows and the shares
    are added. Needed where ``fn`` takes gradients with respect to the model's variables: outside
    a replica context that fails ("DistributedVariable.handle is not available outside the
    replica context"). ``fn`` itself when no strategy is in use.

    Every replica gets at least one row (a per-example ``tf.vectorized_map`` over none fails): a
    batch is padded to a multiple of the replicas with copies of its first row, weighted 0."""
    if not tf.distribute.has_strategy():
        return fn
    strategy = tf.distribute.get_strategy()

    def share(*args):
        index, count = _replica()
        rows = tf.shape(args[0])[0]
        each = (rows + count - 1) // count

        def padded(a, weights=False):
            extra = tf.repeat(a[:1], each * count - rows, axis=0)
            return tf.concat([a, tf.zeros_like(extra) if weights else extra], 0)[index * each:(index + 1) * each]

        return fn(*[padded(a) for a in args[:-1]], padded(args[-1], weights=True))

    @tf.function(reduce_retracing=True)
    def summed(*args):
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in strategy.run(share, args)]

    return summed


def sparse_cross_entropy(labels, logits):
    """Mean cross-entropy over this replica's rows, for steps that scale with ``scale_loss``.

    Not ``keras.losses.SparseCategoricalCrossentropy``: under a strategy its batch reduction
    already divides by the number of replicas (meant for ``fit``'s own ``compute_loss``), so
    with ``scale_loss`` it would be scaled twice, and logged at a fraction of its value.
    """
    return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))


def max_steps_per_call(trainer: keras.Model) -> int:
    """One step per compiled call under a strategy; no limit otherwise.

    Keras 3.15 runs ``steps_per_execution`` > 1 as a ``tf.while_loop`` whose body calls
    ``strategy.run`` inside a ``tf.cond``; the optimizers' ``merge_call`` there leaves a
    placeholder of the cond branch unfed, and the first call fails with "You must feed a value
    for placeholder tensor ... multi_step_on_iterator" (keras-team/keras#19246, open; measured
    here under MirroredStrategy with the default 10 steps a call). One step a call takes the
    ``steps_per_execution == 1`` path, which has no loop and no cond.
    """
    if isinstance(trainer.distribute_strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)):
        return 1
    return chunks.MAX_STEPS_PER_EXECUTION


def prepare_for_fit(trainer: keras.Model) -> None:
    """Works around two faults of Keras 3.15's ``fit`` under a strategy (once per trainer).

    - ``TensorFlowTrainer._maybe_symbolic_build`` takes one batch from a first iterator of the
      dataset, reduces it with ``strategy.reduce`` and builds the model on it, then trains on
      a second iterator. Under MultiWorkerMirroredStrategy that reduce fails on any nested
      batch such as ``(x, y)`` ("Attempt to convert a value (PerReplica ...) to a Tensor"), and
      under MirroredStrategy the first iterator advanced the reshuffling pipeline, so a
      mirrored run trained on another batch order than one device. Our trainers build every
      layer and optimizer before ``fit`` and compile no loss or metrics, so that build has
      nothing to do: it is skipped for them (a trainer with something to build is left alone).
    - ``reduce_per_replica`` reduces each logged value across workers with
      ``strategy.reduce("MEAN", v, axis=0)``, which fails on the scalars every train step logs
      ("Invalid reduction dimension 0 for input with 0 dimensions"); under a multi-worker
      strategy the step's logs are given a leading axis of 1, which that reduce removes.
    """
    if getattr(trainer, "_prepared_for_fit", False):
        return
    if (all(layer.built for layer in trainer._flatten_layers()) and trainer._compile_metrics is None
            and trainer._compile_loss is None):
        trainer._maybe_symbolic_build = lambda *args, **kwargs: None
    if isinstance(trainer.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        step = trainer.train_step

        def train_step(batch):
            return {name: tf.reshape(value, [1]) for name, value in step(batch).items()}

        trainer.train_step, trainer.train_function = train_step, None
    trainer._prepared_for_fit = True
