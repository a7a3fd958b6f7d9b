"""Host float64 spectra: the between-class eigen-problem, ``nc1`` and effective ranks.

``Σ_B`` has rank ≤ K−1, and its non-zero spectrum is that of the smaller of the
two Gram matrices of the centred means M̃ (K×D): ``M̃M̃ᵀ`` (K×K) or ``M̃ᵀM̃``
(D×D). The eigen-problem is solved for the smaller one, so K = 16,384 classes
in D = 1,024 dimensions cost a 1,024×1,024 eigen-decomposition:

- K×K: ``nc1 = tr((M̃M̃ᵀ)^{†2} P)`` with ``P = M̃Σ_WM̃ᵀ`` (from pass 2's projections
  or from the scatter);
- D×D: ``nc1 = tr(Σ_W (M̃ᵀM̃)^†)`` (needs the scatter).

Both equal ``tr(Σ_W Σ_B^†)/K``. The class means are float32 numbers, so the
pseudo-inverse cuts eigenvalues below ``(max(K, D)·ε₃₂)²`` times the means'
energy: a float64 cut-off would turn round-off into 1e8-sized garbage.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

FLOAT32_EPS = float(np.finfo(np.float32).eps)


class BetweenSpectrum(NamedTuple):
    """Eigen-decomposition of the smaller Gram matrix of M̃ (leading axis S)."""

    gram: np.ndarray  # [S, R, R] M̃M̃ᵀ (K×K side) or M̃ᵀM̃ (D×D side)
    values: np.ndarray  # [S, R] ascending, R = min(K, D) (or K on the K×K route)
    vectors: np.ndarray  # [S, R, R]
    kept: np.ndarray  # [S, R] eigenvalues above the float32-aware cut-off
    classes_side: bool  # True: K×K (M̃M̃ᵀ), False: D×D (M̃ᵀM̃)
    reliable: np.ndarray  # [S, R] kept, and above max(K, D)·ε₃₂ of the largest: what nc1 inverts (see nc1)

    @property
    def degenerate(self) -> np.ndarray:
        """[S] slices whose class means all coincide (every eigenvalue is round-off): tr Σ_B ≈ 0."""
        return ~np.any(self.kept, -1)


def finite_slices(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([S] which matrices [S, m, n] are finite, the matrices with the others zeroed): LAPACK fails on
    NaN/Inf, and one run's non-finite features must give that run NaN metrics, not stop the others."""
    finite = np.all(np.isfinite(matrices), axis=(-2, -1))
    return finite, np.where(finite[..., None, None], matrices, 0.0)


def gram_of_smaller(x: np.ndarray) -> np.ndarray:
    """``x xᵀ`` or ``xᵀ x`` for ``x`` [S, K, D], whichever is smaller (same non-zero spectrum)."""
    if x.shape[-2] <= x.shape[-1]:
        return x @ np.swapaxes(x, -1, -2)
    return np.swapaxes(x, -1, -2) @ x


def between_spectrum(centred: np.ndarray, means_energy: np.ndarray, classes_side: bool) -> BetweenSpectrum:
    """Eigen-decomposition of ``M̃M̃ᵀ`` (``classes_side``) or ``M̃ᵀM̃``, with the float32-aware cut-off.

    ``means_energy`` [S] is ``Σ_c ‖μ_c‖²`` of the uncentred means: the scale of their float32 round-off.
    """
    gram = centred @ np.swapaxes(centred, -1, -2) if classes_side else np.swapaxes(centred, -1, -2) @ centred
    return decompose(gram, means_energy, max(centred.shape[-2:]), classes_side)


def decompose(gram: np.ndarray, energy: np.ndarray, size: int, classes_side: bool) -> BetweenSpectrum:
    """:class:`BetweenSpectrum` of a given Gram matrix ``M̃M̃ᵀ`` or ``M̃ᵀM̃`` (= K·Σ_B); ``size`` is max(K, D),
    ``energy`` the scale of the means' round-off."""
    finite, gram = finite_slices(gram)
    values, vectors = np.linalg.eigh(gram)
    values = np.where(finite[..., None], values, np.nan)  # NaN is never kept: the slice is degenerate, nc1 NaN
    scale = np.maximum(values[..., -1], energy)
    kept = values > ((size * FLOAT32_EPS) ** 2 * scale)[..., None]
    reliable = kept & (values > size * FLOAT32_EPS * values[..., -1:])
    return BetweenSpectrum(gram, values, vectors, kept, classes_side, reliable)


def nc1(spectrum: BetweenSpectrum, within: np.ndarray) -> np.ndarray:
    """``tr(Σ_W Σ_B^†)/K`` [S]; ``within`` is ``P = M̃Σ_WM̃ᵀ`` (K×K side) or ``Σ_W`` (D×D side).

    NaN where the means are degenerate (nothing survives the cut-off), never 0.

    The within-class statistics are float32 sums too: along a between-class direction whose
    eigenvalue is below ``max(K, D)·ε₃₂`` times the largest, their round-off (a fraction ε₃₂ of
    tr Σ_W, of either sign) divided by that eigenvalue outweighs the largest direction's own term
    (seen: nc1 = −5.8 for features of effective rank 3.7 in 64 dimensions). Those directions are
    left out of the pseudo-inverse, and a direction's within-class variance, a variance, is
    clipped at 0.
    """
    diag = np.maximum(np.sum(spectrum.vectors * (within @ spectrum.vectors), -2), 0.0)  # v_kᵀ W v_k (BLAS)
    power = 2 if spectrum.classes_side else 1
    safe = np.where(spectrum.reliable, spectrum.values, 1.0)
    value = np.sum(np.where(spectrum.reliable, diag / safe**power, 0.0), -1)
    return np.where(spectrum.degenerate, np.nan, value)


def entropy_rank(values: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``exp(−Σ p log p)``, ``p = v / Σv`` over the kept non-negative ``values`` (last axis)."""
    v = np.where(kept, np.maximum(values, 0.0), 0.0)
    total = v.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = v / total
        h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), -1)
    return np.where(total[..., 0] > 0, np.exp(h), np.nan)


def covariance_rank(covariance: np.ndarray) -> np.ndarray:
    """Effective rank of float32-accumulated covariances [S, D, D] (eigenvalues are their singular values)."""
    finite, covariance = finite_slices(covariance)
    values = np.where(finite[..., None], np.linalg.eigvalsh(covariance), np.nan)
    cutoff = covariance.shape[-1] * FLOAT32_EPS * np.max(np.abs(values), -1, keepdims=True)
    return entropy_rank(values, values > cutoff)
