"""The sweep's figures, from the workdir alone (``python -m ncjax.sweep --workdir=W`` redraws them).

- ``nc_vs_<axis>[-<panel>].png``: small multiples, one panel per metric family (NC1, NC2,
  NC3/NC4, UFM), against the slope axis on log-log axes: per-seed points, the mean over
  seeds, and the fitted line whose slope (mean ± std of per-seed fits, the estimator of
  ``ncjax.summary``) is in the legend. Failed runs are drawn as grey crosses, not fitted.
- ``collapse_vs_steps.png``: the paper's metrics and training accuracy against training
  steps, one line per point of the sweep (mean over seeds).
- ``nc1_vs_block.png``: NC1 of every block's output against the block index, one line per
  point: collapse building up through the layers.
- ``collapse_vs_loss.png`` (when the evaluations record the full-batch gradient norm):
  NC1 against the training loss and against the gradient norm, along training.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from etils.epath import Path

from ncjax import plan, records

# The paper's forms of NC1, NC2 and NC3 (science.md §2): reported, drawn and checked first.
PAPER = ("nc1_quotient", "nc2_etf_w", "nc3_cos")
ACCURACIES = ("train_accuracy", "test_accuracy")  # a last panel: collapse and generalisation side by side


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _readable_log_ticks(axis) -> None:
    """Ticks at 1, 2 and 5 times powers of ten (fewer on a long axis), labelled plainly: log axes
    spanning under a decade otherwise get overlapping '3×10⁻¹'-style labels or none. Call it once
    the data are drawn: the axis's span chooses the ticks."""
    import matplotlib.ticker

    low, high = sorted(axis.get_view_interval())
    decades = math.log10(high / low) if low > 0 and high > 0 else 0.0
    subs = (1.0, 2.0, 5.0) if decades <= 2 else (1.0, 3.0) if decades <= 4 else (1.0,)
    axis.set_major_locator(matplotlib.ticker.LogLocator(subs=subs))
    axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as PNG to a local or ``gs://`` path (atomically), and free it."""
    plt = _pyplot()
    for ax in fig.axes:
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_yscale() == "log":
            _readable_log_ticks(ax.yaxis)
        if ax.get_xscale() == "log" and not ax.get_xticklabels():
            _readable_log_ticks(ax.xaxis)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    records.atomic_write(Path(path), png.getvalue())


def _label(metric: str) -> str:
    return f"{metric} (paper)" if metric in PAPER else metric


def _panel_name(panel: dict[str, Any]) -> str:
    return plan.point_folder(tuple(panel.items()), {k: k.split(".")[-1] for k in panel})


def _log_x_ticks(ax, values) -> None:
    """Log x axis at the swept values (symmetric-log, linear below 1, when a value is 0)."""
    import matplotlib.ticker

    if min(values) <= 0:
        ax.set_xscale("symlog", linthresh=1.0)
    else:
        ax.set_xscale("log")
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def against_axis(rows, slopes, axis: str, panel: dict[str, Any], families: dict[str, tuple[str, ...]],
                 path: Path, title: str) -> None:
    """Small multiples of collapse against the slope axis for one panel of the other axes."""
    plt = _pyplot()
    mine = [r for r in rows if all(r.get(k) == v for k, v in panel.items())]
    xs = sorted({r[axis] for r in mine})
    shown = {name: [m for m in metrics if any(isinstance(r.get(m), float) for r in mine)][:4]
             for name, metrics in families.items()}
    shown = {name: metrics for name, metrics in shown.items() if metrics}
    accuracies = [m for m in ACCURACIES if any(isinstance(r.get(m), float) for r in mine)]
    if accuracies:
        shown["Accuracy"] = accuracies
    cols = len(shown) if len(shown) < 3 else 2 if len(shown) == 4 else 3
    rows_ = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(5.4 * cols, 5.2 * rows_), dpi=100, squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    seeds = sorted({r["seed"] for r in mine})
    for ax, (family, metrics) in zip(axes.flat, shown.items()):
        linear = family == "Accuracy"  # in [0, 1], drawn as it is, not fitted
        shown_value = (lambda v: isinstance(v, float) and math.isfinite(v)) if linear else finite_positive
        limits = None if linear else _log_limits([r[m] for m in metrics for r in mine
                                                  if not r["failed"] and shown_value(r.get(m))])
        for index, metric in enumerate(metrics):
            color = f"C{index}"
            ok = [r for r in mine if not r["failed"] and shown_value(r.get(metric))]
            bad = [r for r in mine if r["failed"] and shown_value(r.get(metric))]
            ax.scatter([r[axis] for r in ok], [r[metric] for r in ok], s=10, color=color, alpha=0.45)
            _scatter_failed(ax, [r[axis] for r in bad], [r[metric] for r in bad], limits, color)
            mean = [np.mean([r[metric] for r in ok if r[axis] == x] or [np.nan]) for x in xs]
            fit = None if linear else _slope_row(slopes, panel, metric)
            label = _label(metric)
            if fit is not None:
                label += f": slope {_slope_text(fit)}"
            ax.plot(xs, mean, color=color, lw=2.2 if metric in PAPER else 1.2, marker="o", ms=3, label=label)
            fitted = [r for r in ok if r[axis] > 0]
            if fit is not None and math.isfinite(fit["mean"]) and fitted:
                lx, ly = np.log10([r[axis] for r in fitted]), np.log10([r[metric] for r in fitted])
                grid = [x for x in xs if x > 0]
                ax.plot(grid, 10 ** (ly.mean() + fit["mean"] * (np.log10(grid) - lx.mean())), color=color, ls="--",
                        lw=1)
        if not linear:
            ax.set_yscale("log")
            if limits:
                ax.set_ylim(*limits)
        _log_x_ticks(ax, xs)
        ax.set_xlabel(axis)
        ax.set_title(family)
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, frameon=False)
    where = f" — {_panel_name(panel)}" if panel else ""
    fig.suptitle(f"{title}{where}\ndots: {len(seeds)} seeds; line: mean; dashed: fit (slope = mean ± std of "
                 f"per-seed log-log fits); ×: failed run, left out (▲/▼: beyond the axis)", fontsize=10)
    save_figure(fig, path)


def _log_limits(values) -> tuple[float, float] | None:
    """The successful runs' range (with a margin): one failed run's nc1 of 10⁶ must not flatten the rest."""
    if not values:
        return None
    low, high = min(values), max(values)
    return low / 1.6, high * 1.6


def _scatter_failed(ax, xs, ys, limits, color) -> None:
    """Failed runs as ×, or as ▲/▼ on the edge where they lie beyond the successful runs' range."""
    low, high = limits or (-math.inf, math.inf)
    for marker, keep in (("x", lambda y: low <= y <= high), ("^", lambda y: y > high), ("v", lambda y: y < low)):
        points = [(x, min(max(y, low), high)) for x, y in zip(xs, ys) if keep(y)]
        if points:
            ax.scatter(*zip(*points), s=24, marker=marker, color=color, alpha=0.5, clip_on=False)


def _slope_text(fit) -> str:
    if not math.isfinite(fit["mean"]):
        text = "no fit"
    elif math.isfinite(fit["std"]):
        text = f"{fit['mean']:+.2f} ± {fit['std']:.2f}"
    else:
        text = f"{fit['mean']:+.2f}"
    return text + (f", {fit['left_out']} left out" if fit["left_out"] else "")


def finite_positive(value) -> bool:
    """What a log axis can show (and a headline metric must be)."""
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _slope_row(slopes, panel, metric):
    rows = [s for s in slopes if s["metric"] == metric and all(s.get(k) == v for k, v in panel.items())]
    mean = next((s for s in rows if s["seed"] == "mean"), None)
    std = next((s for s in rows if s["seed"] == "std"), None)
    if mean is None:
        return None
    return dict(mean=mean["slope"], std=std["slope"], left_out=mean["runs_left_out"])


def _point_order(point: tuple) -> tuple:
    """Points in numeric order (depth 2 before 13), text and None after numbers: legends and colours follow it."""
    return tuple((0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))
                 for v in point)


def _series(runs_lines, key_of, metric):
    """Mean over seeds of ``metric`` at every step, per point: {point: (steps, values)}."""
    by_point: dict[Any, dict[int, list[float]]] = {}
    for lines in runs_lines:
        for line in lines:
            value = line.get(metric)
            if isinstance(value, float) and math.isfinite(value):
                by_point.setdefault(key_of(line), {}).setdefault(line["step"], []).append(value)
    return {p: (sorted(v), [np.mean(v[s]) for s in sorted(v)]) for p, v in by_point.items()}


def against_steps(runs_lines, axes: list[str], path: Path, title: str) -> None:
    """The paper's metrics and training accuracy against training steps, one line per point."""
    plt = _pyplot()
    present = {k for lines in runs_lines for line in lines for k, v in line.items() if isinstance(v, float)}
    metrics = [m for m in PAPER if m in present] or [m for m in ("nc1", "nc2_etf", "nc3") if m in present]
    metrics.append("train_accuracy")
    fig, axs = plt.subplots(1, len(metrics), figsize=(4.0 * len(metrics), 3.8), dpi=110, squeeze=False)

    def key_of(line):
        return tuple(line.get(a) for a in axes)

    points = sorted({key_of(line) for lines in runs_lines for line in lines}, key=_point_order)
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(points), 1)))
    for ax, metric in zip(axs[0], metrics):
        series = _series(runs_lines, key_of, metric)
        for color, point in zip(colors, points):
            if point in series:
                steps, values = series[point]
                ax.plot(steps, values, color=color, marker=".", ms=3, lw=1.2,
                        label=plan.point_folder(tuple(zip(axes, point)), {a: a.split(".")[-1] for a in axes}))
        if metric != "train_accuracy":
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_title(_label(metric), fontsize=10)
    axs[0][0].legend(fontsize=6, ncol=1 + len(points) // 8)
    fig.suptitle(f"{title}: collapse during training (mean over seeds)", fontsize=9)
    save_figure(fig, path)


def against_block(rows, axes: list[str], path: Path, title: str) -> None:
    """NC1 of every block's output against the block index (last checkpoint), one line per point;
    the mean of the successful runs (a failed run's chance-level curve would hide the others')."""
    plt = _pyplot()

    def key_of(row):
        return tuple(row.get(a) for a in axes)

    rows = [r for r in rows if not r.get("failed")]
    points = sorted({key_of(r) for r in rows if r.get("nc1_per_block")}, key=_point_order)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(points), 1)))
    for color, point in zip(colors, points):
        curves = [r["nc1_per_block"] for r in rows if key_of(r) == point and r.get("nc1_per_block")]
        if not curves:
            continue
        depth = min(len(c) for c in curves)
        mean = np.nanmean(np.array([c[:depth] for c in curves], float), axis=0)
        ax.plot(np.arange(1, depth + 1), mean, color=color, marker="o", ms=3,
                label=plan.point_folder(tuple(zip(axes, point)), {a: a.split(".")[-1] for a in axes}))
    import matplotlib.ticker

    ax.set_yscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("block l (output of block l)")
    ax.set_ylabel("nc1 of the block's output")
    ax.set_title(f"{title}\ncollapse through the layers (mean over successful seeds, last checkpoint)", fontsize=9)
    if points:
        ax.legend(fontsize=6, ncol=1 + len(points) // 10)
    else:
        ax.text(0.5, 0.5, "no run passed the failed-run rule", transform=ax.transAxes, ha="center")
    save_figure(fig, path)


def against_loss(runs_lines, path: Path, title: str) -> None:
    """NC1 against the training loss and against the full-batch gradient norm, along training."""
    plt = _pyplot()
    fig, axs = plt.subplots(1, 2, figsize=(9.0, 4.0), dpi=110)
    metric = "nc1_quotient" if any("nc1_quotient" in l for lines in runs_lines.values() for l in lines) else "nc1"
    for ax, x_key in zip(axs, ("train_loss", "gradient_norm")):
        for index, (label, lines) in enumerate(runs_lines.items()):
            pts = [(l[x_key], l[metric]) for l in lines
                   if finite_positive(l.get(x_key)) and finite_positive(l.get(metric))]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, marker=".", ms=3, lw=0.8, color=f"C{index % 10}", alpha=0.8, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _readable_log_ticks(ax.xaxis)
        ax.set_xlabel(x_key.replace("_", " ") + (" (full batch)" if x_key == "gradient_norm" else ""))
        ax.set_ylabel(metric)
    axs[1].legend(fontsize=6, ncol=1 + len(runs_lines) // 10, loc="upper left")
    fig.suptitle(f"{title}: collapse against loss and gradient norm during training (one line per run,\n"
                 "from the first evaluation to the last)", fontsize=9)
    save_figure(fig, path)


def write(workdir: Path, lines_of: dict[str, list[dict]], rows, slopes, *, axis: str, others: list[str],
          families: dict[str, tuple[str, ...]], title: str) -> None:
    """Every figure the workdir's runs support (``lines_of``: every run's metrics lines by name; ``rows``:
    their last lines, with the failed-run rule applied; ``families``: the panels of the against-axis figures).

    One figure of each kind per panel, i.e. per combination of the values of the axes other than
    the slope axis (``-<panel>`` in the file name), so that a figure never has more lines than the
    slope axis has values.
    """
    sloped = axis in rows[0]
    line_axes = [axis] if sloped else others
    panel_axes = others if sloped else []
    panels = sorted({tuple((k, r.get(k)) for k in panel_axes) for r in rows},
                    key=lambda panel: _point_order(tuple(v for _, v in panel)))
    for panel in panels:
        suffix = f"-{_panel_name(dict(panel))}" if panel else ""
        where = f"{title} — {_panel_name(dict(panel))}" if panel else title
        mine = [r for r in rows if all(r.get(k) == v for k, v in panel)]
        named = {name: lines for name, lines in lines_of.items() if all(lines[-1].get(k) == v for k, v in panel)}
        runs_lines = list(named.values())
        if sloped and len({r[axis] for r in mine}) > 1:
            against_axis(rows, slopes, axis, dict(panel), families, workdir / f"nc_vs_{axis.split('.')[-1]}{suffix}.png",
                         title)
        if any(len(lines) > 1 for lines in runs_lines):  # training time needs two evaluations at least
            against_steps(runs_lines, line_axes, workdir / f"collapse_vs_steps{suffix}.png", where)
        if any(r.get("nc1_per_block") for r in mine):
            against_block(mine, line_axes, workdir / f"nc1_vs_block{suffix}.png", where)
        if any("gradient_norm" in line for lines in runs_lines for line in lines):
            against_loss(named, workdir / f"collapse_vs_loss{suffix}.png", where)
