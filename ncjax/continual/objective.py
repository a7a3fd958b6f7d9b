"""The per-member loss of one task, in the form ``ncjax.train.Program(loss=...)`` takes.

``task_loss(module, weights, l2_exclude, l2_form, l2_params)`` returns ``(params, hyper, x, y, extras) →
(loss, logs)`` for one member; the Program vmaps it over the members (the seeds).
``extras`` is that member's slice of what the runner hands to ``run_block``:

- ``masks`` bool [K, K]: :meth:`ncjax.continual.splits.TaskSplit.logit_masks` of the
  task (row ``y`` = the logits a sample of label ``y`` competes over);
- ``targets`` float32 [K, D] (methods with targets): the current ETF vertices, rows
  past the classes seen so far are zero and never indexed;
- ``teacher`` (methods that distil, from the second task on): the previous task's
  frozen parameters, the same tree as ``params``.

The loss is :func:`ncjax.continual.losses.continual_loss` on the model's logits and
features, plus the L2 term of ``train.l2_form`` (``factor · hyper.l2 · ‖θ‖²``, λ = ``train.l2``). Which terms exist is fixed when
the Program is built (the weights are numbers), so a task whose method has no
teacher never runs the teacher's forward pass. The logged ``accuracy`` is the
method's own prediction rule on the batch: cosine to the targets when they exist
(:func:`ncjax.continual.losses.etf_logits`), the head's logits otherwise.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ncjax import objective
from ncjax.continual.losses import LossWeights, continual_loss, etf_logits, fixed_etf_logits


def task_loss(module: nn.Module, weights: LossWeights, l2_exclude: Sequence[str] = (), l2_form: str = "full",
              l2_params: str = "all", ce_on_targets: bool = False) -> Callable:
    """One member's loss on a batch of one task (see the module docstring for ``extras``).

    ``ce_on_targets``: the cross-entropy scores ``⟨h, v_c⟩`` against the frozen targets
    (:func:`ncjax.continual.losses.fixed_etf_logits`) instead of the linear head's logits.
    """
    factor = objective.L2_FORMS[l2_form]

    def loss_fn(params, hyper, x, y, extras):
        logits, out = module.apply({"params": params}, x, train=True)
        features = out["features"]
        mask = extras["masks"][y]  # [B, K]
        old_features = None
        if "teacher" in extras:
            old_features = module.apply({"params": extras["teacher"]}, x, train=False)[1]["features"]
        ce_logits = fixed_etf_logits(features, extras["targets"]) if ce_on_targets else logits
        total, terms = continual_loss(weights, y, logits=ce_logits, logit_mask=mask, features=features,
                                      vertices=extras.get("targets"), old_features=old_features)
        penalty = objective.l2_penalty(params, l2_exclude, which=l2_params)
        scores = etf_logits(features, extras["targets"]) if "targets" in extras else logits
        accuracy = jnp.mean(jnp.argmax(jnp.where(mask, scores, -jnp.inf), -1) == y)
        zero = jnp.zeros((), jnp.float32)
        logs = {name: terms.get(name, zero) for name in ("ce", "align", "distill")}
        return total + factor * hyper.l2 * penalty, dict(logs, l2_penalty=penalty, accuracy=accuracy)

    return loss_fn
