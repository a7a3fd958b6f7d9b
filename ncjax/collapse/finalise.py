"""Host finalisation: pass-1 and pass-2 statistics (any leading axes) → the metrics, in float64.

:func:`metrics` returns ``{name: numpy array of the statistics' leading shape}``
holding exactly the metrics its inputs determine (see the table in
``docs/metrics.md``). Two rules make a value NaN, and each time a
:class:`UndefinedMetricWarning` says which metrics and why:

- K = 2 classes: NC2 on centred means (``nc2_equinorm``, ``nc2_equiangle``,
  ``nc2_etf``, ``gnc2_dist``, ``gnc2_log``) carries no geometry — two centred means
  are always antipodal; read ``nc2_etf_w`` instead.
- All class means coincide (tr Σ_B ≈ 0: every eigenvalue of the between-class
  Gram matrix is float32 round-off): every metric that divides by the
  between-class spread is NaN, never 0 (a failed network must not look collapsed).

Metrics left out because no second pass was given (``ncc_accuracy``, ``nc4``,
``nc3_cos``, and ``nc1`` without the scatter) are named in a
:class:`SecondPassWarning`: a one-pass loop must not silently lose them.
Non-finite statistics are not refused here (a diverged member's metrics are
NaN); the caller's arrays are checked where they enter (``inputs``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from ncjax import errors
from ncjax.collapse import conventions as convention
from ncjax.collapse import pairwise, spectral
from ncjax.collapse.matrices import duality_distance, frame_distance, ood_alignment
from ncjax.collapse.second_pass import SecondPassStats
from ncjax.collapse.statistics import ClassStats, present_classes

CLASSIFIER_FREE = (
    "nc1", "nc1_quotient", "cdnv", "nc2_equinorm", "nc2_equiangle", "nc2_etf", "nc2_ortho",
    "gnc2_dist", "gnc2_log", "ncc_accuracy", "nc5", "effective_rank_features", "effective_rank_means",
)
CLASSIFIER = ("nc2_etf_w", "nc3", "nc3_cos", "unc3", "unc3_normalised", "nc4")
# The first nine keep their historical order (summary.csv columns).
METRIC_NAMES = (
    "nc1", "nc1_quotient", "cdnv", "nc2_equinorm", "nc2_equiangle", "nc2_etf", "nc2_etf_w", "nc3", "nc4",
    "nc2_ortho", "gnc2_dist", "gnc2_log", "nc3_cos", "unc3", "unc3_normalised", "ncc_accuracy", "nc5",
    "effective_rank_features", "effective_rank_means",
)
CENTRED_NC2 = ("nc2_equinorm", "nc2_equiangle", "nc2_etf", "gnc2_dist", "gnc2_log")
NEEDS_BETWEEN_SPREAD = ("nc1", "nc1_quotient", "cdnv") + CENTRED_NC2 + (
    "nc3", "unc3_normalised", "nc5", "effective_rank_means")


class UndefinedMetricWarning(UserWarning):
    """A metric is NaN because it is undefined for these statistics (the message says why)."""


class SecondPassWarning(UserWarning):
    """Metrics that need the second pass were left out because it was not given (the message names them)."""


SMALL_PROBLEM = 2048  # K and D up to this: one BLAS thread (see _blas_threads)
_controller: ThreadpoolController | None = None


def _blas_threads(slices: int, size: int):
    """One BLAS thread for many small problems or one of moderate size; a vocabulary-sized one keeps its threads.

    Threaded BLAS thrashes on small problems, most of all on a machine shared with other jobs: 1,280
    eigen-problems of 100×100 on 2 busy cores took 37 s threaded and 1.4 s on one thread; one 512×512
    float64 ``eigvalsh`` takes 0.02 s on one thread and 0.07 to 7 s on two beside other jobs. The
    controller is built once (building one scans the loaded libraries: about 1 ms).
    """
    global _controller
    if slices == 1 and size > SMALL_PROBLEM:
        return contextlib.nullcontext()
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def _uncentred_gram(spectrum: spectral.BetweenSpectrum, centred: np.ndarray, global_mean: np.ndarray) -> np.ndarray:
    """The smaller Gram matrix of the uncentred means ``M = M̃ + 1μ_Gᵀ``, from that of M̃ by rank-two updates."""
    k = centred.shape[-2]
    if spectrum.classes_side:  # MMᵀ = M̃M̃ᵀ + a1ᵀ + 1aᵀ + ‖μ_G‖²11ᵀ, a = M̃μ_G
        a = (centred @ global_mean[..., None])[..., 0]
        return (spectrum.gram + a[..., :, None] + a[..., None, :]
                + np.sum(global_mean**2, -1)[..., None, None])
    s = centred.sum(-2)  # MᵀM = M̃ᵀM̃ + sμ_Gᵀ + μ_Gsᵀ + Kμ_Gμ_Gᵀ, s = M̃ᵀ1
    outer = s[..., :, None] * global_mean[..., None, :]
    return (spectrum.gram + outer + np.swapaxes(outer, -1, -2)
            + k * global_mean[..., :, None] * global_mean[..., None, :])


def _flat(x, lead: tuple[int, ...], tail: int) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x.reshape((int(np.prod(lead, dtype=int)),) + x.shape[x.ndim - tail:])


def _checked_present(stats: ClassStats) -> np.ndarray:
    num_classes = stats.count.shape[-1]
    out_of_range = int(np.sum(np.asarray(stats.out_of_range)))
    if out_of_range:
        raise errors.DataError(
            f"{out_of_range} labels were ≥ num_classes={num_classes}; labels must lie in [0, {num_classes}) "
            "(negative labels mark padding): check num_classes")
    present = present_classes(stats)
    if present.size < 2:
        raise errors.DataError(
            f"collapse metrics need samples of at least two classes; got {present.size} "
            f"class(es) with samples out of num_classes={num_classes}")
    missing = np.setdiff1d(np.arange(num_classes), present)
    if missing.size:
        shown = missing.tolist() if missing.size <= 20 else f"{missing[:20].tolist()} and {missing.size - 20} more"
        warnings.warn(f"classes {shown} have no samples and are left out of the collapse metrics", stacklevel=3)
    return present


def _classifier(weight, bias, lead, num_classes: int, dim: int, present: np.ndarray):
    w = np.asarray(weight, np.float64)
    if w.shape[-2:] != (num_classes, dim) or w.ndim not in (2, 2 + len(lead)) or (
            w.ndim > 2 and w.shape[:-2] != lead):
        raise errors.DataError(
            f"weight must be [num_classes, dim] = [{num_classes}, {dim}] (rows are classes; transpose a "
            f"Flax Dense kernel), optionally led by {list(lead)}; got shape {w.shape}")
    b = np.zeros(w.shape[:-1]) if bias is None else np.asarray(bias, np.float64)
    if b.shape != w.shape[:-1]:
        raise errors.DataError(f"bias must have shape {list(w.shape[:-1])}; got {list(b.shape)}")
    s = int(np.prod(lead, dtype=int))
    w = np.broadcast_to(w, lead + w.shape[-2:]).reshape((s, num_classes, dim))[:, present]
    return w, np.broadcast_to(b, lead + b.shape[-1:]).reshape((s, num_classes))[:, present]


def _warn_missing(stats: ClassStats, weight, second: SecondPassStats | None) -> None:
    missing = [] if second is not None else ["ncc_accuracy"] + (["nc1"] if stats.scatter is None else [])
    if weight is not None and (second is None or second.nc4_mismatch is None):
        missing += ["nc4", "nc3_cos"]
    if missing:
        how = ("empty_second(stats, classifier=True)" if weight is not None else "empty_second(stats)")
        warnings.warn(
            f"{', '.join(missing)} left out: computing them needs the second pass over the same data against "
            f"the final class means; pass second= (collapse.update_second per batch, or {how} + accumulate_second)",
            SecondPassWarning, stacklevel=3)


def _warn_nan(names, why: str, where: np.ndarray, lead: tuple[int, ...]) -> None:
    if not np.any(where):
        return
    if lead:
        hit = np.argwhere(where.reshape(lead))
        place = f" at {hit.shape[0]} of {where.size} leading positions (first: {tuple(int(i) for i in hit[0])})"
    else:
        place = ""
    warnings.warn(f"{', '.join(names)} are NaN{place}: {why}", UndefinedMetricWarning, stacklevel=3)


def metrics(stats: ClassStats, weight=None, bias=None, *, second: SecondPassStats | None = None,
            ood: ClassStats | None = None, conventions: str = "ncjax") -> dict[str, np.ndarray]:
    """The collapse metrics (docs/paper.md#metric-definitions names) of accumulated statistics, in float64.

    ``stats`` from pass 1 with any leading axes ``lead``; every value has shape
    ``lead``. ``weight`` [K, D] or [*lead, K, D] (rows are classes), ``bias``
    alike: the classifier metrics. ``second``: pass-2 sums (``ncc_accuracy``,
    ``nc4``, ``nc3_cos``, and ``nc1`` when ``stats`` has no scatter); without
    them those are left out with a :class:`SecondPassWarning`. ``ood``: one-class
    pass-1 statistics of out-of-distribution features (``nc5``). Classes without
    samples are left out with a warning; labels ≥ K seen in pass 1 are an error.
    ``conventions="rhubarbwu"``: μ_G the mean of the class means and ``nc4`` an
    agreement rate (:mod:`ncjax.collapse.conventions`); ``nc3_cos`` and
    ``effective_rank_features`` keep the sample mean.
    """
    conventions = convention.checked(conventions)
    present = _checked_present(stats)
    num_classes, dim = stats.mean.shape[-2:]
    lead = tuple(stats.count.shape[:-1])
    k = present.size
    all_count = _flat(stats.count, lead, 1)
    count = all_count[:, present]
    sq_dev = _flat(stats.sq_dev, lead, 1)[:, present]
    total = all_count.sum(-1)
    # One float64 copy of the means, centred in place: [S, K, D] is the largest array here.
    centred = _flat(stats.mean, lead, 2)
    if isinstance(stats.mean, np.ndarray) and np.shares_memory(centred, stats.mean):
        centred = centred.copy()  # the caller's float64 array: never modify it
    weights = convention.mean_weights(all_count, present, conventions)
    global_mean = (weights[:, None, :] @ centred)[:, 0] / weights.sum(-1)[:, None]
    if k < num_classes:
        centred = centred[:, present]
    means_energy = np.sum(centred**2, (-2, -1))  # Σ_c ‖μ_c‖² (uncentred): tr MMᵀ
    centred -= global_mean[:, None, :]  # M̃
    scatter = None if stats.scatter is None else _flat(stats.scatter, lead, 2)
    within = None if scatter is None else 0.5 * (scatter + np.swapaxes(scatter, -1, -2)) / total[:, None, None]
    if second is not None:
        seen = _flat(second.count, lead, 0)
        if not np.array_equal(seen, total):
            raise errors.DataError(
                f"the second pass saw {int(seen.sum())} samples and the first {int(total.sum())}: "
                "both passes must stream the same data")

    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"), _blas_threads(len(total), max(k, dim)):
        classes_side = k <= dim or scatter is None
        spectrum = spectral.between_spectrum(centred, means_energy, classes_side)
        if classes_side and second is not None and second.projected is not None:
            projected = _flat(second.projected, lead, 2)[:, present][:, :, present] / total[:, None, None]
            if conventions != "ncjax":  # pass 2 projected on M̃ (sample-mean centred); here M̃' = CM̃, C = I − 11ᵀ/k
                projected = _double_centred(projected)
            out["nc1"] = spectral.nc1(spectrum, projected)
        elif classes_side and within is not None:
            out["nc1"] = spectral.nc1(spectrum, centred @ within @ np.swapaxes(centred, -1, -2))
        elif within is not None:
            out["nc1"] = spectral.nc1(spectrum, within)

        trace_between = np.sum(centred**2, (-2, -1)) / k
        out["nc1_quotient"] = (sq_dev.sum(-1) / total) / trace_between
        out.update(pairwise.pair_sums(centred, sq_dev / count, spectrum.gram if classes_side else None))
        norms = np.linalg.norm(centred, axis=-1)
        out["nc2_equinorm"] = norms.std(-1) / norms.mean(-1)
        out["nc2_etf"] = frame_distance(centred, spectrum.gram)
        uncentred = _uncentred_gram(spectrum, centred, global_mean)
        out["nc2_ortho"] = np.sqrt(np.maximum(
            2.0 - 2.0 * means_energy / (math.sqrt(k) * np.sqrt(np.sum(uncentred**2, (-2, -1)))), 0.0))
        out["effective_rank_means"] = spectral.entropy_rank(np.sqrt(np.maximum(spectrum.values, 0.0)),
                                                            spectrum.kept)
        if within is not None:  # the features' covariance about their sample mean, whatever the convention
            spread = centred - (count[:, None, :] @ centred) / count.sum(-1)[:, None, None]
            between = np.swapaxes(spread * count[..., None], -1, -2) @ spread / total[:, None, None]
            out["effective_rank_features"] = spectral.covariance_rank(within + between)
        if second is not None:
            out["ncc_accuracy"] = _flat(second.ncc_correct, lead, 0) / total
        if ood is not None:
            out["nc5"] = _nc5(ood, lead, centred, global_mean)

        if weight is not None:
            w, _ = _classifier(weight, bias, lead, num_classes, dim, present)
            out["nc2_etf_w"] = frame_distance(w)
            out["nc3"] = duality_distance(w, centred)
            duality = np.sum(w * centred, -1)  # ⟨w_c, μ_c − μ_G⟩: [S, K]
            out["unc3"] = duality.var(-1)
            out["unc3_normalised"] = out["unc3"] / duality.mean(-1) ** 2
        if second is not None and second.nc4_mismatch is not None:
            out["nc4"] = convention.nc4(_flat(second.nc4_mismatch, lead, 0), total, conventions)
            out["nc3_cos"] = 1.0 - _flat(second.nc3_cos_sum, lead, 0) / total

    degenerate = spectrum.degenerate
    for name in NEEDS_BETWEEN_SPREAD:
        if name in out:
            out[name] = np.where(degenerate, np.nan, out[name])
    _warn_nan([n for n in NEEDS_BETWEEN_SPREAD if n in out],
              "all class means coincide (tr Σ_B ≈ 0): the network separates no classes", degenerate, lead)
    if k == 2:
        for name in CENTRED_NC2:
            out[name] = np.full(len(total), np.nan)
        _warn_nan(CENTRED_NC2, "with K = 2 classes the two centred class means are always antipodal, so NC2 on "
                  "centred means carries no geometry; read nc2_etf_w", np.ones(len(total), bool) & ~degenerate, lead)
    _warn_missing(stats, weight, second)
    return {name: out[name].reshape(lead) for name in METRIC_NAMES if name in out}


def _nc5(ood: ClassStats, lead, centred: np.ndarray, global_mean: np.ndarray) -> np.ndarray:
    if ood.mean.shape[-2] != 1 or tuple(ood.count.shape[:-1]) != lead or ood.mean.shape[-1] != centred.shape[-1]:
        raise errors.DataError(
            f"ood must be one-class statistics [*{list(lead)}, 1, {centred.shape[-1]}] of the out-of-distribution "
            f"features (labels all 0); got means of shape {list(ood.mean.shape)}")
    if np.any(np.asarray(ood.count) == 0):
        raise errors.DataError("ood statistics hold no samples: nc5 needs out-of-distribution features")
    return ood_alignment(centred, _flat(ood.mean, lead, 2)[:, 0] - global_mean)


def _double_centred(p: np.ndarray) -> np.ndarray:
    """``C P C`` with ``C = I − 11ᵀ/k`` for P [S, k, k]: P's rows and columns centred."""
    p = p - p.mean(-1, keepdims=True)
    return p - p.mean(-2, keepdims=True)


def as_json(values: dict[str, Any]) -> dict[str, Any]:
    """Metrics as Python floats (0-d) or nested lists of floats: ``json.dumps``-ready (NaN allowed)."""
    return {name: (np.asarray(v, np.float64).tolist() if np.ndim(v) else float(v)) for name, v in values.items()}
