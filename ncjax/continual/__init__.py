"""Continual learning with Progressive Neural Collapse (ProNC, arXiv 2505.24254) and its baselines.

One idea per module; the first five do not depend on the training engine:

- ``splits``:     which classes arrive in which task, continual labels, logit masks per scenario;
- ``etf``:        the targets: the nearest ETF after the first task, its minimal growth at
  every task boundary, a random fixed ETF for the baseline (the optimisation problems
  and their closed forms are in its docstring);
- ``losses``:     masked cross-entropy (on the head, or on a frozen ETF), alignment to the targets,
  feature distillation (JAX);
- ``metrics``:    the accuracy matrix, average accuracy, forgetting, collapse of the seen classes;
- ``replay``:     the indices of a small class-balanced replay buffer;
- ``methods``:    ProNC and the baselines as data (targets, loss weights per task, replay, prediction rule);
- ``objective``:  one member's loss of a task, as ``ncjax.train.Program(loss=...)`` takes it;
- ``evaluation``: the model's outputs for all seeds, and one metrics line per seed after each task;
- ``config``:     the config's fields, defaults and checks (``configs/continual.py`` builds on it);
- ``runner``:     the run itself, task after task, checkpointed and resumable (its docstring
  walks through one task);
- ``report``:     ``summary.csv`` and ``continual.png`` from a workdir
  (``python -m ncjax.continual --workdir=W`` redraws them).

``python -m ncjax.main --config=configs/continual.py`` runs it; docs/continual.md has the results.

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
    fixed_etf_logits,
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
    "fixed_etf_logits",
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
