"""The methods a continual run compares: ProNC and its baselines, as data.

A method says which targets its features are pulled to, which loss terms it trains
with on each task, whether it replays a buffer, and how it predicts. Everything
else (model, optimiser, schedule, data order) is shared, so a difference between
methods is a difference of these choices only. Following the paper's official code
(``models/exorth_ce_svd.py`` and ``models/exorth_NCT.py``):

- ``pronc``: cross-entropy alone on the first task; at its end the nearest simplex
  ETF to the class means (:func:`ncjax.continual.etf.nearest_etf`); from the second
  task on, the targets grown at every task boundary (:func:`~ncjax.continual.etf.grow_etf`)
  and ``ce·CE + align·alignment + distill·distillation`` from the previous task's
  frozen model; predictions by the head after the first task, by the targets after.
- ``fixed_etf``: a random simplex ETF of *all* classes, drawn before the first task
  and never changed (needs the number of classes in advance); alignment to it (plus
  the same distillation from the second task on), no cross-entropy; predictions by
  the targets. It differs from ProNC only in the targets (the official
  ``exorth_NCT.py`` trains this way, with the dot-regression loss).
- ``fixed_etf_ce``: the same fixed random ETF as a frozen, bias-free linear classifier
  trained with plain cross-entropy on ``⟨h, v_c⟩`` (:func:`~ncjax.continual.losses.fixed_etf_logits`),
  no alignment, no distillation, no replay: the fixed-ETF classifier with CE of
  Zhu et al. 2021 and Yang et al. 2022, the "NCT-style" baseline of issue 26.
- ``finetune``: cross-entropy alone, no protection against forgetting: the lower bound.
- ``pronc_replay`` / ``finetune_replay``: the same, each task's data joined by a small
  class-balanced buffer of earlier samples (:func:`ncjax.continual.replay.replay_indices`);
  the paper's ProNC runs are ``pronc_replay`` (``--buffer_size 200``).
"""

from __future__ import annotations

import dataclasses

from ncjax.continual.losses import LossWeights
from ncjax.errors import ConfigError

PROGRESSIVE = "progressive"  # nearest ETF after the first task, grown at each boundary
FIXED = "fixed"  # a random ETF of every class, before the first task
HEAD, TARGETS = "head", "targets"  # what the cross-entropy's logits come from


@dataclasses.dataclass(frozen=True)
class Method:
    """One method: its targets, its loss terms, its buffer and its prediction rule."""

    name: str
    targets: str | None  # PROGRESSIVE, FIXED, or None (the linear head only)
    cross_entropy: bool  # a CE term (always on the first task when targets are progressive)
    aligns: bool  # dot regression of the features onto their target vertex (once targets exist)
    distills: bool  # distillation from the previous task's model, from the second task on
    replay: bool  # each task's data joined by the replay buffer
    ce_logits: str = HEAD  # HEAD: the trained linear head; TARGETS: ⟨h, v_c⟩ with the targets frozen

    def weights(self, task: int, ce: float, align: float, distill: float) -> LossWeights:
        """The loss weights on task ``task`` given the configured ones (the first task has no teacher, and
        ProNC's first task no targets yet)."""
        if self.targets == PROGRESSIVE and task == 0:
            return LossWeights(ce=ce)
        return LossWeights(ce=ce if self.cross_entropy else 0.0,
                           align=align if self.aligns else 0.0,
                           distill=distill if self.distills and task > 0 else 0.0)

    def has_targets(self, task: int) -> bool:
        """Whether targets exist while training task ``task`` (ProNC's appear at the end of the first task)."""
        return self.targets == FIXED or (self.targets == PROGRESSIVE and task > 0)

    def predicts_with_targets(self, task: int) -> bool:
        """Whether the evaluation after task ``task`` scores by cosine to the targets rather than the head."""
        return self.has_targets(task)

    def uses_teacher(self, task: int) -> bool:
        return self.distills and task > 0


METHODS = {
    m.name: m
    for m in (
        Method("pronc", PROGRESSIVE, cross_entropy=True, aligns=True, distills=True, replay=False),
        Method("pronc_replay", PROGRESSIVE, cross_entropy=True, aligns=True, distills=True, replay=True),
        Method("fixed_etf", FIXED, cross_entropy=False, aligns=True, distills=True, replay=False),
        Method("fixed_etf_ce", FIXED, cross_entropy=True, aligns=False, distills=False, replay=False,
               ce_logits=TARGETS),
        Method("finetune", None, cross_entropy=True, aligns=False, distills=False, replay=False),
        Method("finetune_replay", None, cross_entropy=True, aligns=False, distills=False, replay=True),
    )
}


def get(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown continual method {name!r}; choose from: {', '.join(METHODS)}")
    return METHODS[name]
