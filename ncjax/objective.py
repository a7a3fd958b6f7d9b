"""The paper's regularised objective: a data loss (CE or MSE) plus λ‖θ‖².

Kept apart from the train loop so that the train step, the benchmarks and the
unconstrained-features model all minimise the very same function.
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

LOSSES = ("ce", "mse")


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


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def l2_penalty(params, exclude: Sequence[str] = ()) -> jax.Array:
    """‖θ‖² over every parameter whose path ('/'-joined) matches none of ``exclude`` (regexes)."""
    patterns = [re.compile(p) for p in exclude]
    total = jnp.zeros((), jnp.float32)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not any(p.search(_path_name(path)) for p in patterns):
            total = total + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
    return total
