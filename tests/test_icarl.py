"""iCaRL: exact exemplar budgets, herding, the nearest-mean rule, distillation targets, the
export, checkpoints, and old classes kept on real MNIST where fine-tuning loses them."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dgm_keras import checkpointing, data, evaluation, expansion, export, memory, monitoring, networks
from dgm_keras.methods import base, icarl, supervised

SCENARIO = data.make_scenario("mnist", 1)
TASKS, PER_CLASS, BUDGET = 3, 400, 50  # exemplars per class: 50, then 25, then 16


def _part(train, task):
    """The first PER_CLASS training images of ``task`` (one class per task)."""
    part = train.of_classes(range(task, task + 1))
    return data.SplitArrays(part.images[:PER_CLASS], part.labels[:PER_CLASS])


def _hp():
    return base.HyperParams(steps_per_task=30, batch_size=32, icarl_memory=BUDGET)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _every(split, stride):
    return data.SplitArrays(split.images[::stride], split.labels[::stride])


class EpochEndLogits(keras.callbacks.Callback):
    """Keeps ``classifier_fn()``'s logits on ``images`` at every epoch end: what the runner's
    validation selector scores there."""

    def __init__(self, classifier_fn, images):
        super().__init__()
        self.classifier_fn, self.images, self.logits = classifier_fn, images, []

    def on_epoch_end(self, epoch, logs=None):
        self.logits.append(np.asarray(self.classifier_fn()(self.images)))


@pytest.fixture(scope="module")
def runs(mnist_scenario_data):
    """Three tasks of iCaRL (memory snapshots after each) and of fine-tuning, same steps.

    Each iCaRL task also runs the runner's validation selector and records what the selected
    classifier predicts at its epoch ends, beside the strict and exported one at the task's end
    (observers only: scoring runs the network in inference mode and draws no random numbers)."""
    train = mnist_scenario_data.train
    validation, test = _every(mnist_scenario_data.validation, 3), _every(mnist_scenario_data.test, 3)
    probe = mnist_scenario_data.test.of_classes(range(TASKS)).images[::10]
    method = icarl.ICaRL(SCENARIO, 1, _hp())
    snapshots, previous_unchanged, trained_on, selection = [], [], [], []
    for task in range(TASKS):
        part = _part(train, task)
        method.begin_task(task, part)
        trained_on.append(np.bincount(method.task_data.labels).tolist())
        previous = method.trainer.previous
        before = [v.numpy().copy() for v in previous.variables] if previous is not None else []
        selector = monitoring.ValidationSelector(method.classifier, validation, test, SCENARIO, task)
        epoch_ends = EpochEndLogits(method.classifier, probe)
        method.train_task(task, part, [selector, epoch_ends])
        if previous is not None:
            previous_unchanged += [np.array_equal(b, v.numpy()) for b, v in zip(before, previous.variables)]
        method.end_task(task)
        snapshots.append({c: images.copy() for c, images in method.memory.images.items()})
        selection.append({"selected": selector.best, "epoch_end_logits": epoch_ends.logits,
                          "strict": evaluation.evaluate_after_task(method.classifier(), test, SCENARIO, task),
                          "exported_logits": np.asarray(method.classifier_model()(probe))})
    finetune = supervised.Supervised(SCENARIO, 1, _hp(), joint=False)
    for task in range(TASKS):
        part = _part(train, task)
        finetune.begin_task(task, part)
        finetune.train_task(task, part, [])
        finetune.end_task(task)
    return method, snapshots, previous_unchanged, finetune, trained_on, selection


def test_memory_holds_exactly_the_budget_and_old_exemplars_are_prefixes(runs, mnist_scenario_data):
    method, snapshots, _, _, trained_on, _ = runs
    for task, snap in enumerate(snapshots):
        per_class = BUDGET // (task + 1)
        assert sorted(snap) == list(range(task + 1))
        assert [len(v) for v in snap.values()] == [per_class] * (task + 1)
        assert sum(len(v) for v in snap.values()) <= BUDGET
        if task:
            for c, kept in snapshots[task - 1].items():
                np.testing.assert_array_equal(snap[c], kept[:per_class])  # bitwise: a prefix, nothing new
    # The exemplars are the class's own training images, at the herded indices.
    for c in range(TASKS):
        images = _part(mnist_scenario_data.train, c).images
        np.testing.assert_array_equal(method.memory.images[c], images[method.herding[c][:BUDGET // TASKS]])
    assert method.report() == {"memory_budget": BUDGET, "memory_size_after_task": [50, 50, 48],
                               "exemplars_per_class_after_task": [[50], [25, 25], [16, 16, 16]]}
    # Each task trains on its images plus every exemplar kept so far.
    assert trained_on == [[PER_CLASS], [50, PER_CLASS], [25, 25, PER_CLASS]]


def _greedy_herding(features, count):
    """The definition, written out: each pick minimises ||mu - mean(picked + candidate)||."""
    f = _unit(features)
    mu, picked = f.mean(0), []
    for _ in range(count):
        dist = [np.inf if i in picked else np.linalg.norm(mu - f[picked + [i]].mean(0)) for i in range(len(f))]
        picked.append(int(np.argmin(dist)))
    return picked


def test_herding_on_real_features_follows_the_definition(runs, mnist_scenario_data):
    method = runs[0]
    features = method.features(_part(mnist_scenario_data.train, 0).images[:150])
    order = memory.herding_order(features, 12)
    f = _unit(features)
    assert order[0] == np.argmin(np.linalg.norm(f - f.mean(0), axis=1))
    assert len(set(order.tolist())) == 12
    assert order.tolist() == _greedy_herding(features, 12)


def test_nme_logits_are_negative_squared_distances_to_normalised_means():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 16)).astype(np.float32)
    means = _unit(rng.normal(size=(5, 16))).astype(np.float32)
    logits = np.asarray(icarl.nme_logits(features, means))
    dist2 = ((_unit(features)[:, None, :] - means[None]) ** 2).sum(-1)
    np.testing.assert_allclose(logits, -dist2, atol=1e-5)
    np.testing.assert_array_equal(logits.argmax(-1), dist2.argmin(-1))


def test_live_classifier_is_the_nearest_mean_of_exemplars(runs, mnist_scenario_data):
    method = runs[0]
    test = mnist_scenario_data.test.of_classes(range(TASKS))
    x = test.images[::20]
    means = np.stack([_unit(_unit(method.features(method.memory.images[c])).mean(0)) for c in range(TASKS)])
    np.testing.assert_allclose(method.nme.class_means.numpy(), means, atol=1e-5)
    dist = np.linalg.norm(_unit(method.features(x))[:, None, :] - means[None], axis=-1)
    logits = np.asarray(method.classifier()(x))
    assert logits.shape == (len(x), TASKS)
    np.testing.assert_array_equal(logits.argmax(-1), dist.argmin(-1))


def test_distillation_targets_are_the_previous_networks_outputs(mnist_scenario_data):
    previous = networks.Discriminator(2, name="discriminator").build_all(1)
    current = expansion.grow_discriminator(previous, 3, 1)
    trainer = icarl.ICaRLTrainer(current, previous)
    x = tf.constant(mnist_scenario_data.train.of_classes(range(2, 3)).images[:16])
    y = tf.fill([16], 2)
    targets = np.asarray(trainer.targets(x, y))
    np.testing.assert_allclose(targets[:, :2], tf.sigmoid(previous.classify(x)).numpy(), atol=1e-7)
    np.testing.assert_array_equal(targets[:, 2], np.ones(16))

    def head_grads():
        with tf.GradientTape() as tape:
            loss = trainer.task_loss(x, y)
        return [g.numpy() for g in tape.gradient(loss, [current.classifier.kernel, current.classifier.bias])]

    # The network equals its copy on the old classes and the batch holds no old labels: nothing pulls them.
    kernel_grad, bias_grad = head_grads()
    assert np.abs(kernel_grad[:, :2]).max() < 1e-6 and np.abs(bias_grad[:2]).max() < 1e-6
    assert np.abs(kernel_grad[:, 2]).max() > 1e-3
    # Move an old output away from the copy: distillation pulls it back.
    current.classifier.bias.assign(current.classifier.bias.numpy() + np.array([1.0, 0.0, 0.0], np.float32))
    kernel_grad, bias_grad = head_grads()
    assert bias_grad[0] > 1e-2 and abs(bias_grad[1]) < 1e-6


def test_previous_network_is_frozen_while_a_task_is_learned(runs):
    unchanged = runs[2]
    assert unchanged and all(unchanged)


def test_old_classes_kept_far_above_fine_tuning(runs, mnist_scenario_data):
    method, _, _, finetune, _, _ = runs
    old = mnist_scenario_data.test.of_classes(range(TASKS - 1))
    icarl_old = np.mean(np.asarray(method.classifier()(old.images)).argmax(-1) == old.labels)
    finetune_old = np.mean(np.asarray(finetune.classifier()(old.images)).argmax(-1) == old.labels)
    seen = mnist_scenario_data.test.of_classes(range(TASKS))
    icarl_all = np.mean(np.asarray(method.classifier()(seen.images)).argmax(-1) == seen.labels)
    assert icarl_old > 0.85 and icarl_all > 0.85
    assert icarl_old > finetune_old + 0.5


def test_selection_scores_the_exported_nearest_mean_of_exemplars(runs):
    """The selected figure must belong to a model that exists: at the last epoch end (the
    network as the task ends) the classifier the selector scores is the one exported, down to
    its logits; the means over all of the task's training images, or over the old classes'
    exemplars before they are cut to the new budget, would move every logit. With one epoch per
    task the selected scores are then the strict ones, exactly."""
    selection = runs[5]
    for task, record in enumerate(selection):
        assert len(record["epoch_end_logits"]) == 1  # steps_per_task: one epoch, so its end is the task's end
        last = record["epoch_end_logits"][-1]
        assert last.shape == record["exported_logits"].shape == (len(last), task + 1)
        np.testing.assert_allclose(last, record["exported_logits"], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(last.argmax(-1), record["exported_logits"].argmax(-1))
        assert record["selected"] == record["strict"]


def test_export_predicts_like_the_live_nearest_mean_classifier(runs, mnist_scenario_data, tmp_path):
    method = runs[0]
    path = export.export_classifier(method.classifier_model(), method.classifier(), SCENARIO, TASKS - 1, 1,
                                    str(tmp_path / "classifier"))
    loaded = tf.saved_model.load(path)
    x = mnist_scenario_data.test.of_classes(range(TASKS)).images[::25]
    out = loaded.signatures["serving_default"](images=tf.constant(x))
    live = np.asarray(method.classifier()(x))
    np.testing.assert_allclose(out["probabilities"].numpy(), tf.nn.softmax(live).numpy(), atol=1e-5)
    np.testing.assert_array_equal(out["classes"].numpy(), live.argmax(-1))
    saved_means = [v for v in loaded.variables if "class_means" in v.name]
    assert len(saved_means) == 1
    np.testing.assert_array_equal(saved_means[0].numpy(), method.nme.class_means.numpy())


def _restored(method, train, tmp_path):
    """A fresh ICaRL rebuilt from ``state()`` and a task-end checkpoint of ``trackables()``, as the runner resumes."""
    saved = tf.train.Checkpoint(**checkpointing.with_variable_lists(method.trackables())).save(str(tmp_path / "ckpt"))
    restored = icarl.ICaRL(SCENARIO, 1, _hp())
    restored.set_state(method.state(), lambda t: _part(train, t))
    tf.train.Checkpoint(**checkpointing.with_variable_lists(restored.trackables())).restore(
        saved).assert_existing_objects_matched()
    return restored


def test_checkpoint_restores_exemplars_and_class_means(runs, mnist_scenario_data, tmp_path):
    method = runs[0]
    restored = _restored(method, mnist_scenario_data.train, tmp_path)
    for c in range(TASKS):
        np.testing.assert_array_equal(restored.memory.images[c], method.memory.images[c])
    np.testing.assert_array_equal(restored.nme.class_means.numpy(), method.nme.class_means.numpy())
    assert restored.report() == method.report()


def test_checkpoint_restores_the_classifier(runs, mnist_scenario_data, tmp_path):
    method = runs[0]
    restored = _restored(method, mnist_scenario_data.train, tmp_path)
    x = mnist_scenario_data.test.images[:64]
    np.testing.assert_array_equal(np.asarray(restored.classifier()(x)), np.asarray(method.classifier()(x)))
