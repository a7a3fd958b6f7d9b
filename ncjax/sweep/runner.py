"""Train (or resume) a depth sweep: its groups in order through the block loop, then the summary.

Per group: restore the latest intact checkpoint (before any file is written: a bad
checkpoint changes nothing), drop records past it, measure a step that was saved but
not yet evaluated (a kill between the two), then :func:`ncjax.loop.train_blocks` with
two hooks: save all members in one Orbax step, and measure them and write their
metrics lines (on one device: both in a worker thread, on copies, while the next blocks
train: :class:`ncjax.loop.Background`). A kill at any instant resumes to the same result.
"""

from __future__ import annotations

import ml_collections
from etils.epath import Path

from ncjax import dashboard, groups, loop, parallel, records, summary
from ncjax.errors import Diverged


def _measure_missing(setup: groups.GroupSetup, start: int, state, evaluate) -> None:
    """Measure the checkpointed steps up to ``start`` whose metrics lines are missing: a kill between a save
    and its evaluation, or a metrics.jsonl emptied, removed or damaged since (lines at steps without a
    checkpoint cannot come back: re-evaluation says the same)."""
    written = [{r["step"] for r in records.read_metrics(run)} for run in setup.runs]
    missing = [s for s in setup.checkpoints.steps() if 0 < s <= start and any(s not in w for w in written)]
    diverged = setup.diverged.copy()
    for step in missing:
        evaluate(step, state.params if step == start else setup.params_at(step))
    setup.diverged = diverged  # the restored state's, whatever the earlier steps' were


def _train_group(setup: groups.GroupSetup, stop: loop.StopFlag) -> None:
    state, start = setup.restore()
    for run in setup.runs:
        records.truncate(run, start)
    evaluations = dashboard.Evaluations(setup.runs, setup.hparams())

    def evaluate(step: int, params, diverged=None) -> None:
        lines = setup.measure(step, params, diverged)
        for run, line in zip(setup.runs, lines):
            records.write_metrics(run, [line])
        evaluations.add(lines, last=step == setup.total_steps)

    def evaluate_later(step: int, params):
        """At a boundary: the evaluation to run beside the next blocks, with the members' divergence as now."""
        diverged = setup.diverged.copy()
        return lambda: evaluate(step, params, diverged)

    try:
        _measure_missing(setup, start, state, evaluate)
        if start >= setup.total_steps or setup.diverged.all():
            return
        _ = setup.evaluator  # built now, so that its programs compile while the first block trains
        c = setup.config
        cadence = loop.Cadence(end=setup.total_steps, log_every=c.log_every_steps,
                               checkpoint_every=c.checkpoint.every_steps, steps_per_call=c.steps_per_call,
                               evaluate_every=c.evaluate.every_steps or c.checkpoint.every_steps,
                               evaluate_at=loop.evaluation_steps(setup.total_steps, c.evaluate.log_points,
                                                                 c.evaluate.final_points, c.log_every_steps))
        writers = dashboard.train_writers(setup.runs)
        log = loop.TrainLog(setup.runs, cadence, setup.diverged, writers=writers)
        later = loop.background_safe(setup.program.mesh)  # beside the next blocks (loop.Background)
        hooks = loop.Hooks(save=setup.save, evaluate=lambda step, state: evaluate(step, state.params),
                           save_later=setup.save_later if later else None,
                           evaluate_later=evaluate_later if later else None,
                           preempted=setup.checkpoints.reached_preemption, wait=setup.checkpoints.wait)
        bar = loop.progress_bar(setup.total_steps, start, setup.group.name, c.progress)
        try:
            loop.train_blocks(setup.program, state, start, cadence, log, hooks, stop, setup.group.name, bar)
        finally:
            bar.close()
            for writer in writers:
                writer.close()
    finally:
        evaluations.close()


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> Path:
    """Train (or resume) the whole sweep, then write the summary; Diverged at the end if a run diverged."""
    workdir = Path(workdir)
    config = groups.resolve_pack(config, workdir)
    sweep = groups.SweepGroups(config, parallel.make_mesh(config.mesh.data, config.mesh.fsdp))
    sweep.preflight()
    records.check_workdir(workdir, sweep.config.to_dict())  # a different experiment is named as such, first
    sweep.check_layout(workdir)
    records.claim_workdir(workdir, sweep.config.to_dict())  # only a config that can run claims a workdir
    failures = []
    with loop.StopFlag() as stop:
        try:
            for group in sweep.groups:
                setup = sweep.setup(group, workdir)
                try:
                    _train_group(setup, stop)
                    failures += setup.failures()
                finally:
                    setup.close()
        finally:
            sweep.close()
    if records.run_folders(workdir):
        summary.write(workdir)
    if failures:
        raise Diverged(f"the loss or the gradients became NaN/Inf in {len(failures)} run(s) ({'; '.join(failures)}); "
                       "each keeps the parameters of its last finite step and the other runs finished: "
                       "lower train.learning_rate or train.l2")
    return workdir
