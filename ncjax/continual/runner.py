"""A continual run: one model per seed trained task after task, every method and scenario, resumable at any instant.

``run(config, workdir)`` is what ``python -m ncjax.main --config=configs/continual.py``
does. The points are ``continual.methods`` × ``continual.scenarios``; each point trains
all seeds together as the members of an ``ncjax.train.Program`` (one Program per
task: each task has its own training subset, a ``DeviceFeed``, and its own loss).

Per point, task ``t``:

1. begin (t ≥ 1): the previous task's parameters become the frozen teacher (methods
   that distil), ProNC's targets grow by the task's classes (:func:`ncjax.continual.etf.grow_etf`,
   seeded by ``(seed, t)``), and the optimiser starts afresh (as the paper's code does);
2. train ``train.epochs`` epochs (or ``train.steps`` steps) of the task's training rows,
   joined by the replay buffer for ``*_replay`` methods, in blocks of steps; a
   checkpoint every ``checkpoint.every_steps`` steps of the task;
3. end: ProNC after the first task fits the nearest ETF to the class means
   (:func:`ncjax.continual.etf.nearest_etf`); one checkpoint marks the task finished;
   then every member's metrics line (:mod:`ncjax.continual.evaluation`).

Everything the next task needs is in that one atomic checkpoint (all members): the
parameters, the teacher, the targets (float32, the only form ever used, so a resumed
run grows exactly what an uninterrupted one grows); the replay buffer is a function of
the split and ``continual.replay_seed``. A kill at any instant resumes from the latest
checkpoint, drops records past it and recomputes, to the same metrics. Checkpoint
step numbers count steps over all tasks (task ``t``'s steps follow task ``t−1``'s).

Workdir: ``config.json``; ``<point>/checkpoints``; ``<point>/seed_<n>/metrics.jsonl``
(one line per task) and ``train_log.jsonl``; ``summary.csv`` and ``continual.png``
(:mod:`ncjax.continual.report`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils.epath import Path

from ncjax import checkpoints, config as configs, data, loop, models, parallel, plan, records, train
from ncjax.continual import config as continual_config
from ncjax.continual import evaluation, methods, objective, report
from ncjax.continual.etf import check_width, grow_etf, nearest_etf, random_etf
from ncjax.continual.replay import replay_indices
from ncjax.continual.splits import TaskSplit, split_tasks
from ncjax.data import feed as feeds
from ncjax.errors import ConfigError, DataError, Diverged, WorkdirError


@dataclasses.dataclass(frozen=True)
class Point:
    """One method in one scenario; its folder holds the checkpoints and one run folder per seed."""

    method: methods.Method
    scenario: str

    @property
    def folder(self) -> str:
        return plan.point_folder((("method", self.method.name), ("scenario", self.scenario)))


def points(config: ml_collections.ConfigDict) -> list[Point]:
    return [Point(methods.get(m), s) for m in config.continual.methods for s in config.continual.scenarios]


def split_of(config: ml_collections.ConfigDict, dataset: data.Dataset, scenario: str) -> TaskSplit:
    k = config.continual
    return split_tasks(dataset, k.num_tasks, scenario, classes_per_task=k.classes_per_task,
                       class_order=None if k.class_order is None else tuple(k.class_order), order_seed=k.order_seed)


def task_rows(config: ml_collections.ConfigDict, split: TaskSplit, method: methods.Method, task: int) -> np.ndarray:
    """Training rows of task ``task``: its own, and the buffer kept after the previous task (replay methods)."""
    rows = split.train_indices(task)
    if method.replay and task > 0:
        rows = np.union1d(rows, replay_indices(split, task - 1, config.continual.buffer_size,
                                               config.continual.replay_seed))
    return rows


def task_steps(config: ml_collections.ConfigDict, num_rows: int) -> int:
    t = config.train
    return t.steps or t.epochs * feeds.steps_per_epoch(num_rows, t.batch_size)


@dataclasses.dataclass
class Carried:
    """What passes from one task to the next, besides the trained parameters."""

    teacher: Any = None  # the previous task's parameters (leaves [M, ...]); None on the first task
    targets: np.ndarray | None = None  # float32 [M, K, D], zero rows beyond the classes seen


class PointRun:
    """One point's tasks, checkpoints, records and training loop."""

    def __init__(self, config, point: Point, split: TaskSplit, mesh, workdir: Path,
                 forward: evaluation.Forward):
        self.config, self.point, self.split, self.mesh = config, point, split, mesh
        self.method = point.method
        self.seeds = [int(s) for s in config.seeds]
        self.folder = workdir / point.folder
        self.runs = [self.folder / f"seed_{s}" for s in self.seeds]
        if records.is_writer():
            for run in self.runs:
                run.mkdir(parents=True, exist_ok=True)
        self.rows = [task_rows(config, split, self.method, t) for t in range(split.num_tasks)]
        self.steps = [task_steps(config, len(r)) for r in self.rows]
        self.offsets = np.concatenate([[0], np.cumsum(self.steps)]).astype(int).tolist()
        self.module = models.build(config.model)
        m = len(self.seeds)
        self.hyper = train.Hyper.of(self.seeds, [config.train.l2] * m, [config.train.learning_rate] * m,
                                    [config.model.depth] * m)
        self.forward = forward
        self.checkpoints = checkpoints.GroupCheckpoints(self.folder, config.checkpoint.max_to_keep)
        self.diverged = np.zeros(m, np.int64)  # global step of each member's first non-finite step; 0 = never
        self.sample = split.dataset.train_x[:1]
        # The optimiser's state does not depend on the schedule's length: one compiled init serves every task.
        self._fresh_optimizer = jax.jit(jax.vmap(train.make_optimizer(config.train, self.steps[0]).init))

    # ------------------------------------------------------------------ programs

    def program(self, task: int) -> train.Program:
        dataset = data.Dataset(train_x=self.split.dataset.train_x[self.rows[task]],
                               train_y=self.split.train_labels[self.rows[task]], test_x=None, test_y=None,
                               num_classes=self.split.num_classes, kind=self.split.dataset.kind,
                               name=f"{self.split.dataset.name} task {task}")
        feed = feeds.DeviceFeed(dataset, self.config.train.batch_size, self.mesh)
        k = self.config.continual
        weights = self.method.weights(task, k.ce_weight, k.align_weight, k.distill_weight)
        t = self.config.train
        loss = objective.task_loss(self.module, weights, tuple(t.l2_exclude), t.l2_form, t.l2_params,
                                   ce_on_targets=self.method.ce_logits == methods.TARGETS)
        return train.Program(self.module, self.config.train, feed, self.mesh, self.steps[task], self.sample,
                             self.hyper, loss=loss)

    def extras(self, task: int, carried: Carried, program: train.Program) -> dict[str, Any]:
        """What task ``task``'s loss needs besides the batch, each leaf with a leading member axis."""
        rep = program.replicated
        masks = np.broadcast_to(self.split.logit_masks(task), (len(self.seeds),) + (self.split.num_classes,) * 2)
        out = dict(masks=jax.device_put(np.ascontiguousarray(masks), rep))
        if self.method.has_targets(task):
            out["targets"] = jax.device_put(carried.targets, rep)
        if self.method.uses_teacher(task):
            out["teacher"] = carried.teacher
        return out

    # ------------------------------------------------------------------ checkpoints

    def _meta(self, task: int, step_in_task: int) -> dict[str, Any]:
        return dict(step=self.offsets[task] + step_in_task, task=task, step_in_task=step_in_task,
                    steps_per_task=self.steps, rows_per_task=[len(r) for r in self.rows],
                    class_order=[int(c) for c in self.split.class_order], method=self.method.name,
                    scenario=self.point.scenario, diverged_at=[int(d) for d in self.diverged],
                    members=[dict(run=str(Path(self.point.folder) / r.name), seed=s)
                             for r, s in zip(self.runs, self.seeds)])

    def _tree(self, params, carried: Carried) -> dict[str, Any]:
        """The checkpointed arrays: always the same structure for a method, whatever the task."""
        tree = dict(model=params)
        if self.method.distills:
            tree["teacher"] = params if carried.teacher is None else carried.teacher
        if self.method.targets:
            tree["targets"] = carried.targets if carried.targets is not None else self._no_targets()
        return tree

    def _no_targets(self) -> np.ndarray:
        return np.zeros((len(self.seeds), self.split.num_classes, self.config.model.width), np.float32)

    def save(self, task: int, step_in_task: int, state: train.TrainState, carried: Carried) -> None:
        self.checkpoints.save(self.offsets[task] + step_in_task, self._tree(state.params, carried), state.opt_state,
                              self._meta(task, step_in_task))

    def restore(self, program: train.Program):
        """(task, step in task, params, opt_state, carried) of the latest checkpoint, or None."""
        step = self.checkpoints.latest_step()
        if step is None:
            return None
        abstract = program.abstract_state
        abstract_tree = dict(model=abstract.params)
        if self.method.distills:
            abstract_tree["teacher"] = abstract.params
        if self.method.targets:
            abstract_tree["targets"] = jax.ShapeDtypeStruct(self._no_targets().shape, jnp.float32,
                                                            sharding=program.replicated)
        tree, opt_state, meta = self.checkpoints.restore(step, abstract_tree, abstract.opt_state)
        self.checkpoints.check_meta(step, meta, self._meta(meta.get("task", 0), meta.get("step_in_task", 0)),
                                    ("steps_per_task", "rows_per_task", "class_order", "method", "scenario", "members"))
        self.diverged = np.asarray(meta["diverged_at"], np.int64)
        targets = np.asarray(jax.device_get(tree["targets"])) if self.method.targets else None
        task, step_in_task = meta["task"], meta["step_in_task"]
        teacher = tree.get("teacher") if self.method.uses_teacher(task) else None
        return task, step_in_task, tree["model"], opt_state, Carried(teacher=teacher, targets=targets)

    # ------------------------------------------------------------------ task boundaries

    def first_carried(self) -> Carried:
        if self.method.targets == methods.FIXED:
            dim = self.config.model.width
            return Carried(targets=np.stack([random_etf(self.split.num_classes, dim, s) for s in self.seeds])
                           .astype(np.float32))
        return Carried(targets=None)

    def begin(self, task: int, params, carried: Carried, program: train.Program) -> tuple[train.TrainState, Carried]:
        """The state that starts task ``task`` ≥ 1 from the parameters that ended task ``task − 1``."""
        teacher = _copy(params) if self.method.distills else None
        targets = carried.targets
        if self.method.targets == methods.PROGRESSIVE:
            seen = self.split.num_seen(task - 1)
            targets = self._no_targets()
            for m, seed in enumerate(self.seeds):
                grown = grow_etf(carried.targets[m, :seen].astype(np.float64), self.split.classes_per_task,
                                 seed=(seed, task))
                targets[m, : len(grown)] = grown
        opt_state = jax.device_put(self._fresh_optimizer(params), program.state_sharding.opt_state)
        return self._state(0, params, opt_state, program), Carried(teacher=teacher, targets=targets)

    def _state(self, step_in_task: int, params, opt_state, program: train.Program) -> train.TrainState:
        return train.TrainState(step=jax.device_put(np.int32(step_in_task), program.replicated), params=params,
                                opt_state=opt_state,
                                diverged_at=jax.device_put((self.diverged > 0).astype(np.int32), program.replicated))

    def finish(self, task: int, state: train.TrainState, carried: Carried) -> Carried:
        """End of task ``task``: ProNC's first targets, then the checkpoint that marks the task done."""
        if self.method.targets == methods.PROGRESSIVE and task == 0:
            rows = self.split.train_indices(0)
            _, features = self.forward(state.params, self.split.dataset.train_x[rows])
            labels = self.split.train_labels[rows]
            targets = self._no_targets()
            for m in range(len(self.seeds)):
                means = evaluation.class_means(features[m], labels, self.split.classes_per_task)
                targets[m, : self.split.classes_per_task] = nearest_etf(means)
            carried = Carried(teacher=carried.teacher, targets=targets)
        self.save(task, self.steps[task], state, carried)
        return carried

    def evaluate(self, task: int, params, carried: Carried) -> None:
        """Measure every member after task ``task`` and write its metrics line."""
        step = self.offsets[task + 1]
        previous = [[line for line in records.read_metrics(run) if line["step"] < step] for run in self.runs]
        if any(len(p) != task for p in previous):
            raise WorkdirError(f"{self.folder} lacks the metrics lines of tasks before task {task}; "
                               "remove that folder to recompute it")
        tests = []
        for j in range(task + 1):
            x, labels = self.split.test(j)
            tests.append((*self.forward(params, x), labels))
        rows = np.concatenate([self.split.train_indices(j) for j in range(task + 1)])
        _, train_features = self.forward(params, self.split.dataset.train_x[rows])
        head = np.asarray(jax.device_get(jax.vmap(lambda p: models.classifier_weights(p)[0])(params)))
        lines = evaluation.task_lines(self.split, self.method, task, tests,
                                      (train_features, self.split.train_labels[rows]),
                                      carried.targets if self.method.targets else None, head, previous)
        for m, (run, line) in enumerate(zip(self.runs, lines)):
            identity = dict(step=step, method=self.method.name, scenario=self.point.scenario, seed=self.seeds[m])
            if self.diverged[m]:
                identity.update(status="diverged", diverged_at_step=int(self.diverged[m]))
            records.write_metrics(run, [dict(line, **identity)])

    # ------------------------------------------------------------------ training

    def train(self, stop: loop.StopFlag) -> None:
        program = self.program(0)
        restored = self.restore(program)  # before any file is written: a bad checkpoint changes nothing
        if restored is None:
            task, start, carried = 0, 0, self.first_carried()
            state = program.init()
        else:
            task, start, params, opt_state, carried = restored
            if task:
                program = self.program(task)
            state = self._state(start, params, opt_state, program)
        for run in self.runs:
            records.truncate(run, self.offsets[task] + start)
        bar = loop.progress_bar(self.offsets[-1], self.offsets[task] + start, self.point.folder, self.config.progress)
        try:
            while True:
                if start == self.steps[task]:  # the task is done and checkpointed
                    end = self.offsets[task + 1]
                    if not all(any(r["step"] == end for r in records.read_metrics(run)) for run in self.runs):
                        self.evaluate(task, state.params, carried)
                    if task + 1 == self.split.num_tasks:
                        return
                    task, start = task + 1, 0
                    program = self.program(task)
                    state, carried = self.begin(task, state.params, carried, program)
                state, carried, finished = self._train_task(program, task, start, state, carried, stop, bar)
                if not finished:
                    return  # every member diverged: nothing left to train
                start = self.steps[task]
        finally:
            bar.close()

    def _train_task(self, program: train.Program, task: int, step: int, state: train.TrainState, carried: Carried,
                    stop: loop.StopFlag, bar) -> tuple[train.TrainState, Carried, bool]:
        """Train task ``task`` from ``step`` to its end, checkpoints on the way; its last save is the
        task's end (:meth:`finish`). Returns the final state, what the next task inherits, and whether
        the task finished (False: every member diverged before its end)."""
        c = self.config
        cadence = loop.Cadence(end=self.steps[task], log_every=c.log_every_steps,
                               checkpoint_every=c.checkpoint.every_steps, steps_per_call=c.steps_per_call)
        log = loop.TrainLog(self.runs, cadence, self.diverged, offset=self.offsets[task], fields=dict(task=task))
        ended = {"carried": carried, "finished": False}

        def save(step_in_task: int, state: train.TrainState) -> None:
            if step_in_task == self.steps[task]:
                ended.update(carried=self.finish(task, state, carried), finished=True)
            else:
                self.save(task, step_in_task, state, carried)

        hooks = loop.Hooks(save=save, preempted=lambda s: self.checkpoints.reached_preemption(self.offsets[task] + s),
                           wait=self.checkpoints.wait)
        state, _ = loop.train_blocks(program, state, step, cadence, log, hooks, stop,
                                     f"{self.point.folder}, task {task}", bar, self.extras(task, carried, program))
        return state, ended["carried"], ended["finished"]

    def failures(self) -> list[str]:
        return [f"{self.point.folder}, seed {s} at step {int(d)}" for s, d in zip(self.seeds, self.diverged) if d]

    def close(self) -> None:
        self.checkpoints.wait()
        self.checkpoints.close()


_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))  # a teacher that the next donation cannot touch


def preflight(config: ml_collections.ConfigDict, split: TaskSplit, mesh) -> None:
    """Fail on what only the data and the devices reveal, before anything is written."""
    t = config.train
    if t.batch_size % mesh.size or config.eval_batch_size % mesh.size:
        raise ConfigError(f"train.batch_size={t.batch_size} and eval_batch_size={config.eval_batch_size} must be "
                          f"divisible by the {mesh.size} devices of the mesh")
    if split.test_labels is None:
        raise DataError(f"{split.dataset.name} has no test split: a continual run measures test accuracy per task")
    for method in {p.method for p in points(config)}:
        if method.targets:
            check_width(split.num_classes, config.model.width)
        smallest = min(len(task_rows(config, split, method, task)) for task in range(split.num_tasks))
        if t.batch_size > smallest:
            raise ConfigError(f"train.batch_size={t.batch_size} exceeds the {smallest} training examples of the "
                              "smallest task; lower it or use more data per class")
    try:
        jax.eval_shape(models.build(config.model).init, jax.random.key(0), split.dataset.train_x[:1])
    except ValueError as error:
        raise ConfigError(str(error).splitlines()[0]) from None


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> Path:
    """Train (or resume) every point, then write the summary and the figure; Diverged at the end if a run diverged."""
    workdir = Path(workdir)
    continual_config.validate(config)
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    dataset = data.load(config.data, seed=0)
    splits = {s: split_of(config, dataset, s) for s in config.continual.scenarios}
    config = configs.resolve(config, dataset, num_classes=next(iter(splits.values())).num_classes)
    for split in splits.values():
        preflight(config, split, mesh)
    records.claim_workdir(workdir, config.to_dict())  # only a config that can run claims a workdir
    forward = evaluation.Forward(models.build(config.model), mesh, config.eval_batch_size)
    failures = []
    with loop.StopFlag() as stop:
        for point in points(config):
            point_run = PointRun(config, point, splits[point.scenario], mesh, workdir, forward)
            try:
                point_run.train(stop)
                failures += point_run.failures()
            finally:
                point_run.close()
    if records.is_writer():
        report.write(workdir)
    if failures:
        raise Diverged(f"the loss or the gradients became NaN/Inf in {len(failures)} run(s) ({'; '.join(failures)}); "
                       "each keeps the parameters of its last finite step and the other runs finished: "
                       "lower train.learning_rate or the loss weights")
    return workdir
