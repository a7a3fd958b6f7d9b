"""Depth as a number: L blocks whose parameters live stacked on a leading 'layers' axis,
initialised depth-consistently and run as one scanned block (or unrolled), optionally
rematerialised, optionally masked to a smaller (traced) depth.

Parameters. The blocks' parameters are one subtree ``blocks`` whose every leaf has a
leading axis of length L (logical name 'layers'), whatever ``scan``, ``unroll`` or remat
say, so checkpoints do not depend on how the stack is executed. Block ``l`` is
initialised from ``jax.random.fold_in(key, l)``, ``key`` being the 'params' key Flax
hands to the ``blocks`` parameter: a depth-L network's blocks are exactly the first L
blocks of a deeper network initialised with the same key (``nn.scan``'s ``split_rngs``
would split the key into L parts and change every block with L).

Masked depth. With ``active_depth`` (an int32 scalar, possibly traced or vmapped), blocks
with index ≥ ``active_depth`` are the identity: the carry passes unchanged (no branch, no
LayerNorm) and their parameters receive exactly zero gradient. A stack of ``max(depths)``
blocks then computes exactly the depth-L network, which is how runs of several depths pack
into one vmapped program. The per-block output of a masked block is zeros; callers keep the
first ``active_depth`` entries.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

BLOCKS = "blocks"  # the params key of the stacked blocks


def _is_box(x) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def init_blocks(rng: jax.Array, block: nn.Module, carry: Any, context: tuple, depth: int) -> Any:
    """Stacked parameters of ``depth`` copies of ``block``, block ``l`` from ``fold_in(rng, l)``.

    ``block`` is an unbound module; its boxed logical names gain a leading 'layers' axis.
    """
    def one(layer):
        return block.init(jax.random.fold_in(rng, layer), carry, *context)["params"]

    stacked = jax.vmap(one)(jnp.arange(depth, dtype=jnp.uint32))
    return jax.tree.map(lambda b: b.add_axis(0, {nn.PARTITION_NAME: "layers"}) if _is_box(b) else b,
                        stacked, is_leaf=_is_box)


def _masked(apply_block: Callable, active_depth: jax.Array | None) -> Callable:
    """``(carry, (params_l, l)) → (carry, output)``, the identity (zero output) where l ≥ active_depth."""
    if active_depth is None:
        return lambda carry, xs: apply_block(xs[0], carry)

    def skip(params, carry):
        outputs = jax.eval_shape(apply_block, params, carry)[1]
        return carry, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), outputs)

    def step(carry, xs):
        params, layer = xs
        # lax.cond skips the block's arithmetic when active_depth is one number; under vmap over
        # active_depth it becomes a select whose masked side gets a zero cotangent.
        return jax.lax.cond(layer < active_depth, apply_block, skip, params, carry)

    return step


def run_blocks(module: nn.Module, block: nn.Module, carry: Any, context: tuple = (), *, depth: int, scan: bool,
               unroll: int, remat_policy: str | None, remat_group: int | None = None,
               active_depth: jax.Array | int | None = None) -> tuple[Any, Any]:
    """Apply ``depth`` blocks to ``carry``; call inside ``module``'s compact method.

    ``block`` is an unbound module (``parent=None``) with ``block(carry, *context) →
    (carry, output)``; ``context`` (e.g. a padding mask) is the same for every block.
    Returns the last carry and every block's output stacked on a leading axis [L, ...].
    ``remat_policy``: a ``jax.checkpoint_policies`` name, recompute each block in the backward
    pass; ``remat_group`` (scan only): also recompute groups of that many blocks (two-level
    remat: about L/group + group saved carries instead of L).
    """
    if module.has_variable("params", BLOCKS):  # apply: every block layer checks its own shapes
        params = module.get_variable("params", BLOCKS)
    else:
        params = module.param(BLOCKS, init_blocks, block, carry, context, depth)
    if isinstance(active_depth, int) and not 0 <= active_depth <= depth:
        raise ValueError(f"active_depth={active_depth} must lie in 0..{depth} (the model's depth)")
    if active_depth is not None:
        active_depth = jnp.asarray(active_depth, jnp.int32)

    def apply_block(params_l, carry):
        return block.apply({"params": params_l}, carry, *context)

    if remat_policy is not None:
        # prevent_cse=False is safe (and faster) only inside a scan, whose loop already stops CSE.
        apply_block = jax.checkpoint(apply_block, policy=getattr(jax.checkpoint_policies, remat_policy),
                                     prevent_cse=not scan)
    step = _masked(apply_block, active_depth)
    layers = jnp.arange(depth, dtype=jnp.int32)
    if not scan:
        outputs = []
        for layer in range(depth):
            carry, out = step(carry, (jax.tree.map(lambda p: p[layer], params), layers[layer]))
            outputs.append(out)
        return carry, jax.tree.map(lambda *o: jnp.stack(o), *outputs)
    if not remat_group:
        return jax.lax.scan(step, carry, (params, layers), unroll=unroll)

    def grouped(x):
        return x.reshape((depth // remat_group, remat_group) + x.shape[1:])

    def run_group(carry, xs):
        return jax.lax.scan(step, carry, xs, unroll=unroll)

    run_group = jax.checkpoint(run_group, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
    carry, outputs = jax.lax.scan(run_group, carry, jax.tree.map(grouped, (params, layers)))
    return carry, jax.tree.map(lambda o: o.reshape((depth,) + o.shape[2:]), outputs)
