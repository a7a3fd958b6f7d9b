"""Train (or resume) a depth sweep: its groups through the block loop, then the summary.

The groups train in order, or on a one-device CPU two at a time (:func:`concurrent_groups`):
each group's checkpoints, records and resume are its own, so the order changes no result.

Per group: restore the latest intact checkpoint (before any file is written: a bad
checkpoint changes nothing), drop records past it, measure a step that was saved but
not yet evaluated (a kill between the two), then :func:`ncjax.loop.train_blocks` with
two hooks: save all members in one Orbax step, and measure them and write their
metrics lines (on one device: both in a worker thread, on copies, while the next blocks
train: :class:`ncjax.loop.Background`). A kill at any instant resumes to the same result.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading

import jax
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


CPU_GROUPS = 2  # groups trained at once on a one-device CPU


def concurrent_groups(sweep: groups.SweepGroups) -> int:
    """How many groups train at once: :data:`CPU_GROUPS` on a one-device CPU whose groups share one
    device-resident feed (a small model's steps leave part of the cores idle: two groups in two threads
    train 1.3 to 1.6 times as many steps per second, docs/performance.md), else one (several devices:
    two threads would interleave their collectives, :func:`ncjax.loop.background_safe`)."""
    if jax.default_backend() != "cpu" or not loop.background_safe(sweep.mesh) or len(sweep.groups) < 2:
        return 1
    return CPU_GROUPS if sweep.shared_device_feed() else 1


def _train_one(sweep: groups.SweepGroups, group, workdir: Path, stop: loop.StopFlag,
               setting_up: threading.Lock | None = None) -> list[str]:
    """Train (or resume) one group; its diverged runs."""
    with setting_up or contextlib.nullcontext():
        setup = sweep.setup(group, workdir, beside_others=setting_up is not None)
    try:
        _train_group(setup, stop)
        return setup.failures()
    finally:
        setup.close()


def _train_concurrently(sweep: groups.SweepGroups, workdir: Path, stop: loop.StopFlag, workers: int) -> list[str]:
    """The groups ``workers`` at a time, the costliest first; a failure stops the others at their next
    block boundary, saved as for SIGTERM, and is raised. Returns the diverged runs in the groups' order."""
    order = sorted(sweep.groups, key=lambda group: -group.depth * len(group.runs))
    setting_up = threading.Lock()
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="ncjax-group") as pool:
        jobs = {group.name: pool.submit(_train_one, sweep, group, workdir, stop, setting_up) for group in order}
        try:
            for job in concurrent.futures.as_completed(jobs.values()):
                job.result()
        except BaseException:
            stop.raised = True
            for job in jobs.values():
                job.cancel()
            raise
    return [f for group in sweep.groups for f in jobs[group.name].result()]


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> Path:
    """Train (or resume) the whole sweep, then write the summary; Diverged at the end if a run diverged."""
    workdir = Path(workdir)
    config = groups.resolve_pack(config, workdir)
    sweep = groups.SweepGroups(config, parallel.make_mesh(config.mesh.data, config.mesh.fsdp))
    sweep.preflight()
    records.check_workdir(workdir, sweep.config.to_dict())  # a different experiment is named as such, first
    sweep.check_layout(workdir)
    records.claim_workdir(workdir, sweep.config.to_dict())  # only a config that can run claims a workdir
    with loop.StopFlag() as stop:
        try:
            workers = concurrent_groups(sweep)
            if workers == 1:
                failures = [f for group in sweep.groups for f in _train_one(sweep, group, workdir, stop)]
            else:
                failures = _train_concurrently(sweep, workdir, stop, workers)
        finally:
            sweep.close()
    if records.run_folders(workdir):
        summary.write(workdir)
    if failures:
        raise Diverged(f"the loss or the gradients became NaN/Inf in {len(failures)} run(s) ({'; '.join(failures)}); "
                       "each keeps the parameters of its last finite step and the other runs finished: "
                       "lower train.learning_rate or train.l2")
    return workdir
