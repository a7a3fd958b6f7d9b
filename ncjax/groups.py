"""The set-up of a sweep's groups, shared by training and re-evaluation.

:class:`SweepGroups` holds what a config's groups share: the config (validated once, here),
the data sets (each distinct data config loaded once), the mesh and the feed of consecutive
groups on the same data. :class:`GroupSetup` is one group ready to run: its resolved
config, model, compiled :class:`ncjax.train.Program`, :class:`ncjax.checkpoints.GroupCheckpoints`,
members' hyper-parameters and run folders, with restore → (state, start), save, and
measurement of every member (its evaluators are built on first use).
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import numpy as np
from etils.epath import Path

from ncjax import checkpoints, config as configs, data, evaluate, loop, models, plan, records, train
from ncjax.data import feed as feeds
from ncjax.errors import ConfigError, WorkdirError


COPY_BYTES = 1 << 30  # a state up to this size is copied and saved beside the next blocks


def member_hyper(group: plan.Group, base: ml_collections.ConfigDict) -> train.Hyper:
    """Each member's seed, λ (after the depth schedule), learning rate, depth and data value."""
    members = [r.config(base) for r in group.runs]
    return train.Hyper.of(
        seeds=[r.seed for r in group.runs],
        l2s=[train.l2_coefficient(c.train, r.depth) for c, r in zip(members, group.runs)],
        learning_rates=[c.train.learning_rate for c in members],
        depths=[r.depth for r in group.runs],
        data_values=group.data_values())


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


class GroupSetup:
    """One group ready to train or to be measured (``config``: the group's, resolved against ``dataset``)."""

    def __init__(self, config, group: plan.Group, dataset: data.Dataset, feed: feeds.Feed, mesh, workdir: Path,
                 read_only: bool = False, beside_others: bool = False):
        """``beside_others``: other groups train at the same time in this process (their saves take turns)."""
        self.config, self.group, self.workdir = config, group, workdir
        t = config.train
        self.runs = [workdir / r.folder for r in group.runs]
        self.steps_per_epoch = feed.steps_per_epoch
        self.num_train = feed.n
        self.total_steps = t.steps or t.epochs * self.steps_per_epoch
        self.hyper = member_hyper(group, config)
        self.module = models.build(config.model)
        self.program = train.Program(self.module, t, feed, mesh, self.total_steps, dataset.train_x[:1], self.hyper,
                                     packed=group.packed, inputs=dataset.inputs)
        self.checkpoints = checkpoints.GroupCheckpoints(workdir / group.name, config.checkpoint.max_to_keep,
                                                        read_only=read_only, exclusive=beside_others)
        self._evaluator_args = (dataset, mesh, feed)
        self._evaluator: evaluate.GroupEvaluator | None = None
        self.diverged = np.zeros(len(group.runs), np.int64)  # diverged_at of every member; 0 = never

    @property
    def evaluator(self) -> evaluate.GroupEvaluator:
        """Built (and compiled in the background) on first use: a finished group needs none."""
        if self._evaluator is None:
            dataset, mesh, feed = self._evaluator_args
            self._evaluator = evaluate.build(self.module, dataset, self.config, mesh, self.hyper,
                                             packed=self.group.packed,
                                             abstract_params=self.program.abstract_state.params,
                                             train_arrays=feed.arrays if feed.on_device else None)
        return self._evaluator

    def hparams(self) -> list[dict[str, Any]]:
        """Each run's defining values, for dashboards: its point, seed, λ, learning rate, width and data."""
        h = self.hyper
        return [dict(run.values, seed=run.seed, l2=float(h.l2[i]), learning_rate=float(h.learning_rate[i]),
                     width=self.config.model.width, model=self.config.model.name, data=self.config.data.source)
                for i, run in enumerate(self.group.runs)]

    # ---------------------------------------------------------------- state

    def _meta(self, step: int) -> dict[str, Any]:
        epoch, batch = divmod(step, self.steps_per_epoch)
        return dict(step=step, epoch=epoch, batch_in_epoch=batch, steps_per_epoch=self.steps_per_epoch,
                    num_train=self.num_train, diverged_at=[int(d) for d in self.diverged],
                    members=[dict(run=r.folder, depth=r.depth, seed=r.seed, point=r.values)
                             for r in self.group.runs])

    def restore(self) -> tuple[train.TrainState, int]:
        """Fresh, or the latest intact checkpoint (all members in one step)."""
        abstract = self.program.abstract_state
        restored = self.checkpoints.restore_latest(abstract.params, abstract.opt_state)
        if restored is None:
            return self.program.init(), 0
        step, params, opt_state, meta = restored
        self.checkpoints.check_meta(step, meta, self._meta(meta["step"]), ("steps_per_epoch", "num_train", "members"))
        start = meta["epoch"] * meta["steps_per_epoch"] + meta["batch_in_epoch"]  # the data position resumes
        self.diverged = np.asarray(meta["diverged_at"], np.int64)
        state = train.TrainState(step=jax.device_put(np.int32(start), self.program.replicated), params=params,
                                 opt_state=opt_state,
                                 diverged_at=jax.device_put(self.diverged.astype(np.int32), self.program.replicated))
        return state, start

    def params_at(self, step: int):
        """The parameters of checkpoint ``step``, with the members' divergence as it was then (for measuring);
        CheckpointError if the step fails its integrity check."""
        abstract = self.program.abstract_state
        params, _, meta = self.checkpoints.restore(step, abstract.params, abstract.opt_state)
        self.diverged = np.asarray(meta["diverged_at"], np.int64)
        return params

    def save(self, step: int, state: train.TrainState) -> None:
        self.checkpoints.save(step, state.params, state.opt_state, self._meta(step))

    def save_later(self, step: int, state: train.TrainState):
        """The save of ``step`` as work for a worker thread (:class:`ncjax.loop.Background`): the state
        copied on the device and the members' divergence taken now. A state above
        :data:`COPY_BYTES` (a copy would double its memory) is saved now instead."""
        leaves = jax.tree.leaves((state.params, state.opt_state))
        if sum(leaf.size * leaf.dtype.itemsize for leaf in leaves) > COPY_BYTES:
            self.save(step, state)
            return lambda: None
        meta = self._meta(step)
        params, opt_state = loop.parameters_copy((state.params, state.opt_state))
        return lambda: self.checkpoints.save(step, params, opt_state, meta)

    # ---------------------------------------------------------------- measurement

    def _identity(self, index: int, step: int) -> dict[str, Any]:
        run = self.group.runs[index]
        return dict(run.values, step=step, epoch=step / self.steps_per_epoch, seed=run.seed)

    def measure(self, step: int, params, diverged: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Every member's metrics line at ``step`` (a diverged member's line only marks it diverged);
        ``diverged``: the members' divergence steps as they were at ``step`` (default: as now)."""
        diverged = self.diverged if diverged is None else diverged
        lines = self.evaluator(params, [self._identity(i, step) for i in range(len(self.runs))])
        return [dict(self._identity(i, step), status="diverged", diverged_at_step=int(diverged[i]))
                if diverged[i] else line for i, line in enumerate(lines)]

    def failures(self) -> list[str]:
        return [f"{run.describe()} at step {int(d)}" for run, d in zip(self.group.runs, self.diverged) if d]

    def close(self) -> None:
        self.checkpoints.wait()
        self.checkpoints.close()
        if self._evaluator is not None:
            self._evaluator.close()


class SweepGroups:
    """A config's groups, each set up on demand with its resolved config and data set.

    The config is validated once here; each group's config is the base with its shared
    values and its data's decisions (``config.resolve``), never validated whole again.
    """

    def __init__(self, config: ml_collections.ConfigDict, mesh):
        configs.validate(config)
        self.mesh = mesh
        self._datasets: dict[str, data.Dataset] = {}
        self.config = configs.resolve(config, self.dataset(config.data))
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
        return configs.resolve(group.config(self.config), dataset), dataset

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

    def _feed_key(self, group: plan.Group, config: ml_collections.ConfigDict) -> str:
        return json.dumps([config.data.to_dict(), self._values(group), config.train.batch_size], sort_keys=True)

    def shared_device_feed(self) -> bool:
        """Whether every group trains from one feed that lives on the device: a stateless feed (the batches are
        a function of the step), which groups training at the same time may share."""
        prepared = [(group, *self.prepare(group)) for group in self.groups]
        if len({self._feed_key(group, config) for group, config, _ in prepared}) != 1:
            return False
        _, config, dataset = prepared[0]
        return feeds.on_device(config.data.placement, dataset, self.mesh)

    def setup(self, group: plan.Group, workdir: Path, read_only: bool = False,
              beside_others: bool = False) -> GroupSetup:
        """The group ready to run; consecutive groups on the same data share its feed (uploaded once)."""
        config, dataset = self.prepare(group)
        key = self._feed_key(group, config)
        if self._feed is None or self._feed[0] != key:
            self.close()
            self._feed = key, feeds.choose(config.data.placement, dataset, config.train.batch_size, self.mesh)
        return GroupSetup(config, group, dataset, self._feed[1], self.mesh, workdir, read_only, beside_others)

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
