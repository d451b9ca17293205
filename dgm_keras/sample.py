"""Draws images from an exported generator: a grid, a row per class.

    python -m dgm_keras.sample --model=savedmodels/<run>/generator/10 --classes=0,3 --per_class=16 --out=grid.png

Classes are indices in the run's class order (``results.json``'s ``scenario.class_order``);
a version knows the classes of the tasks learned up to it. The same --seed draws the same
images (the signature's latents are stateless).
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np
from absl import flags

from dgm_keras import cli, saved

FLAGS = flags.FLAGS
GROUP = "dgm_keras.sample"
FORMATS = (".png", ".pdf", ".svg", ".jpg")


def define_flags():
    """Defined only when run as a program: ``train`` has a --seed too."""
    flags.DEFINE_string("model", None, "An exported generator: <export_dir>/<run>/generator/<version> (or the folder "
                        "above the versions: the highest).", module_name=GROUP)
    flags.DEFINE_string("classes", None, "Comma-separated classes (scenario order), e.g. 0,3; default every class the "
                        "version has seen.", module_name=GROUP)
    flags.DEFINE_integer("per_class", 8, "Images per class (a row each).", lower_bound=1, upper_bound=64,
                         module_name=GROUP)
    flags.DEFINE_integer("seed", 0, "Seed of the latents.", lower_bound=0, module_name=GROUP)
    flags.DEFINE_string("out", "samples.png", f"Image file to write ({', '.join(FORMATS)}).", module_name=GROUP)


def parse_classes(text: str | None, seen: int | None) -> list[int] | None:
    """``"0,3"`` -> [0, 3], checked against the ``seen`` classes when known (None: every class)."""
    if text is None:
        return None if seen is None else list(range(seen))
    parts = [p.strip() for p in text.split(",")]
    if not all(re.fullmatch(r"\d+", p) for p in parts):
        raise saved.SavedError(f"--classes={text!r} is not allowed; allowed: class indices separated by commas, e.g. 0,3")
    classes = [int(p) for p in parts]
    if seen is not None and max(classes) >= seen:
        raise saved.SavedError(f"--classes={text!r} is not allowed; allowed: classes 0..{seen - 1} (this version has "
                               f"seen {seen})")
    return classes


def _check_out(out: str) -> None:
    if os.path.splitext(out)[1].lower() not in FORMATS:
        raise saved.SavedError(f"--out={out!r} is not allowed; allowed: a file name ending in {', '.join(FORMATS)}")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise saved.SavedError(f"--out={out!r} is not allowed; allowed: a file in a writable folder ({folder!r} is not one)")


def main(argv):
    del argv  # cli.run refuses extra arguments
    if not FLAGS.model:
        sys.exit("sample: --model is required: an exported generator, e.g. savedmodels/<run>/generator/1")
    try:
        version = saved.find(FLAGS.model, "generator")
        classes = parse_classes(FLAGS.classes, version.seen_classes())
        _check_out(FLAGS.out)
    except saved.SavedError as err:
        sys.exit(f"sample: {err}")

    from dgm_keras import quiet  # noqa: PLC0415

    tf = quiet.tensorflow_imported()
    try:
        draw = saved.signature(version, "sample")
        if classes is None:
            raise saved.SavedError(f"--model={version.path!r} has no run.json to say which classes it has seen; "
                                   "add --classes")
        labels = np.repeat(np.asarray(classes, np.int32), FLAGS.per_class)
        try:
            images = draw(labels=tf.constant(labels), seed=tf.constant(FLAGS.seed, tf.int64))["images"].numpy()
        except tf.errors.InvalidArgumentError as err:  # the signature's own range check (a version without run.json)
            seen = re.search(r"labels: must be in \[0, (\d+)\)", str(err))
            raise saved.SavedError(f"--classes={FLAGS.classes!r} is not allowed; allowed: classes 0.."
                                   f"{int(seen.group(1)) - 1 if seen else '?'}") from None
    except saved.SavedError as err:
        sys.exit(f"sample: {err}")

    from dgm_keras import figures  # noqa: PLC0415

    names = version.class_names
    rows = [f"{c}: {names[c]}" if names and c < len(names) else f"class {c}" for c in classes]
    grid = images.reshape(len(classes), FLAGS.per_class, *images.shape[1:])
    figures.save(figures.image_grid(grid, rows, f"{version.shown} (task {version.version}), seed {FLAGS.seed}"), FLAGS.out)
    print(f"sample: {len(classes)} classes x {FLAGS.per_class} images from {version.shown} -> {FLAGS.out}")


def run() -> None:
    """The command (``python -m dgm_keras.sample``, or ``dgm-sample`` once installed)."""
    define_flags()
    cli.run(main, "sample", __doc__, [GROUP])


if __name__ == "__main__":
    run()
