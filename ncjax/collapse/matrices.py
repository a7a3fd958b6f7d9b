"""Collapse metrics of plain matrices (host, float64): class means, classifier rows, covariances, weights.

For users who already hold the matrices (e.g. from rhubarbwu/neural-collapse's
accumulators or a PyTorch model): numpy, JAX or CPU torch arrays in, float64
inside, a float out for one matrix (leading axes broadcast and give arrays):

- :func:`etf_error` (``nc2_etf``), :func:`self_duality` (``nc3``),
  :func:`class_mean_norms`, :func:`pairwise_cosines` of class means;
- :func:`variance_ratio` (``nc1``) of Σ_W and Σ_B;
- :func:`balancedness` of consecutive linear layers (Jacot et al. 2024, arXiv 2410.04887);
- :func:`effective_rank` of any matrix (RankMe, Garrido et al. 2023);
- :func:`nc5` from class means and an out-of-distribution mean (NECO, Ammar et al. 2024).

``centre`` says what the class means are centred by: ``None`` (default) their
own unweighted mean ``(1/K) Σ_c μ_c``; ``0`` nothing (the rows are a classifier
``W``, or already centred); a vector [..., D] such as the sample mean ``μ_G`` of
the features, which is what :func:`ncjax.collapse.metrics` uses (the two agree
for balanced classes). :func:`frame_distance`, :func:`duality_distance` and
:func:`ood_alignment` are the formulas :func:`ncjax.collapse.metrics` applies to
its statistics too, so both paths give the same numbers by construction.
Definitions: docs/paper.md#metric-definitions; conventions: docs/metrics.md.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ncjax import errors
from ncjax.collapse import pairwise, spectral
from ncjax.collapse.inputs import finite


def frame_distance(rows: np.ndarray, gram: np.ndarray | None = None) -> np.ndarray:
    """``‖G/‖G‖_F − (I − 11ᵀ/K)/√(K−1)‖_F`` of ``G = rows rowsᵀ`` [..., K, D], from ``‖G‖_F²``, ``tr G``
    and ``1ᵀG1`` alone (both terms have unit norm), so no K×K matrix is formed when K > D.

    ``gram``: the smaller Gram matrix (``rows rowsᵀ`` or ``rowsᵀ rows``) when already at hand.
    """
    k = rows.shape[-2]
    gram = spectral.gram_of_smaller(rows) if gram is None else gram
    sq_fro, trace = np.sum(gram**2, (-2, -1)), np.sum(rows**2, (-2, -1))
    total = np.sum(np.sum(rows, -2) ** 2, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inner = (trace - total / k) / (math.sqrt(k - 1) * np.sqrt(sq_fro))
    return np.sqrt(np.maximum(2.0 - 2.0 * inner, 0.0))


def duality_distance(weight: np.ndarray, centred: np.ndarray) -> np.ndarray:
    """``‖W/‖W‖_F − M̃/‖M̃‖_F‖_F²`` [...] of classifier rows and centred means [..., K, D]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        w_unit = weight / np.linalg.norm(weight, axis=(-2, -1), keepdims=True)
        m_unit = centred / np.linalg.norm(centred, axis=(-2, -1), keepdims=True)
    return np.sum((w_unit - m_unit) ** 2, (-2, -1))


def ood_alignment(centred: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """``mean_c |cos(μ_c − μ_G, μ_G^ood − μ_G)|`` [...] of centred means [..., K, D] and the centred OOD mean [..., D]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.einsum("...kd,...d->...k", centred, direction) / (
            np.linalg.norm(centred, axis=-1) * np.linalg.norm(direction, axis=-1)[..., None])
    return np.mean(np.abs(cos), -1)


def _float(value: np.ndarray):
    """A float (``np.float64``) for a single matrix, the array for leading axes."""
    return value[()] if value.ndim == 0 else value


def _matrix(name: str, x, rows: int = 1) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim < 2 or x.shape[-2] < rows or x.shape[-1] < 1:
        raise errors.DataError(f"{name} must be a matrix [..., K, D] with K ≥ {rows} rows and D ≥ 1 columns; "
                               f"got shape {list(x.shape)}")
    finite(name, x)
    return x


def _centred(means, centre) -> np.ndarray:
    means = _matrix("means", means, rows=2)
    if centre is None:
        return means - means.mean(-2, keepdims=True)
    centre = np.asarray(centre, np.float64)
    finite("centre", centre)
    if centre.ndim and centre.shape[-1] != means.shape[-1]:
        raise errors.DataError(f"centre must be a vector of the means' dimension {means.shape[-1]} (or 0); "
                               f"got shape {list(centre.shape)}")
    return means - (centre[..., None, :] if centre.ndim else centre)


def etf_error(means, centre=None):
    """``nc2_etf``: how far the centred class means [..., K, D] are from a simplex ETF (0 on it, ≤ √2).

    ``‖G/‖G‖_F − (I − 11ᵀ/K)/√(K−1)‖_F`` with ``G = M̃M̃ᵀ``, ``M̃ = means − centre``
    (see the module docstring for ``centre``; rhubarbwu's ``simplex_etf_error(M, m_G)``).
    ``etf_error(W, centre=0)`` is ``nc2_etf_w`` of a classifier. For K = 2 centred
    means it is always 0: two centred means are antipodal.
    """
    return _float(frame_distance(_centred(means, centre)))


def self_duality(weight, means, centre=None):
    """``nc3``: ``‖W/‖W‖_F − M̃/‖M̃‖_F‖_F²`` of the classifier [..., K, D] (rows are classes) and the
    centred class means (0 when self-dual, ≤ 4). Not rhubarbwu's ``self_duality_error`` (an ETF error of WM̃ᵀ)."""
    centred = _centred(means, centre)
    weight = _matrix("weight", weight, rows=2)
    if weight.shape[-2:] != centred.shape[-2:]:
        raise errors.DataError(f"weight {list(weight.shape)} and means {list(centred.shape)} must both be "
                               "[..., K, D] (rows are classes; transpose a Flax Dense kernel)")
    return _float(duality_distance(weight, centred))


def class_mean_norms(means, centre=None) -> np.ndarray:
    """``‖μ_c − centre‖`` [..., K] per class (rhubarbwu's ``mean_norms``); ``nc2_equinorm`` is their std / mean."""
    return np.linalg.norm(_centred(means, centre), axis=-1)


def pairwise_cosines(means, centre=None) -> np.ndarray:
    """``cos(μ_c − centre, μ_c' − centre)`` [..., K, K]; a simplex ETF gives −1/(K−1) off the diagonal.

    ``nc2_equiangle`` is the mean of ``|cos + 1/(K−1)|`` off the diagonal. Rows are
    computed in tiles (as for the metrics), but the result is K×K: 2 GB at K = 16,384.
    """
    centred = _centred(means, centre)
    lead = centred.shape[:-2]
    flat = centred.reshape((-1,) + centred.shape[-2:])
    return pairwise.cosine_grid(flat).reshape(lead + (centred.shape[-2],) * 2)


def variance_ratio(sigma_w, sigma_b, num_classes: int):
    """``nc1 = tr(Σ_W Σ_B^†)/K`` of the within- and between-class covariances [..., D, D].

    ``Σ_B = (1/K) Σ_c (μ_c − μ_G)(μ_c − μ_G)ᵀ`` has rank ≤ K−1, so K is an
    argument. The pseudo-inverse keeps the eigenvalues of Σ_B above
    ``max(K, D)·ε₃₂`` times the largest, as :func:`ncjax.collapse.metrics` does:
    smaller ones are round-off of float32 statistics. rhubarbwu's
    ``covariance_ratio(Σ_W, M, m_G)`` is this with Σ_B from ``M − m_G``.
    """
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise errors.DataError(f"num_classes must be an integer ≥ 2; got {num_classes!r}")
    sigma_w, sigma_b = _matrix("sigma_w", sigma_w), _matrix("sigma_b", sigma_b)
    d = sigma_b.shape[-1]
    if sigma_b.shape[-2] != d or sigma_w.shape[-2:] != (d, d):
        raise errors.DataError(f"sigma_w {list(sigma_w.shape)} and sigma_b {list(sigma_b.shape)} must be "
                               "square covariance matrices [..., D, D] of the same D")
    gram = num_classes * 0.5 * (sigma_b + np.swapaxes(sigma_b, -1, -2))  # M̃ᵀM̃, the D×D side
    spectrum = spectral.decompose(gram, np.trace(gram, axis1=-2, axis2=-1), max(num_classes, d), False)
    return _float(spectral.nc1(spectrum, 0.5 * (sigma_w + np.swapaxes(sigma_w, -1, -2))))


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
    finite_slices, matrix64 = spectral.finite_slices(matrix.astype(np.float64))
    sigma = np.where(finite_slices[..., None], np.linalg.svd(matrix64, compute_uv=False), np.nan)
    cutoff = max(matrix.shape[-2:]) * eps * np.max(sigma, -1, keepdims=True)
    return spectral.entropy_rank(sigma, sigma > cutoff)


def nc5(class_means: np.ndarray, ood_mean: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """``mean_c |cos(μ_c − μ_G, μ_G^ood − μ_G)|``: 0 when the OOD mean is orthogonal to every class direction.

    Both the class means [..., K, D] and the OOD mean [..., D] are centred by the
    in-distribution global mean μ_G (weighted by ``counts`` [..., K], equal
    weights if None): ncjax's reading of NECO's NC5 (docs/paper.md#metric-definitions).
    rhubarbwu/neural-collapse passes the means uncentred instead.
    """
    means = np.asarray(class_means, np.float64)
    weights = np.ones(means.shape[:-1]) if counts is None else np.asarray(counts, np.float64)
    global_mean = np.einsum("...k,...kd->...d", weights / weights.sum(-1, keepdims=True), means)
    return ood_alignment(means - global_mean[..., None, :], np.asarray(ood_mean, np.float64) - global_mean)
