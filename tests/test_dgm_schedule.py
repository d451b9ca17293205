"""How DGM learns (issue 11): masks that learn for the whole task, the classifier's own steps
(separate network, the reference's t+1 schedule), and the generator's re-estimated batch norm."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dgm_keras import checkpointing, config, data
from dgm_keras.methods import base, dgm


def _part(train, task, n):
    part = train.of_classes(range(task, task + 1))
    return data.SplitArrays(part.images[:n], part.labels[:n])


def _method(steps=4, **kw):
    scenario = data.make_scenario("mnist", 1)
    hp = base.HyperParams(steps_per_task=steps, ngf=4, batch_size=32, replay_batch_size=32, replay_per_class=64, **kw)
    return dgm.DGM(scenario, 1, hp)


def _after_tasks(train, tasks, **kw):
    """A method that has ended ``tasks`` tasks (untrained, to be quick) and begun the next."""
    method = _method(**kw)
    for task in range(tasks):
        method.begin_task(task, _part(train, task, 64))
        method.end_task(task)
    method.begin_task(tasks, _part(train, tasks, 64))
    return method


def test_the_selector_scores_the_averaged_classifier_while_a_task_trains(mnist_scenario_data):
    # With --classifier_ema the classifier that is evaluated strictly and exported is the
    # average; at an epoch's end (where the validation selector scores) method.classifier()
    # must give the average's logits, leave the live weights bitwise as they were, and, once
    # the task has ended and the averages are the weights, give the same logits again.
    train = mnist_scenario_data.train
    method = _after_tasks(train, 1, classifier_ema=0.9)
    trainer = method.trainer
    for _ in range(3):
        trainer.fit(method.pipeline(1, _part(train, 1, 64)), epochs=1, steps_per_epoch=1, verbose=0)
    images = np.concatenate([_part(train, t, 16).images for t in range(2)])
    live = [v.numpy().copy() for v in method.disc.trainable_variables]
    live_logits = method.disc.classify(images).numpy()
    for v, average in zip(method.disc.trainable_variables, trainer._c_average, strict=True):
        v.assign(average.numpy())
    want = method.disc.classify(images).numpy()
    for v, value in zip(method.disc.trainable_variables, live):
        v.assign(value)
    assert np.abs(want - live_logits).max() > 1e-3  # the averages are not the live weights
    got = np.asarray(method.classifier()(images))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for v, value in zip(method.disc.trainable_variables, live):
        np.testing.assert_array_equal(v.numpy(), value)
    method.end_task(1)
    np.testing.assert_allclose(np.asarray(method.classifier()(images)), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask_gradient,steps,mask_init,switched_off", [
    ("constant", 200, 0.05, True), ("annealed", 200, 0.05, False),
    # A 40-step task's last quarter is 10 steps, about 0.02 of travel under Adam at 2e-3: too little
    # from 0.05 (what the run's warning says), enough from a lower --mask_init.
    ("constant", 40, 0.05, False), ("constant", 40, 0.005, True)])
def test_an_entry_pushed_off_in_the_last_quarter_of_a_task_switches_off(mask_gradient, steps, mask_init, switched_off):
    # Every entry starts on (mask_init > 0). In the last quarter of the task a loss that wants one
    # kernel entry off (d loss / d m = +1) is the only push, through the trainer's own s,
    # straight-through gradient and compensation, under Adam at the default rate. With the
    # compensated gradient at every step it crosses zero if the steps left can carry it there; under
    # HAT's ramp s * e is far past the compensation's clip by then and the entry gets no gradient.
    method = _method(steps=steps, mask_gradient=mask_gradient, mask_init=mask_init)
    method.begin_task(0, data.SplitArrays(np.zeros((32, 32, 32, 1), np.float32), np.zeros(32, np.int32)))
    trainer = method.trainer
    layer = method.gen.masked_layers[1]
    emb = layer.embeddings["kernel"]
    np.testing.assert_allclose(emb.numpy(), mask_init)
    push = np.zeros(emb.shape, np.float32)
    push[0, 0, 0, 0] = 1.0
    opt = keras.optimizers.Adam(method.hp.g_lr)
    for step in range(steps - steps // 4, steps):
        trainer.task_step.assign(step)
        s = trainer.scale()
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer.current_masks(s)["kernel"] * push)
        grad = trainer.shape_generator_grad(emb, tape.gradient(loss, emb), s)
        opt.apply([grad], [emb])
    mask = layer.binary_current_masks()["kernel"]
    assert bool(mask[0, 0, 0, 0] == 0) is switched_off
    assert mask.sum() == mask.size - int(switched_off)  # nothing else moved


def test_classifier_steps_per_iteration(mnist_scenario_data):
    # At task t (one class a task): the reference schedule takes t + 1 classifier steps of
    # batch_size images (the real batch and one replay batch per past task, permuted); the
    # combined one takes one, inside the critic step (shared) or of its own (separate).
    train = mnist_scenario_data.train
    for classifier, steps, want in (("shared", "reference", 3), ("separate", "reference", 3), ("separate", "combined", 1)):
        method = _after_tasks(train, 2, classifier=classifier, classifier_steps=steps)
        trainer = method.trainer
        batch = next(iter(method.pipeline(2, _part(train, 2, 64))))
        assert batch[1][0].shape[0] == (64 if steps == "reference" else 32)  # replay: batch_size per past task
        trainer.fit(method.pipeline(2, _part(train, 2, 64)), epochs=1, steps_per_epoch=2, verbose=0)
        assert int(trainer.c_optimizer.iterations) == 2 * want, (classifier, steps)
        assert int(trainer.d_optimizer.iterations) == 2 and int(trainer.g_optimizer.iterations) == 2
    # The paper's pair: no optimizer of its own, the critic step classifies.
    shared = _after_tasks(train, 2, classifier_steps="combined", classifier_data="real")
    assert shared.trainer.c_optimizer is None and shared.trainer.critic_classifies


@pytest.mark.parametrize("head_lr", [0.0, 1e-6])
def test_the_classifier_head_takes_its_own_rate_in_the_combined_step(mnist_scenario_data, head_lr):
    # --classifier_head_lr: the head's own Adam steps it at that rate inside the critic step, while the
    # trunk and critic head keep --d_lr (2e-3); 0 (the paper) steps the whole discriminator at --d_lr.
    # Adam moves an entry by at most about its rate a step, so two steps bound the head's travel.
    train = mnist_scenario_data.train
    method = _after_tasks(train, 1, classifier_steps="combined", classifier_data="real", classifier_head_lr=head_lr)
    trainer, disc = method.trainer, method.disc
    critic_ids = {id(v) for v in disc.critic.trainable_variables}
    parts = {"head": disc.classifier.trainable_variables, "critic": disc.critic.trainable_variables,
             "trunk": [v for v in disc.head_variables("critic") if id(v) not in critic_ids]}
    before = {name: [v.numpy().copy() for v in vs] for name, vs in parts.items()}
    trainer.fit(method.pipeline(1, _part(train, 1, 64)), epochs=1, steps_per_epoch=2, verbose=0)

    def moved(name):
        return max(float(np.abs(v.numpy() - b).max()) for v, b in zip(parts[name], before[name], strict=True))

    assert moved("critic") > 1e-3 and moved("trunk") > 1e-3
    assert int(trainer.d_optimizer.iterations) == 2
    if head_lr:
        assert 0 < moved("head") < 2.5 * head_lr
        assert int(trainer.c_optimizer.iterations) == 2 and trainer.head_apart
        assert {id(v) for v in trainer.d_vars}.isdisjoint(id(v) for v in disc.classifier.trainable_variables)
    else:
        assert moved("head") > 1e-3
        assert trainer.c_optimizer is None and not trainer.head_apart


@pytest.mark.parametrize("classes_per_task, given, want", [
    (1, {}, ("combined", "real")), (2, {}, ("combined", "real")), (5, {}, ("combined", "real")),
    (1, {"classifier_steps": "reference"}, ("reference", "generated")),
    (1, {"classifier_steps": "combined", "classifier": "separate"}, ("combined", "generated")),
    (1, {"classifier_data": "generated"}, ("combined", "generated")),  # refused by the flags' check (shared)
    (2, {"classifier_steps": "reference"}, ("reference", "real"))])
def test_the_classifier_pair_defaults_by_scenario(classes_per_task, given, want):
    # Measured (docs/RESULTS.md): the paper's combined step on real images wins at equal wall time
    # with one class a task (session 21); with the classifier's own steps and one class a task,
    # generated images of the current task (always drawn of their class) helped; with several
    # classes they fail (G(z, y) has yet to learn class y).
    hp = config.with_method_defaults("dgmw", classes_per_task, base.HyperParams(**given))
    assert (hp.classifier_steps, hp.classifier_data) == want
    for name, value in given.items():
        assert getattr(hp, name) == value


def test_separate_classifier_and_critic_train_apart(mnist_scenario_data):
    train = mnist_scenario_data.train
    method = _after_tasks(train, 1, classifier="separate")
    trainer = method.trainer
    assert method.classifier_model() is method.cls and method.cls is not method.disc
    assert method.cls.num_classes == 2 and not trainer.critic_classifies  # one class a task: no AC term
    batch = next(iter(method.pipeline(1, _part(train, 1, 64))))

    def snapshot(net):
        return [v.numpy().copy() for v in net.trainable_variables]

    cls_before, disc_before = snapshot(method.cls), snapshot(method.disc)
    trainer.critic_step(batch, trainer.scale())
    for a, b in zip(snapshot(method.cls), cls_before):
        np.testing.assert_array_equal(a, b)  # the critic does not touch the classifier
    disc_mid = snapshot(method.disc)
    assert any((a != b).any() for a, b in zip(disc_mid, disc_before))
    trainer.classifier_steps(batch)
    for a, b in zip(snapshot(method.disc), disc_mid):
        np.testing.assert_array_equal(a, b)  # nor the classifier the critic
    assert any((a != b).any() for a, b in zip(snapshot(method.cls), cls_before))
    # The critic's classifier head gets no update at all (no optimizer slot is spent on it).
    assert {v.path for v in trainer.d_vars} == {v.path for v in method.disc.head_variables("critic")}


def test_separate_classifier_survives_a_checkpoint(mnist_scenario_data, tmp_path):
    train = mnist_scenario_data.train
    method = _after_tasks(train, 1, classifier="separate")
    method.end_task(1)
    saved = checkpointing.with_variable_lists(method.trackables())
    assert {"classifier", "discriminator", "generator"} <= set(saved)
    path = tf.train.Checkpoint(**saved).write(str(tmp_path / "ckpt"))
    fresh = _method(classifier="separate")
    fresh.set_state(method.state(), lambda t: None)
    tf.train.Checkpoint(**checkpointing.with_variable_lists(fresh.trackables())).read(path).assert_consumed()
    for name in ("cls", "disc"):
        for a, b in zip(getattr(fresh, name).variables, getattr(method, name).variables, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not all((a.numpy() == b.numpy()).all() for a, b in zip(fresh.cls.variables[:2], fresh.disc.variables[:2]))


def test_reestimated_generator_batch_norm_holds_the_inputs_exact_statistics(mnist_scenario_data):
    train = mnist_scenario_data.train
    stats = {}
    for mode in ("moving", "reestimate"):
        keras.utils.set_random_seed(0)
        method = _method(steps=6, generator_bn=mode, generator_ema=0.0)  # the average would force a re-estimate
        part = _part(train, 0, 192)
        method.begin_task(0, part)
        method.train_task(0, part, [])
        gen = method.gen
        z = np.random.default_rng(123).standard_normal((4096, gen.nz)).astype(np.float32)
        inputs = gen.head_inputs(z, np.zeros(4096, np.int32)).numpy().astype(np.float64)
        method.end_task(0)
        norm = method.gen.task_norms[0]  # task 0's head, carried across the expansion
        stats[mode] = (norm.moving_mean.numpy(), norm.moving_variance.numpy(), inputs.mean((0, 1, 2)),
                       inputs.var((0, 1, 2)))
    mean, var, want_mean, want_var = stats["reestimate"]
    # Other draws than the re-estimate's: equal up to sampling error of 4096 x 8 x 8 positions.
    np.testing.assert_allclose(mean, want_mean, rtol=0.05, atol=1e-3)
    np.testing.assert_allclose(var, want_var, rtol=0.1, atol=1e-3)
    # The moving average after 6 steps (momentum 0.99) is still mostly its initial 0 and 1.
    moving_mean, moving_var = stats["moving"][:2]
    assert np.abs(moving_mean - want_mean).max() > 5 * np.abs(mean - want_mean).max()
    assert np.abs(moving_var - want_var).max() > 5 * np.abs(var - want_var).max()


@pytest.mark.parametrize("steps,per_task", [("reference", 32), ("combined", 16)])
def test_fresh_replay_draws_every_past_task_anew_inside_the_step(mnist_scenario_data, steps, per_task):
    # --replay=fresh: no set is drawn when the task begins; each iteration draws as many images of
    # every past task as the fixed set's pipeline would hold, each labelled with that task's class,
    # and two draws differ. The step's only replay is that draw: the pipeline yields real images of
    # the current class alone, and a draw poisoned with NaN turns the classifier's weights NaN.
    train = mnist_scenario_data.train
    method = _after_tasks(train, 2, replay="fresh", classifier_steps=steps, classifier_data="real")
    assert method.replay is None
    _, real_y = next(iter(method.pipeline(2, _part(train, 2, 64))))
    assert set(real_y.numpy().tolist()) == {2}
    x, y = method.trainer.fresh_replay()
    assert tuple(x.shape) == (2 * per_task, 32, 32, 1) and np.isfinite(x.numpy()).all()
    assert y.numpy().tolist() == [0] * per_task + [1] * per_task
    again, _ = method.trainer.fresh_replay()
    assert np.abs(again.numpy() - x.numpy()).max() > 1e-3
    draw = method.trainer.fresh_replay
    method.trainer.fresh_replay = lambda: (lambda x, y: (x * float("nan"), y))(*draw())
    method.trainer.fit(method.pipeline(2, _part(train, 2, 64)), epochs=1, steps_per_epoch=2, verbose=0)
    if steps == "reference":
        assert int(method.trainer.c_optimizer.iterations) == 2 * 3  # t+1 classifier steps an iteration
    assert not all(np.isfinite(v.numpy()).all() for v in method.classifier_model().trainable_variables)


@pytest.mark.parametrize("classifier_data", ["real", "generated"])
def test_generated_classifier_data_never_shows_the_classifier_a_real_image(mnist_scenario_data, classifier_data):
    # Real images poisoned with NaN: the classifier's weights turn NaN if and only if its steps read them.
    train = mnist_scenario_data.train
    method = _after_tasks(train, 1, classifier="separate", classifier_steps="reference", classifier_data=classifier_data)
    (real_x, real_y), replay = next(iter(method.pipeline(1, _part(train, 1, 64))))
    poisoned = (tf.fill(tf.shape(real_x), float("nan")), real_y)
    method.trainer.classifier_steps((poisoned, replay))
    finite = all(np.isfinite(v.numpy()).all() for v in method.cls.trainable_variables)
    assert finite is (classifier_data == "generated")


@pytest.mark.parametrize("warmup", [10.0, 2.0])
def test_weight_averages_are_swapped_in_when_the_task_ends_and_reserved_weights_stay_bitwise(mnist_scenario_data, warmup):
    # --generator_ema / --classifier_ema: each step the averages move by the ramped decay
    # min(decay, (1 + k) / (warmup + k)) (--ema_warmup); when the task ends the generator's free entries and the
    # classifier take the averages, the entries past tasks reserved keep their exact bits,
    # and the masks are the task's own last ones (embeddings are not averaged).
    train = mnist_scenario_data.train
    decay = 0.9
    method = _after_tasks(train, 1, generator_ema=decay, classifier_ema=decay, ema_warmup=warmup)
    trainer = method.trainer
    averaged = trainer.g_averaged + method.disc.trainable_variables
    assert {v.path for v in trainer.g_averaged}.isdisjoint(trainer.embedding_vars)
    assert len(trainer._g_average) == len(trainer.g_averaged) and len(trainer._c_average) == len(
        method.disc.trainable_variables)
    in_trainer = {id(v) for v in trainer.variables}  # what a step checkpoint of the trainer carries
    assert all(id(a) in in_trainer for a in trainer._g_average + trainer._c_average)
    want = [v.numpy().astype(np.float64) for v in averaged]
    for k in range(5):
        trainer.fit(method.pipeline(1, _part(train, 1, 64)), epochs=1, steps_per_epoch=1, verbose=0)
        d = min(decay, (1 + k) / (warmup + k))
        want = [d * w + (1 - d) * v.numpy() for w, v in zip(want, averaged)]
    got = [a.numpy() for a in trainer._g_average + trainer._c_average]
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    live = [v.numpy().copy() for v in averaged]
    masks = [layer.binary_current_masks() for layer in method.gen.masked_layers]
    assert not all(np.array_equal(l, g) for l, g in zip(live, got))  # the averages are not the live weights
    protect = {p: m.numpy() for p, m in trainer._protect.items()}
    assert any((m == 0).any() for m in protect.values())  # task 0 reserved something
    method.end_task(1)
    for v, before, average in zip(averaged, live, got):
        after = v.numpy()
        if v.path in protect:
            reserved = protect[v.path] == 0
            np.testing.assert_array_equal(after[reserved], before[reserved])
            np.testing.assert_array_equal(after[~reserved], average[~reserved])
        else:
            np.testing.assert_array_equal(after, average)
    # The expanded generator keeps the task's own last masks (the embeddings were not averaged).
    for layer, own in zip(method.gen.masked_layers, masks, strict=True):
        for name, mask in own.items():
            stored = layer.task_masks(1)[name].numpy()
            np.testing.assert_array_equal(stored[tuple(slice(0, n) for n in mask.shape)], mask)


def test_a_chosen_decay_the_warmup_never_reaches_is_warned_and_a_default_one_is_not():
    # At warmup 10 the decay ends a 563-step task at 563 / 572 = 0.9843: 0.995 chosen
    # there runs as that cap does. A decay the task reaches, or one left at its default, says nothing.
    from dgm_keras import gan

    hp = base.HyperParams(generator_ema=0.995, classifier_ema=0.9, ema_warmup=10.0)
    chosen = {"generator_ema": "command line", "classifier_ema": "flags/x.cfg"}
    (line,) = gan.unreached_decays("dgmw", hp, 563, chosen)
    assert line == ("warning: --generator_ema=0.995 is never reached: the decay at a task's step k is min(decay, "
                    "(1 + k) / (ema_warmup + k)), 0.9843 at the last step of this run's shortest task (563 steps, --ema_warmup=10); "
                    "it needs 1,791 steps a task, or a lower --ema_warmup")
    # 1,791 steps: (1 + k) / (10 + k) at their last step k = 1,790 is 1,791 / 1,800 = 0.995, the first that reaches it
    assert 1791 / 1800 >= 0.995 > 1790 / 1799
    assert gan.unreached_decays("dgmw", hp, 1791, chosen) == []
    assert len(gan.unreached_decays("dgmw", hp, 1790, chosen)) == 1
    assert gan.unreached_decays("dgmw", hp, 563, {}) == []  # defaults: the files' own choices, not the user's
    assert gan.unreached_decays("ewc", hp, 563, chosen) == []  # no averages there
    assert len(gan.unreached_decays("dgma", base.HyperParams(generator_ema=0.99, classifier_ema=0.99), 237,
                                    {"generator_ema": "command line", "classifier_ema": "command line"})) == 2
