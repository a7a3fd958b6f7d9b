"""Collapse through the layers (``<metric>_vs_block[-<panel>].png``): one figure per per-block metric.

Every ``<metric>_per_block`` list of the metrics lines (NC1, CDNV, the NC2 forms, NCC accuracy,
effective ranks, ...) is drawn against the block index l = 1 … L, one line per point of the
sweep (per depth): the mean over the runs that pass the failed-run rule (geometric on a log
axis, arithmetic for accuracies), of each run's robust estimate (its last three evaluations,
``ncjax.estimates``). The block index, not l/L, so that a block's own change with depth reads
directly (e.g. the first block's NC1 rising with L while the last block's falls).
"""

from __future__ import annotations

import numpy as np
from etils.epath import Path

from ncjax import estimates
from ncjax.figures.setup import title
from ncjax.figures.style import count, point_label, point_order, pyplot, save_figure, styled


def metrics(rows) -> list[str]:
    """The per-block metrics the rows carry, by name without the suffix, sorted."""
    return sorted({k.removesuffix(estimates.PER_BLOCK) for r in rows for k, v in r.items()
                   if k.endswith(estimates.PER_BLOCK) and isinstance(v, list) and v})


@styled
def against_block(rows, metric: str, axes: list[str], path: Path, setup: list[str]) -> None:
    """``metric`` of every block's output against the block index, one line per point of ``axes``."""
    import matplotlib.ticker

    plt = pyplot()
    key = metric + estimates.PER_BLOCK
    linear = estimates.linear(key)
    ok = [r for r in rows if not r["failed"] and r.get(key)]
    points = sorted({tuple(r.get(a) for a in axes) for r in ok}, key=point_order)
    fig, ax = plt.subplots(figsize=(5.6, 3.6), layout="constrained")
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(points), 1)))
    for color, point in zip(colors, points):
        curves = [r[key] for r in ok if tuple(r.get(a) for a in axes) == point]
        depth = min(len(c) for c in curves)
        mean = estimates.mean(key, np.array([c[:depth] for c in curves], float), axis=0)
        ax.plot(np.arange(1, depth + 1), mean, color=color, marker="o", ms=3, label=point_label(dict(zip(axes, point))))
    if not linear:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("block l (its output)")
    ax.set_ylabel(metric + ("" if linear else " (log)"))
    failed = sum(r["failed"] for r in rows)
    caption = [f"{metric} through the layers", f"mean over seeds of each run's last {estimates.WINDOW} evaluations"]
    caption += [f"{count(failed, 'failed run')} left out"] * bool(failed)
    fig.suptitle(title(setup, caption, fig.get_figwidth()))
    if points:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    else:
        ax.text(0.5, 0.5, "no run passed the failed-run rule", transform=ax.transAxes, ha="center")
        ax.set_axis_off()
    save_figure(fig, path)
