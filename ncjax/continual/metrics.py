"""What a continual run measures after every task: accuracy on each task seen, forgetting, collapse.

The accuracy matrix ``acc[i, j]`` is the test accuracy (a fraction in [0, 1]) on task
``j`` after training tasks ``0 … i``; entries with ``j > i`` (tasks not yet seen) are
NaN. From it, after task ``t``:

- **average accuracy** ``A_t = (1/(t+1)) Σ_{j ≤ t} acc[t, j]`` (the "final average
  accuracy" at the last task);
- **forgetting** ``F_t = (1/t) Σ_{j < t} ( max_{j ≤ l < t} acc[l, j] − acc[t, j] )``, the
  average forgetting measure of Chaudhry et al. 2018 (*Riemannian Walk for Incremental
  Learning*, ECCV, arXiv 1801.10112, §4.1; Mammoth's ``forgetting``): the drop of each
  old task from its best accuracy earlier on to now. The max starts at ``l = j``, when
  task ``j`` was first trained (earlier rows have no accuracy on it). Undefined (NaN)
  after the first task.

The collapse metrics of all classes seen so far (``nc1``, ``nc2_etf``, ``nc3`` and the
rest of docs/paper.md#metric-definitions) come from :func:`ncjax.collapse.measure`, with the current
targets as the classifier rows (centred over the seen classes, see
:func:`seen_class_collapse`): the grown ETF for ProNC, the fixed ETF's first rows for
that baseline, the linear head's rows for fine-tuning.
"""

from __future__ import annotations

import numpy as np

from ncjax import collapse


def accuracy(logits, labels, logit_mask) -> float:
    """Fraction of samples whose argmax over the logits in ``logit_mask`` ([K] or [B, K]) is their label."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("accuracy of no samples is undefined")
    mask = np.broadcast_to(np.asarray(logit_mask, bool)[..., : logits.shape[-1]], logits.shape)
    predictions = np.argmax(np.where(mask, logits, -np.inf), axis=-1)
    return float(np.mean(predictions == labels))


def empty_accuracy_matrix(num_tasks: int) -> np.ndarray:
    """``[num_tasks, num_tasks]`` of NaN, to be filled one row per trained task."""
    return np.full((num_tasks, num_tasks), np.nan)


def average_accuracy(acc, task: int) -> float:
    """Mean accuracy over tasks ``0 … task`` after training task ``task``."""
    return float(np.mean(_seen_row(acc, task)))


def forgetting(acc, task: int) -> float:
    """Average forgetting of tasks ``0 … task−1`` after training task ``task`` (NaN for task 0)."""
    now = _seen_row(acc, task)
    if task == 0:
        return float("nan")
    acc = np.asarray(acc, np.float64)
    drops = [acc[j:task, j].max() - now[j] for j in range(task)]
    return float(np.mean(drops))


def task_summary(acc, task: int) -> dict:
    """The accuracy numbers of one metrics line after training task ``task``."""
    return {
        "task": task,
        "accuracy_per_task": [float(a) for a in _seen_row(acc, task)],
        "average_accuracy": average_accuracy(acc, task),
        "forgetting": forgetting(acc, task),
    }


def seen_class_collapse(features, labels, num_seen: int, classifier) -> dict[str, float]:
    """Collapse metrics of the classes ``0 … num_seen−1`` against ``classifier`` rows (the current targets).

    ``features [N, D]``, ``labels [N]`` continual labels, all below ``num_seen``;
    ``classifier [≥ num_seen, D]``, of which the first ``num_seen`` rows are used,
    centred over those classes: a vector added to every row changes no prediction
    among them, and the class means are centred too, so features sitting on their
    targets score ``nc3 = nc2_etf_w = 0`` also for a subset of a pre-allocated ETF
    (whose seen rows do not sum to zero). ProNC's grown targets are centred already.
    Returns every metric of :func:`ncjax.collapse.measure` (``nc1``, ``nc2_etf``,
    ``nc3``, ...); all NaN for a member whose features or targets are not finite (it diverged).
    """
    labels = np.asarray(labels)
    if labels.size and labels.max() >= num_seen:
        raise ValueError(f"labels must be seen classes (< {num_seen}); got a label {labels.max()}")
    weight = np.asarray(classifier, np.float64)[:num_seen]
    weight = weight - weight.mean(0)
    features = np.asarray(features)
    if not (np.isfinite(features).all() and np.isfinite(weight).all()):  # a diverged member: no collapse to measure
        names = collapse.measure(np.nan_to_num(features, nan=0.0, posinf=0.0, neginf=0.0), labels, num_seen,
                                 weight=np.nan_to_num(weight))
        return {name: float("nan") for name in names}
    return collapse.measure(features, labels, num_seen, weight=weight)


def _seen_row(acc, task: int) -> np.ndarray:
    acc = np.asarray(acc, np.float64)
    if acc.ndim != 2 or acc.shape[0] != acc.shape[1]:
        raise ValueError(f"the accuracy matrix must be square [tasks, tasks]; got shape {acc.shape}")
    if not 0 <= task < acc.shape[0]:
        raise ValueError(f"task {task} out of range for {acc.shape[0]} tasks")
    row = acc[task, : task + 1]
    for j in range(task + 1):
        if not np.all(np.isfinite(acc[j:task + 1, j])):
            raise ValueError(f"accuracy on task {j} is missing in rows {j}..{task} of the accuracy matrix")
    return row
