"""The block loop: a group's compiled blocks of steps, and the host's work between them.

One compiled call (:meth:`ncjax.train.Program.run_block`) runs a block of steps; the
host acts only at the block boundaries a :class:`Cadence` sets (log, checkpoint,
evaluation, end). Logs are written while the next block runs, so the device never
waits for the host, and at most once per :data:`LOG_SECONDS` (every block since, in
one transfer and one append per file) or at a save or an evaluation: on an object store
each append downloads and uploads the whole file. A run (sweep group) or a task
(continual) differ only in their hooks: what a save and an evaluation do.

Preemption lives here too: :class:`StopFlag` turns SIGTERM into a stop at the next
block boundary (after a save), and Orbax's multi-host preemption check is asked at
every boundary.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import signal
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils.epath import Path
from tqdm import tqdm

from ncjax import records
from ncjax.errors import Preempted


LOG_SECONDS = 1.0  # the longest a written training log lags the steps (TensorBoard, train_log.jsonl)


@dataclasses.dataclass(frozen=True)
class Due:
    """What the host does at a block boundary."""

    log: bool
    checkpoint: bool
    evaluate: bool

    @property
    def host_work(self) -> bool:
        """Whether the loop must stop and wait here (logs alone are written during a later block)."""
        return self.checkpoint or self.evaluate


@dataclasses.dataclass(frozen=True)
class Cadence:
    """When the host acts, in steps from 0 to ``end`` (big_vision's ``itstime``, in one place).

    Every cadence includes ``end``; ``evaluate_every=None`` never evaluates (the caller
    measures at its own moments, e.g. a continual task's end).
    """

    end: int
    log_every: int
    checkpoint_every: int
    steps_per_call: int
    evaluate_every: int | None = None
    evaluate_at: frozenset[int] = frozenset()  # more evaluation steps (e.g. log-spaced: :func:`log_spaced`)

    def _every(self, every: int | None, step: int) -> bool:
        return every is not None and (step % every == 0 or step == self.end)

    def due(self, step: int) -> Due:
        return Due(log=self._every(self.log_every, step), checkpoint=self._every(self.checkpoint_every, step),
                   evaluate=self._every(self.evaluate_every, step) or step in self.evaluate_at)

    def next_boundary(self, step: int) -> int:
        """Where the block that starts at ``step`` ends: the next step at which anything is due."""
        everies = [e for e in (self.log_every, self.checkpoint_every, self.evaluate_every) if e]
        return min([self.end, step + self.steps_per_call] + [(step // e + 1) * e for e in everies]
                   + [s for s in self.evaluate_at if s > step])


def evaluation_steps(end: int, log_points: int, final_points: int, grid: int) -> frozenset[int]:
    """Evaluation steps beyond the regular cadence: about ``log_points`` log-spaced over the run (curves on a
    log time axis) and the last ``final_points`` log steps (so that an estimate from the last evaluations
    describes the end of training, not one checkpoint), all on multiples of ``grid`` or ``end``."""
    final = {end - i * grid for i in range(final_points) if end - i * grid > 0}
    return log_spaced(end, log_points, grid) | frozenset(final)


def log_spaced(end: int, count: int, grid: int) -> frozenset[int]:
    """About ``count`` steps spread evenly on a log axis over (0, end], on multiples of ``grid`` (the log
    cadence: blocks keep the lengths they have, so no new program is compiled) or ``end``."""
    if count <= 0:
        return frozenset()
    points = np.geomspace(1, end, count)
    snapped = np.minimum(np.maximum(np.round(points / grid), 1) * grid, end).astype(int)
    return frozenset(int(s) for s in snapped)


class StopFlag:
    """Set by SIGTERM; the loop saves and stops at the next block boundary.

    A context manager: the previous SIGTERM handler comes back on exit. Single-process
    only: under ``jax.distributed`` JAX's preemption sync manager owns SIGTERM and makes
    every host agree on the step, which the loop reads through Orbax's
    ``reached_preemption``; a Python handler would replace it and let hosts stop at
    different steps.
    """

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self) -> "StopFlag":
        if hasattr(signal, "SIGTERM") and jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, lambda *_: setattr(self, "raised", True))
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class TrainLog:
    """Every member's training log: ``train_log.jsonl`` at the log steps, TensorBoard, and divergence.

    ``diverged[m]`` is the (global) step of member m's first non-finite loss or gradient, 0 if
    none; lines at and after it are not written. ``offset`` turns the loop's steps into the
    steps the files count (a continual task's steps follow the previous tasks'); ``fields``
    are added to every line (e.g. the task).
    """

    def __init__(self, runs: Sequence[Path], cadence: Cadence, diverged: np.ndarray, offset: int = 0,
                 fields: dict[str, Any] | None = None, writers: Sequence[Any] = ()):
        self.runs, self.cadence, self.diverged = list(runs), cadence, diverged
        self.offset, self.fields, self.writers = offset, fields or {}, list(writers)

    def __call__(self, blocks: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """The logs of consecutive blocks, ``[(start, {name: [T, M]}), ...]`` (possibly still on the device):
        one transfer, and one append per file."""
        fetched = jax.device_get([logs for _, logs in blocks])
        logs = {k: np.concatenate([np.asarray(block[k], np.float64) for block in fetched]) for k in fetched[0]}
        local = blocks[0][0] + 1 + np.arange(len(logs["loss"]))
        steps = local + self.offset
        bad = ~(np.isfinite(logs["loss"]) & np.isfinite(logs["grad_norm"]))  # [T, M]
        for m in np.flatnonzero(bad.any(0) & (self.diverged == 0)):
            self.diverged[m] = steps[np.argmax(bad[:, m])]
        due = [t for t, s in enumerate(local) if self.cadence.due(int(s)).log]
        for m, run in enumerate(self.runs):
            lines = [dict(step=int(steps[t]), **self.fields, **{k: float(v[t, m]) for k, v in logs.items()})
                     for t in due if not self.diverged[m] or steps[t] < self.diverged[m]]
            records.append_train_log(run, lines)
            for writer in self.writers[m:m + 1]:
                for line in lines:
                    for key in logs:
                        writer.add_scalar(f"train/{key}", line[key], line["step"])


@dataclasses.dataclass
class Hooks:
    """What the loop calls at the boundaries ``Cadence.due`` names; each gets ``(step, state)``.

    ``preempted(step)``: the multi-host preemption check (Orbax's ``reached_preemption``).
    ``wait()``: blocks until saves are on disk (before a preempted run exits).
    ``save_later`` and ``evaluate_later``, when given, replace ``save`` and ``evaluate`` at regular
    boundaries: called there (with the state, and with a copy of the parameters), each returns its
    work, which a worker thread runs while the next blocks train (:class:`Background`: in order,
    a bounded number in flight; the loop waits for all before it returns, and a failure is raised
    in the loop at the next boundary). A preempted step is saved at once.
    """

    save: Callable[[int, Any], None]
    evaluate: Callable[[int, Any], None] = lambda step, state: None
    preempted: Callable[[int], bool] = lambda step: False
    wait: Callable[[], None] = lambda: None
    save_later: Callable[[int, Any], Callable[[], None]] | None = None
    evaluate_later: Callable[[int, Any], Callable[[], None]] | None = None


class Background:
    """Saves and evaluations off the training's critical path: one worker thread, in order.

    A save's host work (digests, Orbax's set-up of the step) and an evaluation (two passes over the
    data, host float64 finishing, file writes) are, on a CPU, much waiting: dispatch,
    device-to-host copies, small host problems, file systems. The next blocks of steps fill it.
    At most ``limit`` jobs are in flight (each holds a copy of the parameters or the state); a new
    one first waits for the oldest beyond that. Only where :func:`background_safe` says so.
    """

    def __init__(self, limit: int = 3):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ncjax-background")
        self._pending: list[concurrent.futures.Future] = []
        self._limit = limit

    def submit(self, work: Callable[[], None]) -> None:
        self.check()
        while len(self._pending) >= self._limit:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(work))

    def check(self) -> None:
        """Raise a finished job's error, if one failed (without waiting for those still running)."""
        while self._pending and self._pending[0].done():
            self._pending.pop(0).result()

    def wait(self) -> None:
        while self._pending:
            self._pending.pop(0).result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            for job in self._pending:
                job.cancel()
            self._pending = []
            self._pool.shutdown(wait=True)


def background_safe(mesh: jax.sharding.Mesh) -> bool:
    """Whether a worker thread may run device programs beside the training's: only on a one-device mesh.

    Programs over several devices hold collectives, and two threads launching them interleave their
    devices' parts in different orders: each device waits in a rendezvous the other thread's program
    holds, until XLA aborts the process (the suite did, on 8 host devices and a loaded CPU). Across
    hosts (``jax.distributed``) the processes must also launch their collectives in one order."""
    return jax.process_count() == 1 and mesh.size == 1


def parameters_copy(tree):
    """A device copy of ``tree`` (parameters, or a whole state) that the next block's donation leaves alone.

    Waited for: the copy reads the buffers the next block donates, so it must be done before that block
    is dispatched."""
    return jax.block_until_ready(jax.tree.map(jnp.copy, tree))


def progress_bar(total: int, initial: int, name: str, enabled: bool):
    return tqdm(total=total, initial=initial, desc=name, unit="step", dynamic_ncols=True, file=sys.stderr,
                disable=not (enabled and records.is_writer()))


def train_blocks(program, state, start: int, cadence: Cadence, log: TrainLog, hooks: Hooks, stop: StopFlag,
                 name: str, bar=None, extras=()) -> tuple[Any, int]:
    """Train ``program`` from ``start`` to ``cadence.end`` in blocks; returns ``(state, step)``.

    At every boundary a save or an evaluation is due at: the logs not yet written, then a save
    (checkpoint due, or preempted: then :class:`ncjax.errors.Preempted` after it), then an
    evaluation. Stops early, after logging, once every member has diverged (``step`` < end then;
    seen when the logs are written).
    """
    later = hooks.evaluate_later is not None or hooks.save_later is not None
    background = Background() if later else None
    try:
        carry = program.carry(start)
        step, pending, written = start, [], time.monotonic()
        while step < cadence.end:
            length = cadence.next_boundary(step) - step
            state, carry, logs = program.run_block(state, carry, step, length, extras)
            if pending and time.monotonic() - written >= LOG_SECONDS:  # earlier blocks' logs, while this one computes
                log(pending)
                pending, written = [], time.monotonic()
            pending.append((step, logs))
            step += length
            if bar is not None:
                bar.update(length)
            if background is not None:
                background.check()
            due = cadence.due(step)
            preempted = stop.raised or hooks.preempted(step)
            if not (due.host_work or preempted) and not log.diverged.all():
                continue
            log(pending)
            pending, written = [], time.monotonic()
            if log.diverged.all():
                break  # nothing left to train or to save
            if preempted and background is not None:
                background.wait()  # the saves and evaluations of earlier boundaries first
            if due.checkpoint and hooks.save_later is not None and not preempted:
                background.submit(hooks.save_later(step, state))
            elif due.checkpoint or preempted:
                hooks.save(step, state)
            if preempted:  # within the grace period: save only; the resumed run evaluates
                hooks.wait()
                raise Preempted(f"preempted at {name}, step {step}: checkpoint saved; rerun the same command to resume")
            if due.evaluate and hooks.evaluate_later is not None:
                background.submit(hooks.evaluate_later(step, parameters_copy(state.params)))
            elif due.evaluate:
                hooks.evaluate(step, state)
        if pending:
            log(pending)
    finally:
        if background is not None:
            background.close()
    return state, step
