"""``python -m ncjax.main --config=configs/ufm.py``: the UFM alone, written as a workdir.

config.json, metrics.jsonl (one line per K, d, λ, seed: solver and closed-form
objectives and the collapse metrics of the solution), summary.csv with the same
rows, and ufm_vs_l2.png (the optimal objective against λ, solver over closed form).
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict

import ml_collections
from etils.epath import Path

from ncjax import figures, records, ufm


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> Path:
    workdir = Path(workdir)
    records.claim_workdir(workdir, config.to_dict())
    rows = ufm.sweep(config)
    if records.is_writer():
        records.write_metrics(workdir, [dict(row, step=i) for i, row in enumerate(rows)])
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        (workdir / "summary.csv").write_text(text.getvalue())
        plot(rows, workdir / "ufm_vs_l2.png", config.name)
    return workdir


def plot(rows, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = defaultdict(list)
    for row in rows:
        curves[(row["num_classes"], row["width"])].append((row["l2"], row["closed_form_objective"],
                                                           row["solver_objective"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=110)
    for (k, d), points in sorted(curves.items()):
        points.sort()
        (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], label=f"K={k}, d={d} closed form")
        ax.plot([p[0] for p in points], [p[2] for p in points], "o", color=line.get_color(), mfc="none")
    ax.set_xscale("log")
    if all(p[1] > 0 for points in curves.values() for p in points if math.isfinite(p[1])):
        ax.set_yscale("log")
    ax.set_xlabel("λ")
    ax.set_ylabel("optimal UFM objective (circles: solver)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    figures.save_figure(fig, path)
