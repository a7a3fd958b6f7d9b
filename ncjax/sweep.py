"""A depth sweep: for every depth, all seeds trained together, every checkpoint evaluated.

``run(config, workdir)`` is what ``python -m ncjax.main`` does; it resumes
whatever the workdir already holds. ``reevaluate(workdir)`` is what
``python -m ncjax.evaluate`` does. ``python -m ncjax.sweep --workdir=W``
regenerates the summary table and plot from finished runs.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils.epath import Path
from tqdm import tqdm

from ncjax import (
    checkpoints,
    data,
    evaluate,
    experiment,
    models,
    parallel,
    records,
    summary,
    train,
)
from ncjax.errors import Preempted


class _StopFlag:
    """Set by SIGTERM; the loop saves and stops at the next step boundary.

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
    config.model.num_classes = dataset.num_classes
    if dataset.kind == "tokens":
        config.model.input = "tokens"
        config.model.vocab_size = dataset.vocab_size
        config.model.max_len = max(config.model.max_len, dataset.train_x.shape[1] + 1)
    elif dataset.kind == "vector":
        config.model.input = "vector"
    else:
        config.model.input = "image"
    experiment.validate(config)
    return config


def depth_model_config(config, depth: int):
    model_config = ml_collections.ConfigDict(config.model.to_dict())
    model_config.depth = depth
    return model_config


class DepthRun:
    """Everything one depth needs: the program, its checkpoints and its evaluator."""

    def __init__(self, config, depth: int, dataset: data.Dataset, mesh, workdir: Path):
        self.config, self.depth, self.dataset, self.workdir = config, depth, dataset, workdir
        t = config.train
        self.seeds = list(config.seeds)
        self.module = models.build(depth_model_config(config, depth))
        self.steps_per_epoch = data.steps_per_epoch(len(dataset.train_y), t.batch_size)
        self.total_steps = t.steps or t.epochs * self.steps_per_epoch
        self.l2 = train.l2_coefficient(t, depth)
        self.program = train.build_program(
            self.module, t, depth, dataset.train_x[:1], len(self.seeds), self.total_steps, mesh)
        self.runs = [records.run_dir(workdir, depth, s) for s in self.seeds]
        self.checkpoints = [
            checkpoints.RunCheckpoints(r, config.checkpoint.max_to_keep)
            for r in self.runs
        ]
        self.evaluator = evaluate.Evaluator(self.module, dataset, t, self.l2, mesh, config.eval_batch_size,
                                            layernorm_features=config.model.head_depth == 0)

    # ---------------------------------------------------------------- state

    def seed_abstract(self):
        """The abstract state of one seed (no seed axis), as saved in a run folder."""
        def drop(a):
            spec = a.sharding.spec
            sharding = jax.sharding.NamedSharding(a.sharding.mesh, jax.sharding.PartitionSpec(*spec[1:]))
            return jax.ShapeDtypeStruct(a.shape[1:], a.dtype, sharding=sharding)

        return jax.tree.map(drop, self.program.abstract_state)

    def restore(self, step: int):
        abstract = self.seed_abstract()
        seed_states = [c.restore(step, abstract)[0] for c in self.checkpoints]
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *seed_states)
        return jax.device_put(stacked, self.program.state_sharding)

    def initial_state(self):
        """Fresh, or the latest step that every seed has checkpointed."""
        common = set.intersection(*(set(c.steps()) for c in self.checkpoints))
        if not common:
            return self.program.init(jnp.asarray(self.seeds, jnp.uint32)), 0
        step = max(common)
        return self.restore(step), step

    # ---------------------------------------------------------------- evaluation

    def record(self, seed_index: int, step: int, params) -> dict[str, Any]:
        metrics = self.evaluator(params)
        line = dict(step=step, epoch=step / self.steps_per_epoch, depth=self.depth,
                    seed=self.seeds[seed_index], **metrics)
        return line

    def evaluate_checkpoint(self, step: int, state) -> list[dict[str, Any]]:
        """Evaluate every seed at ``step``, write its metrics line, and return the lines."""
        lines = []
        for i, run in enumerate(self.runs):
            params = jax.tree.map(lambda a: a[i], state.params)
            lines.append(self.record(i, step, params))
            kept = [r for r in records.read_metrics(run) if r["step"] != step]
            records.write_metrics(run, kept + [lines[-1]])
        return lines

    def drop_orphan_metrics(self, start_step: int) -> None:
        """Lines past the restored step belong to steps that will be recomputed identically."""
        for run in self.runs:
            lines = records.read_metrics(run)
            if any(r["step"] > start_step for r in lines):
                records.write_metrics(run, [r for r in lines if r["step"] <= start_step])

    # ---------------------------------------------------------------- training

    def batch(self, step: int, iterators: dict):
        epoch, k = divmod(step, self.steps_per_epoch)
        if iterators.get("epoch") != epoch:
            iterators.clear()
            iterators["epoch"] = epoch
            iterators["seeds"] = [
                data.train_batches(self.dataset.train_x, self.dataset.train_y, self.config.train.batch_size,
                                   seed, epoch, jax.process_index(), jax.process_count(), start_step=k)
                for seed in self.seeds
            ]
        xs, ys = zip(*(next(it) for it in iterators["seeds"]))
        x, y = np.stack(xs), np.stack(ys)
        return (jax.make_array_from_process_local_data(self.program.batch_sharding(x.ndim), x),
                jax.make_array_from_process_local_data(self.program.batch_sharding(y.ndim), y))

    def save(self, step: int, state, evaluate: bool = True) -> list[dict[str, Any]]:
        """Checkpoint every seed at ``step``; evaluate it unless told not to (returns the lines)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if not bool(jnp.all(jnp.asarray(self._finite))):
            raise train.Diverged(
                f"depth {self.depth}: the loss or the parameters became NaN/Inf before step {step}; "
                "the last good checkpoint is kept (lower train.learning_rate or train.l2)")
        for i, c in enumerate(self.checkpoints):
            c.save(step, jax.tree.map(lambda a: a[i], state), dict(epoch=epoch, batch_in_epoch=k))
        return self.evaluate_checkpoint(step, state) if evaluate else []

    def train(self, stop: _StopFlag) -> None:
        state, start = self.initial_state()  # before any file is written: a bad checkpoint changes nothing
        writers = _writers(self.runs)
        try:
            self._train(stop, state, start, writers)
        finally:
            for writer in writers:
                writer.close()

    def _train(self, stop: _StopFlag, state, start: int, writers) -> None:
        self.drop_orphan_metrics(start)
        evaluated = {r["step"] for r in records.read_metrics(self.runs[0])}
        if start and start not in evaluated:  # killed between a save and its evaluation
            self.evaluate_checkpoint(start, state)
        if start >= self.total_steps:
            return
        self._finite = jnp.ones((len(self.seeds),), bool)
        every, log_every = self.config.checkpoint.every_steps, self.config.log_every_steps
        bar = tqdm(total=self.total_steps, initial=start, desc=f"depth {self.depth}", unit="step",
                   disable=not (self.config.progress and records.is_writer()), dynamic_ncols=True,
                   file=sys.stderr)
        iterators: dict = {}
        for step in range(start, self.total_steps):
            x, y = self.batch(step, iterators)
            state, aux = self.program.step(state, x, y)
            self._finite = self._finite & aux["finite"]
            done = step + 1
            bar.update(1)
            if done % log_every == 0 or done == self.total_steps:
                loss = np.asarray(aux["loss"])
                bar.set_postfix(loss=f"{loss.mean():.4f}")
                for i, writer in enumerate(writers):
                    writer.add_scalar("train/objective", float(loss[i]), done)
                    writer.add_scalar("train/data_loss", float(aux["data_loss"][i]), done)
                    writer.add_scalar("train/l2_penalty", float(aux["l2_penalty"][i]), done)
                if not bool(jnp.all(self._finite)):
                    self.save(done, state)  # raises Diverged
            preempted = stop.raised or self.checkpoints[0].reached_preemption(done)
            if preempted:  # within the grace period: save only; the resumed run evaluates it
                self.save(done, state, evaluate=False)
            elif done % every == 0 or done == self.total_steps:
                lines = self.save(done, state)
                for writer, line in zip(writers, lines):
                    for key, value in line.items():
                        if isinstance(value, float):
                            writer.add_scalar(f"eval/{key}", value, done)
            if preempted:
                self.close()
                bar.close()
                raise Preempted(f"preempted at depth {self.depth}, step {done}: checkpoint saved; "
                                "rerun the same command to resume")
        bar.close()

    def close(self) -> None:
        for c in self.checkpoints:
            c.wait()
            c.close()


def _writers(runs):
    if not records.is_writer():
        return []
    from tensorboardX import SummaryWriter

    return [SummaryWriter(str(r / "tensorboard")) for r in runs]


def preflight(config, dataset: data.Dataset, mesh) -> None:
    """Fail on what only the data and devices reveal, before anything is written."""
    if config.train.batch_size % mesh.size or config.eval_batch_size % mesh.size:
        raise experiment.ConfigError(
            f"train.batch_size={config.train.batch_size} and eval_batch_size={config.eval_batch_size} "
            f"must be divisible by the {mesh.size} devices of the mesh")
    if config.train.batch_size > len(dataset.train_y):
        raise experiment.ConfigError(
            f"train.batch_size={config.train.batch_size} exceeds the {len(dataset.train_y)} training examples")
    module = models.build(depth_model_config(config, min(config.depths)))
    try:
        jax.eval_shape(module.init, jax.random.key(0), dataset.train_x[:1])  # shape errors, e.g. patch size
    except ValueError as error:  # the models explain a shape that does not fit the data in one line
        raise experiment.ConfigError(str(error).splitlines()[0]) from None


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> Path:
    """Train (or resume) the whole sweep, then write summary.csv and nc_vs_depth.png."""
    workdir = Path(workdir)
    experiment.validate(config)
    dataset = data.load(config.data, seed=0)
    config = resolve(config, dataset)
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    preflight(config, dataset, mesh)
    records.claim_workdir(workdir, config.to_dict())  # only a config that can run claims a workdir
    stop = _StopFlag()
    stop.install()
    for depth in config.depths:
        depth_run = DepthRun(config, depth, dataset, mesh, workdir)
        try:
            depth_run.train(stop)
        finally:
            depth_run.close()
    summary.write(workdir)
    return workdir


def reevaluate(workdir: str | Path) -> Path:
    """Recompute metrics.jsonl of every run from its checkpoints (idempotent), then the summary."""
    workdir = Path(workdir)
    config = ml_collections.ConfigDict(records.read_config(workdir))
    dataset = data.load(config.data, seed=0)
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    for depth in sorted({d for d, _, _ in records.runs(workdir)}):
        depth_run = DepthRun(config, depth, dataset, mesh, workdir)
        abstract = depth_run.seed_abstract()
        for i, (run, ckpts) in enumerate(zip(depth_run.runs, depth_run.checkpoints)):
            lines = []
            for step in ckpts.steps():
                state, _ = ckpts.restore(step, abstract)
                lines.append(depth_run.record(i, step, state.params))
            records.write_metrics(run, lines)
        depth_run.close()
    summary.write(workdir)
    return workdir


def main(argv: list[str] | None = None) -> int:
    """``python -m ncjax.sweep --workdir=W``: summary.csv and nc_vs_depth.png from finished runs."""
    from ncjax import cli

    return cli.run_guarded(lambda: summary.write(cli.workdir_flag(argv, "ncjax.sweep")))


if __name__ == "__main__":
    sys.exit(main())
