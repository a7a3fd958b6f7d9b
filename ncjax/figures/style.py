"""What every ncjax figure shares: font sizes readable at column width, log ticks, labels, saving.

The sizes are in points at the figures' own size; a figure is drawn at about the width it is
printed (a panel ~3.3 in), so 8 pt stays 8 pt in a paper or a slide.
"""

from __future__ import annotations

import functools
import io
import math
import re
from typing import Any

from etils.epath import Path

from ncjax import records

# The paper's forms of NC1, NC2 and NC3 (docs/paper.md#metric-definitions): reported, drawn and checked first.
PAPER = ("nc1_quotient", "nc2_etf_w", "nc3_cos")
STYLE = {"font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
         "legend.fontsize": 8, "legend.title_fontsize": 8, "figure.titlesize": 9.5, "savefig.dpi": 150}
# How an axis of the sweep is named in legends and titles (others by the last part of their key).
SYMBOLS = {"depth": "L", "train.l2": "λ", "train.learning_rate": "lr", "data.gaussian_mixture.snr": "SNR",
           "data.n_per_class": "n per class", "model.width": "width"}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def styled(draw):
    """Draw a figure under :data:`STYLE` (scoped: other figures of the process keep their own look)."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with pyplot().rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def finite_positive(value) -> bool:
    """What a log axis can show (and a headline metric must be)."""
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def readable_log_ticks(axis) -> None:
    """Ticks at 1, 2 and 5 times powers of ten (more under a decade, fewer on a long axis), labelled
    plainly: log axes spanning under a decade otherwise get overlapping '3×10⁻¹'-style labels, or one
    label only. Call it once
    the data are drawn: the axis's span chooses the ticks."""
    import matplotlib.ticker

    low, high = sorted(axis.get_view_interval())
    decades = math.log10(high / low) if low > 0 and high > 0 else 0.0
    subs = ((1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if decades < 1 else (1.0, 2.0, 5.0) if decades <= 2
            else (1.0, 3.0) if decades <= 3 else (1.0,))  # '10000' beside '30000' overlaps
    axis.set_major_locator(matplotlib.ticker.LogLocator(subs=subs))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:,g}"))  # 10,000
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as PNG to a local or ``gs://`` path (atomically), and free it."""
    plt = pyplot()
    for ax in fig.axes:
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_yscale() == "log":
            readable_log_ticks(ax.yaxis)
        if ax.get_xscale() == "log" and not ax.get_xticklabels():
            readable_log_ticks(ax.xaxis)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", bbox_inches="tight", pad_inches=0.1)  # legends below the axes stay whole
    plt.close(fig)
    records.atomic_write(Path(path), png.getvalue())


def count(n: int, noun: str) -> str:
    """'1 failed run', '2 failed runs'."""
    return f"{n} {noun}{'s' * (n != 1)}"


def label(metric: str) -> str:
    return f"{metric} (paper)" if metric in PAPER else metric


def symbol(axis: str) -> str:
    return SYMBOLS.get(axis, axis.split(".")[-1])


def point_label(point: dict[str, Any]) -> str:
    """A point of the sweep as a legend reads it: ``L = 8``, ``L = 8, λ = 0.0005``."""
    return ", ".join(f"{symbol(k)} = {_text(v)}" for k, v in point.items())


def point_order(point: tuple) -> tuple:
    """Points in numeric order (depth 2 before 13), text and None after numbers: legends and colours follow it."""
    return tuple((0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))
                 for v in point)


def file_suffix(panel: dict[str, Any]) -> str:
    """``-<panel>`` of a figure's file name, spelled as the run folders spell the point (``-l2_0.0005``,
    ``-depth_001``); empty for the whole sweep."""
    short = {k: k.split(".")[-1] for k in panel}
    short = {k: s if list(short.values()).count(s) == 1 else k for k, s in short.items()}
    parts = [f"depth_{v:03d}" if k == "depth" else f"{short[k]}_" + re.sub(r"[^A-Za-z0-9.+=-]", "_", _text(v))
             for k, v in panel.items()]
    return "-" + "-".join(parts) if parts else ""


def _text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def log_limits(values) -> tuple[float, float] | None:
    """The successful runs' range (with a margin): one failed run's nc1 of 10⁶ must not flatten the rest."""
    if not values:
        return None
    low, high = min(values), max(values)
    return low / 1.6, high * 1.6
