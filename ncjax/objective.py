"""The paper's regularised objective: a data loss (CE or MSE) plus an L2 penalty on the parameters.

Kept apart from the train loop so that the train step, the benchmarks and the
unconstrained-features model all minimise the very same function.

L2 conventions (docs/paper.md#what-is-not-known cannot read the paper's; each is a config value, the
defaults are *unverified*):

- the form, :data:`L2_FORMS`: ``'full'`` adds ``λ‖θ‖²`` to the data loss (default),
  ``'half'`` adds ``(λ/2)‖θ‖²``, ``'decoupled'`` adds nothing: the optimiser decays the
  weights itself (``optax.add_decayed_weights`` / ``adamw`` with ``mask=penalised(...)``;
  for plain SGD a decay rate λ equals the ``'half'`` form);
- which parameters, :data:`L2_PARAMS`: ``'all'`` (default) or ``'weights'``, i.e. without
  biases and without LayerNorm scales and shifts; ``exclude`` regexes drop more.

Packed depths: the blocks' parameters (``params['blocks']``, leading 'layers' axis) of
blocks at index ≥ ``active_depth`` belong to no run, so they are left out of the penalty
(:func:`l2_penalty`) and of weight decay (:func:`decay_mask`); their gradients are zero.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax

from ncjax.models.layers import CLASSIFIER
from ncjax.models.stack import BLOCKS

LOSSES = ("ce", "mse")
L2_FORMS = {"full": 1.0, "half": 0.5, "decoupled": 0.0}  # form → factor of λ‖θ‖² in the loss
L2_PARAMS = ("all", "weights")
_NOT_WEIGHTS = ("bias", "scale")  # leaf names of biases and LayerNorm scales/shifts (layers.py)


def per_example_loss(
    logits: jax.Array, labels: jax.Array, kind: str = "ce", mse_target_scale: float = 1.0
) -> jax.Array:
    """Data loss of every example [B].

    ``ce``: softmax cross-entropy. ``mse``: ½‖z − s·onehot(y)‖², the convention
    of the unconstrained-features literature (s = ``mse_target_scale``).
    """
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))  # bf16 → f32, f64 stays
    if kind == "ce":
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if kind == "mse":
        target = mse_target_scale * jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
        return 0.5 * jnp.sum((logits - target) ** 2, -1)
    raise ValueError(f"unknown loss {kind!r}; allowed: {', '.join(LOSSES)}")


def data_loss(logits: jax.Array, labels: jax.Array, kind: str = "ce", mse_target_scale: float = 1.0) -> jax.Array:
    """Mean data loss over the batch."""
    return per_example_loss(logits, labels, kind, mse_target_scale).mean()


def _key_name(key) -> str:
    return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))


def _path_name(path) -> str:
    return "/".join(_key_name(k) for k in path)


def penalised(params, which: str = "all", exclude: Sequence[str] = ()) -> Any:
    """A pytree of bools like ``params``: True where a leaf is in the L2 penalty / decayed.

    ``which``: ``'all'`` or ``'weights'`` (no biases, no LayerNorm scale/shift); ``exclude``:
    regexes matched against the '/'-joined path. Static (from names only), so it is the
    ``mask=`` optax's ``add_decayed_weights`` and ``adamw`` accept.
    """
    if which not in L2_PARAMS:
        raise ValueError(f"which={which!r}; allowed: {', '.join(L2_PARAMS)}")
    patterns = [re.compile(p) for p in exclude]

    def keep(path, _):
        if which == "weights" and _key_name(path[-1]) in _NOT_WEIGHTS:
            return False
        return not any(p.search(_path_name(path)) for p in patterns)

    return jax.tree_util.tree_map_with_path(keep, params)


def depth_mask(params, active_depth: jax.Array | int | None) -> Any:
    """A pytree like ``params`` of float32 arrays broadcastable to each leaf: 1 on every entry
    that belongs to the network of depth ``active_depth``, 0 on blocks ≥ ``active_depth``.

    ``params`` are one run's (inside the vmap over runs). Multiply a packed run's updates by it
    so that masked blocks never move, whatever the optimiser (their gradients are already zero;
    decoupled decay would still shrink them).
    ``active_depth=None``: every entry belongs (all ones).
    """
    def mask(path, leaf):
        if active_depth is None or _key_name(path[0]) != BLOCKS:
            return jnp.ones((), jnp.float32)
        layers = jnp.arange(leaf.shape[0]) < active_depth
        return layers.astype(jnp.float32).reshape((-1,) + (1,) * (leaf.ndim - 1))

    return jax.tree_util.tree_map_with_path(mask, params)


def decay_mask(params, which: str = "all", exclude: Sequence[str] = (),
               active_depth: jax.Array | int | None = None) -> Any:
    """Per-entry 0/1 float32 masks (broadcastable to each leaf): the entries the L2 penalty or
    decoupled weight decay acts on, i.e. :func:`penalised` leaves of the active blocks."""
    return jax.tree.map(lambda keep, mask: mask * keep, penalised(params, which, exclude),
                        depth_mask(params, active_depth))


def l2_penalty(params, exclude: Sequence[str] = (), *, which: str = "all",
               active_depth: jax.Array | int | None = None) -> jax.Array:
    """‖θ‖² (float32) over the entries :func:`decay_mask` selects (``exclude``: path regexes).

    The loss adds ``L2_FORMS[form] · λ · l2_penalty(...)``. ``params`` are one run's
    (inside the vmap over runs), so a block leaf's leading axis is its layers axis.
    """
    leaves = jax.tree.leaves(params)
    keep = jax.tree.leaves(penalised(params, which, exclude))
    masks = jax.tree.leaves(depth_mask(params, active_depth))
    total = jnp.zeros((), jnp.float32)
    for leaf, kept, mask in zip(leaves, keep, masks):
        if kept:
            total = total + jnp.sum(mask * jnp.square(leaf.astype(jnp.float32)))
    return total


def block_penalties(params, exclude: Sequence[str] = (), *, which: str = "all") -> jax.Array:
    """Every block's own ‖θ_l‖² [L] (the penalised entries of ``params['blocks']``); [0] for a model
    without stacked blocks. How the penalty is spread over depth (``l2_penalty`` is the whole sum)."""
    blocks = params.get(BLOCKS)
    if blocks is None:
        return jnp.zeros((0,), jnp.float32)
    keep = jax.tree.leaves(penalised({BLOCKS: blocks}, which, exclude))
    leaves = jax.tree.leaves(blocks)
    depth = leaves[0].shape[0]
    total = jnp.zeros((depth,), jnp.float32)
    for leaf, kept in zip(leaves, keep):
        if kept:
            total = total + jnp.sum(jnp.square(leaf.astype(jnp.float32)).reshape(depth, -1), -1)
    return total


def classifier_bias_penalised(params, which: str = "all", exclude: Sequence[str] = ()) -> bool:
    """Whether the classifier's bias is in the penalty (False without a bias): the UFM comparison needs it."""
    mask = penalised(params, which, exclude)
    for key in CLASSIFIER:
        mask = mask[key]
    return bool(mask.get("bias", False))
