"""Collapse metrics of plain matrices (host, float64): no features or statistics needed.

- :func:`balancedness` of consecutive linear layers (Jacot et al. 2024, arXiv 2410.04887);
- :func:`effective_rank` of any matrix (RankMe, Garrido et al. 2023);
- :func:`nc5` from class means and an out-of-distribution mean (NECO, Ammar et al. 2024).

Leading axes (members, blocks) broadcast everywhere.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ncjax import errors
from ncjax.collapse.spectral import entropy_rank, finite_slices


def balancedness(kernels: Sequence[np.ndarray]) -> np.ndarray:
    """``‖W_{l+1}ᵀW_{l+1} − W_l W_lᵀ‖_F / ‖W_l W_lᵀ‖_F`` for each consecutive pair: [..., L−1].

    ``kernels`` are the L linear layers' matrices in the order the data meets
    them, each out×in (``[..., out_l, in_l]``; a Flax ``Dense`` kernel is in×out:
    pass its transpose), with ``in_{l+1} = out_l``. 0 for a balanced pair; the
    weight-decay optimum of a deep linear head is balanced.
    """
    mats = [np.asarray(w, np.float64) for w in kernels]
    if len(mats) < 2:
        raise errors.DataError(f"balancedness needs at least two consecutive linear layers; got {len(mats)}")
    values = []
    for index, (lower, upper) in enumerate(zip(mats[:-1], mats[1:])):
        if lower.ndim < 2 or upper.ndim < 2 or upper.shape[-1] != lower.shape[-2]:
            raise errors.DataError(
                f"balancedness: kernels {index} {lower.shape} and {index + 1} {upper.shape} do not chain; "
                "each must be out×in with the next one's in equal to this one's out")
        outer = lower @ np.swapaxes(lower, -1, -2)  # W_l W_lᵀ: [out_l, out_l]
        inner = np.swapaxes(upper, -1, -2) @ upper  # W_{l+1}ᵀ W_{l+1}: [out_l, out_l]
        with np.errstate(divide="ignore", invalid="ignore"):
            values.append(np.linalg.norm(inner - outer, axis=(-2, -1)) / np.linalg.norm(outer, axis=(-2, -1)))
    return np.stack(np.broadcast_arrays(*values), -1)


def effective_rank(matrix: np.ndarray) -> np.ndarray:
    """``exp(−Σ p_k log p_k)``, ``p_k = σ_k / Σσ``, over the singular values of ``matrix`` [..., m, n].

    Between 1 and min(m, n); the centred means of a simplex ETF give K−1.
    Singular values below ``max(m, n)·ε·σ_max`` (ε of the matrix's own float
    type, float64 for integers) are round-off and left out.
    """
    matrix = np.asarray(matrix)
    eps = np.finfo(matrix.dtype).eps if np.issubdtype(matrix.dtype, np.floating) else np.finfo(np.float64).eps
    finite, matrix64 = finite_slices(matrix.astype(np.float64))
    sigma = np.where(finite[..., None], np.linalg.svd(matrix64, compute_uv=False), np.nan)
    cutoff = max(matrix.shape[-2:]) * eps * np.max(sigma, -1, keepdims=True)
    return entropy_rank(sigma, sigma > cutoff)


def nc5(class_means: np.ndarray, ood_mean: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """``mean_c |cos(μ_c − μ_G, μ_G^ood − μ_G)|``: 0 when the OOD mean is orthogonal to every class direction.

    Both the class means [..., K, D] and the OOD mean [..., D] are centred by the
    in-distribution global mean μ_G (weighted by ``counts`` [..., K], equal
    weights if None): ncjax's reading of NECO's NC5 (science.md §4).
    rhubarbwu/neural-collapse passes the means uncentred instead.
    """
    means = np.asarray(class_means, np.float64)
    weights = np.ones(means.shape[:-1]) if counts is None else np.asarray(counts, np.float64)
    global_mean = np.einsum("...k,...kd->...d", weights / weights.sum(-1, keepdims=True), means)
    centred = means - global_mean[..., None, :]
    ood = np.asarray(ood_mean, np.float64) - global_mean
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.einsum("...kd,...d->...k", centred, ood) / (
            np.linalg.norm(centred, axis=-1) * np.linalg.norm(ood, axis=-1)[..., None])
    return np.mean(np.abs(cos), -1)
