"""Where the global mean lies and which way NC4 counts: ncjax's convention, or rhubarbwu/neural-collapse's.

``"ncjax"`` (the default, docs/paper.md#metric-definitions):
``μ_G = (1/N) Σ_i h_i``, the sample mean (class means weighted by their counts),
and ``nc4`` the fraction of samples where the classifier and the nearest class
mean *disagree* (0 when collapsed).

``"rhubarbwu"``, to compare numbers with that PyTorch library:
``μ_G = (1/K) Σ_c μ_c``, the unweighted mean of the class means (what its
``MeanAccumulator.compute()`` returns by default), and ``nc4`` the fraction where
they *agree* (its ``clf_ncc_agreement``; 1 when collapsed).

The two global means coincide for balanced classes. The choice is made on the
host when the metrics are finished; the device passes do not depend on it.
"""

from __future__ import annotations

import numpy as np

from ncjax import errors

CONVENTIONS = ("ncjax", "rhubarbwu")


def checked(conventions: str) -> str:
    if conventions not in CONVENTIONS:
        raise errors.DataError(f"conventions must be one of {', '.join(CONVENTIONS)}; got {conventions!r}")
    return conventions


def mean_weights(count: np.ndarray, present: np.ndarray, conventions: str) -> np.ndarray:
    """Weights [S, K] of the class means in ``μ_G``: the counts, or 1 for every class in ``present``."""
    if conventions == "ncjax":
        return count.astype(np.float64)
    weights = np.zeros(count.shape)
    weights[:, present] = 1.0
    return weights


def nc4(mismatch: np.ndarray, total: np.ndarray, conventions: str) -> np.ndarray:
    """Disagreement (ncjax) or agreement (rhubarbwu) rate from the pass-2 mismatch count."""
    rate = mismatch / total
    return rate if conventions == "ncjax" else 1.0 - rate
