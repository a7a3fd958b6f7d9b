"""Dataset-to-Dataset steps applied after loading: per-class subsets and normalisation."""

from __future__ import annotations

import dataclasses

import numpy as np

from ncjax.data.dataset import DataError, Dataset


def subset_per_class(ds: Dataset, n_per_class: int, seed: int) -> Dataset:
    """Keeps `n_per_class` training examples of every class; the test split is untouched.

    The kept examples of class c are the first n_per_class of class c in the
    permutation `np.random.default_rng(seed).permutation(N_train)`; they stay in
    their original order. Small-data collapse studies need this balanced subset.
    """
    if not isinstance(n_per_class, int) or isinstance(n_per_class, bool) or n_per_class < 1:
        raise DataError(f"n_per_class must be a positive integer or None, got {n_per_class}")
    order = np.random.default_rng(seed).permutation(len(ds.train_y))
    shuffled_labels = ds.train_y[order]
    kept = []
    for c in range(ds.num_classes):
        members = order[shuffled_labels == c]
        if len(members) < n_per_class:
            raise DataError(
                f"n_per_class={n_per_class} but class {c} of {ds.name} has only "
                f"{len(members)} training examples"
            )
        kept.append(members[:n_per_class])
    keep = np.sort(np.concatenate(kept))
    return dataclasses.replace(ds, train_x=ds.train_x[keep], train_y=ds.train_y[keep])


def normalize_images(ds: Dataset) -> Dataset:
    """Standardises every channel with the mean and std of the training images.

    Train statistics only, so that the test split stays unseen.
    """
    axes = tuple(range(ds.train_x.ndim - 1))
    mean = ds.train_x.mean(axis=axes, dtype=np.float64)
    std = ds.train_x.std(axis=axes, dtype=np.float64)
    mean, std = mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)
    return dataclasses.replace(
        ds,
        train_x=(ds.train_x - mean) / std,
        test_x=None if ds.test_x is None else (ds.test_x - mean) / std,
    )
