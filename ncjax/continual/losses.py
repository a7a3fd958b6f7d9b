"""The losses of ProNC and of its baselines: pure JAX, for a jitted (and vmapped) train step.

As in the paper's official code (github.com/Continue-Edge-AI-Lab/ProNC,
``models/exorth_ce_svd.py``, ``utils/drloss.py``), with ``ĥ = h/‖h‖`` the normalised
penultimate feature of a sample of continual label ``y``:

- **cross-entropy** on the linear head's logits, over the classes the sample competes
  with (``logit_mask``, from :meth:`ncjax.continual.splits.TaskSplit.logit_masks`:
  the classes seen so far when class-incremental, its own task's when task-incremental);
- **alignment** to the sample's target vertex ``v_y``, the *dot-regression* loss
  ``½ (⟨ĥ, v_y⟩ − 1)²`` (Yang et al. 2022, used by ProNC): as ``‖ĥ‖ = ‖v_y‖ = 1`` it is
  ``½ (1 − cos(h, v_y))²``, zero only on the vertex;
- **distillation** from the previous task's model on **features**, not logits: the same
  dot regression between ``ĥ`` and the frozen old model's ``ĥ_old`` on the same input,
  ``½ (⟨ĥ, ĥ_old⟩ − 1)²``.

ProNC's objective (task ≥ 1) is ``w_ce·CE + w_align·align + w_distill·distill``, each a
batch mean; on the first task, before targets exist, it is CE alone. The paper's
Seq-CIFAR-100 command uses ``w_align = 18``, ``w_distill = 170``, ``w_ce = 1``. The
baselines are the same function with other weights: fine-tuning is CE alone (no
protection); the fixed, pre-allocated ETF classifier is alignment alone to a
:func:`ncjax.continual.etf.random_etf` of all classes, never trained, predicting by
:func:`etf_logits`; its cross-entropy form (``fixed_etf_ce``) is CE alone on
:func:`fixed_etf_logits`, the same ETF as a frozen linear head.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

_NORM_FLOOR = 1e-12  # a zero feature normalises to zero instead of NaN


class LossWeights(NamedTuple):
    """The weight of each term (numbers, or arrays when a sweep vmaps over them)."""

    ce: float = 1.0
    align: float = 0.0
    distill: float = 0.0


def normalize(features: jax.Array) -> jax.Array:
    """Rows scaled to unit norm (a zero row stays zero)."""
    sq_norm = jnp.sum(jnp.square(features), axis=-1, keepdims=True)
    return features * jax.lax.rsqrt(jnp.maximum(sq_norm, _NORM_FLOOR**2))


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, logit_mask: jax.Array) -> jax.Array:
    """Batch mean of softmax cross-entropy over the logits in ``logit_mask`` ([K] or [B, K]) only."""
    mask = jnp.broadcast_to(logit_mask[..., : logits.shape[-1]], logits.shape)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels, where=mask))


def dot_regression(features: jax.Array, targets: jax.Array) -> jax.Array:
    """Batch mean of ``½ (⟨ĥ, t⟩ − 1)²``: ``features [B, D]`` are normalised, ``targets [B, D]`` are used as given."""
    dot = jnp.sum(normalize(features) * targets, axis=-1)
    return 0.5 * jnp.mean(jnp.square(dot - 1.0))


def alignment_loss(features: jax.Array, labels: jax.Array, vertices: jax.Array) -> jax.Array:
    """Dot regression of each normalised feature onto its class's target vertex (``vertices [K, D]``)."""
    return dot_regression(features, vertices[labels])


def distillation_loss(features: jax.Array, old_features: jax.Array) -> jax.Array:
    """Dot regression of the normalised features onto the frozen previous model's normalised features."""
    return dot_regression(features, normalize(jax.lax.stop_gradient(old_features)))


def etf_logits(features: jax.Array, vertices: jax.Array) -> jax.Array:
    """``[B, K]`` cosines between each feature and each target vertex: the ETF as the classifier.

    The paper's code scores ``⟨h, v_c⟩`` (ProNC) or ``⟨ĥ, v_c⟩`` (the fixed ETF):
    the same argmax, since ``‖h‖`` is shared by a sample's scores.
    """
    return normalize(features) @ vertices.T


def fixed_etf_logits(features: jax.Array, vertices: jax.Array) -> jax.Array:
    """``[B, K]`` logits ``⟨h, v_c⟩``: the ETF as a frozen, bias-free linear head for the cross-entropy.

    Unlike :func:`etf_logits` the features are not normalised: the scale of ``h`` is the
    softmax's temperature, which the network learns, as with a trained head.
    """
    return features @ jax.lax.stop_gradient(vertices).T


def continual_loss(
    weights: LossWeights,
    labels: jax.Array,
    *,
    logits: jax.Array | None = None,
    logit_mask: jax.Array | None = None,
    features: jax.Array | None = None,
    vertices: jax.Array | None = None,
    old_features: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted sum of the terms whose inputs are given, and each unweighted term.

    ``ce`` needs ``logits`` and ``logit_mask``; ``align`` needs ``features`` and
    ``vertices``; ``distill`` needs ``features`` and ``old_features``. A term whose
    inputs are missing is left out, which is an error when its weight is a nonzero
    number (a silently dropped term would change the method).
    """
    terms = {}
    if logits is not None and logit_mask is not None:
        terms["ce"] = masked_cross_entropy(logits, labels, logit_mask)
    if features is not None and vertices is not None:
        terms["align"] = alignment_loss(features, labels, vertices)
    if features is not None and old_features is not None:
        terms["distill"] = distillation_loss(features, old_features)
    for name, weight in weights._asdict().items():
        if name not in terms and isinstance(weight, numbers.Number) and weight != 0:
            raise ValueError(f"loss weight {name}={weight} but the inputs of the {name!r} term were not given")
    if not terms:
        raise ValueError("continual_loss got the inputs of no term")
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, terms
