"""The sweep's tables and its end-of-run report, from the workdir alone (config.json and metrics.jsonl).

**Two estimates of every run** (``ncjax.estimates``): ``last``, its last evaluation, and
``last3``, the mean of its last three evaluations (geometric for the collapse metrics,
arithmetic for accuracies, losses and NC4), so that one checkpoint cannot decide a run.

**summary.csv**: one row per run. The columns of the last evaluation come first, as before:
the sweep's axes, ``seed``, ``status``, ``reason``, ``step``, ``epoch``, losses, accuracies,
then every metric. Then the robust estimate, every column with the suffix ``_last3``:
``status_last3``, ``reason_last3``, ``steps_last3`` (the steps averaged, e.g. ``180 190 200``),
the losses and accuracies, and every metric (``nc1_quotient_last3``, ...).

**The failed-run rule**, applied to each estimate on its own values: a run fails if it
diverged (its loss or gradient became NaN/Inf), its training accuracy is below
``summary.min_train_accuracy`` (default 0.99), its training loss is not finite, or one of the
paper's headline metrics (``figures.PAPER``) it reports is not a finite positive number. So a
run whose last checkpoint caught a dip fails on ``last`` and may pass on ``last3`` (the point
of the robust estimate), and each estimate's slopes use the runs that pass under it. Failed
runs stay in summary.csv with the reason, and are left out of the fits.

**slopes.csv**, one estimator everywhere (tables, figures, report): for each seed, the
least-squares slope of log10(metric) on log10(axis value) over the runs of that seed that pass,
then their mean and standard deviation (ddof = 1), with R² (of each seed's fit; for the mean,
of the mean slope's line on the seeds' geometric means: ``ncjax.estimates``). The axis is
``summary.slope_axis`` (default ``depth``; runs at an axis value ≤ 0, e.g. a linear head of
depth 0, are drawn but not fitted); the other swept axes split the fits into panels. Columns:
the panel's axes, ``metric``, ``seed`` (a seed, ``mean`` or ``std``), then for the last
evaluation ``slope``, ``runs_used``, ``runs_left_out`` (failed, or a value a log axis cannot
show) and ``r2``, and the same four with ``_last3``.

Reads only files: no training code is imported (``python -m ncjax.sweep --workdir=W`` redraws
without flax or optax).
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import io
import math
from typing import Any

from etils.epath import Path

from ncjax import estimates, figures, records

DEFAULTS = {"min_train_accuracy": 0.99, "slope_axis": "depth"}  # summary.* of a workdir written before they existed
RUN_COLUMNS = ("seed", "status", "reason", "step", "epoch", "train_loss", "train_accuracy", "test_loss",
               "test_accuracy", "l2_penalty", "objective")
RUN_NUMBERS = RUN_COLUMNS[5:]
SLOPE_VALUES = ("slope", "runs_used", "runs_left_out", "r2")
SLOPE_COLUMNS = ("metric", "seed") + SLOPE_VALUES + tuple(c + estimates.SUFFIX for c in SLOPE_VALUES)
REPORTED = figures.PAPER  # the slopes the end-of-run report gives
BLOCK_FIGURES = "*_vs_block*.png"


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """The stored config's ``summary`` section on today's defaults."""
    return {**DEFAULTS, **config.get("summary", {})}


def axes(config: dict[str, Any]) -> list[str]:
    """The sweep's axes as the metrics lines name them: depth first, then ``config.sweep``'s keys."""
    return ["depth"] + [key for key, _ in config.get("sweep") or ()]


def runs_lines(workdir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every evaluated run's metrics lines, by ``<point>/<seed folder>``: read once for tables and figures."""
    return {f"{run.parent.name}/{run.name}": lines for run in records.run_folders(workdir)
            if (lines := records.read_metrics(run))}


def failure(row: dict[str, Any], min_train_accuracy: float) -> tuple[str, str]:
    """The rule a run fails and the reason with its value, e.g. ('training accuracy < 0.99',
    'training accuracy < 0.99 (0.963)'); ('', '') if it passes."""
    def failed(rule, value):
        return rule, f"{rule} ({value})"

    if row.get("status") == "diverged":
        return failed("diverged", f"at step {row.get('diverged_at_step')}")
    if not math.isfinite(row.get("train_loss", math.nan)):
        return failed("training loss not finite", row.get("train_loss"))
    accuracy = row.get("train_accuracy", math.nan)
    if not accuracy >= min_train_accuracy:
        return failed(f"training accuracy < {min_train_accuracy}", f"{accuracy:.3f}")
    bad = [m for m in figures.PAPER if m in row and not figures.finite_positive(row[m])]
    return failed("a paper metric not finite positive", ", ".join(bad)) if bad else ("", "")


def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    """Every scalar metric the rows carry: the figure families' order first, then the rest sorted."""
    present = {k for r in rows for k, v in r.items() if estimates.is_metric(k, v) and isinstance(v, float)}
    present -= set(RUN_COLUMNS)
    ordered = [m for family in figures.FAMILIES.values() for m in family if m in present]
    return ordered + sorted(present - set(ordered))


def _panels(rows, others):
    keys = sorted({tuple(r.get(k) for k in others) for r in rows}, key=repr)
    return [(dict(zip(others, key)), [r for r in rows if tuple(r.get(k) for k in others) == key]) for key in keys]


def slopes(rows: list[dict[str, Any]], axis: str, others: list[str], metrics: list[str]) -> list[dict[str, Any]]:
    """Per panel (values of the ``others`` axes) and metric: per-seed slopes and R², then their mean (with the
    R² of its line) and std."""
    out = []
    for panel, members in _panels(rows, others):
        for metric in metrics:
            per_seed = []
            for seed in sorted({r["seed"] for r in members}):
                mine = [r for r in members if r["seed"] == seed and r[axis] > 0]  # log axes: x > 0 only
                used = [r for r in mine if not r["failed"]]
                slope, n, r2 = estimates.fit([r[axis] for r in used], [r.get(metric, math.nan) for r in used])
                per_seed.append(dict(panel, metric=metric, seed=seed, slope=slope, runs_used=n,
                                     runs_left_out=len(mine) - n, r2=r2))
            mean, std = estimates.summarise(s["slope"] for s in per_seed)
            used = [r for r in members if r[axis] > 0 and not r["failed"]]
            _, r2 = estimates.mean_line([r[axis] for r in used], [r.get(metric, math.nan) for r in used], mean)
            counts = dict(runs_used=sum(s["runs_used"] for s in per_seed),
                          runs_left_out=sum(s["runs_left_out"] for s in per_seed))
            out += per_seed + [dict(panel, metric=metric, seed="mean", slope=mean, r2=r2, **counts),
                               dict(panel, metric=metric, seed="std", slope=std, **counts)]
    return out


@dataclasses.dataclass
class Tables:
    """What summary.csv, slopes.csv, the figures and the report are made of."""

    lines_of: dict[str, list[dict[str, Any]]]  # every run's metrics lines, by run name
    last: list[dict[str, Any]]  # each run's last line, with the failed-run rule applied
    last3: list[dict[str, Any]]  # each run's last3 estimate, the same rule applied to it
    slopes: list[dict[str, Any]]  # the rows of slopes.csv
    config: dict[str, Any]  # the stored config.json
    axes: list[str]
    axis: str
    metrics: list[str]

    @property
    def others(self) -> list[str]:
        """The axes that split the fits into panels."""
        return [k for k in self.axes if k != self.axis]


def tables(workdir: Path | str) -> Tables:
    """Read the workdir's config.json and metrics; estimate, judge and fit every run."""
    workdir = Path(workdir)
    lines_of = runs_lines(workdir)
    if not lines_of:
        raise records.WorkdirError(f"{workdir} holds no evaluated runs yet: nothing to summarise")
    config = records.read_config(workdir)
    chosen, axes_ = settings(config), axes(config)
    estimated = {"last": [dict(lines[-1], run=name) for name, lines in lines_of.items()],
                 "last3": [dict(estimates.last3(lines), run=name) for name, lines in lines_of.items()]}
    for rows in estimated.values():
        for row in rows:
            row["rule"], row["reason"] = failure(row, chosen["min_train_accuracy"])
            row["failed"] = bool(row["reason"])
            row["status"] = row.get("status") or ("failed" if row["failed"] else "ok")
    metrics = metric_names(estimated["last"])
    axis = chosen["slope_axis"]
    others = [k for k in axes_ if k != axis]
    table = []
    if axis in axes_:
        last, last3 = (slopes(estimated[e], axis, others, metrics) for e in ("last", "last3"))
        table = [dict(a, **{k + estimates.SUFFIX: b[k] for k in SLOPE_VALUES if k in b}) for a, b in zip(last, last3)]
    return Tables(lines_of, estimated["last"], estimated["last3"], table, config, axes_, axis, metrics)


def _csv(columns, rows) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def write(workdir: Path | str) -> Path:
    """Write summary.csv, slopes.csv and the figures (``ncjax.figures``); returns the workdir."""
    workdir = Path(workdir)
    t = tables(workdir)
    if not records.is_writer():
        return workdir
    robust = ("status", "reason", "steps") + RUN_NUMBERS + tuple(t.metrics)
    rows = [dict(last, **{k + estimates.SUFFIX: last3.get(k) for k in robust}) for last, last3 in zip(t.last, t.last3)]
    columns = t.axes + list(RUN_COLUMNS) + t.metrics + [k + estimates.SUFFIX for k in robust]
    records.atomic_write(workdir / "summary.csv", _csv(columns, rows))
    records.atomic_write(workdir / "slopes.csv", _csv(t.others + list(SLOPE_COLUMNS), t.slopes))
    figures.write(workdir, t.lines_of, t.last3, t.slopes, axis=t.axis, others=t.others, config=t.config)
    return workdir


def _failures(rows: list[dict[str, Any]], shown: int = 4) -> list[str]:
    """Failed runs grouped by the rule they fail, a few named with their value."""
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["failed"]:
            by_rule.setdefault(row["rule"], []).append(row)
    out = []
    for rule, failed in by_rule.items():
        named = ", ".join(f"{r['run']} {r['reason'][len(rule):].strip()}" for r in failed[:shown])
        more = ", …" if len(failed) > shown else ""
        out.append(f"  {rule}: {len(failed)} run{'s' * (len(failed) != 1)} ({named}{more})")
    return out


def _slope(rows: list[dict[str, Any]], suffix: str) -> str:
    mean, std = (next(s for s in rows if s["seed"] == seed)["slope" + suffix] for seed in ("mean", "std"))
    if not math.isfinite(mean):
        return "no fit"
    return f"{mean:+.2f} ± {std:.2f}" if math.isfinite(std) else f"{mean:+.2f} (one seed)"


def report(workdir: Path | str) -> str:
    """A few lines for the end of a run: runs ok and failed (reasons grouped), the paper metrics' slopes
    (the last3 estimate, the last evaluation's in brackets) and the files the workdir holds."""
    workdir = Path(workdir)
    t = tables(workdir)
    failed, failed_last = (sum(r["failed"] for r in rows) for rows in (t.last3, t.last))
    out = [f"{len(t.last3)} runs: {len(t.last3) - failed} ok, {failed} failed on the mean of their last "
           f"{estimates.WINDOW} evaluations [last evaluation alone: {len(t.last) - failed_last} ok, "
           f"{failed_last} failed]"]
    out += _failures(t.last3)
    dips = [last for last, last3 in zip(t.last, t.last3) if last["failed"] and not last3["failed"]]
    if dips:
        out.append("  ok on the mean, failed on the last evaluation alone: "
                   + ", ".join(f"{r['run']} ({r['reason']})" for r in dips[:4]) + (", …" if len(dips) > 4 else ""))
    reported = [m for m in REPORTED if m in t.metrics]
    if t.slopes and reported:
        out.append(f"slopes of log10(metric) on log10({t.axis}), mean ± std over seeds of the last "
                   f"{estimates.WINDOW} evaluations' mean [last evaluation alone]:")
        for panel, _ in _panels(t.last3, t.others):
            where = ", ".join(f"{k} = {v}" for k, v in panel.items())
            mine = {m: [s for s in t.slopes if s["metric"] == m and all(s.get(k) == v for k, v in panel.items())]
                    for m in reported}
            if not any(s["runs_used" + estimates.SUFFIX] for rows in mine.values() for s in rows):
                out.append(f"  {where + ': ' if where else ''}no slopes: no run passes")
                continue
            if where:
                out.append(f"  {where}:")
            for metric, rows in mine.items():
                mean = next(s for s in rows if s["seed"] == "mean")
                out.append(f"  {'  ' * bool(panel)}{metric:<13} {_slope(rows, estimates.SUFFIX):<14} "
                           f"R² {mean['r2' + estimates.SUFFIX]:.2f}  [{_slope(rows, '')}]  "
                           f"{mean['runs_used' + estimates.SUFFIX]} runs fitted")
    elif not t.slopes:
        out.append(f"no slopes: summary.slope_axis {t.axis!r} is not an axis of this sweep")
    files = [f for f in ("summary.csv", "slopes.csv") if (workdir / f).exists()]
    files += sorted(p.name for p in workdir.glob("*.png") if not fnmatch.fnmatch(p.name, BLOCK_FIGURES))
    blocks = len(list(workdir.glob(BLOCK_FIGURES)))
    files += [f"{blocks} per-block figures ({BLOCK_FIGURES})"] * bool(blocks)
    out.append(f"files in {workdir}: " + ", ".join(files))
    return "\n".join(out)
