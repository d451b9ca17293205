"""DGM's mechanisms: protection, compensation, replay, the compiled step (with XLA too)."""

import numpy as np
import pytest
import tensorflow as tf

from dgm_keras import data, expansion, layers
from dgm_keras.methods import base, dgm


def _part(train, task, n):
    """The first ``n`` training images of ``task`` (one class per task)."""
    part = train.of_classes(range(task, task + 1))
    return data.SplitArrays(part.images[:n], part.labels[:n])


def _method(mode="weight", steps=12, **kw):
    scenario = data.make_scenario("mnist", 1)
    hp = base.HyperParams(steps_per_task=steps, ngf=4, batch_size=32, replay_batch_size=32,
                          replay_per_class=64, s_max=1e4 if mode == "weight" else 1e5, **kw)
    return dgm.DGM(scenario, 1, hp, mask_mode=mode)


@pytest.mark.parametrize("mode", ["weight", "activation"])
def test_reserved_weights_bitwise_unchanged_by_a_whole_task(mode, mnist_scenario_data):
    method = _method(mode)
    train = mnist_scenario_data.train
    for task in range(2):
        part = _part(train, task, 512)
        method.begin_task(task, part)
        if task == 1:
            protect = dgm.protection_multipliers(method.gen)
            before = {v.path: v.numpy().copy() for v in method.gen.trainable_variables}
            assert any((m == 0).any() for m in protect.values())
        method.train_task(task, part, [])
        if task == 1:
            changed_free = 0
            for v in method.gen.trainable_variables:
                if v.path in protect:
                    frozen = protect[v.path] == 0
                    now = v.numpy()
                    np.testing.assert_array_equal(now[frozen], before[v.path][frozen])  # bitwise
                    changed_free += int((now[~frozen] != before[v.path][~frozen]).sum())
            assert changed_free > 0  # and free weights did learn
            # Past task 0's head is not touched either.
            for v in method.gen.trainable_variables:
                if "task_bn_0" in v.path or "task_out_0" in v.path:
                    np.testing.assert_array_equal(v.numpy(), before[v.path])
        method.end_task(task)


def test_compensated_embedding_gradient_is_independent_of_s():
    # Within HAT's clip (|s * e| <= 50); beyond it the sigmoid saturates and the gradient vanishes.
    e = tf.constant([-1.2, -0.3, 0.0, 0.5, 1.2])
    s_max = 1e4
    got = []
    for s in (1.0, 10.0, 40.0):
        with tf.GradientTape() as tape:
            tape.watch(e)
            m = layers.hard_threshold(e * s)
        g = tape.gradient(m, e)
        got.append(dgm.compensate_embedding_grad(g, e, s, s_max).numpy())
    want = s_max / (2 * (np.cosh(e.numpy()) + 1))
    for g in got:
        np.testing.assert_allclose(g, want, rtol=2e-3)


def test_mask_scale_anneals_to_s_max_over_the_task():
    s = [float(dgm.mask_scale(i, 5, 1e4)) for i in range(6)]
    assert s[0] == pytest.approx(1e-4) and s[4] == pytest.approx(1e4) and s[5] == pytest.approx(1e4)
    assert s == sorted(s)


def test_replay_draws_every_past_class_from_its_task(mnist_scenario_data):
    method = _method(steps=3)
    train = mnist_scenario_data.train
    for task in range(3):
        part = _part(train, task, 256)
        method.begin_task(task, part)
        if task == 0:
            assert method.replay is None
        else:
            assert np.bincount(method.replay.labels).tolist() == [64] * task
            assert method.replay.images.shape == (64 * task, 32, 32, 1)
            assert np.abs(method.replay.images).max() <= 1.0
            # Replay of class 0 is what the task-0 mask generates, deterministic by seed.
            again = method.sample(method.replay.labels, seed=method.hp.seed + task)
            np.testing.assert_array_equal(again, method.replay.images)
        method.train_task(task, part, [])
        method.end_task(task)
    assert len(method.report()["generator_size_after_task"]) == 3


def test_xla_compiled_step_runs_and_matches_eager_shape(mnist_scenario_data):
    method = _method(steps=2, jit_compile=True)
    part = _part(mnist_scenario_data.train, 0, 128)
    method.begin_task(0, part)
    losses = method.train_task(0, part, [])
    assert np.isfinite(losses["d_loss"]) and np.isfinite(losses["g_loss"])
    assert int(method.trainer.task_step.numpy()) == 2


def test_sparsity_weight_rescaled_by_generator_growth(mnist_scenario_data):
    method = _method(steps=2)
    part = _part(mnist_scenario_data.train, 0, 128)
    method.begin_task(0, part)
    assert method.trainer.sparsity_weight == pytest.approx(method.hp.sparsity_weight)
    method.train_task(0, part, [])
    method.end_task(0)
    method.begin_task(1, data.SplitArrays(part.images, part.labels + 1))
    ratio = expansion.generator_size(method.gen) / method.initial_size
    assert ratio > 1 and method.trainer.sparsity_weight == pytest.approx(method.hp.sparsity_weight * ratio)
