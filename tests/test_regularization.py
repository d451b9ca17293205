"""EWC, SI and RWalk: the penalty, each importance measure against a hand computation, growth
of the importance with the head, the "-M" memory, and a real 2-task run against fine-tuning."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from dgm_keras import data
from dgm_keras.methods import base, make_method, regularization as reg


def _scenario(classes_per_task=2):
    return data.make_scenario("mnist", classes_per_task)


def _part(train, classes, n, seed=0):
    part = train.of_classes(classes)
    pick = np.random.default_rng(seed).permutation(len(part.labels))[:n]
    return data.SplitArrays(part.images[pick], part.labels[pick])


def _method(name, steps=20, classes_per_task=2, **kw):
    keras.utils.set_random_seed(0)
    hp = base.HyperParams(**{"steps_per_task": steps, "batch_size": 32, "replay_batch_size": 16, **kw})
    return make_method(name, _scenario(classes_per_task), 1, hp)


def _values(variables):
    return [np.array(v.numpy()) for v in variables]


def _task_gradients(trainer, batch):
    """The gradients of the unregularised task loss, computed as the step computes them."""
    with tf.GradientTape() as tape:
        loss, _, _ = trainer.task_loss(batch)
    return [g.numpy() for g in tape.gradient(loss, trainer.regularizer.params)]


def test_ewc_penalty_is_zero_at_the_anchor_and_quadratic_fisher_weighted(mnist_scenario_data):
    method = _method("ewc", ewc_lambda=3.0)
    method.begin_task(0, _part(mnist_scenario_data.train, range(0, 2), 64))
    regularizer = method.regularizer
    rng = np.random.default_rng(1)
    fisher = [rng.uniform(0, 2, v.shape).astype(np.float32) for v in regularizer.params]
    fisher[0][...] = 0.0  # a parameter no task cares about: moving it costs nothing
    for omega, f in zip(regularizer.slots["importance"], fisher):
        omega.assign(f)
    regularizer.set_anchor()
    assert float(regularizer.penalty()) == 0.0
    anchor = _values(regularizer.params)
    direction = [rng.normal(size=a.shape).astype(np.float32) for a in anchor]
    got = []
    for scale in (1e-2, 2e-2):
        for p, a, d in zip(regularizer.params, anchor, direction):
            p.assign(a + scale * d)
        got.append(float(regularizer.penalty()))
        want = 3.0 / 2 * sum(float(np.sum(f * (scale * d) ** 2)) for f, d in zip(fisher, direction))
        assert got[-1] == pytest.approx(want, rel=1e-4)
    assert got[1] / got[0] == pytest.approx(4.0, rel=1e-4)
    before = float(regularizer.penalty())
    regularizer.params[0].assign(anchor[0] + 5.0)
    assert float(regularizer.penalty()) == pytest.approx(before, rel=1e-6)


def test_penalty_gradient_reaches_every_weighted_parameter(mnist_scenario_data):
    method = _method("rwalk", rwalk_lambda=0.5)
    method.begin_task(0, _part(mnist_scenario_data.train, range(0, 2), 64))
    regularizer = method.regularizer
    regularizer.set_anchor()
    rng = np.random.default_rng(2)
    for omega, p in zip(regularizer.slots["importance"], regularizer.params):
        omega.assign(rng.uniform(0.5, 1, omega.shape).astype(np.float32))
        p.assign(p + 0.1)
    with tf.GradientTape() as tape:
        penalty = regularizer.penalty()
    grads = tape.gradient(penalty, regularizer.params)
    for g, omega, p, anchor in zip(grads, regularizer.slots["importance"], regularizer.params,
                                   regularizer.slots["anchor"]):
        want = 2 * 0.5 * omega.numpy() * (p.numpy() - anchor.numpy())
        np.testing.assert_allclose(g.numpy(), want, rtol=1e-5)
        assert np.all(np.abs(g.numpy()) > 0)


def test_ewc_fisher_is_the_mean_squared_per_example_gradient_and_accumulates_online(mnist_scenario_data):
    method = _method("ewc", ewc_gamma=0.5, batch_size=4)  # the Fisher's pass sees batches of 4 and 3
    train = _part(mnist_scenario_data.train, range(0, 2), 7)
    method.begin_task(0, train)
    params = method.regularizer.params
    want = [np.zeros(p.shape, np.float32) for p in params]
    for x, y in zip(train.images, train.labels):  # by hand, one example at a time
        with tf.GradientTape() as tape:
            logits = method.disc.classify(x[None], training=False)
            log_likelihood = -tf.nn.sparse_softmax_cross_entropy_with_logits(y[None], logits)
        for w, g in zip(want, tape.gradient(log_likelihood, params)):
            w += g.numpy() ** 2 / len(train.labels)
    assert sum(float(w.sum()) for w in want) > 0
    # Online accumulation: F <- gamma F + F_t, and the anchor is where the task ended.
    for omega in method.regularizer.slots["importance"]:
        omega.assign(np.ones(omega.shape, np.float32))
    method.end_task(0)
    for omega, w in zip(method.regularizer.slots["importance"], want):
        np.testing.assert_allclose(omega.numpy(), 0.5 + w, rtol=1e-4, atol=1e-7)
    for anchor, p in zip(method.regularizer.slots["anchor"], params):
        np.testing.assert_array_equal(anchor.numpy(), p.numpy())


def _one_step(method, task, train):
    """One real train step (eager), with what it saw: the task gradients and the move."""
    trainer = method.trainer
    batch = next(iter(method.pipeline(task, train)))
    grads = _task_gradients(trainer, batch)
    with tf.GradientTape() as tape:
        penalty = method.regularizer.penalty()
    penalty_grads = [g.numpy() for g in tape.gradient(penalty, method.regularizer.params)]
    before = _values(method.regularizer.params)
    slots = {name: _values(method.regularizer.slots[name]) for name in method.regularizer.slot_names}
    trainer.train_step(batch)
    after = _values(method.regularizer.params)
    return grads, before, after, slots, penalty_grads


def test_si_path_integral_is_minus_gradient_times_move_of_the_unregularised_loss(mnist_scenario_data):
    method = _method("si", steps=10, si_c=10.0)
    train = mnist_scenario_data.train
    first = _part(train, range(0, 2), 320)
    method.begin_task(0, first)
    method.train_task(0, first, [])
    w = _values(method.regularizer.slots["path"])
    start = _values(method.regularizer.slots["task_start"])
    params = _values(method.regularizer.params)
    assert sum(float(x.sum()) for x in w) > 0  # moving down the loss earns importance
    method.end_task(0)
    for omega, wi, p, s in zip(method.regularizer.slots["importance"], w, params, start):
        np.testing.assert_allclose(omega.numpy(), wi / ((p - s) ** 2 + method.hp.si_xi), rtol=1e-5)
    assert all(not x.any() for x in _values(method.regularizer.slots["path"]))  # reset for the next task

    second = _part(train, range(2, 4), 320)
    method.begin_task(1, second)
    assert float(method.regularizer.penalty()) == 0.0  # at the anchor
    method.train_task(1, second, [])  # moves away, so the next step's penalty has a gradient
    assert float(method.regularizer.penalty()) > 0
    grads, before, after, slots, penalty_grads = _one_step(method, 1, second)
    with_penalty_grad = False
    for w_after, w_before, g, h, b, a in zip(method.regularizer.slots["path"], slots["path"], grads, penalty_grads,
                                             before, after):
        np.testing.assert_allclose(w_after.numpy(), w_before - g * (a - b), rtol=1e-4, atol=1e-9)
        # The penalty's gradient moved the parameters but is not part of the path integral.
        with_penalty_grad |= not np.allclose(w_after.numpy(), w_before - (g + h) * (a - b), rtol=1e-4, atol=1e-9)
    assert with_penalty_grad


def test_si_gives_no_importance_where_nothing_moves(mnist_scenario_data):
    # One class in the first task: the softmax over one class is constant, every gradient is 0,
    # Adam does not move, and the path integral stays exactly zero.
    method = _method("si", steps=5, classes_per_task=1)
    first = _part(mnist_scenario_data.train, range(0, 1), 160)
    method.begin_task(0, first)
    before = _values(method.regularizer.params)
    method.train_task(0, first, [])
    for p, b in zip(method.regularizer.params, before):
        np.testing.assert_array_equal(p.numpy(), b)
    method.end_task(0)
    assert all(not x.any() for x in _values(method.regularizer.slots["importance"]))


def test_rwalk_step_updates_fisher_and_kl_normalised_path(mnist_scenario_data):
    method = _method("rwalk", steps=5, rwalk_alpha=0.7)
    first = _part(mnist_scenario_data.train, range(0, 2), 160)
    method.begin_task(0, first)
    method.train_task(0, first, [])
    grads, before, after, slots, _ = _one_step(method, 0, first)
    regularizer = method.regularizer
    for f, s, g, b, a, f0, s0 in zip(regularizer.slots["fisher"], regularizer.slots["path"], grads, before, after,
                                     slots["fisher"], slots["path"]):
        f_want = 0.7 * g ** 2 + 0.3 * f0
        np.testing.assert_allclose(f.numpy(), f_want, rtol=1e-4, atol=1e-12)
        delta = a - b
        s_want = s0 - g * delta / (0.5 * f_want * delta ** 2 + reg.RWALK_EPSILON)
        np.testing.assert_allclose(s.numpy(), s_want, rtol=1e-3, atol=1e-6)


def test_rwalk_scores_are_clipped_then_averaged_with_the_previous_ones(mnist_scenario_data):
    method = _method("rwalk")
    regularizer = method.regularizer
    method.begin_task(0, _part(mnist_scenario_data.train, range(0, 2), 64))
    rng = np.random.default_rng(3)

    def fill(name, values):
        for v, x in zip(regularizer.slots[name], values):
            v.assign(x)
        return values

    shapes = [v.shape for v in regularizer.params]
    fisher = fill("fisher", [rng.uniform(0, 1, s).astype(np.float32) for s in shapes])
    path = fill("path", [rng.normal(size=s).astype(np.float32) for s in shapes])
    regularizer.consolidate(0, None)
    first = [np.maximum(p, 0) for p in path]  # the first task's scores as they are, negatives zeroed
    for scores, omega, f, want in zip(regularizer.slots["scores"], regularizer.slots["importance"], fisher, first):
        np.testing.assert_array_equal(scores.numpy(), want)
        np.testing.assert_allclose(omega.numpy(), f + want, rtol=1e-6)
    assert all(not x.any() for x in _values(regularizer.slots["path"]))
    path = fill("path", [rng.normal(size=s).astype(np.float32) for s in shapes])
    regularizer.consolidate(1, None)
    for scores, old, new in zip(regularizer.slots["scores"], first, path):
        np.testing.assert_allclose(scores.numpy(), 0.5 * (old + np.maximum(new, 0)), rtol=1e-6)


@pytest.mark.parametrize("name", ["ewc", "si", "rwalk"])
def test_new_head_units_get_zero_importance_and_anchor_old_ones_are_carried(name, mnist_scenario_data):
    method = _method(name)
    regularizer = method.regularizer
    method.begin_task(0, _part(mnist_scenario_data.train, range(0, 2), 64))
    rng = np.random.default_rng(4)
    for slot in regularizer.slot_names:
        for v in regularizer.slots[slot]:
            v.assign(rng.uniform(1, 2, v.shape).astype(np.float32))
    old = {slot: {reg._key(p): v.numpy() for p, v in zip(regularizer.params, regularizer.slots[slot])}
           for slot in ("importance", "anchor")}
    method.begin_task(1, _part(mnist_scenario_data.train, range(2, 4), 64))
    assert method.disc.num_classes == 4 and regularizer.params[-1].shape == (4,)
    for slot in ("importance", "anchor"):
        for p, v in zip(regularizer.params, regularizer.slots[slot]):
            value, before = v.numpy(), old[slot][reg._key(p)]
            assert value.shape == tuple(p.shape)
            lead = tuple(slice(0, d) for d in before.shape)
            np.testing.assert_array_equal(value[lead], before)
            if p.path.endswith("classifier/kernel"):
                assert not value[:, 2:].any()
            if p.path.endswith("classifier/bias"):
                assert not value[2:].any()


def test_memory_keeps_exactly_its_budget_and_balanced_batches_hold_past_classes(mnist_scenario_data):
    method = _method("si", classes_per_task=1, memory_per_class=7)
    assert method.name == "si-m"
    train = mnist_scenario_data.train
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for task in range(3):
        part = _part(train, range(task, task + 1), 96, seed=task)
        method.begin_task(task, part)
        if task:
            batch = next(iter(method.pipeline(task, part)))
            (x, y), (past_x, past_y) = batch
            assert set(y.numpy().tolist()) == {task}
            assert past_y.shape[0] == min(16, 7 * task) and set(past_y.numpy().tolist()) <= set(range(task))
            # Every seen class weighs the same: the current class 1/(t+1), the past ones t/(t+1).
            loss, _, logits = method.trainer.task_loss(batch)
            n = len(y)
            want = ce(y, logits[:n]) / (task + 1) + task / (task + 1) * ce(past_y, logits[n:])
            assert float(loss) == pytest.approx(float(want), rel=1e-5)
        method.end_task(task)  # what is kept does not depend on training
        assert method.memory.classes() == list(range(task + 1))
        assert all(len(method.memory.images[c]) == 7 for c in range(task + 1))
    # The kept images are real training images of their class.
    for c in range(3):
        pool = _part(train, range(c, c + 1), 96, seed=c).images.reshape(96, -1)
        for image in method.memory.images[c].reshape(7, -1):
            assert (pool == image).all(axis=1).any()
    assert method.report()["memory_images"] == 21


def test_ewc_with_a_large_lambda_keeps_the_first_task_near_its_anchor_unlike_finetune(mnist_scenario_data):
    """Same initialisation and first task for both; the distance is weighted by task 0's Fisher."""
    train = mnist_scenario_data.train
    parts = [_part(train, range(2 * t, 2 * t + 2), 256, seed=t) for t in range(2)]
    ewc, finetune = _method("ewc", ewc_lambda=1e6), _method("finetune")
    for task, part in enumerate(parts):
        for method in (ewc, finetune):
            keras.utils.set_random_seed(task)  # the same initial weights (and head rows) for both
            method.begin_task(task, part)
            method.train_task(task, part, [])
        if task == 0:
            ewc.end_task(0)
            fisher = _values(ewc.regularizer.slots["importance"])
            anchor = _values(ewc.regularizer.slots["anchor"])
            for p, a in zip(_values(finetune.disc.head_variables("classifier")), anchor):
                np.testing.assert_allclose(p, a, rtol=1e-4, atol=1e-6)

    def distance(method):
        now = _values(method.disc.head_variables("classifier"))
        return sum(float(np.sum(f * (p[tuple(slice(0, d) for d in a.shape)] - a) ** 2))
                   for f, p, a in zip(fisher, now, anchor))

    assert distance(finetune) > 0
    assert distance(ewc) < 0.05 * distance(finetune)


def test_state_and_checkpoint_restore_importance_and_memory(tmp_path, mnist_scenario_data):
    """What a resumed run rebuilds: shapes from ``state``, slot values from the checkpoint, and
    the memory re-drawn from the tasks' data with the same seeds."""
    tasks = [_part(mnist_scenario_data.train, range(2 * t, 2 * t + 2), 24, seed=t) for t in range(2)]
    method = _method("rwalk", steps=2, memory_per_class=3, batch_size=8)
    for task, part in enumerate(tasks):
        method.begin_task(task, part)
        method.train_task(task, part, [])
        method.end_task(task)
    path = tf.train.Checkpoint(**method.trackables()).save(str(tmp_path / "ckpt"))
    resumed = _method("rwalk", steps=2, memory_per_class=3, batch_size=8)
    resumed.set_state(json.loads(json.dumps(method.state())), lambda t: tasks[t])
    tf.train.Checkpoint(**resumed.trackables()).restore(path).assert_existing_objects_matched()
    for name in method.regularizer.slot_names:
        for a, b in zip(method.regularizer.slots[name], resumed.regularizer.slots[name]):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert any(v.numpy().any() for v in resumed.regularizer.slots["importance"])
    assert resumed.memory.classes() == [0, 1, 2, 3]
    for c in range(4):
        np.testing.assert_array_equal(resumed.memory.images[c], method.memory.images[c])
    assert resumed.report() == method.report()
