"""How hard the critic plays in a run: quantiles of its Wasserstein estimate, its gradient penalty
and the classification loss over every logged step, read from the run's TensorBoard events.

    python benchmarks/critic_game.py runs/sweep/s14_gp10/gp10/seed1/tb runs/sweep/s13_mask/const_lam1/seed1/tb

The gradients of the critic's loss reach the trunk the classifier shares (issue 11, item 3): a
critic that runs away (estimates in the tens, penalties far above 1) is what λ_gp bounds.
"""

import sys

import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator as ea

TAGS = ("train/wasserstein", "train/gradient_penalty", "train/cls_loss")


def values(acc, tag):
    tags = acc.Tags()
    if tag in tags["tensors"]:
        return np.array([float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)])
    if tag in tags["scalars"]:
        return np.array([e.value for e in acc.Scalars(tag)])
    return np.array([])


def main(paths):
    for path in paths:
        acc = ea.EventAccumulator(path, size_guidance={ea.TENSORS: 0, ea.SCALARS: 0})
        acc.Reload()
        print(path)
        for tag in TAGS:
            v = values(acc, tag)
            if len(v):
                print(f"  {tag}: {len(v)} points, median {np.median(v):.2f}, 10% {np.percentile(v, 10):.2f}, "
                      f"90% {np.percentile(v, 90):.2f}, max {v.max():.2f}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("critic_game: give one or more TensorBoard folders (a run's tb/)")
    main(sys.argv[1:])
