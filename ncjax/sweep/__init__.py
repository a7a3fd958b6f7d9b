"""A sweep: every group of runs trained in blocks of steps, checkpointed atomically, every checkpoint evaluated.

``run(config, workdir)`` is what ``python -m ncjax.main`` does; it resumes whatever
the workdir already holds, and a kill at any instant resumes to the same result.
``reevaluate(workdir)`` is what ``python -m ncjax.evaluate`` does.

The host acts only between blocks of steps (``ncjax.train``): it logs the previous
block while the next one runs, and at checkpoint boundaries it saves all members in
one Orbax step, evaluates them in one vmapped pass and writes their metrics lines.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import jax
import ml_collections
import numpy as np
from etils.epath import Path
from tqdm import tqdm

from ncjax import checkpoints, data, evaluate, experiment, models, parallel, plan, records, summary, train
from ncjax.data import feed as feeds
from ncjax.errors import ConfigError, Diverged, Preempted, WorkdirError


class StopFlag:
    """Set by SIGTERM; the loop saves and stops at the next block boundary.

    Single-process only: under ``jax.distributed`` JAX's preemption sync manager
    owns SIGTERM and makes every host agree on the step, which the loop reads
    through Orbax's ``reached_preemption``; a Python handler would replace it and
    let hosts stop at different steps.
    """

    def __init__(self):
        self.raised = False

    def install(self):
        if hasattr(signal, "SIGTERM") and jax.process_count() == 1:
            signal.signal(signal.SIGTERM, lambda *_: setattr(self, "raised", True))


def resolve(config: ml_collections.ConfigDict, dataset: data.Dataset) -> ml_collections.ConfigDict:
    """The config with what the data decides filled in (classes, input kind, vocabulary)."""
    config = ml_collections.ConfigDict(config.to_dict())
    experiment.fit_model_to_data(config.model, dataset)
    experiment.validate(config)
    return config


class GroupRun:
    """One group's program, checkpoints, evaluator and run folders, and its training loop.

    ``config`` is the group's config (``plan.Group.config``, resolved against ``dataset``).
    """

    def __init__(self, config, group: plan.Group, dataset: data.Dataset, feed: feeds.Feed, mesh, workdir: Path,
                 read_only: bool = False):
        self.config, self.group, self.workdir = config, group, workdir
        t = config.train
        self.runs = [workdir / r.folder for r in group.runs]
        self.steps_per_epoch = feed.steps_per_epoch
        self.num_train = feed.n
        self.total_steps = t.steps or t.epochs * self.steps_per_epoch
        hyper = group.hyper(config)
        self.module = models.build(config.model)
        self.program = train.Program(self.module, t, feed, mesh, self.total_steps, dataset.train_x[:1], hyper,
                                     packed=group.packed, inputs=dataset.inputs)
        self.checkpoints = checkpoints.GroupCheckpoints(workdir / group.name, config.checkpoint.max_to_keep,
                                                        read_only=read_only)
        self._evaluator_args = (dataset, mesh, hyper, feed)
        self._evaluator: evaluate.GroupEvaluator | None = None
        self.diverged = np.zeros(len(group.runs), np.int64)  # diverged_at of every member; 0 = never

    @property
    def evaluator(self) -> evaluate.GroupEvaluator:
        """Built (and compiled in the background) on first use: a finished group needs none."""
        if self._evaluator is None:
            dataset, mesh, hyper, feed = self._evaluator_args
            self._evaluator = evaluate.build(self.module, dataset, self.config, mesh, hyper, packed=self.group.packed,
                                             abstract_params=self.program.abstract_state.params,
                                             train_arrays=feed.arrays if feed.on_device else None)
        return self._evaluator

    # ---------------------------------------------------------------- state

    def _meta(self, step: int) -> dict[str, Any]:
        epoch, batch = divmod(step, self.steps_per_epoch)
        return dict(step=step, epoch=epoch, batch_in_epoch=batch, steps_per_epoch=self.steps_per_epoch,
                    num_train=self.num_train, diverged_at=[int(d) for d in self.diverged],
                    members=[dict(run=r.folder, depth=r.depth, seed=r.seed, point=r.values)
                             for r in self.group.runs])

    def restore(self) -> tuple[train.TrainState, int]:
        """Fresh, or the latest checkpoint (all members in one step)."""
        step = self.checkpoints.latest_step()
        if step is None:
            return self.program.init(), 0
        abstract = self.program.abstract_state
        params, opt_state, meta = self.checkpoints.restore(step, abstract.params, abstract.opt_state)
        self.checkpoints.check_meta(step, meta, self._meta(meta["step"]), ("steps_per_epoch", "num_train", "members"))
        start = meta["epoch"] * meta["steps_per_epoch"] + meta["batch_in_epoch"]  # the data position resumes
        self.diverged = np.asarray(meta["diverged_at"], np.int64)
        state = train.TrainState(step=jax.device_put(np.int32(start), self.program.replicated), params=params,
                                 opt_state=opt_state,
                                 diverged_at=jax.device_put(self.diverged.astype(np.int32), self.program.replicated))
        return state, start

    def save(self, step: int, state: train.TrainState) -> None:
        self.checkpoints.save(step, state.params, state.opt_state, self._meta(step))

    # ---------------------------------------------------------------- records

    def _identity(self, index: int, step: int) -> dict[str, Any]:
        run = self.group.runs[index]
        return dict(run.values, step=step, epoch=step / self.steps_per_epoch, seed=run.seed)

    def measure(self, step: int, params) -> list[dict[str, Any]]:
        """Every member's metrics line at ``step`` (a diverged member's line only marks it diverged)."""
        lines = self.evaluator(step, params, [self._identity(i, step) for i in range(len(self.runs))])
        return [dict(self._identity(i, step), status="diverged", diverged_at_step=int(self.diverged[i]))
                if self.diverged[i] else line for i, line in enumerate(lines)]

    def evaluate(self, step: int, params) -> list[dict[str, Any]]:
        """Measure every member at ``step`` and write its metrics line."""
        lines = self.measure(step, params)
        for run, line in zip(self.runs, lines):
            kept = [r for r in records.read_metrics(run) if r["step"] != step]
            records.write_metrics(run, kept + [line])
        return lines

    def _log(self, start: int, logs, writers) -> None:
        """Write the train log of one finished block (every ``log_every_steps``) and note divergences."""
        logs = {k: np.asarray(v, np.float64) for k, v in jax.device_get(logs).items()}
        steps = start + 1 + np.arange(len(logs["loss"]))
        bad = ~(np.isfinite(logs["loss"]) & np.isfinite(logs["grad_norm"]))  # [T, M]
        for m in np.flatnonzero(bad.any(0) & (self.diverged == 0)):
            self.diverged[m] = steps[np.argmax(bad[:, m])]
        every = self.config.log_every_steps
        due = [t for t, s in enumerate(steps) if s % every == 0 or s == self.total_steps]
        for m, run in enumerate(self.runs):
            lines = [dict(step=int(steps[t]), **{k: float(v[t, m]) for k, v in logs.items()}) for t in due
                     if not self.diverged[m] or steps[t] < self.diverged[m]]
            records.append_train_log(run, lines)
            for writer in writers[m:m + 1]:
                for line in lines:
                    for key in logs:
                        writer.add_scalar(f"train/{key}", line[key], line["step"])

    # ---------------------------------------------------------------- training

    def train(self, stop: StopFlag) -> None:
        state, start = self.restore()  # before any file is written: a bad checkpoint changes nothing
        for run in self.runs:
            records.truncate(run, start)
        if start and any(start not in {r["step"] for r in records.read_metrics(run)} for run in self.runs):
            self.evaluate(start, state.params)  # killed between a save and its evaluation
        if start >= self.total_steps or self.diverged.all():
            return
        _ = self.evaluator  # built now, so that its programs compile while the first block trains
        writers = _writers(self.runs)
        try:
            self._train(stop, state, start, writers)
        finally:
            for writer in writers:
                writer.close()

    @property
    def _eval_every(self) -> int:
        return self.config.evaluate.every_steps or self.config.checkpoint.every_steps

    def _next_boundary(self, step: int) -> int:
        c = self.config
        ends = [self.total_steps, step + c.steps_per_call]
        ends += [(step // every + 1) * every for every in (c.log_every_steps, c.checkpoint.every_steps,
                                                            self._eval_every)]
        return min(ends)

    def _train(self, stop: StopFlag, state, step: int, writers) -> None:
        every = self.config.checkpoint.every_steps
        bar = tqdm(total=self.total_steps, initial=step, desc=self.group.name, unit="step",
                   disable=not (self.config.progress and records.is_writer()), dynamic_ncols=True, file=sys.stderr)
        carry = self.program.carry(step)
        pending = None
        try:
            while step < self.total_steps:
                length = self._next_boundary(step) - step
                state, carry, logs = self.program.run_block(state, carry, step, length)
                if pending is not None:  # the previous block's logs, while this block computes
                    self._log(*pending, writers)
                pending, step = (step, logs), step + length
                bar.update(length)
                preempted = stop.raised or self.checkpoints.reached_preemption(step)
                save_due = step % every == 0 or step == self.total_steps
                eval_due = step % self._eval_every == 0 or step == self.total_steps
                if not (preempted or save_due or eval_due):
                    if self.diverged.all():
                        break
                    continue
                self._log(*pending, writers)
                pending = None
                if self.diverged.all():
                    break  # nothing left to train or to save
                if save_due or preempted:
                    self.save(step, state)
                if preempted:  # within the grace period: save only; the resumed run evaluates it
                    self.checkpoints.wait()
                    raise Preempted(f"preempted at {self.group.name}, step {step}: checkpoint saved; "
                                    "rerun the same command to resume")
                if not eval_due:
                    continue
                lines = self.evaluate(step, state.params)
                for writer, line in zip(writers, lines):
                    for key, value in line.items():
                        if isinstance(value, float):
                            writer.add_scalar(f"eval/{key}", value, step)
            if pending is not None:
                self._log(*pending, writers)
        finally:
            bar.close()

    def failures(self) -> list[str]:
        return [f"{run.describe()} at step {int(d)}" for run, d in zip(self.group.runs, self.diverged) if d]

    def close(self) -> None:
        self.checkpoints.wait()
        self.checkpoints.close()
        if self._evaluator is not None:
            self._evaluator.close()


def _writers(runs):
    if not records.is_writer():
        return []
    from tensorboardX import SummaryWriter

    return [SummaryWriter(str(r / "tensorboard")) for r in runs]


def preflight(config, dataset: data.Dataset, mesh, data_value=None) -> None:
    """Fail on what only the data and devices reveal, before anything is written."""
    if config.train.batch_size % mesh.size or config.eval_batch_size % mesh.size:
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} and eval_batch_size={config.eval_batch_size} "
            f"must be divisible by the {mesh.size} devices of the mesh")
    if config.train.batch_size > len(dataset.train_y):
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} exceeds the {len(dataset.train_y)} training examples")
    try:
        jax.eval_shape(models.build(config.model).init, jax.random.key(0),  # e.g. patch size
                       dataset.inputs(dataset.train_x[:1], data_value))
    except ValueError as error:  # the models explain a shape that does not fit the data in one line
        raise ConfigError(str(error).splitlines()[0]) from None


class Sweep:
    """A config's groups, each with its resolved config and data set (each distinct data config loaded once)."""

    def __init__(self, config: ml_collections.ConfigDict, mesh):
        experiment.validate(config)
        self.mesh = mesh
        self._datasets: dict[str, data.Dataset] = {}
        self.config = resolve(config, self.dataset(config.data))
        self.groups = plan.groups(self.config)
        self._feed: tuple[str, feeds.Feed] | None = None

    def dataset(self, data_config, values=None) -> data.Dataset:
        """``data_config``'s data set; made for every value of ``values`` at once when given
        (the values of the sweep's axis of the number that generates it: every group of that
        data shares the one data set and its feed)."""
        key = json.dumps([data_config.to_dict(), values], sort_keys=True)
        if key not in self._datasets:
            self._datasets[key] = data.load(data_config, seed=0, values=values)
        return self._datasets[key]

    def _values(self, group: plan.Group) -> tuple | None:
        """The values of the sweep axis that generates the group's data (None: the data is one set)."""
        return None if group.data_key is None else tuple(dict(self.config.sweep)[group.data_key])

    def prepare(self, group: plan.Group) -> tuple[ml_collections.ConfigDict, data.Dataset]:
        """The group's config, resolved against its data set, and the data set."""
        dataset = self.dataset(group.config(self.config).data, self._values(group))
        return resolve(group.config(self.config), dataset), dataset

    def preflight(self) -> None:
        checked = set()
        for group in self.groups:
            config, dataset = self.prepare(group)
            key = json.dumps([config.model.to_dict(), config.data.to_dict(), config.train.batch_size], sort_keys=True)
            if key not in checked:
                checked.add(key)
                values = self._values(group)
                preflight(config, dataset, self.mesh, None if values is None else values[0])

    def check_layout(self, workdir: Path) -> None:
        """Refuse a workdir whose checkpoints were written by groups this plan does not have (an older
        ncjax grouped these runs differently): training would start them afresh and drop their metrics."""
        names = {group.name for group in self.groups}
        foreign = sorted(p.parent.name for p in workdir.glob(f"*/{checkpoints.CHECKPOINTS}")
                         if p.parent.name not in names)
        if foreign:
            raise WorkdirError(
                f"{workdir} holds checkpoints of groups this version of ncjax does not train ({', '.join(foreign[:4])}; "
                f"it trains {', '.join(sorted(names)[:4])}): it was written by an ncjax that grouped the runs "
                "differently; train again in a new --workdir, or re-evaluate it with the ncjax that trained it "
                "(nothing was changed)")

    def group_run(self, group: plan.Group, workdir: Path, read_only: bool = False) -> GroupRun:
        """The group's GroupRun; consecutive groups on the same data share its feed (uploaded once)."""
        config, dataset = self.prepare(group)
        key = json.dumps([config.data.to_dict(), self._values(group), config.train.batch_size], sort_keys=True)
        if self._feed is None or self._feed[0] != key:
            self.close()
            self._feed = key, feeds.choose(config.data.placement, dataset, config.train.batch_size, self.mesh)
        return GroupRun(config, group, dataset, self._feed[1], self.mesh, workdir, read_only)

    def close(self) -> None:
        if self._feed is not None and hasattr(self._feed[1], "close"):
            self._feed[1].close()
        self._feed = None


def resolve_pack(config: ml_collections.ConfigDict, workdir: Path) -> ml_collections.ConfigDict:
    """``pack=None`` (auto) made definite: what the workdir was trained with, else the backend's default
    (packing wins on latency-bound accelerators and loses on a compute-bound CPU: docs/performance.md)."""
    config = ml_collections.ConfigDict(config.to_dict())
    if config.pack is None:
        stored = records.read_config(workdir).get("pack") if (workdir / records.CONFIG).exists() else None
        config.pack = stored if isinstance(stored, bool) else jax.default_backend() != "cpu"
    return config


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> Path:
    """Train (or resume) the whole sweep, then write the summary; Diverged at the end if a run diverged."""
    workdir = Path(workdir)
    config = resolve_pack(config, workdir)
    sweep = Sweep(config, parallel.make_mesh(config.mesh.data, config.mesh.fsdp))
    sweep.preflight()
    records.check_workdir(workdir, sweep.config.to_dict())  # a different experiment is named as such, first
    sweep.check_layout(workdir)
    records.claim_workdir(workdir, sweep.config.to_dict())  # only a config that can run claims a workdir
    stop = StopFlag()
    stop.install()
    failures = []
    try:
        for group in sweep.groups:
            group_run = sweep.group_run(group, workdir)
            try:
                group_run.train(stop)
                failures += group_run.failures()
            finally:
                group_run.close()
    finally:
        sweep.close()
    if records.run_folders(workdir):
        summary.write(workdir)
    if failures:
        raise Diverged(f"the loss or the gradients became NaN/Inf in {len(failures)} run(s) ({'; '.join(failures)}); "
                       "each keeps the parameters of its last finite step and the other runs finished: "
                       "lower train.learning_rate or train.l2")
    return workdir


def reevaluate(workdir: str | Path) -> Path:
    """Recompute metrics.jsonl of every run from its checkpoints (idempotent), then the summary.

    Lines at steps with no checkpoint (``evaluate.every_steps`` finer than the checkpoints, or a
    checkpoint ``max_to_keep`` dropped) cannot be recomputed and are kept as they are."""
    workdir = Path(workdir)
    stored = records.read_config(workdir)
    if stored.get("kind") in ("continual", "ufm"):
        raise WorkdirError(f"{workdir} holds a {stored['kind']} run, whose metrics its runner writes once; "
                           "`python -m ncjax.evaluate` re-evaluates depth sweeps")
    config = experiment.stored_config(stored)
    sweep = Sweep(config, parallel.make_mesh(config.mesh.data, config.mesh.fsdp))
    sweep.check_layout(workdir)
    try:
        for group in sweep.groups:
            if not (workdir / group.name / checkpoints.CHECKPOINTS).exists():
                continue
            group_run = sweep.group_run(group, workdir, read_only=True)
            try:
                lines = {run: [] for run in group_run.runs}
                abstract = group_run.program.abstract_state
                for step in group_run.checkpoints.steps():
                    params, _, meta = group_run.checkpoints.restore(step, abstract.params, abstract.opt_state)
                    group_run.diverged = np.asarray(meta["diverged_at"], np.int64)
                    for run, line in zip(group_run.runs, group_run.measure(step, params)):
                        lines[run].append(line)
                for run, run_lines in lines.items():
                    recomputed = {line["step"] for line in run_lines}
                    kept = [line for line in records.read_metrics(run) if line["step"] not in recomputed]
                    records.write_metrics(run, kept + run_lines)
            finally:
                group_run.close()
    finally:
        sweep.close()
    summary.write(workdir)
    return workdir
