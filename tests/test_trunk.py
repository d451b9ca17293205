"""--d_trunk: the discriminator's pooled trunk (a classification network's) beside the paper's
strided one: its shape, the critic's gradient penalty through max pooling, growth, and a run that
checkpoints and restores it."""

import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from conftest import reading_mnist_once


def test_pooled_trunk_is_the_tutorials_network():
    from dgm_keras import networks

    d = networks.Discriminator(10, norm="layer", trunk="pooled").build_all(3)
    convs = [layer for layer in d.trunk if isinstance(layer, layers.Conv2D)]
    assert [tuple(c.kernel.shape) for c in convs] == [(3, 3, 3, 32), (3, 3, 32, 64), (3, 3, 64, 64)]
    assert sum(isinstance(layer, layers.MaxPooling2D) for layer in d.trunk) == 2
    x = tf.random.normal((4, 32, 32, 3), seed=1)
    critic, logits = d(x)
    assert critic.shape == (4,) and logits.shape == (4, 10) and d.features(x).shape == (4, 64)
    # 32 -> 30 -> 15 -> 13 -> 6 -> 4: a 4x4x64 map into the dense 64.
    assert tuple(d.dense[0].kernel.shape) == (4 * 4 * 64, 64)
    strided = networks.Discriminator(10, norm="layer").build_all(3)
    assert [tuple(c.kernel.shape) for c in strided.trunk if isinstance(c, layers.Conv2D)][0] == (5, 5, 3, 32)
    assert strided.dense == [] and strided.features(x).shape == (4, 4 * 4 * 128)
    with pytest.raises(ValueError, match="trunk='wide'; allowed: strided, pooled"):
        networks.Discriminator(10, trunk="wide")


def test_gradient_penalty_trains_the_pooled_trunk():
    # WGAN-GP's penalty differentiates the critic's input gradient: through max pooling too.
    import keras

    from dgm_keras import gan, networks

    d = networks.Discriminator(2, trunk="pooled").build_all(1)
    real, fake = tf.random.normal((8, 32, 32, 1), seed=2), tf.random.normal((8, 32, 32, 1), seed=3)
    with tf.GradientTape() as tape:
        gp = gan.gradient_penalty(lambda x: d(x)[0], real, fake, keras.random.SeedGenerator(0))
    grads = tape.gradient(gp, [d.trunk[0].kernel, d.dense[0].kernel, d.classifier.kernel])
    assert np.isfinite(float(gp)) and float(gp) > 0
    assert np.abs(grads[0].numpy()).sum() > 0 and np.abs(grads[1].numpy()).sum() > 0
    assert grads[2] is None  # the classifier head plays no part in the critic's score


@pytest.mark.parametrize("trunk", ["strided", "pooled"])
def test_growing_keeps_the_trunk_and_the_old_rows(trunk):
    from dgm_keras import expansion, networks

    d = networks.Discriminator(2, trunk=trunk).build_all(1)
    x = tf.random.normal((3, 32, 32, 1), seed=4)
    before = d.classify(x).numpy()
    grown = expansion.grow_discriminator(d, 4, 1)
    assert grown.trunk_kind == trunk and grown.classify(x).shape == (3, 4)
    np.testing.assert_allclose(grown.classify(x).numpy()[:, :2], before, atol=1e-5)


def test_a_dgm_run_with_the_pooled_trunk_restores_it_from_its_checkpoint(tmp_path, mnist_small_dir):
    # The rebuilt discriminator (checkpoint -> set_state -> restore) is pooled and bitwise the saved one.
    import os

    from dgm_keras import checkpointing, config, data, runner
    from dgm_keras.methods import make_method

    hp = config.HyperParams(steps_per_task=4, batch_size=32, replay_per_class=20, ngf=4, d_trunk="pooled",
                            jit_compile=False)
    cfg = runner.RunConfig(dataset="mnist", method="dgmw", classes_per_task=5, class_order="natural",
                           validation_fraction=0.15, data_dir=mnist_small_dir, workdir=str(tmp_path / "work"),
                           export_dir=str(tmp_path / "exp"), run_name="r", hp=hp, flags={}, checkpoint_every=0)
    with reading_mnist_once():
        results = runner.run(cfg, log=lambda *_: None)
    assert len(results["A_t"]) == 2
    ckpts = checkpointing.RunCheckpoints(cfg.workdir, runner.run_identity(cfg))
    state = ckpts.load()
    method = make_method("dgmw", data.make_scenario("mnist", 5), 1, hp)
    method.set_state(state["method_state"], None)
    ckpts.restore({**method.trackables(), "keras_global_seed": checkpointing.global_seed_state()},
                  state["task_checkpoint"])
    reader = tf.train.load_checkpoint(os.path.join(ckpts.directory, state["task_checkpoint"]))
    assert method.disc.trunk_kind == "pooled"
    (key,) = [k for k, shape in reader.get_variable_to_shape_map().items() if shape == [4 * 4 * 64, 64]]
    dense = method.disc.dense[0].kernel.numpy()
    assert np.abs(dense).sum() > 0 and (dense == reader.get_tensor(key)).all()
