"""Continual metrics on hand-made accuracy matrices, and collapse of the seen classes against a NumPy reference."""

import numpy as np
import pytest

from ncjax.continual import metrics
from ncjax.continual.etf import grow_etf, nearest_etf, random_etf
from nc_reference import reference_metrics

NAN = np.nan


def test_average_accuracy_and_forgetting_by_hand():
    acc = np.array([
        [0.9, NAN, NAN],
        [0.6, 0.8, NAN],
        [0.5, 0.7, 0.9],
    ])
    assert metrics.average_accuracy(acc, 0) == pytest.approx(0.9)
    assert metrics.average_accuracy(acc, 1) == pytest.approx(0.7)
    assert metrics.average_accuracy(acc, 2) == pytest.approx(0.7)
    assert np.isnan(metrics.forgetting(acc, 0))
    assert metrics.forgetting(acc, 1) == pytest.approx(0.3)  # task 0: 0.9 → 0.6
    assert metrics.forgetting(acc, 2) == pytest.approx((0.4 + 0.1) / 2)  # task 0: 0.9 → 0.5, task 1: 0.8 → 0.7


def test_forgetting_is_measured_from_the_best_earlier_accuracy():
    acc = np.array([
        [0.5, NAN, NAN, NAN],
        [0.7, 0.9, NAN, NAN],  # task 0 improved after task 1 (backward transfer)
        [0.6, 0.95, 0.8, NAN],
        [0.65, 0.5, 0.8, 1.0],
    ])
    # task 0: max(0.5, 0.7, 0.6) − 0.65; task 1: max(0.9, 0.95) − 0.5; task 2: 0.8 − 0.8
    assert metrics.forgetting(acc, 3) == pytest.approx((0.05 + 0.45 + 0.0) / 3)
    # Accuracy above every earlier value is negative forgetting.
    assert metrics.forgetting(acc, 1) == pytest.approx(0.5 - 0.7)


def test_no_forgetting_when_accuracy_never_drops():
    acc = np.tril(np.ones((5, 5)))
    acc[np.triu_indices(5, 1)] = NAN
    for t in range(1, 5):
        assert metrics.forgetting(acc, t) == 0.0
        assert metrics.average_accuracy(acc, t) == 1.0


def test_task_summary_is_one_metrics_line():
    acc = metrics.empty_accuracy_matrix(3)
    assert acc.shape == (3, 3) and np.all(np.isnan(acc))
    acc[0, 0], acc[1, :2] = 1.0, [0.5, 0.75]
    assert metrics.task_summary(acc, 1) == {
        "task": 1,
        "accuracy_per_task": [0.5, 0.75],
        "average_accuracy": 0.625,
        "forgetting": 0.5,
    }


def test_missing_or_malformed_accuracies_are_errors():
    acc = metrics.empty_accuracy_matrix(3)
    acc[1, :2] = [0.5, 0.6]
    with pytest.raises(ValueError, match="accuracy on task 0 is missing"):
        metrics.forgetting(acc, 1)
    with pytest.raises(ValueError, match="square"):
        metrics.average_accuracy(np.zeros((2, 3)), 0)
    with pytest.raises(ValueError, match="out of range"):
        metrics.average_accuracy(np.zeros((2, 2)), 2)


def test_accuracy_argmax_runs_over_the_masked_logits_only():
    logits = np.array([
        [0.1, 0.9, 5.0, 0.0],  # the unseen class 2 would win without the mask
        [2.0, 0.1, 0.0, 9.0],
        [0.0, 1.0, 0.0, 0.0],
    ])
    labels = np.array([1, 0, 0])
    seen = np.array([True, True, False, False])
    assert metrics.accuracy(logits, labels, seen) == pytest.approx(2 / 3)
    assert metrics.accuracy(logits, labels, np.ones(4, bool)) == pytest.approx(0.0)
    per_sample = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]], bool)  # task-incremental style
    assert metrics.accuracy(logits, labels, per_sample) == pytest.approx(1.0)
    # A mask over all classes applies to a narrower head: the first columns.
    assert metrics.accuracy(logits[:, :3], labels, np.ones(10, bool)) == pytest.approx(1 / 3)


def test_collapse_of_seen_classes_on_exact_targets_is_zero():
    num_seen, dim = 4, 12
    targets = random_etf(10, dim, seed=0)  # a pre-allocated ETF of which 4 classes are seen
    labels = np.repeat(np.arange(num_seen), 5)
    scores = metrics.seen_class_collapse(3.0 * targets[labels], labels, num_seen, targets)
    for name in ("nc1", "nc2_etf", "nc2_etf_w", "nc3", "nc4"):
        assert abs(scores[name]) < 1e-6, (name, scores[name])


def test_collapse_on_grown_targets_is_zero():
    targets = grow_etf(nearest_etf(np.random.default_rng(0).standard_normal((2, 5))), 3, seed=0)
    labels = np.repeat(np.arange(5), 3)
    scores = metrics.seen_class_collapse(targets[labels], labels, 5, targets)
    for name in ("nc1", "nc2_etf", "nc2_etf_w", "nc3", "nc4"):
        assert abs(scores[name]) < 1e-6, (name, scores[name])


def test_collapse_of_seen_classes_matches_the_reference():
    rng = np.random.default_rng(1)
    num_seen, dim = 5, 7
    targets = random_etf(8, dim, seed=2)
    labels = rng.integers(0, num_seen, 200)
    features = targets[labels] + 0.3 * rng.standard_normal((200, dim))
    scores = metrics.seen_class_collapse(features, labels, num_seen, targets)
    seen_rows = targets[:num_seen]
    expected = reference_metrics(features, labels, num_seen, weight=seen_rows - seen_rows.mean(0))
    for name in ("nc1", "nc2_etf", "nc3"):
        np.testing.assert_allclose(scores[name], expected[name], rtol=1e-4)


def test_collapse_rejects_unseen_labels():
    with pytest.raises(ValueError, match="seen classes"):
        metrics.seen_class_collapse(np.zeros((3, 4)), np.array([0, 1, 2]), 2, random_etf(3, 4, seed=0))
