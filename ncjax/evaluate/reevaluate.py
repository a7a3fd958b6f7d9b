"""Re-evaluation: every checkpoint of a finished depth-sweep workdir measured again with today's code.

The groups are set up exactly as training sets them up (:mod:`ncjax.groups`, from the
workdir's stored config), read-only. Lines at steps with no checkpoint (``evaluate.every_steps``
finer than the checkpoints, or a checkpoint ``max_to_keep`` dropped) cannot be recomputed and
are kept as they are; so is a step whose checkpoint fails its integrity check (with a warning):
a damaged checkpoint never overwrites results.
"""

from __future__ import annotations

import sys

from etils.epath import Path

from ncjax import checkpoints, config as configs, dashboard, groups, parallel, records, summary
from ncjax.errors import CheckpointError


def _measure_group(setup: groups.GroupSetup) -> None:
    lines = {run: [] for run in setup.runs}
    for step in setup.checkpoints.steps():
        try:
            params = setup.params_at(step)
        except CheckpointError as error:
            print(f"warning: {error}; its metrics lines are kept as they are", file=sys.stderr)
            continue
        for run, line in zip(setup.runs, setup.measure(step, params)):
            lines[run].append(line)
    for run, run_lines in lines.items():
        records.write_metrics(run, run_lines)
    dashboard.Evaluations(setup.runs, setup.hparams()).rewrite()


def reevaluate(workdir: str | Path) -> Path:
    """Recompute metrics.jsonl of every run from its checkpoints (idempotent), then the summary."""
    workdir = Path(workdir)
    config = configs.stored_config(records.read_config(workdir))
    sweep = groups.SweepGroups(config, parallel.make_mesh(config.mesh.data, config.mesh.fsdp))
    sweep.check_layout(workdir)
    try:
        for group in sweep.groups:
            if not (workdir / group.name / checkpoints.CHECKPOINTS).exists():
                continue
            setup = sweep.setup(group, workdir, read_only=True)
            try:
                _measure_group(setup)
            finally:
                setup.close()
    finally:
        sweep.close()
    summary.write(workdir)
    return workdir
