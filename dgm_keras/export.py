"""SavedModels per task, in TF Serving's ``<model>/<version>/`` layout.

Classifier, ``serving_default``:
  input  ``images``: float32 [N, 32, 32, C], pixels scaled to [-1, 1] (x / 127.5 - 1)
  output ``probabilities``: float32 [N, K] over the K classes seen so far (scenario order)
         ``classes``: int64 [N], the argmax; ``class_names``: string [N], its name
Classifier, ``serving_uint8``: input ``images`` uint8 [N, H, W, C] (raw pixels, any size,
resized to 32x32), same outputs.
Generator, ``sample``: inputs ``labels`` int32 [N] (scenario-order classes seen so far) and
``seed`` int64 scalar; output ``images`` float32 [N, 32, 32, C] in [-1, 1].

Each version is written under a temporary name and renamed into place, so a server never
sees a half-written version and older versions are never touched.
"""

from __future__ import annotations

import os
import shutil

import keras
import tensorflow as tf

from dgm_keras import data


def _write_version(archive: keras.export.ExportArchive, model_dir: str, version: int) -> str:
    """Writes under a temporary name, then renames: a server only ever lists complete versions
    (it skips names that are not numbers). A failed write leaves nothing behind, and so does
    the next write after a killed one (one writer per model dir: the run that owns it)."""
    os.makedirs(model_dir, exist_ok=True)
    for name in os.listdir(model_dir):  # left by a writer killed half-way
        if name.startswith((".tmp-", ".old-")):
            shutil.rmtree(os.path.join(model_dir, name), ignore_errors=True)
    final = os.path.join(model_dir, str(version))
    tmp = os.path.join(model_dir, f".tmp-{version}-{os.getpid()}")
    try:
        archive.write_out(tmp, verbose=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(final):  # re-exporting the same task (a rerun): replace it whole
        old = os.path.join(model_dir, f".old-{version}-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    return final


def _assert_shape(images, pattern: str, expected: str):
    """Checks the shape the request really has: neither the signature's wrapper nor TF Serving
    checks it against the declared one. Compared as text ("1,28,28,1") so that a wrong rank
    fails here too, not with a shape mismatch inside the comparison."""
    shape = tf.shape(images)
    text = tf.strings.reduce_join(tf.strings.as_string(shape), separator=",")
    return tf.debugging.Assert(tf.strings.regex_full_match(text, pattern),
                               [f"images: shape must be {expected}; got", shape], summarize=8)


def _check_images(images, channels: int):
    """Rejects requests that would give a silent wrong answer (or a deep TensorFlow error)."""
    size = data.IMAGE_SIZE
    with tf.control_dependencies([_assert_shape(images, rf"\d+,{size},{size},{channels}",
                                                f"[N, {size}, {size}, {channels}]")]):
        checks = [
            tf.debugging.assert_greater(tf.shape(images)[0], 0, message="images: empty batch; send at least one image"),
            tf.debugging.assert_all_finite(images, "images: NaN or Inf pixels; send finite values in [-1, 1]"),
            tf.debugging.assert_greater_equal(tf.reduce_min(images), -1.001,
                                              message="images: pixels below -1; scale uint8 x as x / 127.5 - 1"),
            tf.debugging.assert_less_equal(tf.reduce_max(images), 1.001,
                                           message="images: pixels above 1; scale uint8 x as x / 127.5 - 1"),
        ]
    with tf.control_dependencies(checks):
        return tf.identity(images)


def _check_raw_images(images, channels: int):
    """The uint8 signature's shape check, before resizing (which fails obscurely on a wrong rank
    or a size of 0); the float checks after it catch the rest."""
    with tf.control_dependencies([_assert_shape(images, rf"\d+,[1-9]\d*,[1-9]\d*,{channels}",
                                                f"[N, H, W, {channels}] with H, W > 0")]):
        return tf.identity(images)


def export_classifier(model, classify, scenario: data.Scenario, task: int, channels: int, model_dir: str) -> str:
    """Writes version ``task + 1`` of the classifier; ``classify`` maps images to logits."""
    names = tf.constant(list(scenario.class_names[: scenario.seen_classes(task)]))

    def outputs(images):
        probs = tf.nn.softmax(classify(_check_images(images, channels)), axis=-1)
        classes = tf.argmax(probs, axis=-1)
        return {"probabilities": probs, "classes": classes, "class_names": tf.gather(names, classes)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", tf.function(outputs), input_signature=[
        tf.TensorSpec([None, data.IMAGE_SIZE, data.IMAGE_SIZE, channels], tf.float32, name="images")])

    def outputs_uint8(images):
        return outputs(data.preprocess_images(_check_raw_images(images, channels)))

    archive.add_endpoint("serving_uint8", tf.function(outputs_uint8), input_signature=[
        tf.TensorSpec([None, None, None, channels], tf.uint8, name="images")])
    return _write_version(archive, model_dir, task + 1)


def export_generator(generator, scenario: data.Scenario, task: int, model_dir: str) -> str:
    """Writes version ``task + 1`` of the generator: every seen class from its own task's mask."""
    seen = scenario.seen_classes(task)
    per_task = scenario.classes_per_task

    def sample(labels, seed):
        labels = tf.cast(labels, tf.int32)
        with tf.control_dependencies([
            tf.debugging.assert_greater(tf.size(labels), 0, message="labels: empty; send at least one"),
            tf.debugging.assert_greater_equal(labels, 0, message=f"labels: must be in [0, {seen})"),
            tf.debugging.assert_less(labels, seen, message=f"labels: must be in [0, {seen})"),
        ]):
            z = tf.random.stateless_normal([tf.size(labels), generator.nz], seed=tf.stack([seed, tf.constant(0, tf.int64)]))
        by_task = tf.stack([generator(z, labels, task=t, training=False) for t in range(task + 1)])
        owner = labels // per_task
        images = tf.gather(tf.transpose(by_task, [1, 0, 2, 3, 4]), owner, batch_dims=1)
        return {"images": images}

    archive = keras.export.ExportArchive()
    archive.track(generator)
    archive.add_endpoint("sample", tf.function(sample), input_signature=[
        tf.TensorSpec([None], tf.int32, name="labels"), tf.TensorSpec([], tf.int64, name="seed")])
    return _write_version(archive, model_dir, task + 1)
