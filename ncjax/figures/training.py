"""Collapse along training, from every evaluation of every run.

- ``collapse_vs_steps.png``: the paper's metrics, their test-set forms, the train and test
  accuracy and a linear head's balancedness against the training step on a log axis (collapse is a late-phase, roughly
  power-law process), one line per point of the sweep: the geometric mean over the seeds that
  pass the failed-run rule (arithmetic for accuracies), with a band from the seeds' minimum
  to their maximum. Failed runs are left out: one chance-level run would dominate a mean.
- ``collapse_vs_loss.png`` (when the evaluations record the full-batch gradient norm):
  NC1 against the training loss and against the gradient norm, one line per run that passes,
  coloured by its point, its first evaluation circled and its last a square (the loss need not
  fall monotonically under weight decay, so a line's direction is not otherwise readable).
"""

from __future__ import annotations

import numpy as np
from etils.epath import Path

from ncjax import estimates
from ncjax.figures.setup import title
from ncjax.figures.style import (PAPER, count, finite, finite_positive, label, point_label, point_order, pyplot,
                                 readable_log_ticks, save_figure, styled)

# The panels, in order, where the runs record them.
STEP_PANELS = PAPER + ("test_nc1_quotient", "train_accuracy", "test_accuracy", "test_ncc_accuracy", "balancedness")
FALLBACK = ("nc1", "nc2_etf", "nc3")  # older workdirs without the paper forms


def _band(runs_lines, metric) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Steps > 0 (a log axis), and the mean, minimum and maximum over runs at each."""
    drawable = finite if estimates.linear(metric) else finite_positive
    by_step: dict[int, list[float]] = {}
    for lines in runs_lines:
        for line in lines:
            if line["step"] > 0 and drawable(line.get(metric)):
                by_step.setdefault(line["step"], []).append(line[metric])
    steps = sorted(by_step)
    values = [by_step[s] for s in steps]
    return (steps, np.array([estimates.mean(metric, v) for v in values], float),
            np.array([min(v) for v in values]), np.array([max(v) for v in values]))


@styled
def against_steps(lines_of: dict[tuple, list[list[dict]]], axes: list[str], path: Path, setup: list[str],
                  failed: int) -> None:
    """One panel per metric; ``lines_of``: the successful runs' metrics lines by point (values of ``axes``);
    ``failed``: how many runs were left out."""
    plt = pyplot()
    present = {k for runs in lines_of.values() for lines in runs for line in lines for k in line}
    metrics = [m for m in STEP_PANELS if m in present]
    if not set(PAPER) & present:
        metrics = [m for m in FALLBACK if m in present] + metrics
    if not metrics:
        fig, ax = plt.subplots(figsize=(6.0, 2.5), layout="constrained")
        ax.text(0.5, 0.5, "no run passed the failed-run rule", transform=ax.transAxes, ha="center")
        ax.set_axis_off()
        fig.suptitle(title(setup, [f"collapse during training: all {count(failed, 'run')} failed"], fig.get_figwidth()))
        return save_figure(fig, path)
    cols = min(len(metrics) + 1, 3 if len(metrics) < 6 else 4)  # a free slot for the legend where it fits
    nrows = -(-len(metrics) // cols)
    fig, axs = plt.subplots(nrows, cols, figsize=(3.0 * cols, 2.7 * nrows + 0.9), squeeze=False,
                            layout="constrained")
    for ax in axs.flat[len(metrics):]:
        ax.set_axis_off()
    points = sorted(lines_of, key=point_order)
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(points), 1)))
    for ax, metric in zip(axs.flat, metrics):
        for color, point in zip(colors, points):
            steps, mean, low, high = _band(lines_of[point], metric)
            if steps:
                ax.plot(steps, mean, color=color, marker=".", ms=3, lw=1.2,
                        label=point_label(dict(zip(axes, point))))
                ax.fill_between(steps, low, high, color=color, alpha=0.15, lw=0)
        ax.set_xscale("log")
        readable_log_ticks(ax.xaxis)
        if not estimates.linear(metric):
            ax.set_yscale("log")
        ax.set_xlabel("training step (log)")
        ax.set_ylabel(label(metric) + ("" if estimates.linear(metric) else " (log)"))
    handles, labels = axs.flat[0].get_legend_handles_labels()
    if len(metrics) < axs.size:
        axs.flat[len(metrics)].legend(handles, labels, loc="center", frameon=False, ncol=1 + len(points) // 10)
    else:
        fig.legend(handles, labels, loc="outside right center", frameon=False)
    caption = ["collapse during training: geometric mean over seeds (arithmetic for accuracies)",
               "band: min–max over seeds"] + [f"{count(failed, 'failed run')} left out"] * bool(failed)
    fig.suptitle(title(setup, caption, fig.get_figwidth()))
    save_figure(fig, path)


@styled
def against_loss(lines_of: dict[tuple, list[list[dict]]], axes: list[str], path: Path, setup: list[str],
                 failed: int) -> None:
    """NC1 against the training loss and against the full-batch gradient norm along training, one line per
    run coloured by its point; ``lines_of`` as for :func:`against_steps`."""
    import matplotlib.ticker

    plt = pyplot()
    fig, axs = plt.subplots(1, 2, figsize=(8.0, 3.6), layout="constrained")
    runs = [lines for group in lines_of.values() for lines in group]
    metric = "nc1_quotient" if any("nc1_quotient" in l for lines in runs for l in lines) else "nc1"
    points = sorted(lines_of, key=point_order)
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(points), 1)))
    for ax, x_key in zip(axs, ("train_loss", "gradient_norm")):
        for color, point in zip(colors, points):
            for index, lines in enumerate(lines_of[point]):
                pts = [(l[x_key], l[metric]) for l in lines
                       if finite_positive(l.get(x_key)) and finite_positive(l.get(metric))]
                if pts:
                    ax.plot(*zip(*pts), marker=".", ms=3, lw=0.8, color=color, alpha=0.8,
                            label=point_label(dict(zip(axes, point))) if index == 0 else None)
                    ax.scatter(*pts[0], marker="o", s=36, facecolors="none", edgecolors=[color])
                    ax.scatter(*pts[-1], marker="s", s=25, color=[color])
        ax.set_xscale("log")
        ax.set_yscale("log")
        readable_log_ticks(ax.xaxis)
        low, high = ax.get_xlim()
        if high > 300 * low:  # 0.0001, 0.0003, 0.001, … overlap at this width: powers of ten only
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator())
        ax.set_xlabel("gradient norm (full batch, log)" if x_key == "gradient_norm" else "train loss (data term, log)")
        ax.set_ylabel(f"{label(metric)} (log)")
    if points:
        axs[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    caption = ["collapse against loss and gradient norm during training",
               "one line per run, from its first evaluation (○) to its last (■)"]
    caption += [f"{count(failed, 'failed run')} left out"] * bool(failed)
    fig.suptitle(title(setup, caption, fig.get_figwidth()))
    save_figure(fig, path)
