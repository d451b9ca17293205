"""Exports: TF Serving layout, signatures, same predictions in a fresh process without our code,
and bad requests rejected."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dgm_keras import data, expansion, export, networks

SCENARIO = data.make_scenario("mnist", 2, class_names=[f"digit{i}" for i in range(10)])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    disc = networks.Discriminator(4, name="discriminator").build_all(1)
    gen = networks.Generator((8, 6, 4), 10, 1, "weight", name="generator").build_all()
    rng = np.random.default_rng(0)
    for _ in range(2):  # two finished tasks with random sparse masks
        for layer in gen.masked_layers:
            for e in layer.embeddings.values():
                e.assign(np.where(rng.random(e.shape) < 0.5, 1.0, -1.0).astype(np.float32))
        gen = expansion.expand_generator(gen)
    cdir = export.export_classifier(disc, lambda x: disc.classify(x), SCENARIO, 1, 1, str(root / "classifier"))
    gdir = export.export_generator(gen, SCENARIO, 1, str(root / "generator"))
    return root, disc, gen, cdir, gdir


def _fresh_process(code: str, tmp_path) -> dict:
    """Runs ``code`` in a new interpreter that cannot import dgm_keras."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path),
                          env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_layout_is_tf_servings(exported):
    root, *_ = exported
    assert sorted(os.listdir(root / "classifier")) == ["2"]
    assert os.path.isfile(root / "classifier" / "2" / "saved_model.pb")
    assert os.path.isdir(root / "classifier" / "2" / "variables")
    assert sorted(os.listdir(root / "generator")) == ["2"]


def test_classifier_same_predictions_in_fresh_process(exported, tmp_path):
    _, disc, _, cdir, _ = exported
    x = np.random.default_rng(1).uniform(-1, 1, (5, 32, 32, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = _fresh_process(f"""
import json, numpy as np, tensorflow as tf
m = tf.saved_model.load({cdir!r})
f = m.signatures["serving_default"]
r = f(images=tf.constant(np.load("x.npy")))
u = m.signatures["serving_uint8"](images=tf.constant(np.full((1, 28, 28, 1), 255, np.uint8)))
print(json.dumps({{"p": r["probabilities"].numpy().tolist(), "c": r["classes"].numpy().tolist(),
  "n": [s.decode() for s in r["class_names"].numpy()], "keys": sorted(f.structured_outputs),
  "u": u["probabilities"].numpy().shape[1]}}))
""", tmp_path)
    want = tf.nn.softmax(disc.classify(x)).numpy()
    np.testing.assert_allclose(np.array(out["p"]), want, atol=1e-5)
    assert out["c"] == want.argmax(-1).tolist()
    assert out["n"] == [f"digit{c}" for c in out["c"]]
    assert out["keys"] == ["class_names", "classes", "probabilities"] and out["u"] == 4


def test_generator_sample_matches_live_model(exported, tmp_path):
    _, _, gen, _, gdir = exported
    out = _fresh_process(f"""
import json, tensorflow as tf
m = tf.saved_model.load({gdir!r})
r = m.signatures["sample"](labels=tf.constant([0, 3, 1, 2]), seed=tf.constant(7, tf.int64))
print(json.dumps(r["images"].numpy().tolist()))
""", tmp_path)
    labels = tf.constant([0, 3, 1, 2])
    z = tf.random.stateless_normal([4, gen.nz], seed=[7, 0])
    want = np.stack([gen(z[i:i + 1], labels[i:i + 1], task=int(labels[i]) // 2).numpy()[0] for i in range(4)])
    np.testing.assert_allclose(np.array(out), want, atol=1e-5)


@pytest.mark.parametrize("bad,pattern", [
    (np.full((2, 32, 32, 1), np.nan, np.float32), "NaN or Inf"),
    (np.zeros((0, 32, 32, 1), np.float32), "empty batch"),
    (np.full((1, 32, 32, 1), 255.0, np.float32), "above 1"),
])
def test_bad_requests_fail_clearly(exported, bad, pattern):
    *_, cdir, _ = exported
    f = tf.saved_model.load(cdir).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        f(images=tf.constant(bad))


def test_wrong_shape_and_dtype_rejected_by_signature(exported):
    *_, cdir, gdir = exported
    f = tf.saved_model.load(cdir).signatures["serving_default"]
    # The signature wrapper lets a wrong spatial size through; the model's own check stops it.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"shape must be \[N, 32, 32, 1\]"):
        f(images=tf.zeros((1, 28, 28, 1)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a float tensor but is a int32"):
        f(images=tf.zeros((1, 32, 32, 1), tf.int32))
    g = tf.saved_model.load(gdir).signatures["sample"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels: must be in \[0, 4\)"):
        g(labels=tf.constant([4]), seed=tf.constant(0, tf.int64))


def test_new_task_is_a_higher_version_and_old_untouched(exported):
    root, disc, *_ = exported
    before = open(root / "classifier" / "2" / "saved_model.pb", "rb").read()
    export.export_classifier(disc, lambda x: disc.classify(x), SCENARIO, 2, 1, str(root / "classifier"))
    assert sorted(os.listdir(root / "classifier")) == ["2", "3"]
    assert open(root / "classifier" / "2" / "saved_model.pb", "rb").read() == before
