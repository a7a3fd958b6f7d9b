"""Task splits and the replay buffer, checked against the data set's own labels and hand-written tables."""

import dataclasses

import numpy as np
import pytest

from ncjax.continual import replay_indices, split_tasks
from ncjax.data.gaussian_mixture import make_gaussian_mixture
from ncjax.data.mnist_5k import load_mnist_5k
from ncjax.data.synthetic_sequences import make_synthetic_sequences
from ncjax.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def mixture():
    return make_gaussian_mixture(10, 4, n_per_class_train=12, n_per_class_test=5, snr=1.0, seed=0)


def _check_consistent(split, ds):
    """Every task's rows carry its classes, match the data set row for row, and tile the data set."""
    all_train = []
    for t in range(split.num_tasks):
        x, y = split.train(t)
        rows = split.train_indices(t)
        assert set(np.unique(y)) == set(split.task_classes(t))
        np.testing.assert_array_equal(ds.train_y[rows], split.class_order[y])  # the label mapping
        np.testing.assert_array_equal(x, ds.train_x[rows])
        xt, yt = split.test(t)
        np.testing.assert_array_equal(ds.test_y[split.test_indices(t)], split.class_order[yt])
        np.testing.assert_array_equal(xt, ds.test_x[split.test_indices(t)])
        all_train.append(rows)
    used = np.isin(ds.train_y, split.class_order)
    np.testing.assert_array_equal(np.sort(np.concatenate(all_train)), np.flatnonzero(used))


def test_five_tasks_of_two_consecutive_classes(mixture):
    split = split_tasks(mixture, 5)
    assert (split.num_tasks, split.classes_per_task, split.num_classes) == (5, 2, 10)
    np.testing.assert_array_equal(split.class_order, np.arange(10))
    for t in range(5):
        np.testing.assert_array_equal(split.task_classes(t), [2 * t, 2 * t + 1])
        assert split.num_seen(t) == 2 * t + 2
        assert len(split.train_indices(t)) == 24 and len(split.test_indices(t)) == 10
    _check_consistent(split, mixture)


def test_seeded_class_order_is_a_reproducible_permutation(mixture):
    split = split_tasks(mixture, 2, order_seed=3)
    np.testing.assert_array_equal(np.sort(split.class_order), np.arange(10))
    np.testing.assert_array_equal(split.class_order, np.random.default_rng(3).permutation(10))
    np.testing.assert_array_equal(split.class_order, split_tasks(mixture, 2, order_seed=3).class_order)
    assert not np.array_equal(split.class_order, split_tasks(mixture, 2, order_seed=4).class_order)
    _check_consistent(split, mixture)


def test_explicit_class_subset_with_classes_per_task(mixture):
    split = split_tasks(mixture, 2, classes_per_task=2, class_order=[7, 3, 9, 1, 0])
    np.testing.assert_array_equal(split.class_order, [7, 3, 9, 1])  # the fifth class is left out
    assert split.num_classes == 4
    assert np.all(split.train_labels[np.isin(mixture.train_y, [0, 2, 4, 5, 6, 8])] == -1)
    _check_consistent(split, mixture)


def test_class_incremental_masks_are_the_classes_seen_so_far(mixture):
    split = split_tasks(mixture, 5)
    masks = split.logit_masks(1)
    expected = np.zeros((10, 10), bool)
    expected[:, :4] = True
    np.testing.assert_array_equal(masks, expected)


def test_task_incremental_masks_are_each_samples_own_task():
    ds = make_gaussian_mixture(6, 3, 4, 2, 1.0, seed=1)
    split = split_tasks(ds, 3, scenario="task_incremental")
    expected = np.array([
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 1, 1],
    ], bool)
    for t in range(3):
        np.testing.assert_array_equal(split.logit_masks(t), expected)


def test_embedded_mnist_subset_in_five_tasks():
    ds = load_mnist_5k()
    split = split_tasks(ds, 5, order_seed=0)
    for t in range(5):
        x, y = split.train(t)
        assert x.shape == (800, 28, 28, 1) and np.bincount(y - 2 * t).tolist() == [400, 400]
        assert split.test(t)[0].shape == (200, 28, 28, 1)
    _check_consistent(split, ds)


def test_token_data_and_data_without_a_test_split():
    ds = make_synthetic_sequences(4, 16, 16, 6, 0, seed=0)  # no test split
    split = split_tasks(ds, 2)
    x, y = split.train(1)
    assert x.dtype == ds.train_x.dtype and set(y.tolist()) == {2, 3}
    with pytest.raises(DataError, match="no test split"):
        split.test(0)


def _one_line(error):
    assert "\n" not in str(error.value)


def test_impossible_splits_are_one_line_data_errors(mixture):
    with pytest.raises(DataError, match="10 classes of .* do not divide into 3 tasks") as e:
        split_tasks(mixture, 3)
    _one_line(e)
    with pytest.raises(DataError, match="need 12 classes"):
        split_tasks(mixture, 4, classes_per_task=3)
    with pytest.raises(DataError, match="num_tasks must be a positive integer"):
        split_tasks(mixture, 0)
    with pytest.raises(DataError, match="repeats a class"):
        split_tasks(mixture, 1, class_order=[1, 1])
    with pytest.raises(DataError, match="outside 0..9"):
        split_tasks(mixture, 1, class_order=[3, 10])
    with pytest.raises(ConfigError, match="not both"):
        split_tasks(mixture, 5, class_order=list(range(10)), order_seed=0)
    with pytest.raises(ConfigError, match="unknown continual scenario 'domain'"):
        split_tasks(mixture, 5, scenario="domain")


def test_a_class_without_samples_is_a_data_error(mixture):
    keep = mixture.test_y != 6
    no_test_six = dataclasses.replace(mixture, test_x=mixture.test_x[keep], test_y=mixture.test_y[keep])
    with pytest.raises(DataError, match=r"class 6 of .* \(task 3\) has no test samples") as e:
        split_tasks(no_test_six, 5)
    _one_line(e)
    # Leaving the class out makes the split possible.
    split_tasks(no_test_six, 3, class_order=[0, 1, 2, 3, 4, 5, 7, 8, 9])


def test_out_of_range_task_is_an_index_error(mixture):
    with pytest.raises(IndexError, match="tasks 0..4"):
        split_tasks(mixture, 5).train(5)


# ------------------------------------------------------------------ replay buffer


def test_replay_buffer_is_class_balanced_over_the_seen_classes(mixture):
    split = split_tasks(mixture, 5)
    rows = replay_indices(split, 1, buffer_size=10, seed=0)  # 4 classes seen: 3, 3, 2, 2 samples
    labels = split.train_labels[rows]
    assert np.bincount(labels, minlength=10).tolist() == [3, 3, 2, 2, 0, 0, 0, 0, 0, 0]
    assert len(np.unique(rows)) == 10 and np.all(np.diff(rows) > 0)


def test_replay_buffer_keeps_a_subset_of_the_previous_buffer(mixture):
    split = split_tasks(mixture, 5)
    previous = set(replay_indices(split, 0, 16, seed=2).tolist())
    for t in range(1, 5):
        current = replay_indices(split, t, 16, seed=2)
        old_class_rows = current[split.train_labels[current] < split.num_seen(t - 1)]
        assert set(old_class_rows.tolist()) <= previous
        previous = set(current.tolist())
    np.testing.assert_array_equal(replay_indices(split, 3, 16, seed=2), replay_indices(split, 3, 16, seed=2))


def test_replay_buffer_edge_sizes(mixture):
    split = split_tasks(mixture, 5)
    assert replay_indices(split, 2, 0, seed=0).size == 0
    assert replay_indices(split, 0, 1000, seed=0).size == 24  # every sample of the two classes
    assert np.bincount(split.train_labels[replay_indices(split, 4, 3, seed=0)]).tolist() == [1, 1, 1]
    with pytest.raises(ConfigError, match="non-negative integer"):
        replay_indices(split, 0, -1, seed=0)
