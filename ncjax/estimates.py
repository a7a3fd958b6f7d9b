"""How a run and a trend are estimated from metrics lines: one definition for the tables and the figures.

**A run** has two estimates. ``last``: its last evaluation. ``last3``: the mean of its last
three evaluations (:data:`WINDOW`; fewer when it has fewer), so that one checkpoint that caught
a dip cannot decide a run. The mean is **geometric** for the collapse metrics, which are read
and fitted on log axes (a geometric mean is the mean of the logs the fit uses), and
**arithmetic** for what is read on a linear axis (:func:`linear`: accuracies, losses, the
objective and its penalty, NC4, a fraction of samples that is often exactly 0). Per-block
lists are averaged block by block by the same rule.

**A trend** against an axis (depth, SNR, ...): per seed the least-squares slope of
log10(metric) on log10(x); the slopes' mean and standard deviation (ddof = 1) over seeds; and
R², how well a straight line describes the points: per seed, of its own fit; for the mean, of
the line of the mean slope through the centroid of the seeds' geometric means at each x
(the curve the figures draw), in log-log coordinates.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

WINDOW = 3
SUFFIX = "_last3"  # the last3 estimate's columns in summary.csv and slopes.csv: <column>_last3
PER_BLOCK = "_per_block"
# Float values of a metrics line that are no metric: where the run is, not what it measured.
NOT_METRICS = ("epoch",)


def linear(metric: str) -> bool:
    """Read on a linear axis and averaged arithmetically: accuracies, losses, the objective, NC4."""
    name = metric.removesuffix(PER_BLOCK).removeprefix("test_")
    return "accuracy" in name or "loss" in name or name in ("objective", "l2_penalty", "nc4")


def is_metric(key: str, value: Any) -> bool:
    """A measured value of a metrics line (a float or a per-block list), not an axis value
    (``train.l2``: dotted keys), a counter (step, seed: integers) or the epoch."""
    if "." in key or key in NOT_METRICS:
        return False
    return isinstance(value, float) or (key.endswith(PER_BLOCK) and isinstance(value, list))


def geometric_mean(values, axis=None):
    """exp(mean(log v)); 0 where one value is 0; NaN where one is negative or not finite."""
    v = np.asarray(values, float)
    bad = ~np.isfinite(v) | (v < 0)
    with np.errstate(divide="ignore"):
        mean = np.exp(np.log(np.where(bad, 1.0, v)).mean(axis=axis))
    return np.where(bad.any(axis=axis), np.nan, mean)


def mean(metric: str, values, axis=None):
    """The mean of ``values`` of ``metric`` by the rule of the module docstring."""
    if linear(metric):
        return np.asarray(values, float).mean(axis=axis)
    return geometric_mean(values, axis=axis)


def last3(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's last3 estimate as a metrics line: its last line with every metric replaced by the mean
    over the last :data:`WINDOW` evaluations, and ``steps`` naming the evaluations averaged."""
    window = lines[-WINDOW:]
    out = dict(lines[-1], steps=" ".join(str(line["step"]) for line in window))
    for key, value in lines[-1].items():
        if not is_metric(key, value):
            continue
        values = [line[key] for line in window if key in line]
        if isinstance(value, list) and len({len(v) for v in values if isinstance(v, list)}) != 1:
            continue  # ragged per-block lists (never written by one run): keep the last
        averaged = mean(key, [np.asarray(v, float) for v in values], axis=0)
        out[key] = averaged.tolist() if isinstance(value, list) else float(averaged)
    return out


def _log_points(xs, ys):
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    ok = np.isfinite(xs) & np.isfinite(ys) & (xs > 0) & (ys > 0)
    return np.log10(xs[ok]), np.log10(ys[ok])


def _r2(lx, ly, slope: float, intercept: float) -> float:
    total = float(((ly - ly.mean()) ** 2).sum())
    if len(lx) < 2 or total == 0.0:
        return math.nan
    return 1.0 - float(((ly - slope * lx - intercept) ** 2).sum()) / total


def fit(xs, ys) -> tuple[float, int, float]:
    """Least-squares slope of log10 y on log10 x over the points a log axis can show, how many, and R²."""
    lx, ly = _log_points(xs, ys)
    if len(np.unique(lx)) < 2:
        return math.nan, len(lx), math.nan
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(slope), len(lx), _r2(lx, ly, slope, intercept)


def seed_means(xs, ys) -> tuple[list[float], list[float]]:
    """The geometric mean of the values a log axis can show at each distinct x > 0 (over seeds)."""
    lx, ly = _log_points(xs, ys)
    grid = sorted(set(lx.tolist()))
    return [10 ** x for x in grid], [float(10 ** ly[lx == x].mean()) for x in grid]


def mean_line(xs, ys, slope: float) -> tuple[float, float]:
    """The line of ``slope`` through the centroid of the seeds' means of (xs, ys) in log-log coordinates:
    its intercept (log10) and its R² on those means."""
    mx, my = seed_means(xs, ys)
    lx, ly = np.log10(mx), np.log10(my)
    if not lx.size or not math.isfinite(slope):
        return math.nan, math.nan
    intercept = float(ly.mean() - slope * lx.mean())
    return intercept, _r2(lx, ly, slope, intercept)


def summarise(per_seed: Iterable[float]) -> tuple[float, float]:
    """Mean and standard deviation (ddof = 1) of the finite per-seed slopes (NaN where too few)."""
    finite = np.array([s for s in per_seed if math.isfinite(s)])
    mean_ = float(finite.mean()) if finite.size else math.nan
    return mean_, float(finite.std(ddof=1)) if finite.size > 1 else math.nan
