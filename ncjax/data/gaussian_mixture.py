"""Synthetic Gaussian mixtures: the data of collapse-vs-SNR studies on general data."""

from __future__ import annotations

import numpy as np

from ncjax.data.dataset import DataError, Dataset


def make_gaussian_mixture(
    num_classes: int,
    dim: int,
    n_per_class_train: int,
    n_per_class_test: int,
    snr: float,
    seed: int,
) -> Dataset:
    """Draws K classes in d dimensions, balanced, train and test from the same mixture.

    Definition of the SNR: noise is standard normal, x = mu_y + eps with
    eps ~ N(0, I_d); the K class means are drawn independently and uniformly on
    the sphere of radius snr * sqrt(d). Hence snr = ||mu_k|| / sqrt(E ||eps||^2),
    the ratio of the signal's norm to the noise's root-mean-square norm.
    Everything is drawn from numpy Generators seeded with (seed, stream).
    Samples are ordered by class; batching shuffles them.
    """
    if num_classes < 2 or dim < 1 or n_per_class_train < 1 or n_per_class_test < 0 or snr < 0:
        raise DataError(
            "gaussian_mixture needs num_classes >= 2, dim >= 1, n_per_class_train >= 1, "
            f"n_per_class_test >= 0 and snr >= 0; got {num_classes}, {dim}, "
            f"{n_per_class_train}, {n_per_class_test}, {snr}"
        )
    directions = np.random.default_rng([seed, 0]).standard_normal((num_classes, dim))
    means = snr * np.sqrt(dim) * directions / np.linalg.norm(directions, axis=1, keepdims=True)

    def sample(n_per_class, stream):
        y = np.repeat(np.arange(num_classes, dtype=np.int32), n_per_class)
        noise = np.random.default_rng([seed, stream]).standard_normal((len(y), dim))
        return (means[y] + noise).astype(np.float32), y

    train_x, train_y = sample(n_per_class_train, 1)
    test_x, test_y = sample(n_per_class_test, 2) if n_per_class_test else (None, None)
    return Dataset(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=num_classes,
        kind="vector",
        name=f"gaussian_mixture(K={num_classes},d={dim},snr={snr:g})",
    )
