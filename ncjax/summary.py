"""The sweep's tables from the workdir alone: summary.csv (one row per run) and slopes.csv.

Each run contributes its last metrics line. A run **fails** by a stated rule: it diverged
(its loss or gradient became NaN/Inf), its final training accuracy is below
``summary.min_train_accuracy``, its final loss is not finite, or one of the paper's headline
metrics (``figures.PAPER``) that it reports is not a finite positive number. Failed runs stay
in summary.csv with the reason, and are left out of every fit.

**One slope estimator everywhere** (tables and figures): for each seed, the least-squares
slope of log10(metric) on log10(axis value) over the runs of that seed that pass; then the
mean and the standard deviation (ddof = 1) of those per-seed slopes. The axis is
``summary.slope_axis`` (default ``depth``; runs at an axis value ≤ 0, e.g. a linear head of
depth 0, are drawn but not fitted); the other swept axes split the fits into panels.
Beside every slope: how many runs it used and how many were left out (failed runs, or a
metric that is NaN for a run, e.g. NC2 on centred means with two classes).
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Iterable

import numpy as np
from etils.epath import Path

from ncjax import experiment, figures, plan, records

# Figure panels and column order: each family's paper form first.
FAMILIES = {
    "NC1": ("nc1_quotient", "nc1", "cdnv"),
    "NC2": ("nc2_etf_w", "nc2_etf", "nc2_ortho", "nc2_equinorm", "nc2_equiangle", "gnc2_log", "gnc2_dist"),
    "NC3 / NC4": ("nc3_cos", "nc3", "unc3", "nc4"),
    "UFM": ("ufm_gap_relative", "ufm_distance"),
    "Linear head": ("balancedness",),
}
RUN_COLUMNS = ("seed", "status", "reason", "step", "epoch", "train_loss", "train_accuracy", "test_loss",
               "test_accuracy", "l2_penalty", "objective")
SLOPE_COLUMNS = ("metric", "seed", "slope", "runs_used", "runs_left_out")


def runs_lines(workdir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every evaluated run's metrics lines, by ``<point>/<seed folder>``: read once for tables and figures."""
    return {f"{run.parent.name}/{run.name}": lines for run in records.run_folders(workdir)
            if (lines := records.read_metrics(run))}


def failure(row: dict[str, Any], min_train_accuracy: float) -> str:
    """Why a run fails the stated rule ('' if it passes)."""
    if row.get("status") == "diverged":
        return f"diverged at step {row.get('diverged_at_step')}"
    if not math.isfinite(row.get("train_loss", math.nan)):
        return "training loss is not finite"
    if row.get("train_accuracy", 0.0) < min_train_accuracy:
        return f"training accuracy {row['train_accuracy']:.3f} < {min_train_accuracy}"
    bad = [m for m in figures.PAPER if m in row and not figures.finite_positive(row[m])]
    return f"{', '.join(bad)} not a finite positive number" if bad else ""


def metric_names(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Every scalar metric the rows carry: the families' order first, then the rest sorted."""
    present = {k for r in rows for k, v in r.items() if isinstance(v, float)}
    ordered = [m for family in FAMILIES.values() for m in family if m in present]
    skip = set(ordered) | set(RUN_COLUMNS) | {"diverged_at_step"}
    return ordered + sorted(k for k in present if k not in skip and "." not in k and k != "depth")


def log_log_slope(xs, values) -> tuple[float, int]:
    """Least-squares slope of log10(value) on log10(x) over the finite positive values, and how many."""
    xs, values = np.asarray(xs, float), np.asarray(values, float)
    ok = np.isfinite(values) & (values > 0) & (xs > 0)
    if len(np.unique(xs[ok])) < 2:
        return math.nan, int(ok.sum())
    return float(np.polyfit(np.log10(xs[ok]), np.log10(values[ok]), 1)[0]), int(ok.sum())


def slopes(rows: list[dict[str, Any]], axis: str, others: list[str], metrics: list[str]) -> list[dict[str, Any]]:
    """Per panel (values of the ``others`` axes) and metric: per-seed slopes, then their mean and std."""
    out = []
    for panel, members in _panels(rows, others):
        for metric in metrics:
            per_seed = []
            for seed in sorted({r["seed"] for r in members}):
                mine = [r for r in members if r["seed"] == seed and r[axis] > 0]  # log axes: x > 0 only
                used = [r for r in mine if not r["failed"]]
                slope, n = log_log_slope([r[axis] for r in used], [r.get(metric, math.nan) for r in used])
                per_seed.append(dict(panel, metric=metric, seed=seed, slope=slope, runs_used=n,
                                     runs_left_out=len(mine) - n))
            finite = np.array([s["slope"] for s in per_seed if math.isfinite(s["slope"])])
            used, left = sum(s["runs_used"] for s in per_seed), sum(s["runs_left_out"] for s in per_seed)
            mean = float(finite.mean()) if finite.size else math.nan
            std = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
            out += per_seed + [dict(panel, metric=metric, seed="mean", slope=mean, runs_used=used, runs_left_out=left),
                               dict(panel, metric=metric, seed="std", slope=std, runs_used=used, runs_left_out=left)]
    return out


def _panels(rows, others):
    keys = sorted({tuple(r.get(k) for k in others) for r in rows}, key=repr)
    return [(dict(zip(others, key)), [r for r in rows if tuple(r.get(k) for k in others) == key]) for key in keys]


def _csv(columns, rows) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def write(workdir: Path | str) -> Path:
    """Write summary.csv, slopes.csv and the figures (``ncjax.figures``); returns the workdir."""
    workdir = Path(workdir)
    lines_of = runs_lines(workdir)
    rows = [lines[-1] for lines in lines_of.values()]  # each run's last evaluation
    if not rows:
        raise records.WorkdirError(f"{workdir} holds no evaluated runs yet: nothing to summarise")
    if not records.is_writer():
        return workdir
    config = experiment.stored_config(records.read_config(workdir))
    axes = [key for key, _ in plan.axes(config)]
    axis = config.summary.slope_axis
    for row in rows:
        row["reason"] = failure(row, config.summary.min_train_accuracy)
        row["failed"] = bool(row["reason"])
        row["status"] = row.get("status") or ("failed" if row["failed"] else "ok")
    metrics = metric_names(rows)
    records.atomic_write(workdir / "summary.csv", _csv(axes + list(RUN_COLUMNS) + metrics, rows))
    others = [k for k in axes if k != axis]
    table = slopes(rows, axis, others, metrics) if axis in axes else []
    records.atomic_write(workdir / "slopes.csv", _csv(others + list(SLOPE_COLUMNS), table))
    figures.write(workdir, lines_of, rows, table, axis=axis, others=others, families=FAMILIES,
                  title=config.name or workdir.name)
    return workdir
