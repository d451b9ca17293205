"""What each task's masks took: per masked layer, entries a task kept on, and how many of them were
new (free when the task began: its own trainable capacity) or reused (reserved by earlier tasks).

    python benchmarks/mask_usage.py --generator=savedmodels/<run>/generator/10

Entries are weights and biases for DGMw, units for DGMa. A task learns its class through what it
may still change: the new entries (DGMw: the new weights; DGMa: the weights into and out of its
new units); reused entries are frozen where past tasks reserved them. results.json's
``reserved_fraction_per_task`` gives the cumulative share only; this splits each task's mask.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dgm_keras  # noqa: E402,F401  (oneDNN on before TensorFlow loads)
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from dgm_keras import layers, saved  # noqa: E402

FLAGS = flags.FLAGS
PREFIX = "past_masks_"


def task_masks(version: saved.Version) -> dict[str, np.ndarray]:
    """``layer/entries`` -> [tasks, entries] booleans, from the export's packed past masks."""
    import tensorflow as tf  # noqa: PLC0415

    try:
        loaded = tf.saved_model.load(version.path)
    except (OSError, tf.errors.OpError, ValueError) as err:
        raise saved.SavedError(f"--generator={version.path!r} cannot be loaded ({type(err).__name__})") from None
    out = {}
    for variable in loaded.variables:
        parts = variable.name.split(":")[0].split("/")
        if len(parts) >= 2 and parts[-1].startswith(PREFIX):
            packed = variable.numpy()
            # padding bits are zeros, so every word's 32 bits can be read
            bits = layers.unpack_numpy(packed, (32 * packed.shape[1],)).astype(bool)
            out[f"{parts[-2]}/{parts[-1][len(PREFIX):]}"] = bits
    if not out:
        raise saved.SavedError(f"--generator={version.path!r} holds no past masks: not a DGM generator export")
    return out


def usage(masks: np.ndarray) -> list[tuple[int, int, int]]:
    """Per task: (on, new, reused) entries; new = on and reserved by no earlier task."""
    reserved = np.zeros(masks.shape[1], bool)
    rows = []
    for on in masks:
        new = int((on & ~reserved).sum())
        rows.append((int(on.sum()), new, int(on.sum()) - new))
        reserved |= on
    return rows


def main(argv):
    del argv
    try:
        masks_by_layer = task_masks(saved.find(FLAGS.generator, "generator"))
    except saved.SavedError as err:
        sys.exit(f"--generator: {err}")
    for name, masks in sorted(masks_by_layer.items()):
        rows = usage(masks)
        print(f"{name}: new / on per task (reserved after the last: {int(masks.any(axis=0).sum()):,})")
        print("  " + "  ".join(f"{new:,}/{on:,}" for on, new, _ in rows))


if __name__ == "__main__":
    flags.DEFINE_string("generator", None, "Exported generator version folder (…/generator/<task>).")
    flags.mark_flag_as_required("generator")
    app.run(main)
