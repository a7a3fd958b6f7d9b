"""Collapse against the slope axis (``nc_vs_<axis>[-<panel>].png``): one panel per metric family.

Drawn from the robust estimate of every run (``ncjax.estimates``: its last three evaluations
averaged): per-seed points, the mean over seeds (geometric on log axes), and the fitted line of
the slope in slopes.csv (mean ± std of the per-seed log-log slopes) **only where a straight
line describes the points** (R² ≥ :data:`MIN_R2` on the seeds' means): a V-shaped curve, e.g.
against the SNR, gets its slope and R² in the legend but no line. NC4 (a fraction, often
exactly 0) and the accuracies are drawn on linear axes and not fitted; UNC3 (unbounded, it
scales with W and h) has its own axis. Failed runs are × (▲/▼ beyond the axis), never fitted;
a value a log axis cannot show (0, NaN) is counted as "not drawable".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from etils.epath import Path

from ncjax import estimates
from ncjax.figures.setup import title
from ncjax.figures.style import finite, finite_positive, label, log_limits, pyplot, save_figure, styled, symbol

MIN_R2 = 0.8
SHOWN = 4  # metrics per panel at most: the family's first (its paper form first)
# Panels and their order: each family's paper form first, its test-set twin beside it.
FAMILIES = {
    "NC1": ("nc1_quotient", "test_nc1_quotient", "nc1", "cdnv"),
    "NC2": ("nc2_etf_w", "nc2_etf_w_centred", "nc2_etf", "nc2_ortho", "nc2_equinorm", "nc2_equiangle",
            "gnc2_log", "gnc2_dist"),
    "NC3": ("nc3_cos", "nc3"),
    "UNC3": ("unc3", "unc3_normalised"),
    "NC4": ("nc4", "test_nc4"),
    "UFM": ("ufm_gap_relative", "ufm_distance"),
    "Linear head": ("balancedness",),
    "Accuracy": ("train_accuracy", "test_accuracy", "ncc_accuracy", "test_ncc_accuracy"),
}
Y_LABELS = {
    "NC1": "within- / between-class variability", "NC2": "distance to a simplex ETF",
    "NC3": "classifier vs class means", "UNC3": "variance of ⟨w_c, μ_c − μ_G⟩",
    "NC4": "fraction: classifier ≠ NCC",
    "UFM": "gap or distance to the UFM optimum", "Linear head": "balancedness", "Accuracy": "accuracy",
}


def _tick_labels(values) -> tuple[list[str], bool]:
    """The swept values' labels, and whether to slant them: many or long labels (a λ axis: 0.000147, …)
    would overlap their neighbours."""
    labels = [f"{int(v):,}" if float(v).is_integer() else f"{v:.3g}" for v in values]  # widths: 1,024, not 1.02e+03
    return labels, len(values) > 4 and max(map(len, labels)) > 3


def _x_ticks(ax, values, labels, slanted: bool) -> None:
    """Log x axis at the swept values (symmetric-log, linear below 1, when a value is 0)."""
    import matplotlib.ticker

    ax.set_xscale("symlog", linthresh=1.0) if min(values) <= 0 else ax.set_xscale("log")
    ax.set_xticks(values, labels)
    if slanted:
        ax.tick_params(axis="x", labelrotation=40)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _scatter_failed(ax, xs, ys, limits, color) -> None:
    """Failed runs as ×, or as ▲/▼ on the edge where they lie beyond the successful runs' range."""
    low, high = limits or (-math.inf, math.inf)
    for marker, keep in (("x", lambda y: low <= y <= high), ("^", lambda y: y > high), ("v", lambda y: y < low)):
        points = [(x, min(max(y, low), high)) for x, y in zip(xs, ys) if keep(y)]
        if points:
            ax.scatter(*zip(*points), s=22, marker=marker, color=color, alpha=0.55, clip_on=False)


def slope_row(slopes, panel: dict[str, Any], metric: str) -> dict[str, float] | None:
    """The robust estimate's slope of ``metric`` in ``panel``: mean, std and R² (None if not fitted)."""
    rows = {s["seed"]: s for s in slopes if s["metric"] == metric and all(s.get(k) == v for k, v in panel.items())}
    if "mean" not in rows:
        return None
    key = "slope" + estimates.SUFFIX
    return dict(mean=rows["mean"][key], std=rows["std"][key], r2=rows["mean"]["r2" + estimates.SUFFIX])


def fit_text(fit) -> str:
    """'slope −0.32 ± 0.03, R² 0.98', and why no line is drawn when none is."""
    if not math.isfinite(fit["mean"]):
        return "no fit (too few runs pass)"
    text = f"slope {fit['mean']:+.2f}" + (f" ± {fit['std']:.2f}" if math.isfinite(fit["std"]) else " (1 seed)")
    if not (fit["r2"] >= MIN_R2):  # NaN too: a flat curve has no variance to explain
        return f"{text}; no line (R² = {fit['r2']:.2f})"
    return f"{text}, R² = {fit['r2']:.2f}"


def _panels(mine) -> dict[str, list[str]]:
    shown = {name: [m for m in metrics if any(isinstance(r.get(m), float) for r in mine)][:SHOWN]
             for name, metrics in FAMILIES.items()}
    return {name: metrics for name, metrics in shown.items() if metrics}


def _draw_metric(ax, mine, xs, axis, metric, color, limits, fit, linear) -> str:
    """One metric of a panel; returns its legend text."""
    drawable = finite if linear else finite_positive
    ok = [r for r in mine if not r["failed"] and drawable(r.get(metric))]
    hidden = sum(1 for r in mine if not r["failed"] and metric in r and not drawable(r[metric]))
    bad = [r for r in mine if r["failed"] and drawable(r.get(metric))]
    ax.scatter([r[axis] for r in ok], [r[metric] for r in ok], s=9, color=color, alpha=0.45)
    _scatter_failed(ax, [r[axis] for r in bad], [r[metric] for r in bad], limits, color)
    means = [(x, float(estimates.mean(metric, [r[metric] for r in ok if r[axis] == x]))) for x in xs
             if any(r[axis] == x for r in ok)]
    if means:
        ax.plot(*zip(*means), color=color, lw=2.0, marker="o", ms=3)
    text = label(metric)
    if fit is not None:
        text += "\n" + fit_text(fit)
        fitted = [r for r in ok if r[axis] > 0]
        if fit["r2"] >= MIN_R2 and fitted:
            intercept, _ = estimates.mean_line([r[axis] for r in fitted], [r[metric] for r in fitted], fit["mean"])
            grid = np.array([x for x in xs if x > 0], float)
            ax.plot(grid, 10 ** (intercept + fit["mean"] * np.log10(grid)), color=color, ls="--", lw=1.2)
    return text + (f"\n{hidden} not drawable" if hidden else "")


@styled
def against_axis(rows, slopes, axis: str, panel: dict[str, Any], path: Path, setup: list[str]) -> None:
    """Small multiples of collapse against the slope axis for one panel of the other axes."""
    plt = pyplot()
    mine = [r for r in rows if all(r.get(k) == v for k, v in panel.items())]
    xs = sorted({r[axis] for r in mine})
    labels, slanted = _tick_labels(xs)
    shown = _panels(mine)
    cols = min(len(shown), 4)
    nrows = -(-len(shown) // cols)
    row_height = 3.9 + (0.6 if slanted else 0.0)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.1 * cols, row_height * nrows + 0.7), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    for ax, (family, metrics) in zip(axes.flat, shown.items()):
        linear = family in ("Accuracy", "NC4")
        drawable = finite if linear else finite_positive
        limits = None if linear else log_limits([r[m] for m in metrics for r in mine
                                                 if not r["failed"] and drawable(r.get(m))])
        handles = []
        for index, metric in enumerate(metrics):
            fit = None if linear else slope_row(slopes, panel, metric)
            text = _draw_metric(ax, mine, xs, axis, metric, f"C{index}", limits, fit, linear)
            handles.append(plt.Line2D([], [], color=f"C{index}", marker="o", ms=3, lw=2.0, label=text))
        if not linear:
            ax.set_yscale("log")
            if limits:
                ax.set_ylim(*limits)
        elif family == "NC4":
            ax.set_ylim(bottom=0)
        _x_ticks(ax, xs, labels, slanted)
        ax.set_xlabel(f"{symbol(axis)} ({axis})" if symbol(axis) != axis else axis)
        ax.set_ylabel(Y_LABELS[family] + ("" if linear else " (log)"))
        ax.set_title(family)
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.3 if slanted else -0.2),
                  frameon=False, handlelength=1.5)
    seeds = len({r["seed"] for r in mine})
    failed = sum(r["failed"] for r in mine)
    caption = [f"dots: each run's mean of its last {estimates.WINDOW} evaluations ({seeds} seeds)",
               "solid: mean over seeds (geometric on log axes)",
               f"dashed: log-log fit where R² ≥ {MIN_R2} (slope: mean ± std of per-seed fits)",
               f"×: failed run ({failed or 'none'} here), not fitted (▲/▼: beyond the axis)",
               "not drawable: 0 or NaN on a log axis"]
    fig.suptitle(title(setup, caption, fig.get_figwidth()))
    save_figure(fig, path)
