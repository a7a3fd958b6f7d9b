"""Per-class and pairwise quantities behind the scalar metrics, for histograms and heat maps.

The scalar metrics summarise distributions over classes and pairs of classes
(``nc2_equinorm`` the spread of the centred means' norms, ``nc2_equiangle`` that
of their cosines, ``cdnv`` and ``nc1_quotient`` the within-class variances); a
figure of collapse often shows the distributions themselves. They come from the
pass-1 statistics alone, on the host in float64.
"""

from __future__ import annotations

import numpy as np

from ncjax.collapse import conventions as convention
from ncjax.collapse import pairwise
from ncjax.collapse.statistics import ClassStats


def class_details(stats: ClassStats, conventions: str = "ncjax") -> dict[str, np.ndarray]:
    """Per-class and pairwise arrays of ``stats`` (any leading axes ``lead``), NaN for classes without samples.

    - ``class_counts`` [*lead, K]: samples per class;
    - ``class_mean_norms`` [*lead, K]: ``‖μ_c − μ_G‖``;
    - ``class_variances`` [*lead, K]: ``σ_c² = (1/n_c) Σ_{i∈c} ‖h_i − μ_c‖²``;
    - ``pairwise_cosines`` [*lead, K, K]: ``cos(μ_c − μ_G, μ_c' − μ_G)`` (−1/(K−1) off the diagonal at an ETF).

    ``μ_G`` follows ``conventions`` (:mod:`ncjax.collapse.conventions`), over the
    classes with samples in every leading slice.
    """
    conventions = convention.checked(conventions)
    count = np.asarray(stats.count)
    lead, (k, dim) = count.shape[:-1], stats.mean.shape[-2:]
    flat_count = count.reshape(-1, k)
    means = np.asarray(stats.mean, np.float64).reshape(-1, k, dim)
    present = np.flatnonzero(np.all(flat_count > 0, axis=0))
    weights = convention.mean_weights(flat_count, present, conventions)
    global_mean = (weights[:, None, :] @ means)[:, 0] / weights.sum(-1)[:, None]
    has = flat_count > 0
    centred = np.where(has[..., None], means - global_mean[:, None, :], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        variances = np.where(has, np.asarray(stats.sq_dev, np.float64).reshape(-1, k) / flat_count, np.nan)
    return {
        "class_counts": count.copy(),
        "class_mean_norms": np.linalg.norm(centred, axis=-1).reshape(lead + (k,)),
        "class_variances": variances.reshape(lead + (k,)),
        "pairwise_cosines": pairwise.cosine_grid(centred).reshape(lead + (k, k)),
    }
