"""Synthetic Gaussian mixtures: the data of collapse-vs-SNR studies on general data."""

from __future__ import annotations

import numpy as np

from ncjax.data.dataset import DataError, Dataset

FLOAT32_MAX = float(np.finfo(np.float32).max)


def check(num_classes: int, dim: int, n_per_class_train: int, n_per_class_test: int, snrs) -> None:
    """Raise DataError for a mixture that cannot be drawn."""
    bad_snrs = sorted({snr for snr in snrs if not snr >= 0}, key=str)
    if num_classes < 2 or dim < 1 or n_per_class_train < 1 or n_per_class_test < 0 or bad_snrs:
        snr = bad_snrs[0] if bad_snrs else snrs[0]
        raise DataError(
            "gaussian_mixture needs num_classes >= 2, dim >= 1, n_per_class_train >= 1, "
            f"n_per_class_test >= 0 and snr >= 0; got {num_classes}, {dim}, "
            f"{n_per_class_train}, {n_per_class_test}, {snr}"
        )
    largest = FLOAT32_MAX / (4 * np.sqrt(dim))  # the means' radius snr·√d, with room for noise and features
    if max(snrs) > largest:
        raise DataError(f"gaussian_mixture snr={max(snrs)!r} is too large for float32 data in {dim} dimensions; "
                        f"give snr <= {largest:.3g}")


def _draw(num_classes, dim, n_per_class, seed, stream):
    """(signal at SNR 1 [N, d], noise [N, d], labels [N]) of one split, float64, ordered by class."""
    directions = np.random.default_rng([seed, 0]).standard_normal((num_classes, dim))
    unit_means = np.sqrt(dim) * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    y = np.repeat(np.arange(num_classes, dtype=np.int32), n_per_class)
    noise = np.random.default_rng([seed, stream]).standard_normal((len(y), dim))
    return unit_means[y], noise, y


def _splits(num_classes, dim, n_per_class_train, n_per_class_test, seed, combine):
    train = _draw(num_classes, dim, n_per_class_train, seed, 1)
    test = _draw(num_classes, dim, n_per_class_test, seed, 2) if n_per_class_test else None
    return dict(train_x=combine(*train[:2]), train_y=train[2],
                test_x=None if test is None else combine(*test[:2]), test_y=None if test is None else test[2])


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
    Everything is drawn from numpy Generators seeded with (seed, stream), and the
    draws do not depend on the SNR: mixtures of one seed differ only in the scale of
    their means. Samples are ordered by class; batching shuffles them.
    """
    check(num_classes, dim, n_per_class_train, n_per_class_test, [snr])
    splits = _splits(num_classes, dim, n_per_class_train, n_per_class_test, seed,
                     lambda signal, noise: (snr * signal + noise).astype(np.float32))
    return Dataset(**splits, num_classes=num_classes, kind="vector",
                   name=f"gaussian_mixture(K={num_classes},d={dim},snr={snr:g})")


def compose(parts, snr):
    """The mixture at ``snr`` from its parts [..., 2, d] (noise, signal at SNR 1): noise + snr · signal."""
    return parts[..., 0, :] + snr * parts[..., 1, :]


def make_gaussian_mixture_parts(
    num_classes: int,
    dim: int,
    n_per_class_train: int,
    n_per_class_test: int,
    snrs,
    seed: int,
) -> Dataset:
    """The mixtures of :func:`make_gaussian_mixture` at every SNR of ``snrs`` at once: each example's
    noise and signal at SNR 1 ([N, 2, d]), composed on the device by :func:`compose` (equal to the
    single mixture up to float32 rounding)."""
    check(num_classes, dim, n_per_class_train, n_per_class_test, snrs)
    splits = _splits(num_classes, dim, n_per_class_train, n_per_class_test, seed,
                     lambda signal, noise: np.stack([noise, signal], axis=1).astype(np.float32))
    return Dataset(**splits, num_classes=num_classes, kind="vector", compose=compose,
                   name=f"gaussian_mixture(K={num_classes},d={dim},snr={'|'.join(f'{s:g}' for s in snrs)})")
