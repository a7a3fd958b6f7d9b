"""Continual learning with Progressive Neural Collapse (ProNC, arXiv 2505.24254) and its baselines.

The parts that do not depend on the training engine, one idea per module:

- ``splits``:  which classes arrive in which task, continual labels, logit masks per scenario;
- ``etf``:     the targets: the nearest ETF after the first task, its minimal growth at
  every task boundary, a random fixed ETF for the baseline (the optimisation problems
  and their closed forms are in its docstring);
- ``losses``:  masked cross-entropy, alignment to the targets, feature distillation (JAX);
- ``metrics``: the accuracy matrix, average accuracy, forgetting, collapse of the seen classes;
- ``replay``:  the indices of a small class-balanced replay buffer.

How a runner uses them (one model trained task after task; the paper's schedule, from
its official code ``models/exorth_ce_svd.py``)::

    split = split_tasks(dataset, num_tasks, scenario, order_seed=...)
    # one backbone with features h [B, D] and a linear head pre-allocated for
    # split.num_classes outputs; targets: None for ProNC, random_etf(split.num_classes,
    # D, seed) for the fixed-ETF baseline; old_params = None; buffer = empty
    acc = empty_accuracy_matrix(split.num_tasks)
    for t in range(split.num_tasks):
        # task boundary (ProNC, t >= 1): grow the targets before training on the new classes
        targets = grow_etf(targets, split.classes_per_task, seed=(seed, t))
        rows = split.train_indices(t) ∪ buffer; labels = split.train_labels[rows]
        masks = split.logit_masks(t)               # to the device once; a step gathers masks[labels]
        weights = LossWeights(ce=1) on the first task and for fine-tuning,
                  LossWeights(ce=0, align=1[, distill]) for the fixed ETF,
                  LossWeights(ce, align, distill) from the config for ProNC at t >= 1
        # every step: h, logits = model(params, x); h_old = model(old_params, x) (frozen
        # snapshot, t >= 1 only); loss, terms = continual_loss(weights, labels, logits=...,
        # logit_mask=masks[labels], features=h, vertices=targets, old_features=h_old)
        # end of task:
        if ProNC and t == 0: targets = nearest_etf(means of the normalised features h/‖h‖
                                                   of task 0's training data, per class)
        old_params = a copy of params              # the teacher for the next task's distillation
        buffer = replay_indices(split, t, buffer_size, seed)   # optional; 0 = none
        for j in range(t + 1):                     # evaluate every task seen so far
            x, y = split.test(j)
            scores = etf_logits(h, targets[:split.num_seen(t)]) where targets exist
                     (ProNC from t >= 1, the fixed ETF always), else the head's logits
            acc[t, j] = accuracy(scores, y, masks[y])
        line = task_summary(acc, t) | seen_class_collapse(train features of the seen classes,
                   labels, split.num_seen(t), classifier=targets or the head's rows)
        # one metrics.jsonl line per task and method; the figure plots them against t

Differences from the paper's code, on purpose: targets are rows (classes) rather than
columns; the free directions of a growth are seeded rather than drawn from numpy's
global state; the grown ETF needs feature width ``D ≥ K' − 1`` rather than ``K'``; the
class-incremental cross-entropy runs over the classes seen so far (the paper's code
runs it over the whole pre-allocated head, pushing down the logits of future classes
as well).
"""

from ncjax.continual.etf import check_width, grow_etf, nearest_etf, random_etf
from ncjax.continual.losses import (
    LossWeights,
    alignment_loss,
    continual_loss,
    distillation_loss,
    dot_regression,
    etf_logits,
    masked_cross_entropy,
)
from ncjax.continual.metrics import (
    accuracy,
    average_accuracy,
    empty_accuracy_matrix,
    forgetting,
    seen_class_collapse,
    task_summary,
)
from ncjax.continual.replay import replay_indices
from ncjax.continual.splits import SCENARIOS, TaskSplit, split_tasks

__all__ = [
    "SCENARIOS",
    "LossWeights",
    "TaskSplit",
    "accuracy",
    "alignment_loss",
    "average_accuracy",
    "check_width",
    "continual_loss",
    "distillation_loss",
    "dot_regression",
    "empty_accuracy_matrix",
    "etf_logits",
    "forgetting",
    "grow_etf",
    "masked_cross_entropy",
    "nearest_etf",
    "random_etf",
    "replay_indices",
    "seen_class_collapse",
    "split_tasks",
    "task_summary",
]
