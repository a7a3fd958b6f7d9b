r"""ProNC's targets: a simplex ETF fitted to the first task's class means, grown at every new task.

Source: Wang, Yu, Yang & Lin, *Rethinking Continual Learning with Progressive Neural
Collapse* (arXiv 2505.24254, ICLR 2026), and its official code
(github.com/Continue-Edge-AI-Lab/ProNC, ``models/exorth_ce_svd.py``: ``get_simi_orth``,
``closest_orth_matrix``, ``gram_schmidt_extend``, ``_init_etf``). Written here from the
optimisation problems below, solved in closed form; no code was copied.

**Simplex ETFs.** ``ETF(K, D)`` is the set of ``V ∈ R^{K×D}`` (rows are classes) with
unit rows and pairwise cosines ``−1/(K−1)``, i.e. ``V Vᵀ = K/(K−1) · P_K`` with
``P_K = I_K − 11ᵀ/K``. Every such ``V`` is

    V = √(K/(K−1)) · Φ_K R,    Φ_K ∈ R^{K×(K−1)}, Φ_Kᵀ Φ_K = I, Φ_K Φ_Kᵀ = P_K,
                               R ∈ R^{(K−1)×D},   R Rᵀ = I,

for one fixed orthonormal basis ``Φ_K`` of ``1^⊥`` (here Helmert's), so ``ETF(K, D)``
is non-empty iff ``D ≥ K − 1``. The paper writes ``E = √(K/(K−1)) · U P_K`` with
``UᵀU = I_K`` (columns are classes), the same set when ``D ≥ K``; that form needs one
dimension more than this one.

**(a) After the first task: the nearest ETF** (:func:`nearest_etf`). With the class
means ``μ_c`` of the first task (the paper's code: means of the L2-normalised
penultimate features of the task's training data), centred by their unweighted mean
``μ̄`` and normalised, ``û_c = (μ_c − μ̄)/‖μ_c − μ̄‖``::

    V* = argmin_{V ∈ ETF(K, D)} Σ_c ‖v_c − û_c‖²
       = √(K/(K−1)) · Φ_K polar(Φ_Kᵀ Û),     polar(A Σ Bᵀ) = A Bᵀ (thin SVD),

since ``Σ_c ‖v_c − û_c‖² = const − 2√(K/(K−1)) tr(Rᵀ Φ_Kᵀ Û)`` is an orthogonal
Procrustes problem in ``R`` (Schönemann 1966). This is the paper's code's
``closest_orth_matrix(Û P_K)`` in the other parametrisation.

**(b) At each new task: the minimal growth** (:func:`grow_etf`). Given the current
targets ``V ∈ ETF(K, D)`` and ``n = K' − K`` new classes::

    V' = argmin_{V' ∈ ETF(K', D)} Σ_{c ≤ K} ‖v'_c − v_c‖²

has the solutions, for ``α = √(K'(K−1) / (K(K'−1)))``, ``ρ = √(n / (K(K'−1)))``,
``τ = −√(K / ((K'−1) n))``::

    v'_c     = α v_c + ρ e                  (old classes c ≤ K)
    v'_{K+j} = τ e + √(1 − τ²) w_j          (new classes j = 1 … n)

with ``e`` any unit vector orthogonal to ``span(V)`` and ``w_1 … w_n`` any n-vertex
simplex ETF in a subspace orthogonal to ``span(V)`` and ``e`` (``w = 0`` for
``n = 1``); the minimum is ``Σ_{c≤K} ‖v'_c − v_c‖² = 2K(1 − α)``. Proof: the first K
rows ``V'_K`` of any K'-vertex ETF have Gram ``K'/(K'−1) I − 11ᵀ/(K'−1)``; as
``1ᵀV = 0``, ``Σ_c ⟨v'_c, v_c⟩ = ⟨P_K V'_K, V⟩_F ≤ ‖P_K V'_K‖_F ‖V‖_F
= √((K−1)K'/(K'−1)) · √K = Kα``, with equality iff ``P_K V'_K = αV``: the old
targets shrink towards their centroid by ``α`` and all move by the same ``ρe`` out of
their span, and the new vertices lie in directions orthogonal to the old ones.
Checking norms and cosines of the rows above completes it. The paper's code builds
one of these minimisers (``[U, U_new] P_{K'}`` with random ``U_new ⟂ U``); here the
free directions (``e`` and the subspace of the ``w_j``) are drawn from
``np.random.default_rng(seed)``, so a run is reproducible, and ``D ≥ K' − 1``
suffices.

Everything here is float64 numpy on the host: it runs once per task boundary.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ncjax.errors import ConfigError

# A float32 checkpoint of a grown ETF still passes; a matrix that is not an ETF does not.
_ETF_TOLERANCE = 1e-5


def check_width(num_vertices: int, dim: int) -> None:
    """Raises ConfigError unless a ``num_vertices``-vertex simplex ETF fits in ``dim`` dimensions."""
    if num_vertices < 2:
        raise ConfigError(
            f"a simplex ETF needs at least 2 vertices, got {num_vertices}: "
            "the first task of ProNC (or the fixed ETF) must hold 2 or more classes"
        )
    if dim < num_vertices - 1:
        raise ConfigError(
            f"a simplex ETF of {num_vertices} vertices needs feature width >= {num_vertices - 1}, "
            f"got {dim}: widen the model's feature layer or use fewer classes"
        )


def nearest_etf(class_means) -> np.ndarray:
    """The simplex ETF ``[K, D]`` nearest to the centred, normalised ``class_means [K, D]`` (problem (a)).

    Row ``c`` is class ``c``'s target. A class mean equal to the centroid stays
    zero in ``Û``; the result is still an ETF (ties are broken by the SVD).
    """
    means = np.asarray(class_means, np.float64)
    if means.ndim != 2:
        raise ValueError(f"class_means must be [num_classes, dim]; got shape {means.shape}")
    k, dim = means.shape
    check_width(k, dim)
    centred = means - means.mean(0)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = centred / np.where(norms > 0, norms, 1.0)
    basis = _centred_basis(k)
    left, _, right_t = np.linalg.svd(basis.T @ unit, full_matrices=False)
    return _etf_scale(k) * basis @ (left @ right_t)


def grow_etf(vertices, num_new: int, seed: int | Sequence[int]) -> np.ndarray:
    """The current targets ``[K, D]`` grown by ``num_new`` classes with minimal movement (problem (b)).

    Returns ``[K + num_new, D]``: the old classes' moved targets first, in their
    order, then the new classes'. ``seed`` (an int, or a sequence such as
    ``(run_seed, task)``) draws the free directions uniformly in ``span(V)^⊥``.
    """
    old = _checked_etf(vertices)
    k, dim = old.shape
    if num_new < 1:
        raise ValueError(f"num_new must be at least 1; got {num_new}")
    k_new = k + num_new
    check_width(k_new, dim)

    complement = np.linalg.svd(old)[2][k - 1 :]  # orthonormal basis of span(V)^⊥: [D − K + 1, D]
    frame = _random_orthonormal_rows(np.random.default_rng(seed), num_new, len(complement))
    directions = frame @ complement  # [num_new, D] orthonormal, ⟂ span(V), uniformly drawn
    offset_dir, simplex_dirs = directions[0], directions[1:]

    shrink = np.sqrt(k_new * (k - 1) / (k * (k_new - 1)))  # α
    offset = np.sqrt(num_new / (k * (k_new - 1)))  # ρ
    new_offset = -np.sqrt(k / ((k_new - 1) * num_new))  # τ
    moved = shrink * old + offset * offset_dir
    added = np.broadcast_to(new_offset * offset_dir, (num_new, dim))
    if num_new > 1:
        spread = np.sqrt(1.0 - new_offset**2) * _etf_scale(num_new) * _centred_basis(num_new) @ simplex_dirs
        added = added + spread
    return np.concatenate([moved, added])


def random_etf(num_vertices: int, dim: int, seed: int) -> np.ndarray:
    """A seeded random simplex ETF ``[num_vertices, dim]``: the fixed, pre-allocated classifier baseline."""
    check_width(num_vertices, dim)
    rows = _random_orthonormal_rows(np.random.default_rng(seed), num_vertices - 1, dim)
    return _etf_scale(num_vertices) * _centred_basis(num_vertices) @ rows


def _random_orthonormal_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    """``[rows, dim]`` orthonormal rows, uniformly (Haar) distributed: QR of a Gaussian, signs fixed."""
    q, r = np.linalg.qr(rng.standard_normal((dim, rows)))
    return (q * np.sign(np.diag(r))).T


def _etf_scale(k: int) -> float:
    return float(np.sqrt(k / (k - 1)))


def _centred_basis(k: int) -> np.ndarray:
    """Helmert's orthonormal basis of ``1^⊥`` in ``R^k``, as the columns of a ``[k, k−1]`` matrix."""
    basis = np.zeros((k, k - 1))
    for j in range(1, k):
        basis[:j, j - 1] = 1.0
        basis[j, j - 1] = -j
        basis[:, j - 1] /= np.sqrt(j * (j + 1))
    return basis


def _checked_etf(vertices) -> np.ndarray:
    v = np.asarray(vertices, np.float64)
    if v.ndim != 2 or v.shape[0] < 2:
        raise ValueError(f"ETF targets must be [K >= 2, dim]; got shape {v.shape}")
    k = v.shape[0]
    expected = (np.eye(k) - 1.0 / k) * k / (k - 1)
    error = np.abs(v @ v.T - expected).max()
    if error > _ETF_TOLERANCE:
        raise ValueError(
            f"the targets are not a simplex ETF (Gram off by {error:.2e}); grow the output of "
            "nearest_etf, random_etf or grow_etf"
        )
    return v
