"""The exemplar memory: herding order, exact budgets, shrinking keeps a prefix."""

import numpy as np

from dgm_keras import memory


def test_herding_first_pick_is_closest_to_the_mean_and_picks_are_distinct():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 8)) + 3.0
    order = memory.herding_order(features, 20)
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    assert order[0] == np.argmin(np.linalg.norm(f - f.mean(0), axis=1))
    assert len(set(order.tolist())) == 20
    # Herding's running mean approaches the class mean faster than the same number of random picks.
    herd_err = np.linalg.norm(f[order[:10]].mean(0) - f.mean(0))
    rand_err = np.mean([np.linalg.norm(f[rng.permutation(50)[:10]].mean(0) - f.mean(0)) for _ in range(50)])
    assert herd_err < rand_err


def test_budget_and_prefix_shrinking():
    mem = memory.ExemplarMemory()
    images = np.arange(40, dtype=np.float32).reshape(10, 2, 2, 1)
    mem.add_class(0, images, 6, seed=1)
    mem.add_class(3, images + 100, 6, features=images.reshape(10, -1) + 1.0)
    assert len(mem) == 12 and mem.classes() == [0, 3]
    kept = mem.images[0].copy()
    mem.shrink(4)
    np.testing.assert_array_equal(mem.images[0], kept[:4])
    arrays = mem.arrays()
    assert arrays.images.shape == (8, 2, 2, 1) and arrays.labels.tolist() == [0] * 4 + [3] * 4
    assert memory.ExemplarMemory().arrays() is None
