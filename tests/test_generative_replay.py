"""The generative-replay baselines (DGR, MeRGAN) and the WGAN-GP pieces they share with DGM."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dgm_keras import data, export, gan, networks
from dgm_keras.methods import base, dgr, mergan

# Task 1 has two past classes, so that the replay's argmax and its balance mean something. Its
# labels are the 10x1 fixture's (both in natural order): task t holds classes 2t and 2t + 1.
SCENARIO_2CPT = data.make_scenario("mnist", 2)


def _hp(**kw):
    return base.HyperParams(**{**dict(steps_per_task=3, ngf=4, batch_size=32, replay_batch_size=32,
                                      replay_per_class=48, ac_weight=1.0), **kw})


def _task_data(train, scenario, task, n=192):
    part = train.of_classes(scenario.task_classes(task))
    keep = np.random.default_rng(task).permutation(len(part.labels))[:n]
    return data.SplitArrays(part.images[keep], part.labels[keep])


def test_gradient_penalty_matches_a_hand_computation():
    # Critic D(x) = v . tanh(W x + b): grad_x D = W^T (v * (1 - tanh^2(W x + b))).
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 2 * 2 * 1)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    v = rng.normal(size=3).astype(np.float32)

    def critic(x):
        return tf.linalg.matvec(tf.tanh(tf.reshape(x, (-1, 4)) @ w.T + b), v)

    real = rng.uniform(-1, 1, (5, 2, 2, 1)).astype(np.float32)
    fake = rng.uniform(-1, 1, (5, 2, 2, 1)).astype(np.float32)
    weights = np.array([0.1, 0.1, 0.2, 0.2, 0.4], np.float32)
    # The same seed draws the same interpolation factors the function draws.
    eps = keras.random.uniform((5, 1, 1, 1), seed=keras.random.SeedGenerator(7)).numpy()
    x_hat = (eps * real + (1 - eps) * fake).reshape(5, 4)
    grads = (v * (1 - np.tanh(x_hat @ w.T + b) ** 2)) @ w
    per_image = (np.sqrt((grads ** 2).sum(1) + 1e-12) - 1) ** 2
    got = gan.gradient_penalty(critic, real, fake, keras.random.SeedGenerator(7))
    got_weighted = gan.gradient_penalty(critic, real, fake, keras.random.SeedGenerator(7), weights)
    np.testing.assert_allclose(float(got), per_image.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(got_weighted), (weights * per_image).sum(), rtol=1e-5)
    assert abs(per_image.mean() - (weights * per_image).sum()) > 1e-3  # the weights matter


def test_mixture_weights_give_every_seen_class_the_same_weight():
    # 4 real images of the current class, 6 replayed of two past classes: 3 classes, 1/3 each.
    w = gan.mixture_weights(4, 6, 1 / 3).numpy()
    np.testing.assert_allclose(w, [1 / 12] * 4 + [1 / 9] * 6, rtol=1e-6)  # 1/3 + 2/3
    np.testing.assert_allclose(gan.mixture_weights(4, None, 1.0).numpy(), [0.25] * 4)


def _snapshot_generator(gen):
    """The test's own copy of a generator's values (not mergan.frozen_copy, which is under test)."""
    copy = networks.PlainGenerator(**{**gen.get_config(), "name": "snapshot"}).build_all()
    copy.set_weights(gen.get_weights())
    return copy


def _snapshot_solver(disc):
    copy = networks.Discriminator(disc.num_classes, disc.widths, disc.norm, name="snapshot_solver").build_all(1)
    copy.set_weights(disc.get_weights())
    return copy


def _record_replay(trainer):
    """Makes the trainer's steps eager and keeps the replay half (images, labels) of every batch
    they are given: what the task really trained on."""
    seen = []
    step = trainer.train_step

    def recording_step(batch):
        _, (images, labels) = batch
        seen.append((images.numpy(), labels.numpy()))
        return step(batch)

    trainer.train_step = recording_step
    trainer.run_eagerly = True
    return seen


def _check_replayed(seen, images, labels, steps, batch):
    """Every replayed row of every step is a row of ``images`` with its label from ``labels``."""
    row_of = {image.tobytes(): i for i, image in enumerate(images)}
    assert len(seen) == steps
    for x, y in seen:
        assert x.shape[0] == batch
        rows = [row_of.get(image.tobytes()) for image in x]
        assert None not in rows, "a replayed image that is not in the draw of the previous generator"
        np.testing.assert_array_equal(y, labels[rows])


def test_dgr_replay_is_labelled_by_the_previous_solver_and_two_tasks_train(mnist_scenario_data):
    keras.utils.set_random_seed(0)  # the initial weights: this test's outcome does not depend on the tests before it
    hp = _hp()
    method = dgr.DGR(SCENARIO_2CPT, 1, hp)
    train = mnist_scenario_data.train
    part = _task_data(train, SCENARIO_2CPT, 0)
    method.begin_task(0, part)
    assert method.replay is None
    method.train_task(0, part, [])
    method.end_task(0)
    n = 2 * hp.replay_per_class
    # Three steps leave a solver that gives (nearly) all generated images one class; its bias is
    # shifted so that it splits them, or a constant label would pass for the solver's.
    margin = np.diff(method.solver.classify(gan.sample_images(method.gen, n, hp.seed + 1), training=False).numpy(), axis=1)
    method.solver.classifier.bias.assign(method.solver.classifier.bias - np.array([0.0, np.median(margin)], np.float32))
    gen_then, solver_then = _snapshot_generator(method.gen), _snapshot_solver(method.solver)  # as task 0 left them
    old_solver = method.solver
    part = _task_data(train, SCENARIO_2CPT, 1)
    method.begin_task(1, part)
    replay = method.replay
    assert replay.images.shape == (n, 32, 32, 1)
    # Drawn (seeded) from the generator as task 0 left it, labelled by task 0's solver over the
    # past classes.
    want_images = gan.sample_images(gen_then, n, hp.seed + 1)
    want_labels = np.argmax(solver_then.classify(want_images, training=False).numpy(), axis=1)
    np.testing.assert_array_equal(replay.images, want_images)
    np.testing.assert_array_equal(replay.labels, want_labels)
    assert np.bincount(replay.labels).min() >= n // 4, np.bincount(replay.labels)
    assert method.solver is not old_solver and method.solver.num_classes == 4
    seen = _record_replay(method.trainer)
    losses = method.train_task(1, part, [])
    # Every step of task 1 replayed that draw with those labels ...
    _check_replayed(seen, want_images, want_labels, hp.steps_per_task, hp.replay_batch_size)
    # ... which the generator, trained since on task 1, no longer draws: the replay was drawn once,
    # from the previous generator, not from the current one.
    # (0.06 here after 3 steps; the same weights would draw the same bits).
    assert np.abs(gan.sample_images(method.gen, n, hp.seed + 1) - want_images).max() > 1e-3
    method.end_task(1)
    assert all(np.isfinite(v) for v in losses.values()) and losses["replay_cls_loss"] > 0
    assert method.generator() is None
    with pytest.raises(NotImplementedError):
        method.sample(np.array([0]), seed=0)
    logits = method.classifier()(mnist_scenario_data.test.images[:8])
    assert logits.shape == (8, 4) and np.isfinite(logits.numpy()).all()
    assert method.parameter_counts()["generator"] == networks.count_weights(method.gen) > 0


def test_mergan_ra_previous_generator_frozen_and_replay_balanced(mnist_scenario_data):
    keras.utils.set_random_seed(0)
    hp = _hp(mergan_mode="ra")
    method = mergan.MeRGAN(SCENARIO_2CPT, 1, hp)
    train = mnist_scenario_data.train
    part = _task_data(train, SCENARIO_2CPT, 0)
    method.begin_task(0, part)
    method.train_task(0, part, [])
    method.end_task(0)
    gen_then = _snapshot_generator(method.gen)  # as task 0 left it
    trained_g = [w.copy() for w in method.gen.get_weights()]
    part = _task_data(train, SCENARIO_2CPT, 1)
    method.begin_task(1, part)
    labels = method.replay.labels
    # The past classes (0 and 1 here: task 0's), as many images of each.
    assert np.bincount(labels, minlength=4).tolist() == [hp.replay_per_class] * 2 + [0, 0]
    # Each image drawn by the generator as task 0 left it, conditioned on its own label (the same
    # latents under the other label draw other images).
    want = gan.sample_images(gen_then, len(labels), hp.seed + 1, labels)
    np.testing.assert_array_equal(method.replay.images, want)
    assert np.abs(gan.sample_images(gen_then, len(labels), hp.seed + 1, 1 - labels) - want).max() > 1e-3  # 0.015
    previous = method.trainer.previous
    assert previous is method.previous and not previous.trainable_variables
    seen = _record_replay(method.trainer)
    losses = method.train_task(1, part, [])
    assert all(np.isfinite(v) for v in losses.values()) and "alignment" in losses
    _check_replayed(seen, want, labels, hp.steps_per_task, hp.replay_batch_size)
    for before, after in zip(trained_g, previous.get_weights()):
        np.testing.assert_array_equal(after, before)  # bitwise, moving statistics included
    np.testing.assert_array_equal(gan.sample_images(previous, len(labels), hp.seed + 1, labels), want)
    assert any((a != b).any() for a, b in zip(trained_g, method.gen.get_weights()))  # while G learned:
    # what it draws now (and serves: ``sample``) is no longer the replay.
    assert np.abs(method.sample(labels, hp.seed + 1) - want).max() > 1e-3  # 0.04 here
    method.end_task(1)
    images = method.sample(np.array([0, 1, 2, 3]), seed=0)
    assert images.shape == (4, 32, 32, 1) and np.abs(images).max() <= 1.0


def _trainer(mode):
    gen = networks.PlainGenerator((8, 6, 4), 10, 1, name="generator").build_all()
    disc = networks.Discriminator(3, name="discriminator").build_all(1)
    previous = mergan.frozen_copy(gen, "previous_generator")
    hp = _hp(mergan_mode=mode, alignment_weight=0.5)
    return mergan.MeRGANTrainer(gen, disc, previous if mode == "ra" else None, range(2, 3), 2, hp), previous


def test_replay_alignment_term_is_zero_at_equality_and_trains_g_and_jtr_has_none():
    ra, previous = _trainer("ra")
    jtr, _ = _trainer("jtr")
    jtr.generator.set_weights(ra.generator.get_weights())
    jtr.discriminator.set_weights(ra.discriminator.get_weights())
    rng = np.random.default_rng(0)
    z = rng.standard_normal((6, networks.NZ)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2], np.int32)
    w = gan.mixture_weights(2, 4, 1 / 3)
    z_align = rng.standard_normal((5, networks.NZ)).astype(np.float32)
    y_align = np.array([0, 1, 1, 0, 1], np.int32)
    assert float(ra.alignment(z_align, y_align)) == 0.0  # G equals G_prev

    kernel = ra.generator.body[1].kernel
    kernel.assign(kernel + 0.05 * rng.standard_normal(kernel.shape).astype(np.float32))
    jtr.generator.set_weights(ra.generator.get_weights())
    ra_losses = ra.generator_losses(z, y, w, z_align, y_align)
    diff = (ra.generator(z_align, y_align) - previous(z_align, y_align)).numpy()
    np.testing.assert_allclose(float(ra_losses["alignment"]), (diff ** 2).sum(axis=(1, 2, 3)).mean(), rtol=1e-5)
    assert float(ra_losses["alignment"]) > 0
    # The alignment's gradient reaches G's weights; G_prev's are not among what the step updates.
    with tf.GradientTape() as align_tape:
        align = ra.alignment(z_align, y_align)
    grads = align_tape.gradient(align, ra.generator.trainable_variables)
    assert all(g is not None for g in grads) and np.abs(grads[0].numpy()).sum() > 0
    assert {id(v) for v in ra.g_vars}.isdisjoint(id(v) for v in previous.variables)

    jtr_losses = jtr.generator_losses(z, y, w, z_align, y_align)
    assert "alignment" not in jtr_losses and "alignment" not in [m.name for m in jtr.metrics]
    assert jtr.previous is None
    np.testing.assert_allclose(float(ra_losses["g_loss"]) - float(jtr_losses["g_loss"]),
                               0.5 * float(ra_losses["alignment"]), rtol=1e-4)
    # JTR's loss is the AC-GAN generator loss on the class-balanced mix, by hand.
    critic, logits = jtr.discriminator(jtr.generator(z, y, training=True), training=True)
    ce = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True).numpy()
    want = -(w.numpy() * critic.numpy()).sum() + 1.0 * (w.numpy() * ce).sum()
    np.testing.assert_allclose(float(jtr_losses["g_loss"]), want, rtol=1e-4)


def test_conditional_generator_exports_and_serves_the_same_images(tmp_path):
    scenario = data.make_scenario("mnist", 2)
    gen = networks.PlainGenerator((8, 6, 4), 10, 1, name="generator").build_all()
    # Non-trivial batch-norm statistics, so that a train-mode export would differ.
    gen.norm.moving_mean.assign(np.linspace(-0.5, 0.5, 4).astype(np.float32))
    gen.norm.moving_variance.assign(np.linspace(0.5, 2.0, 4).astype(np.float32))
    path = export.export_generator(gen, scenario, 1, str(tmp_path / "generator"))
    served = tf.saved_model.load(path).signatures["sample"]
    labels = np.array([0, 3, 1, 2, 3], np.int32)
    got = served(labels=tf.constant(labels), seed=tf.constant(5, tf.int64))["images"].numpy()
    z = tf.random.stateless_normal([5, gen.nz], seed=tf.constant([5, 0], tf.int64))
    np.testing.assert_allclose(got, gen(z, labels, training=False).numpy(), atol=1e-5)
    assert not np.allclose(got[1], got[2], atol=1e-3)  # the label and z matter


@pytest.mark.parametrize("make", [dgr.DGR, mergan.MeRGAN], ids=["dgr", "mergan"])
def test_gan_baselines_swap_in_weight_averages_with_batch_norm_statistics_of_their_own(mnist_scenario_data, make):
    # The GAN baselines get DGM's weight averages (--generator_ema, --classifier_ema): while a task
    # trains the selector scores the averaged classifier, live weights untouched; when it ends the
    # generator and the classifier take the averages bitwise, and the generator's batch norm the
    # exact statistics of its inputs under the averaged weights (not the moving ones).
    keras.utils.set_random_seed(0)
    hp = _hp(generator_ema=0.9, classifier_ema=0.9, steps_per_task=4)
    method = make(SCENARIO_2CPT, 1, hp)
    part = _task_data(mnist_scenario_data.train, SCENARIO_2CPT, 0)
    method.begin_task(0, part)
    method.train_task(0, part, [])
    trainer, classifier = method.trainer, method.classifier_model()
    images = mnist_scenario_data.test.images[:16]
    live = [v.numpy().copy() for v in classifier.trainable_variables]
    live_logits = classifier.classify(images).numpy()
    g_average = [a.numpy().copy() for a in trainer._g_average]
    c_average = [a.numpy().copy() for a in trainer._c_average]
    assert len(g_average) == len(method.gen.trainable_variables) and len(c_average) == len(live)
    in_trainer = {id(v) for v in trainer.variables}  # what a step checkpoint of the trainer carries
    assert all(id(a) in in_trainer for a in trainer._g_average + trainer._c_average)
    scored = np.asarray(method.classifier()(images))
    assert np.abs(scored - live_logits).max() > 1e-3  # the selector scores the averages, not the live weights
    for v, value in zip(classifier.trainable_variables, live):
        np.testing.assert_array_equal(v.numpy(), value)
    method.end_task(0)
    for v, average in zip(method.gen.trainable_variables + classifier.trainable_variables, g_average + c_average,
                          strict=True):
        np.testing.assert_array_equal(v.numpy(), average)
    np.testing.assert_allclose(np.asarray(method.classifier()(images)), scored, rtol=1e-5, atol=1e-5)
    z = np.random.default_rng(5).standard_normal((4096, method.gen.nz)).astype(np.float32)
    labels = np.random.default_rng(6).integers(0, 2, 4096).astype(np.int32) if method.gen.num_classes else None
    inputs = method.gen.norm_inputs(z, labels).numpy().astype(np.float64)
    norm = method.gen.norm
    # Other draws than the re-estimate's: equal up to the sampling error of 4096 x 16 x 16 positions.
    np.testing.assert_allclose(norm.moving_mean.numpy(), inputs.mean((0, 1, 2)), rtol=0.05, atol=1e-3)
    np.testing.assert_allclose(norm.moving_variance.numpy(), inputs.var((0, 1, 2)), rtol=0.1, atol=1e-3)


@pytest.mark.parametrize("make", [dgr.DGR, mergan.MeRGAN], ids=["dgr", "mergan"])
def test_gan_baselines_without_averages_end_a_task_with_their_live_weights(mnist_scenario_data, make):
    keras.utils.set_random_seed(0)
    method = make(SCENARIO_2CPT, 1, _hp(generator_ema=0.0, classifier_ema=0.0))
    part = _task_data(mnist_scenario_data.train, SCENARIO_2CPT, 0)
    method.begin_task(0, part)
    method.train_task(0, part, [])
    assert not method.trainer._g_average and not method.trainer._c_average
    before = [w.copy() for w in method.gen.get_weights() + method.classifier_model().get_weights()]
    method.end_task(0)
    for a, b in zip(before, method.gen.get_weights() + method.classifier_model().get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise, the moving batch-norm statistics included
