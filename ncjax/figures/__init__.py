"""The sweep's figures, from the workdir alone (``python -m ncjax.sweep --workdir=W`` redraws them).

One figure of each kind per panel, i.e. per combination of the values of the sweep's axes other
than the slope axis (``-<panel>`` in the file name), so that a figure never has more lines than
the slope axis has values:

- ``nc_vs_<axis>.png`` (``ncjax.figures.trend``): every metric family against the slope axis,
  with the slope of slopes.csv and a fitted line where R² ≥ 0.8;
- ``collapse_vs_steps.png`` (``ncjax.figures.training``): the paper's metrics and the
  accuracies against the training step (log), geometric means over seeds with a min–max band;
- ``<metric>_vs_block.png`` (``ncjax.figures.blocks``): every per-block metric against the block
  index, one line per depth;
- ``collapse_vs_loss.png`` (when the evaluations record the full-batch gradient norm).

Every title states the setup read from config.json (``ncjax.figures.setup``). Points are each
run's robust estimate (its last three evaluations, ``ncjax.estimates``); failed runs are marked
or left out as each figure says. Imports no training code: a redraw loads neither flax nor optax.
"""

from __future__ import annotations

from typing import Any

from etils.epath import Path

from ncjax.figures import blocks, setup, training, trend
from ncjax.figures.style import PAPER, file_suffix, finite_positive, point_order, save_figure
from ncjax.figures.trend import FAMILIES

__all__ = ["FAMILIES", "PAPER", "finite_positive", "save_figure", "write"]


def _values(rows, axes: list[str], panel: dict[str, Any]) -> dict[str, Any]:
    """Each axis's value in the figure: the panel's, or the sorted list of the values its runs have."""
    out = {}
    for axis in axes:
        seen = sorted({r.get(axis) for r in rows}, key=lambda v: point_order((v,)))
        out[axis] = panel[axis] if axis in panel else seen[0] if len(seen) == 1 else seen
    return out


def write(workdir: Path, lines_of: dict[str, list[dict]], rows: list[dict[str, Any]], slopes: list[dict[str, Any]], *,
          axis: str, others: list[str], config: dict[str, Any]) -> list[Path]:
    """Every figure the workdir's runs support; returns their paths.

    ``lines_of``: every run's metrics lines by run name (``<point>/<seed folder>``); ``rows``: each run's
    robust estimate with ``run`` (its name) and ``failed`` (the failed-run rule applied to it); ``slopes``:
    the rows of slopes.csv; ``config``: the stored config.json.
    """
    sloped = axis in rows[0]
    line_axes = [axis] if sloped else others
    panel_axes = others if sloped else []
    panels = sorted({tuple((k, r.get(k)) for k in panel_axes) for r in rows},
                    key=lambda panel: point_order(tuple(v for _, v in panel)))
    written = []
    for panel in map(dict, panels):
        suffix = file_suffix(panel)
        mine = [r for r in rows if all(r.get(k) == v for k, v in panel.items())]
        last = max(mine, key=lambda r: r["step"])
        parts = setup.describe(config, _values(mine, [axis] + others if sloped else others, panel),
                               last["step"], last.get("epoch"))
        named = {r["run"]: lines_of[r["run"]] for r in mine}
        if sloped and len({r[axis] for r in mine}) > 1:
            written.append(workdir / f"nc_vs_{axis.split('.')[-1]}{suffix}.png")
            trend.against_axis(rows, slopes, axis, panel, written[-1], parts)
        by_point: dict[tuple, list[list[dict]]] = {}  # the successful runs' lines, by point
        for r in mine:
            if not r["failed"]:
                by_point.setdefault(tuple(r.get(a) for a in line_axes), []).append(named[r["run"]])
        failed = sum(r["failed"] for r in mine)
        if any(len(lines) > 1 for lines in named.values()):  # training time needs two evaluations at least
            written.append(workdir / f"collapse_vs_steps{suffix}.png")
            training.against_steps(by_point, line_axes, written[-1], parts, failed)
        for metric in blocks.metrics(mine):
            written.append(workdir / f"{metric}_vs_block{suffix}.png")
            blocks.against_block(mine, metric, line_axes, written[-1], parts)
        if any("gradient_norm" in line for lines in named.values() for line in lines):
            written.append(workdir / f"collapse_vs_loss{suffix}.png")
            training.against_loss(by_point, line_axes, written[-1], parts, failed)
    return written
