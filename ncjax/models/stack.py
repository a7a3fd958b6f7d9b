"""Depth as a number: the L blocks as one scanned block (compile time independent
of L) or as L unrolled blocks, with optional remat, and the parameter converters
between the two layouts.

Scanned parameters live under ``blocks`` with a leading 'layers' axis of length L;
unrolled ones under ``blocks_0`` … ``blocks_{L-1}``. ``stack_params`` and
``unstack_params`` map one layout onto the other so the two paths can be compared
on identical weights.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import flax.linen as nn

SCANNED = "blocks"
_UNROLLED = re.compile(r"^blocks_(\d+)$")


def run_blocks(block_cls: type[nn.Module], h: jax.Array, *, depth: int, scan: bool, unroll: int,
               remat_policy: str | None, **block_kwargs) -> tuple[jax.Array, jax.Array]:
    """Apply ``depth`` blocks to ``h``; call inside a compact method.

    ``block_cls(**block_kwargs)(h, None)`` must return ``(h_next, per_block_output)``.
    Returns the last ``h`` and every block's output stacked on a leading axis [L, ...]
    (with scan these are the scan's own outputs, so no extra loop is traced).
    """
    if remat_policy is not None:
        # prevent_cse=False is safe (and faster) only inside a scan, whose loop already stops CSE.
        block_cls = nn.remat(block_cls, policy=getattr(jax.checkpoint_policies, remat_policy), prevent_cse=not scan)
    if scan:
        stacked = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                          length=depth, unroll=unroll, metadata_params={nn.PARTITION_NAME: "layers"})
        return stacked(**block_kwargs, name=SCANNED)(h, None)
    outputs = []
    for i in range(depth):
        h, out = block_cls(**block_kwargs, name=f"{SCANNED}_{i}")(h, None)
        outputs.append(out)
    return h, jnp.stack(outputs)


def stack_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Unrolled params (``blocks_0`` … ``blocks_{L-1}``) → scanned params (``blocks``, leading axis L)."""
    layers = sorted((int(m.group(1)), k) for k in params if (m := _UNROLLED.match(k)))
    if [i for i, _ in layers] != list(range(len(layers))) or not layers:
        raise ValueError(f"expected unrolled block params blocks_0..blocks_{{L-1}}, got keys {sorted(params)}")
    out = {k: v for k, v in params.items() if not _UNROLLED.match(k)}
    out[SCANNED] = jax.tree.map(lambda *xs: jnp.stack(xs), *(params[k] for _, k in layers))
    return out


def unstack_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Scanned params (``blocks`` with leading axis L) → unrolled params (``blocks_0`` … ``blocks_{L-1}``)."""
    if SCANNED not in params:
        raise ValueError(f"expected scanned block params under {SCANNED!r}, got keys {sorted(params)}")
    stacked = params[SCANNED]
    depth = jax.tree.leaves(stacked)[0].shape[0]
    out = {k: v for k, v in params.items() if k != SCANNED}
    for i in range(depth):
        out[f"{SCANNED}_{i}"] = jax.tree.map(lambda x: x[i], stacked)
    return out
