"""The sweep's summary: summary.csv and nc_vs_depth.png from the runs' metrics.jsonl.

Each run contributes its last evaluated checkpoint. The fitted slope of
log10(metric) against log10(depth) (the paper reports about −1/3) is given per
seed and as mean ± std over seeds, in the table and in the plot's legend.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np
from etils.epath import Path

from ncjax import collapse, records

PLOTTED = ("nc1", "nc1_quotient", "cdnv", "nc2_etf", "nc2_equinorm", "nc2_equiangle", "nc3", "ufm_distance",
           "ufm_gap")
METRICS = collapse.METRIC_NAMES + ("ufm_distance", "ufm_gap")
COLUMNS = ("kind", "depth", "seed", "step", "epoch", "train_loss", "l2_penalty", "objective",
           "train_accuracy", "test_accuracy") + METRICS


def final_rows(workdir: Path | str) -> list[dict[str, Any]]:
    """The last metrics line of every run."""
    return [dict(lines[-1], kind="run") for lines in map(records.read_metrics, records.run_folders(workdir)) if lines]


def log_log_slope(depths, values) -> float:
    """Least-squares slope of log10(value) on log10(depth); NaN if under two usable points."""
    depths, values = np.asarray(depths, float), np.asarray(values, float)
    ok = (values > 0) & np.isfinite(values)
    if len(np.unique(depths[ok])) < 2:
        return math.nan
    return float(np.polyfit(np.log10(depths[ok]), np.log10(values[ok]), 1)[0])


def slopes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Slope rows: one per seed, then the mean and std over seeds."""
    out = []
    for seed in sorted({r["seed"] for r in rows}):
        mine = [r for r in rows if r["seed"] == seed]
        out.append(dict(kind="slope", seed=seed, **{
            m: log_log_slope([r["depth"] for r in mine], [r.get(m, math.nan) for r in mine]) for m in METRICS}))
    if out:
        table = {m: np.array([s[m] for s in out], float) for m in METRICS}
        out.append(dict(kind="slope", seed="mean", **{m: _nan_stat(np.nanmean, v) for m, v in table.items()}))
        out.append(dict(kind="slope", seed="std", **{m: _nan_stat(np.nanstd, v) for m, v in table.items()}))
    return out


def _nan_stat(fn, values) -> float:
    return float(fn(values)) if np.any(np.isfinite(values)) else math.nan


def write(workdir: Path | str) -> Path:
    """Write summary.csv and nc_vs_depth.png; returns the workdir."""
    workdir = Path(workdir)
    rows = final_rows(workdir)
    if not rows:
        raise records.WorkdirError(f"{workdir} holds no evaluated runs yet: nothing to summarise")
    if not records.is_writer():
        return workdir
    table = rows + slopes(rows)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
    records.atomic_write(workdir / "summary.csv", text.getvalue())
    plot(rows, workdir / "nc_vs_depth.png", title=records.read_config(workdir).get("name", workdir.name))
    return workdir


def plot(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Collapse against depth on log-log axes: mean over seeds, min–max band, fitted slope."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted({r["depth"] for r in rows})
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=110)
    for metric in PLOTTED:
        grid = np.array([[r.get(metric, math.nan) for r in rows if r["depth"] == d] for d in depths], dtype=object)
        values = [np.asarray(g, float) for g in grid]
        if not all(np.any(np.isfinite(v) & (v > 0)) for v in values):
            continue
        mean = np.array([np.nanmean(np.where(v > 0, v, np.nan)) for v in values])
        low = np.array([np.nanmin(np.where(v > 0, v, np.nan)) for v in values])
        high = np.array([np.nanmax(np.where(v > 0, v, np.nan)) for v in values])
        slope = log_log_slope(depths, mean)
        (line,) = ax.plot(depths, mean, marker="o", label=f"{metric} (slope {slope:+.2f})")
        ax.fill_between(depths, low, high, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("depth L")
    ax.set_ylabel("collapse metric (lower = more collapsed)")
    seeds = len({r["seed"] for r in rows})
    ax.set_title(f"{title}: mean over {seeds} seed(s), band = min–max")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as PNG to a local or ``gs://`` path, and free it."""
    import matplotlib.pyplot as plt

    fig.axes[0].grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    records.atomic_write(Path(path), png.getvalue())
