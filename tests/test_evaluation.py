"""The continual-learning metrics and the validation selector on hand-made inputs, every
expected value worked out by hand (dyadic or tenths: the comparisons are exact)."""

import numpy as np
import pytest

from dgm_keras import data, evaluation, monitoring

SCENARIO = data.make_scenario("mnist", 2)  # tasks of two classes: {0, 1}, {2, 3}, ...


def _oracle_split(labels, predictions):
    """A split whose "image" i carries the label the fake classifier will predict for it, so
    that which images are right is written in the test, not learned."""
    labels = np.asarray(labels, np.int32)
    images = np.asarray(predictions, np.float32)[:, None]
    return data.SplitArrays(images, labels)


def _read_prediction(outputs):
    """The fake classifier: one-hot logits of the prediction each image carries."""
    return lambda images: np.eye(outputs, dtype=np.float32)[np.asarray(images)[:, 0].astype(int)]


# -- summarise


def test_summarise_on_a_hand_made_matrix():
    """Task 1's accuracy rises after task 2 (0.5 -> 0.875), then falls; task 2's rises at the end.

    forgetting: task 1: max(0.5, 0.875) - 0.25 = 0.625; task 2: max(0.75) - 0.8125 = -0.0625
                -> mean 0.28125 (the max is over the rows before the last: taking the last in
                   would give 0.3125, the diagonal alone 0.21875)
    backward transfer: task 1: 0.25 - 0.5 = -0.25; task 2: 0.8125 - 0.75 = 0.0625 -> -0.09375
    """
    matrix = [[0.5],
              [0.875, 0.75],
              [0.25, 0.8125, 1.0]]
    assert evaluation.summarise(matrix) == {"forgetting": 0.28125, "backward_transfer": -0.09375}


def test_summarise_of_one_task_is_zero():
    assert evaluation.summarise([[0.625]]) == {"forgetting": 0.0, "backward_transfer": 0.0}


# -- evaluate_after_task


def test_evaluate_after_task_per_class_per_task_and_a_t():
    """After task 2 (classes 0-3 seen), on a split that also holds an unseen class (4):

    class 0: 6 of 8 right (0.75)   class 1: 2 of 8 (0.25)   -> task 1: 8 / 16 = 0.5
    class 2: 4 of 4 right (1.0)    class 3: 6 of 12 (0.5)   -> task 2: 10 / 16 = 0.625
    A_t over images: 18 / 32 = 0.5625 (the mean of the per-class figures is 0.625; with the
    unseen class's 8 images counted it would be 18 / 40 = 0.45).
    Images are interleaved by class, so a mask that assumed sorted labels would go wrong.
    """
    rows = []  # (label, predicted)
    for label, count, right in [(0, 8, 6), (1, 8, 2), (2, 4, 4), (3, 12, 6), (4, 8, 0)]:
        wrong = (label + 1) % 4  # a seen class other than the label (class 4's images: class 1)
        rows += [(label, label if i < right else wrong) for i in range(count)]
    order = np.random.default_rng(0).permutation(len(rows))
    labels, predictions = zip(*[rows[i] for i in order])
    split = _oracle_split(labels, predictions)
    result = evaluation.evaluate_after_task(_read_prediction(4), split, SCENARIO, 1)
    assert result == {"accuracy": 0.5625, "per_class": [0.75, 0.25, 1.0, 0.5], "per_task": [0.5, 0.625]}


# -- ValidationSelector


class EpochClassifiers:
    """A fake ``method.classifier``: at epoch e it returns a classifier right on the images
    listed for e (ids into the validation and the test split), wrong on the others."""

    def __init__(self, right_by_epoch, labels_of):
        self.right_by_epoch, self.labels_of, self.epoch = right_by_epoch, labels_of, 0

    def __call__(self):
        right, labels_of = self.right_by_epoch[self.epoch], self.labels_of

        def classify(images):
            ids = np.asarray(images)[:, 0].astype(int)
            predicted = [labels_of[i] if i in right else 1 - labels_of[i] for i in ids]
            return np.eye(2, dtype=np.float32)[predicted]

        return classify


def _id_split(ids, labels_of):
    return data.SplitArrays(np.asarray(ids, np.float32)[:, None], np.asarray([labels_of[i] for i in ids], np.int32))


def test_validation_selector_keeps_the_test_scores_of_the_best_validation_epoch():
    """Validation accuracy 0.5, 0.8, 0.7 over three epochs; test accuracy 0.9, 0.6, 0.7. The
    selector must keep epoch 2's test scores (0.6): not epoch 1's, the best on test, nor
    epoch 3's, the last. Validation ids are 0-9, test ids 10-19; the first five of each are
    class 0, the rest class 1. At epoch 2 the test has 4 of class 0 right and 2 of class 1."""
    labels_of = {i: int(i % 10 >= 5) for i in range(20)}
    validation, test = _id_split(range(10), labels_of), _id_split(range(10, 20), labels_of)
    right_by_epoch = [
        set(range(5)) | set(range(10, 19)),                             # val 5/10, test 9/10
        set(range(8)) | {10, 11, 12, 13, 15, 16},                       # val 8/10, test 6/10
        set(range(7)) | {10, 11, 12, 15, 16, 17, 18},                   # val 7/10, test 7/10
    ]
    classifiers = EpochClassifiers(right_by_epoch, labels_of)
    selector = monitoring.ValidationSelector(classifiers, validation, test, SCENARIO, 0)
    kept = []
    for epoch in range(3):
        classifiers.epoch = epoch
        selector.on_epoch_end(epoch)
        kept.append(selector.best)
    assert selector.best_val == 0.8
    assert selector.best == {"accuracy": 0.6, "per_class": [0.8, 0.4], "per_task": [0.6]}
    assert kept[0]["accuracy"] == 0.9 and kept[1] is kept[2]  # epoch 1 was kept until epoch 2 beat it


@pytest.mark.parametrize("val_accuracies", [[5, 8, 8], [8, 5, 8]])
def test_validation_selector_keeps_the_first_of_equal_validation_epochs(val_accuracies):
    """Ties go to the earlier epoch: a later epoch replaces the kept one only when strictly better."""
    labels_of = {i: int(i % 10 >= 5) for i in range(20)}
    validation, test = _id_split(range(10), labels_of), _id_split(range(10, 20), labels_of)
    right_by_epoch = [set(range(v)) | set(range(10, 10 + t)) for v, t in zip(val_accuracies, [2, 4, 6])]
    classifiers = EpochClassifiers(right_by_epoch, labels_of)
    selector = monitoring.ValidationSelector(classifiers, validation, test, SCENARIO, 0)
    for epoch in range(3):
        classifiers.epoch = epoch
        selector.on_epoch_end(epoch)
    first_best = val_accuracies.index(8)
    assert selector.best["accuracy"] == [0.2, 0.4, 0.6][first_best]
