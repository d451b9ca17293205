"""Exports: the same predictions and samples in a fresh process without our code. (Serving:
layout, versions, the CLI, PredictRequests and bad requests to the classifier are in
test_serving.py.)"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dgm_keras import expansion, export, networks


@pytest.fixture(scope="module")
def exported_generator(tmp_path_factory, exported_classifier):
    gen = networks.Generator((8, 6, 4), 10, 1, "weight", name="generator").build_all()
    rng = np.random.default_rng(0)
    for _ in range(2):  # two finished tasks with random sparse masks
        for layer in gen.masked_layers:
            for e in layer.embeddings.values():
                e.assign(np.where(rng.random(e.shape) < 0.5, 1.0, -1.0).astype(np.float32))
        gen = expansion.expand_generator(gen)
    model_dir = tmp_path_factory.mktemp("exports") / "generator"
    return gen, export.export_generator(gen, exported_classifier.scenario, 1, str(model_dir))


def _fresh_process(code: str, tmp_path) -> dict:
    """Runs ``code`` in a new interpreter that cannot import dgm_keras."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path),
                          env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_classifier_same_predictions_in_fresh_process(exported_classifier, tmp_path):
    disc, cdir = exported_classifier.model, exported_classifier.path
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


def test_generator_sample_matches_live_model(exported_generator, tmp_path):
    gen, gdir = exported_generator
    assert sorted(os.listdir(os.path.dirname(gdir))) == ["2"]  # version task + 1, TF Serving's layout
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


def test_generator_rejects_labels_not_seen(exported_generator):
    _, gdir = exported_generator
    g = tf.saved_model.load(gdir).signatures["sample"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels: must be in \[0, 4\)"):
        g(labels=tf.constant([4]), seed=tf.constant(0, tf.int64))
