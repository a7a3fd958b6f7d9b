"""Host float64 sums over pairs of classes, tiled so memory stays bounded at any K.

``cdnv``, ``nc2_equiangle`` and the hyperspherical-uniformity ``gnc2_*`` are
means or variances over all K(K−1) ordered pairs; :func:`cosine_grid` is the
grid itself (``pairwise_cosines``, ``class_details``), from the same tiles. They are accumulated over
row tiles of the K×K grid (``[S, t, K]`` blocks from one Gram product each), so
K = 16,384 needs tens of megabytes, not a 2 GB K×K array. Variances use a
shift at the simplex-ETF value, so they stay accurate near collapse (where
they go to 0).
"""

from __future__ import annotations

import numpy as np

TILE_BYTES = 1 << 26  # per float64 [S, t, K] temporary


def _tiles(centred: np.ndarray, gram: np.ndarray | None = None):
    """``(rows, M̃M̃ᵀ[rows] [S, t, K], cosines [S, t, K])`` over row tiles of the K×K grid of centred means [S, K, D]."""
    s, k, _ = centred.shape
    norms = np.linalg.norm(centred, axis=-1)
    rows = max(1, min(k, TILE_BYTES // (8 * s * k)))
    for start in range(0, k, rows):
        tile = slice(start, min(start + rows, k))
        block = gram[:, tile] if gram is not None else centred[:, tile] @ np.swapaxes(centred, -1, -2)
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = block / (norms[:, tile, None] * norms[:, None, :])
        yield tile, block, cos


def cosine_grid(centred: np.ndarray) -> np.ndarray:
    """``cos(μ_c − μ_G, μ_c' − μ_G)`` [S, K, K] of centred means [S, K, D] (NaN beside a zero row)."""
    return np.concatenate([cos for _, _, cos in _tiles(centred)], axis=-2)


def pair_sums(centred: np.ndarray, variance: np.ndarray, gram: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``cdnv``, ``nc2_equiangle``, ``gnc2_dist``, ``gnc2_log`` [S] of centred means [S, K, D].

    ``variance`` [S, K] is ``σ_c² = (1/n_c) Σ_{i∈c} ‖h_i − μ_c‖²``. ``u_c`` are the
    unit-normalised centred means; ``‖u_c − u_c'‖² = 2 − 2 cos``. ``gram`` [S, K, K]:
    ``M̃M̃ᵀ`` when already at hand (else its row tiles are computed here).
    """
    s, k, _ = centred.shape
    sq = np.sum(centred**2, -1)
    etf_dist = np.sqrt(2.0 * k / (k - 1))  # ‖u_c − u_c'‖ of a simplex ETF: the shift for the variances
    etf_log = -np.log(etf_dist)
    sums = {name: np.zeros(s) for name in ("cdnv", "equiangle", "dist", "dist_sq", "log", "log_sq")}
    with np.errstate(divide="ignore", invalid="ignore"):
        for tile, block, cos in _tiles(centred, gram):
            off = np.arange(tile.start, tile.stop)[:, None] != np.arange(k)[None, :]
            sq_dist = sq[:, tile, None] + sq[:, None, :] - 2.0 * block
            cdnv = (variance[:, tile, None] + variance[:, None, :]) / (2.0 * sq_dist)
            sums["cdnv"] += np.sum(cdnv, (-2, -1), where=off)
            sums["equiangle"] += np.sum(np.abs(cos + 1.0 / (k - 1)), (-2, -1), where=off)
            dist = np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0))
            x = dist - etf_dist
            sums["dist"] += np.sum(x, (-2, -1), where=off)
            sums["dist_sq"] += np.sum(x * x, (-2, -1), where=off)
            y = -np.log(dist) - etf_log
            sums["log"] += np.sum(y, (-2, -1), where=off)
            sums["log_sq"] += np.sum(y * y, (-2, -1), where=off)
    pairs = k * (k - 1)
    mean = {name: value / pairs for name, value in sums.items()}
    return {
        "cdnv": mean["cdnv"],
        "nc2_equiangle": mean["equiangle"],
        "gnc2_dist": np.maximum(mean["dist_sq"] - mean["dist"] ** 2, 0.0),
        "gnc2_log": np.maximum(mean["log_sq"] - mean["log"] ** 2, 0.0),
    }
