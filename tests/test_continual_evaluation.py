"""The per-task metrics lines against an independent NumPy scoring of synthetic model outputs."""

import numpy as np
import pytest

from ncjax.continual import evaluation, methods
from ncjax.continual.etf import grow_etf, nearest_etf
from ncjax.continual.splits import split_tasks
from ncjax.data.gaussian_mixture import make_gaussian_mixture

M, D = 2, 8


@pytest.fixture(scope="module")
def dataset():
    return make_gaussian_mixture(6, 4, 10, 6, 1.0, seed=0)


def _outputs(rng, n, k):
    return rng.standard_normal((M, n, k)), rng.standard_normal((M, n, D))


def _reference_accuracy(scores, labels, allowed):
    """Fraction of samples whose best allowed class is their label, by explicit loops."""
    hits = 0
    for s, y in zip(scores, labels):
        best = max((c for c in range(len(s)) if allowed(y, c)), key=lambda c: s[c])
        hits += best == y
    return hits / len(labels)


@pytest.mark.parametrize("scenario", ["class_incremental", "task_incremental"])
@pytest.mark.parametrize("name", ["pronc", "finetune"])
def test_accuracy_row_follows_the_scenario_and_the_prediction_rule(dataset, scenario, name):
    split = split_tasks(dataset, 3, scenario)
    method, task, rng = methods.get(name), 2, np.random.default_rng(1)
    tests = []
    for j in range(task + 1):
        _, labels = split.test(j)
        tests.append((*_outputs(rng, len(labels), 6), labels))
    rows = np.concatenate([split.train_indices(j) for j in range(task + 1)])
    train_labels = split.train_labels[rows]
    train_features = rng.standard_normal((M, len(rows), D)) + 3 * np.eye(D)[train_labels][None]
    targets = np.zeros((M, 6, D))
    for m in range(M):
        targets[m] = grow_etf(grow_etf(nearest_etf(rng.standard_normal((2, D))), 2, (m, 1)), 2, (m, 2))
    head = rng.standard_normal((M, 6, D))
    previous = [[dict(task=0, accuracy_per_task=[0.9]), dict(task=1, accuracy_per_task=[0.5, 0.8])]] * M
    lines = evaluation.task_lines(split, method, task, tests, (train_features, train_labels),
                                  targets if method.targets else None, head, previous)

    def allowed(y, c):
        return c // 2 == y // 2 if scenario == "task_incremental" else c < 6

    for m, line in enumerate(lines):
        for j, (logits, features, labels) in enumerate(tests):
            if method.targets:  # cosine to the targets
                unit = features[m] / np.linalg.norm(features[m], axis=1, keepdims=True)
                scores = unit @ targets[m].T
            else:
                scores = logits[m]
            assert line["accuracy_per_task"][j] == pytest.approx(_reference_accuracy(scores, labels, allowed))
        assert line["predicts_with"] == ("targets" if method.targets else "head")
        assert line["forgetting"] == pytest.approx(np.mean([0.9 - line["accuracy_per_task"][0],
                                                            0.8 - line["accuracy_per_task"][1]]))
        assert line["average_accuracy"] == pytest.approx(np.mean(line["accuracy_per_task"]))
        assert line["num_seen"] == 6
        assert 0 < line["nc1"] < np.inf and 0 <= line["nc4"] <= 1


def test_collapse_is_zero_when_normalised_features_sit_on_their_targets(dataset):
    split = split_tasks(dataset, 3, "class_incremental")
    targets = grow_etf(nearest_etf(np.random.default_rng(2).standard_normal((2, D))), 2, 5)
    rows = np.concatenate([split.train_indices(j) for j in range(2)])
    labels = split.train_labels[rows]
    scale = np.random.default_rng(3).uniform(0.5, 4.0, (len(rows), 1))  # normalisation removes any norm
    features = (scale * targets[labels])[None]
    _, test_labels = split.test(0)
    tests = [(np.zeros((1, len(test_labels), 6)), targets[test_labels][None], test_labels)]
    tests.append((np.zeros((1, 2, 6)), targets[[2, 3]][None], np.array([2, 3])))
    padded = np.zeros((1, 6, D))
    padded[0, :4] = targets
    (line,) = evaluation.task_lines(split, methods.get("pronc"), 1, tests, (features, labels), padded,
                                    np.zeros((1, 6, D)), [[dict(task=0, accuracy_per_task=[1.0])]])
    assert line["accuracy_per_task"] == [1.0, 1.0] and line["forgetting"] == 0.0
    for metric in ("nc1", "nc2_etf", "nc3", "nc4"):
        assert line[metric] == pytest.approx(0.0, abs=1e-5), metric


def test_class_means_of_normalised_features():
    features = np.array([[3.0, 0.0], [0.0, 2.0], [0.0, -5.0], [1.0, 1.0]])
    labels = np.array([0, 0, 1, 1])
    s = np.sqrt(0.5)
    np.testing.assert_allclose(evaluation.class_means(features, labels, 2), [[0.5, 0.5], [s / 2, (s - 1) / 2]])
