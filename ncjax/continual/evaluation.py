"""What a continual run measures after every task, for all members (seeds) at once.

:class:`Forward` runs the model of every member on a set of inputs (one compiled
program, fixed-size chunks, so every task's evaluation reuses it) and returns the
logits and the features on the host. :func:`task_lines` turns them into one metrics
line per member after task ``t``:

- ``accuracy_per_task``, ``average_accuracy``, ``forgetting`` (:mod:`ncjax.continual.metrics`):
  the test accuracy on every task seen so far, scored by the method's prediction rule
  (cosine to the targets, or the linear head) over the logits the scenario lets a
  sample compete over; earlier rows of the accuracy matrix come from the member's
  earlier lines;
- the collapse metrics of every class seen so far (``nc1``, ``nc2_etf``, ``nc3``, ... of
  docs/paper.md#metric-definitions) on the training data of the seen tasks, against the current
  targets (methods with targets) or the head's rows (fine-tuning), see
  :func:`ncjax.continual.metrics.seen_class_collapse`. They are measured on the
  normalised features ``ĥ = h/‖h‖``, the space in which ProNC aligns, fits and
  predicts; ``nc4`` compares the nearest class mean with the argmax of the classifier
  rows without bias.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np

from ncjax import parallel
from ncjax.continual.methods import Method
from ncjax.continual.metrics import accuracy, empty_accuracy_matrix, seen_class_collapse, task_summary
from ncjax.continual.splits import TaskSplit


class Forward:
    """``(params [M, ...], x [N, ...]) → logits [M, N, K], features [M, N, D]`` (numpy), in chunks."""

    def __init__(self, module: nn.Module, mesh: jax.sharding.Mesh, batch_size: int):
        self.mesh, self.batch_size = mesh, batch_size

        def members(params, x):
            logits, out = jax.vmap(lambda p: module.apply({"params": p}, x, train=False))(params)
            return logits, out["features"]

        self._forward = jax.jit(members, out_shardings=parallel.replicated(mesh))

    def __call__(self, params: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = [], []
        for start in range(0, len(x), self.batch_size):
            chunk = x[start:start + self.batch_size]
            size = len(chunk)
            if size < self.batch_size:  # one shape for every chunk: no recompilation
                chunk = np.concatenate([chunk, np.zeros((self.batch_size - size, *chunk.shape[1:]), chunk.dtype)])
            chunk = jax.device_put(chunk, parallel.batch_sharding(self.mesh, chunk.ndim))
            out = jax.device_get(self._forward(params, chunk))
            logits.append(out[0][:, :size])
            features.append(out[1][:, :size])
        return np.concatenate(logits, 1), np.concatenate(features, 1)


def normalized(features: np.ndarray) -> np.ndarray:
    """Rows over their norm, in float64 (a zero row stays zero)."""
    features = np.asarray(features, np.float64)
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return features / np.where(norms > 0, norms, 1.0)


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``[num_classes, D]`` mean of the normalised features of each class (every class must occur)."""
    unit = normalized(features)
    sums = np.zeros((num_classes, unit.shape[1]))
    np.add.at(sums, labels, unit)
    return sums / np.bincount(labels, minlength=num_classes)[:, None]


def accuracy_matrix(previous: Sequence[dict[str, Any]], num_tasks: int) -> np.ndarray:
    """The accuracy matrix filled from a member's earlier metrics lines (one per finished task)."""
    acc = empty_accuracy_matrix(num_tasks)
    for line in previous:
        acc[line["task"], : line["task"] + 1] = line["accuracy_per_task"]
    return acc


def task_lines(split: TaskSplit, method: Method, task: int, tests: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
               train: tuple[np.ndarray, np.ndarray], targets: np.ndarray | None, head: np.ndarray,
               previous: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One metrics line per member after training task ``task``.

    ``tests[j]`` = (logits [M, N_j, K], features [M, N_j, D], labels [N_j]) of task ``j``'s test data;
    ``train`` = (features [M, N, D], labels [N]) of the training data of tasks ``0 … task``;
    ``targets`` [M, K, D] (None without targets); ``head`` [M, K, D] the linear head's rows;
    ``previous[m]``: member ``m``'s lines of tasks ``0 … task−1``.
    """
    num_seen = split.num_seen(task)
    masks = split.logit_masks(task)
    by_targets = method.predicts_with_targets(task)
    classifier = targets if targets is not None else head
    lines = []
    for m, earlier in enumerate(previous):
        acc = accuracy_matrix(earlier, split.num_tasks)
        for j, (logits, features, labels) in enumerate(tests):
            scores = normalized(features[m]) @ targets[m].T if by_targets else logits[m]
            acc[task, j] = accuracy(scores, labels, masks[labels])
        collapse = seen_class_collapse(normalized(train[0][m]), train[1], num_seen, classifier[m])
        lines.append(dict(task_summary(acc, task), num_seen=num_seen,
                          predicts_with="targets" if by_targets else "head",
                          **{name: float(value) for name, value in collapse.items()}))
    return lines
