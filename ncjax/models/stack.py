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

import flax.linen as nn
import jax
import jax.numpy as jnp

SCANNED = "blocks"
_UNROLLED = re.compile(r"^blocks_(\d+)$")


def _scanned(block_cls, length: int, unroll: int, axis_name: str | None):
    return nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                   length=length, unroll=unroll, metadata_params={nn.PARTITION_NAME: axis_name})


class _Group(nn.Module):
    """``group`` consecutive blocks as one inner scan: the unit two-level remat recomputes."""

    block_cls: Any
    group: int
    unroll: int
    block_kwargs: Any

    @nn.compact
    def __call__(self, h: jax.Array, _) -> tuple[jax.Array, jax.Array]:
        inner = _scanned(self.block_cls, self.group, self.unroll, "layers")
        return inner(**self.block_kwargs, name="group")(h, None)


def _grouped_stack(block_cls, depth: int, group: int, unroll: int):
    """An outer scan over depth/group rematerialised groups, each an inner scan of ``group`` blocks.

    The backward pass then keeps one carry per group plus one group's residuals,
    about depth/group + group carries instead of depth. The parameters are stored
    as [depth, ...] like the one-level scan (map_variables reshapes them to
    [depth/group, group, ...] on the way in), so checkpoints do not depend on ``group``.
    """
    def is_box(x):
        return isinstance(x, nn.LogicallyPartitioned)

    def to_groups(x):
        if is_box(x):
            return x.replace(value=to_groups(x.value), names=(None,) + tuple(x.names))
        return x.reshape((depth // group, group) + x.shape[1:])

    def to_layers(x):
        if is_box(x):
            return x.replace(value=to_layers(x.value), names=tuple(x.names)[1:])
        return x.reshape((depth,) + x.shape[2:])

    def trans_in(variables):
        params = variables.get("params", {})
        if not params or "group" in params:
            return variables
        return {**variables, "params": {"group": jax.tree.map(to_groups, params, is_leaf=is_box)}}

    def trans_out(variables):
        params = variables.get("params", {})
        if "group" not in params:
            return variables
        return {**variables, "params": jax.tree.map(to_layers, params["group"], is_leaf=is_box)}

    outer = _scanned(nn.remat(_Group, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False),
                     depth // group, 1, None)
    return nn.map_variables(outer, "params", trans_in_fn=trans_in, trans_out_fn=trans_out, init=True, mutable=True)


def run_blocks(block_cls: type[nn.Module], h: jax.Array, *, depth: int, scan: bool, unroll: int,
               remat_policy: str | None, remat_group: int | None = None, **block_kwargs
               ) -> tuple[jax.Array, jax.Array]:
    """Apply ``depth`` blocks to ``h``; call inside a compact method.

    ``block_cls(**block_kwargs)(h, None)`` must return ``(h_next, per_block_output)``.
    Returns the last ``h`` and every block's output stacked on a leading axis [L, ...]
    (with scan these are the scan's own outputs, so no extra loop is traced).
    ``remat_group`` (scan only): also rematerialise groups of that many blocks (two-level remat).
    """
    if remat_policy is not None:
        # prevent_cse=False is safe (and faster) only inside a scan, whose loop already stops CSE.
        block_cls = nn.remat(block_cls, policy=getattr(jax.checkpoint_policies, remat_policy), prevent_cse=not scan)
    if scan and remat_group:
        stack = _grouped_stack(block_cls, depth, remat_group, unroll)
        h, outputs = stack(block_cls=block_cls, group=remat_group, unroll=unroll, block_kwargs=block_kwargs,
                           name=SCANNED)(h, None)
        return h, outputs.reshape((depth,) + outputs.shape[2:])
    if scan:
        return _scanned(block_cls, depth, unroll, "layers")(**block_kwargs, name=SCANNED)(h, None)
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
