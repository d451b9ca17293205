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


class _Linear:
    """A stand-in classifier small enough to work out by hand: logits ``x W + b``; its two
    variables are what the regulariser watches."""

    def __init__(self, kernel, bias):
        self.kernel = keras.Variable(np.asarray(kernel, np.float32), name="kernel")
        self.bias = keras.Variable(np.asarray(bias, np.float32), name="bias")

    def head_variables(self, head):
        return [self.kernel, self.bias]

    def classify(self, x, training=False):
        return keras.ops.matmul(x, self.kernel) + self.bias


def _flat(values):
    return np.concatenate([np.asarray(v, np.float64).ravel() for v in values])


def _split(flat, like):
    sizes = np.cumsum([int(np.prod(v.shape)) for v in like])[:-1]
    return [part.reshape(v.shape) for part, v in zip(np.split(flat, sizes), like)]


def _walk(regularizer, grads, moves):
    """The steps as the compiled train step takes them: each moves the parameters by its move,
    then shows the regulariser its gradient and where the parameters were before."""

    @tf.function
    def step(g, m):
        before = [tf.convert_to_tensor(p) for p in regularizer.params]
        for p, d in zip(regularizer.params, m):
            p.assign_add(d)
        regularizer.observe_step(g, before)

    for g, m in zip(grads, moves):
        step(_split(g.astype(np.float32), regularizer.params), _split(m.astype(np.float32), regularizer.params))


def _rwalk_by_hand(theta, grads, moves, every, alpha, fisher):
    """RWalk's accumulators after the steps, in numpy (float64), on the flattened parameters."""
    start, path, squares, scores, clipped = theta.copy(), 0 * theta, 0 * theta, 0 * theta, 0
    for t, (g, m) in enumerate(zip(grads, moves), 1):
        path, squares, theta = path - g * m, squares + g ** 2, theta + m
        if t % every == 0:  # the interval closes: its scores with the Fisher it began with, then the Fisher
            interval = path / (fisher * (theta - start) ** 2 + 1e-3)  # the authors' distance, no 0.5
            clipped += int((interval < 0).sum())
            scores = scores + np.maximum(interval, 0)
            fisher = alpha * squares / every + (1 - alpha) * fisher
            start, path, squares = theta.copy(), 0 * theta, 0 * theta
    return {"theta": theta, "fisher": fisher, "task_scores": scores, "path": path, "grad_squares": squares,
            "interval_start": start, "clipped": clipped}


def _min_max(x):
    return (x - x.min()) / (x.max() - x.min())


def _rwalk_on_a_linear_model(every=2, alpha=0.6):
    model = _Linear([[0.5, -0.2], [0.1, 0.3]], [0.0, 0.2])
    regularizer = reg.RiemannianWalk(base.HyperParams(rwalk_fisher_update_after=every, rwalk_alpha=alpha))
    regularizer.attach(model)
    return model, regularizer


def _check_slots(regularizer, want):
    for name in ("fisher", "task_scores", "path", "grad_squares", "interval_start"):
        np.testing.assert_allclose(_flat(_values(regularizer.slots[name])), want[name], rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    np.testing.assert_allclose(_flat(_values(regularizer.params)), want["theta"], rtol=1e-5, atol=1e-6)


def test_rwalk_fisher_and_scores_close_every_k_steps_then_are_min_max_normalised():
    """7 steps with K = 2: intervals close after steps 2, 4 and 6 (the first damped by eps alone,
    the Fisher still 0); step 7's unfinished interval is dropped at the task's end."""
    every, alpha = 2, 0.6
    model, regularizer = _rwalk_on_a_linear_model(every, alpha)
    theta = _flat(_values(regularizer.params))
    rng = np.random.default_rng(5)
    grads = [rng.normal(size=theta.size) for _ in range(7)]
    moves = [-0.1 * g + 0.1 * rng.normal(size=theta.size) for g in grads]  # some intervals raise the loss
    _walk(regularizer, grads, moves)
    want = _rwalk_by_hand(theta, grads, moves, every, alpha, fisher=0 * theta)
    assert want["clipped"] > 0 and want["task_scores"].min() >= 0
    assert int(regularizer.slots.counters["step"].numpy()) == 7
    _check_slots(regularizer, want)

    regularizer.consolidate(0, None)
    importance = _min_max(want["fisher"]) + _min_max(want["task_scores"])  # over all parameters at once
    np.testing.assert_allclose(_flat(_values(regularizer.slots["importance"])), importance, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_flat(_values(regularizer.slots["scores"])), want["task_scores"], rtol=1e-4)
    layers = model.head_variables("classifier")
    per_layer = _flat([_min_max(f) + _min_max(s)
                       for f, s in zip(_split(want["fisher"], layers), _split(want["task_scores"], layers))])
    assert not np.allclose(importance, per_layer, rtol=1e-3)  # so the test tells the two apart
    np.testing.assert_allclose(_flat(_values(regularizer.slots["fisher"])), want["fisher"], rtol=1e-4)  # runs on
    for name in ("path", "grad_squares", "task_scores"):
        assert not _flat(_values(regularizer.slots[name])).any(), name
    assert int(regularizer.slots.counters["step"].numpy()) == 0
    np.testing.assert_array_equal(_flat(_values(regularizer.slots["anchor"])), _flat(_values(regularizer.params)))


def test_rwalk_scores_of_consecutive_tasks_are_averaged_and_the_fisher_runs_on():
    every, alpha = 2, 0.6
    model, regularizer = _rwalk_on_a_linear_model(every, alpha)
    theta = _flat(_values(regularizer.params))
    rng = np.random.default_rng(6)
    steps = [[rng.normal(size=theta.size) for _ in range(4)] for _ in range(2)]
    first = _rwalk_by_hand(theta, steps[0], [-0.1 * g for g in steps[0]], every, alpha, fisher=0 * theta)
    _walk(regularizer, steps[0], [-0.1 * g for g in steps[0]])
    regularizer.consolidate(0, None)
    regularizer.attach(model)  # the next task: its intervals start where the weights are
    np.testing.assert_allclose(_flat(_values(regularizer.slots["interval_start"])), first["theta"], rtol=1e-5)
    moves = [-0.05 * g for g in steps[1]]
    second = _rwalk_by_hand(first["theta"], steps[1], moves, every, alpha, fisher=first["fisher"])
    _walk(regularizer, steps[1], moves)
    _check_slots(regularizer, second)
    regularizer.consolidate(1, None)
    scores = 0.5 * (first["task_scores"] + second["task_scores"])
    np.testing.assert_allclose(_flat(_values(regularizer.slots["scores"])), scores, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_flat(_values(regularizer.slots["importance"])),
                               _min_max(second["fisher"]) + _min_max(scores), rtol=1e-4, atol=1e-6)


def test_rwalk_counter_and_unfinished_interval_survive_a_checkpoint(tmp_path):
    _, regularizer = _rwalk_on_a_linear_model(every=3)
    rng = np.random.default_rng(7)
    grads = [rng.normal(size=6) for _ in range(5)]
    _walk(regularizer, grads[:4], [-0.1 * g for g in grads[:4]])  # mid-interval: step 4 of K = 3
    path = tf.train.Checkpoint(regularizer=regularizer.slots.variables()).save(str(tmp_path / "ckpt"))
    _, resumed = _rwalk_on_a_linear_model(every=3)
    for p, q in zip(resumed.params, regularizer.params):
        p.assign(q)
    tf.train.Checkpoint(regularizer=resumed.slots.variables()).restore(path).assert_existing_objects_matched()
    for walker in (regularizer, resumed):
        _walk(walker, grads[4:], [-0.1 * g for g in grads[4:]])  # closes the interval
    assert int(resumed.slots.counters["step"].numpy()) == 5
    for name, variables in regularizer.slots.variables().items():
        for a, b in zip(variables, resumed.slots.variables()[name]):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


def test_rwalk_compiled_step_accumulates_and_updates_the_fisher_only_every_k_steps(mnist_scenario_data):
    method = _method("rwalk", steps=2, rwalk_fisher_update_after=3)
    first = _part(mnist_scenario_data.train, range(0, 2), 160)
    method.begin_task(0, first)
    regularizer = method.regularizer
    method.train_task(0, first, [])  # steps 1-2 in the compiled step: no interval has closed
    assert int(regularizer.slots.counters["step"].numpy()) == 2
    for name in ("fisher", "task_scores"):
        assert not _flat(_values(regularizer.slots[name])).any(), name
    for name in ("path", "grad_squares"):
        assert _flat(_values(regularizer.slots[name])).any(), name
    grads, before, after, slots, _ = _one_step(method, 0, first)  # step 3, eager: the interval closes
    for name in ("path", "grad_squares"):
        assert not _flat(_values(regularizer.slots[name])).any(), name
    for f, squares, g in zip(regularizer.slots["fisher"], slots["grad_squares"], grads):
        np.testing.assert_allclose(f.numpy(), 0.9 * (squares + g ** 2) / 3, rtol=1e-4, atol=1e-12)
    for start, a in zip(regularizer.slots["interval_start"], after):
        np.testing.assert_array_equal(start.numpy(), a)
    assert _flat(_values(regularizer.slots["task_scores"])).any()
    method.train_task(0, first, [])  # steps 4-5, compiled: the gradient of the unregularised loss, squared
    assert int(regularizer.slots.counters["step"].numpy()) == 5
    assert _flat(_values(regularizer.slots["grad_squares"])).any()


def test_ewc_sampled_fisher_is_the_expectation_over_the_models_softmax():
    x = np.array([[1.0, -0.5], [0.2, 0.8], [-1.0, 0.3], [0.5, 0.5], [0.0, -1.2]], np.float32)
    labels = np.array([0, 2, 1, 1, 0], np.int32)
    model = _Linear([[0.4, -0.3, 0.1], [0.2, 0.6, -0.5]], [0.1, -0.2, 0.3])
    params = model.head_variables("classifier")
    got = reg.expected_fisher(model, params, data.SplitArrays(x, labels), batch_size=2)  # batches of 2, 2, 1
    logits = x.astype(np.float64) @ model.kernel.numpy() + model.bias.numpy()
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    # d log p_k / d b = e_k - p, d log p_k / d W = x (e_k - p)^T; weighted by p_k, summed over k
    want_w, want_b = np.zeros((2, 3)), np.zeros(3)
    for xi, pi in zip(x, p):
        for k in range(3):
            d = np.eye(3)[k] - pi
            want_w += pi[k] * np.outer(xi, d) ** 2 / len(x)
            want_b += pi[k] * d ** 2 / len(x)
    np.testing.assert_allclose(got[0], want_w, rtol=1e-5)
    np.testing.assert_allclose(got[1], want_b, rtol=1e-5)
    # For the bias it is the softmax's variance, p (1 - p), averaged over the images.
    np.testing.assert_allclose(got[1], (p * (1 - p)).mean(0), rtol=1e-5)


def test_ewc_fishers_on_a_confident_model_right_and_wrong():
    """A model sure of class 0 (p_0 = 0.9991) whatever the image: the model's own Fisher ignores
    the labels; the empirical one is far smaller when the labels agree with the model (on the
    bias, (1 - p_0)^2 against p_0 (1 - p_0)) and far larger when they contradict it ((1 - p_1)^2 ~ 1)."""
    x = np.random.default_rng(8).normal(size=(6, 2)).astype(np.float32)
    model = _Linear(np.zeros((2, 3)), [4.0, -4.0, -4.0])
    params = model.head_variables("classifier")
    p = np.exp([4.0, -4.0, -4.0]) / np.exp([4.0, -4.0, -4.0]).sum()
    right, wrong = data.SplitArrays(x, np.zeros(6, np.int32)), data.SplitArrays(x, np.ones(6, np.int32))
    expected = {name: reg.expected_fisher(model, params, arrays, 3)[1] for name, arrays in (("right", right),
                                                                                             ("wrong", wrong))}
    empirical = {name: reg.empirical_fisher(model, params, arrays, 3)[1] for name, arrays in (("right", right),
                                                                                               ("wrong", wrong))}
    np.testing.assert_allclose(expected["right"], expected["wrong"], rtol=1e-6)
    np.testing.assert_allclose(expected["right"], p * (1 - p), rtol=1e-4)
    np.testing.assert_allclose(empirical["right"], (np.eye(3)[0] - p) ** 2, rtol=1e-3)
    np.testing.assert_allclose(empirical["wrong"], (np.eye(3)[1] - p) ** 2, rtol=1e-4)
    assert empirical["right"][0] < 1e-3 * expected["right"][0]
    assert empirical["wrong"][1] > 100 * expected["wrong"][1]


@pytest.mark.parametrize("fisher", [None, "empirical", "sampled"])
def test_ewc_consolidate_takes_the_fisher_hp_names_empirical_by_default(fisher):
    x = np.random.default_rng(9).normal(size=(5, 2)).astype(np.float32)
    arrays = data.SplitArrays(x, np.array([0, 1, 2, 2, 0], np.int32))
    hp = base.HyperParams(batch_size=2, **({} if fisher is None else {"ewc_fisher": fisher}))
    model = _Linear([[0.4, -0.3, 0.1], [0.2, 0.6, -0.5]], [0.1, -0.2, 0.3])
    penalty = reg.FisherPenalty(hp)
    penalty.attach(model)
    penalty.consolidate(0, arrays)
    chosen = reg.expected_fisher if fisher == "sampled" else reg.empirical_fisher
    for omega, f in zip(penalty.slots["importance"], chosen(model, penalty.params, arrays, 2)):
        np.testing.assert_allclose(omega.numpy(), f, rtol=1e-6)
    other = reg.empirical_fisher if fisher == "sampled" else reg.expected_fisher
    assert not np.allclose(penalty.slots["importance"][1].numpy(), other(model, penalty.params, arrays, 2)[1])


def test_ewc_rejects_an_unknown_fisher():
    penalty = reg.FisherPenalty(base.HyperParams(ewc_fisher="true"))
    penalty.attach(_Linear(np.zeros((2, 3)), np.zeros(3)))
    with pytest.raises(ValueError, match="ewc_fisher"):
        penalty.consolidate(0, data.SplitArrays(np.zeros((2, 2), np.float32), np.zeros(2, np.int32)))


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
    kw = dict(steps=2, memory_per_class=3, batch_size=8, rwalk_fisher_update_after=1)  # 2 steps: 2 intervals
    method = _method("rwalk", **kw)
    for task, part in enumerate(tasks):
        method.begin_task(task, part)
        method.train_task(task, part, [])
        method.end_task(task)
    path = tf.train.Checkpoint(**method.trackables()).save(str(tmp_path / "ckpt"))
    resumed = _method("rwalk", **kw)
    resumed.set_state(json.loads(json.dumps(method.state())), lambda t: tasks[t])
    tf.train.Checkpoint(**resumed.trackables()).restore(path).assert_existing_objects_matched()
    for name, variables in method.regularizer.slots.variables().items():  # RWalk's step counter too
        for a, b in zip(variables, resumed.regularizer.slots.variables()[name]):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert any(v.numpy().any() for v in resumed.regularizer.slots["importance"])
    assert resumed.memory.classes() == [0, 1, 2, 3]
    for c in range(4):
        np.testing.assert_array_equal(resumed.memory.images[c], method.memory.images[c])
    assert resumed.report() == method.report()
