"""Task splits of a classification data set: which classes arrive when, and how they are labelled.

A continual run sees the classes of a :class:`ncjax.data.Dataset` in ``num_tasks``
tasks of ``classes_per_task`` classes each (Seq-CIFAR-10: 5 tasks of 2). Labels are
renumbered in arrival order, the *continual labels*: task ``t`` holds labels
``t·c … (t+1)·c − 1`` (``c = classes_per_task``), so the classes seen after task ``t``
are the prefix ``0 … (t+1)·c − 1``, which are also the rows of the ETF targets grown
so far (:mod:`ncjax.continual.etf`). ``class_order[ℓ]`` is the data set's own id of
continual label ``ℓ``.

Two scenarios (van de Ven & Tolias 2019, "Three scenarios for continual learning"):

- ``class_incremental``: one head over every class; a sample's prediction is the
  argmax over all classes seen so far (its task is unknown at test time);
- ``task_incremental``: the task is known; a sample's prediction is the argmax over
  its own task's classes only (a multi-head model, written as a mask on one head).

:meth:`TaskSplit.logit_masks` gives both as one table, ``masks[label]`` being the
logits a sample of that label competes over, so a jitted step gathers it on the
device. Everything here is numpy on the host; the split holds row indices into the
data set's arrays, not copies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ncjax.data.dataset import Dataset
from ncjax.errors import ConfigError, DataError

SCENARIOS = ("class_incremental", "task_incremental")
LEFT_OUT = -1  # continual label of a row whose class is in no task


@dataclasses.dataclass(frozen=True)
class TaskSplit:
    """A data set cut into tasks (build it with :func:`split_tasks`).

    ``train_labels`` / ``test_labels``: the continual label of every row of
    ``dataset.train_x`` / ``dataset.test_x`` (``LEFT_OUT`` for classes in no task);
    ``test_labels`` is None when the data set has no test split.
    """

    dataset: Dataset
    scenario: str
    classes_per_task: int
    class_order: np.ndarray
    train_labels: np.ndarray
    test_labels: np.ndarray | None

    @property
    def num_classes(self) -> int:
        """Classes over all tasks (the width of a pre-allocated head)."""
        return len(self.class_order)

    @property
    def num_tasks(self) -> int:
        return self.num_classes // self.classes_per_task

    def task_classes(self, task: int) -> np.ndarray:
        """Continual labels of task ``task``."""
        self._check_task(task)
        return np.arange(task * self.classes_per_task, (task + 1) * self.classes_per_task)

    def num_seen(self, task: int) -> int:
        """Classes seen once task ``task`` has been trained: a prefix of the continual labels."""
        self._check_task(task)
        return (task + 1) * self.classes_per_task

    def task_of(self, labels) -> np.ndarray:
        """The task of each continual label."""
        return np.asarray(labels) // self.classes_per_task

    def train_indices(self, task: int) -> np.ndarray:
        """Rows of ``dataset.train_x`` that belong to task ``task``, in data-set order."""
        self._check_task(task)
        return self._rows(self.train_labels, task)

    def test_indices(self, task: int) -> np.ndarray:
        """Rows of ``dataset.test_x`` that belong to task ``task``, in data-set order."""
        self._check_task(task)
        if self.test_labels is None:
            raise DataError(f"{self.dataset.name} has no test split, so its tasks have no test data")
        return self._rows(self.test_labels, task)

    def train(self, task: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and continual labels of task ``task``'s training data."""
        rows = self.train_indices(task)
        return self.dataset.train_x[rows], self.train_labels[rows]

    def test(self, task: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and continual labels of task ``task``'s test data."""
        rows = self.test_indices(task)
        return self.dataset.test_x[rows], self.test_labels[rows]

    def logit_masks(self, task: int) -> np.ndarray:
        """bool [num_classes, num_classes]: row ``ℓ`` = the logits a sample labelled ``ℓ`` competes over.

        Valid once tasks ``0 … task`` have been trained (for training on ``task`` and
        for evaluating any task up to it). ``class_incremental``: every row is the
        classes seen so far. ``task_incremental``: row ``ℓ`` is the classes of ``ℓ``'s
        own task. A head narrower than ``num_classes`` (the ETF targets grown so far)
        uses the first columns: no seen class lies beyond ``num_seen(task)``.
        """
        classes = np.arange(self.num_classes)
        if self.scenario == "task_incremental":
            self._check_task(task)
            return self.task_of(classes)[:, None] == self.task_of(classes)[None, :]
        seen = classes < self.num_seen(task)
        return np.broadcast_to(seen, (self.num_classes, self.num_classes)).copy()

    def _rows(self, labels: np.ndarray, task: int) -> np.ndarray:
        return np.flatnonzero((labels != LEFT_OUT) & (self.task_of(labels) == task))

    def _check_task(self, task: int) -> None:
        if not 0 <= task < self.num_tasks:
            raise IndexError(f"task {task} out of range: this split has tasks 0..{self.num_tasks - 1}")


def split_tasks(
    dataset: Dataset,
    num_tasks: int,
    scenario: str = "class_incremental",
    classes_per_task: int | None = None,
    class_order: Sequence[int] | None = None,
    order_seed: int | None = None,
) -> TaskSplit:
    """Cuts ``dataset`` into ``num_tasks`` tasks of ``classes_per_task`` classes each.

    The classes arrive in ``class_order`` (data-set class ids: all of them, or the
    subset to use), by default ``0 … num_classes − 1``, or in
    ``np.random.default_rng(order_seed)``'s permutation of them.
    ``classes_per_task=None`` uses every class of the order (their number must then
    be a multiple of ``num_tasks``); a given value uses the first
    ``num_tasks · classes_per_task`` classes of the order and leaves the rest out.
    Every class in a task needs training samples, and test samples when the data
    set has a test split.
    """
    if scenario not in SCENARIOS:
        raise ConfigError(f"unknown continual scenario {scenario!r}; valid scenarios: {', '.join(SCENARIOS)}")
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, (int, np.integer)) or num_tasks < 1:
        raise DataError(f"num_tasks must be a positive integer; got {num_tasks!r}")
    total = dataset.num_classes
    order = _class_order(total, class_order, order_seed, dataset.name)
    if classes_per_task is None:
        if order.size % num_tasks:
            raise DataError(
                f"{order.size} classes of {dataset.name} do not divide into {num_tasks} tasks; "
                f"choose num_tasks dividing {order.size}, or set classes_per_task to use a subset of the classes"
            )
        classes_per_task = order.size // num_tasks
    elif not isinstance(classes_per_task, (int, np.integer)) or isinstance(classes_per_task, bool) or classes_per_task < 1:
        raise DataError(f"classes_per_task must be a positive integer or None; got {classes_per_task!r}")
    elif num_tasks * classes_per_task > order.size:
        raise DataError(
            f"{num_tasks} tasks of {classes_per_task} classes need {num_tasks * classes_per_task} classes; "
            f"{dataset.name} offers {order.size}"
        )
    order = order[: num_tasks * classes_per_task]

    continual_label = np.full(total, LEFT_OUT, np.int32)
    continual_label[order] = np.arange(len(order), dtype=np.int32)
    train_labels = continual_label[dataset.train_y]
    test_labels = None if dataset.test_y is None else continual_label[dataset.test_y]
    for split_name, labels in (("training", train_labels), ("test", test_labels)):
        if labels is None:
            continue
        counts = np.bincount(labels[labels != LEFT_OUT], minlength=len(order))
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            label = int(empty[0])
            raise DataError(
                f"class {int(order[label])} of {dataset.name} (task {label // classes_per_task}) has no "
                f"{split_name} samples; every class of a task needs some: leave it out with "
                "class_order / classes_per_task"
            )
    return TaskSplit(
        dataset=dataset,
        scenario=scenario,
        classes_per_task=int(classes_per_task),
        class_order=order,
        train_labels=train_labels,
        test_labels=test_labels,
    )


def _class_order(total: int, class_order, order_seed, name: str) -> np.ndarray:
    if class_order is not None and order_seed is not None:
        raise ConfigError("give class_order or order_seed, not both")
    if order_seed is not None:
        return np.random.default_rng(order_seed).permutation(total).astype(np.int32)
    if class_order is None:
        return np.arange(total, dtype=np.int32)
    order = np.asarray(class_order)
    if order.ndim != 1 or order.size == 0 or not np.issubdtype(order.dtype, np.integer):
        raise DataError(f"class_order must be a list of class ids; got {class_order!r}")
    if order.size and (order.min() < 0 or order.max() >= total):
        raise DataError(f"class_order holds ids outside 0..{total - 1}, the classes of {name}: {class_order!r}")
    if np.unique(order).size != order.size:
        raise DataError(f"class_order repeats a class: {class_order!r}")
    return order.astype(np.int32)
