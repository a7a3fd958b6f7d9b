"""A continual run's table and figure, from the workdir alone.

- ``summary.csv``: one row per run (method, scenario, seed) at its last finished
  task: average accuracy, forgetting and the collapse of the seen classes; then, per
  (method, scenario), a ``mean`` and a ``std`` row (over seeds, ddof = 1).
- ``continual.png``: average accuracy, forgetting, nc1 and nc3 against the number of
  tasks learned, one line per method (mean over seeds, band ± std), one row of panels
  per scenario.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections import defaultdict
from typing import Any

import numpy as np
from etils.epath import Path

from ncjax import figures, records
from ncjax.errors import WorkdirError

SUMMARY = "summary.csv"
FIGURE = "continual.png"
COLUMNS = ("method", "scenario", "seed", "status", "tasks", "average_accuracy", "forgetting", "nc1",
           "nc1_quotient", "nc2_etf", "nc2_etf_w", "nc3", "nc4", "accuracy_per_task")
NUMBERS = COLUMNS[5:-1]
PANELS = (("average_accuracy", "average accuracy (tasks seen)", False), ("forgetting", "forgetting", False),
          ("nc1", "nc1 of the seen classes (log)", True),
          ("nc3", "nc3: class means vs targets\n(vs head rows for fine-tuning)", False))


def _lines(workdir: Path) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    out = {}
    for run in records.run_folders(workdir):
        lines = records.read_metrics(run)
        if lines:
            out[(lines[0]["method"], lines[0]["scenario"], lines[0]["seed"])] = lines
    return out


def _row(line: dict[str, Any]) -> dict[str, Any]:
    row = {k: line.get(k) for k in COLUMNS}
    row["status"] = line.get("status", "ok")
    row["tasks"] = line["task"] + 1
    row["accuracy_per_task"] = " ".join(f"{a:.4f}" for a in line["accuracy_per_task"])
    return row


def _spread(rows: list[dict[str, Any]], seed: str, reduce) -> dict[str, Any]:
    out = dict(rows[0], seed=seed, status="", accuracy_per_task="")
    for name in NUMBERS:
        values = np.asarray([r[name] for r in rows], np.float64)
        out[name] = float(reduce(values)) if len(values) > 1 or seed == "mean" else math.nan
    return out


def summary_rows(workdir: Path | str) -> list[dict[str, Any]]:
    """Every run's last line, then the mean and std over seeds of each (method, scenario)."""
    by_point = defaultdict(list)
    for (method, scenario, _), lines in sorted(_lines(Path(workdir)).items()):
        by_point[(method, scenario)].append(_row(lines[-1]))
    rows = []
    for point_rows in by_point.values():
        rows += point_rows
        rows.append(_spread(point_rows, "mean", np.mean))
        rows.append(_spread(point_rows, "std", lambda v: np.std(v, ddof=1)))
    return rows


def write(workdir: Path | str) -> None:
    """summary.csv and continual.png of ``workdir``."""
    workdir = Path(workdir)
    title = records.read_config(workdir).get("name", "")  # a folder that is no workdir fails here, in one line
    lines = _lines(workdir)
    if not lines:
        raise WorkdirError(f"{workdir} holds no metrics.jsonl yet: run `python -m ncjax.main` on it first")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in summary_rows(workdir):
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    records.atomic_write(workdir / SUMMARY, text.getvalue())
    plot(lines, workdir / FIGURE, title)


def _mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof = 1) over seeds of each column, ignoring NaN (e.g. forgetting after the first task)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column is a gap in the line, not an error
        mean = np.nanmean(values, 0)
        std = np.nanstd(values, 0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
    return mean, std


def plot(lines: dict[tuple[str, str, int], list[dict[str, Any]]], path: Path, title: str) -> None:
    """Each panel's metric against the tasks learned: one line per method, band ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = sorted({s for _, s, _ in lines})
    method_names = list(dict.fromkeys(m for m, _, _ in lines))
    colors = {m: f"C{i}" for i, m in enumerate(method_names)}
    fig, axes = plt.subplots(len(scenarios), len(PANELS), figsize=(4.0 * len(PANELS) + 1.6, 3.4 * len(scenarios) + 0.6),
                             dpi=100, squeeze=False)
    for row, scenario in enumerate(scenarios):
        for col, (metric, label, log) in enumerate(PANELS):
            ax = axes[row, col]
            for method in method_names:
                runs = [v for (m, s, _), v in sorted(lines.items()) if m == method and s == scenario]
                if not runs:
                    continue
                tasks = sorted({line["task"] for run in runs for line in run})
                values = np.full((len(runs), len(tasks)), np.nan)
                for i, run in enumerate(runs):
                    for line in run:
                        values[i, tasks.index(line["task"])] = line.get(metric, np.nan)
                x = np.asarray(tasks) + 1
                mean, std = _mean_std(values)
                ax.plot(x, mean, marker="o", ms=4, color=colors[method], label=method)
                ax.fill_between(x, mean - std, mean + std, color=colors[method], alpha=0.15, lw=0)
            if log:
                ax.set_yscale("log")
            ax.set_xlabel("tasks learned")
            ax.set_xticks(range(1, 1 + max((line["task"] + 1 for run in lines.values() for line in run), default=1)))
            ax.set_title(f"{scenario.replace('_', '-')}: {label}", fontsize=9.5)
    seeds = len({seed for _, _, seed in lines})
    fig.suptitle(f"{title}: mean over {seeds} seed(s), band ± std; accuracy on the test data of the tasks seen, "
                 "collapse on their training data (normalised features)", fontsize=10)
    axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), fontsize=9, title="method", frameon=False)
    figures.save_figure(fig, path)
