"""Matmul FLOPs of a traced program, counted from its jaxpr (before XLA optimises anything).

The compiled program's ``cost_analysis()`` is no FLOP count to rely on: XLA counts a
while loop's body once (a scanned stack of L blocks reads as one block), and on GPUs the
matmuls become cuBLAS custom calls that the analysis does not count at all. The jaxpr is
the program as traced: every ``dot_general`` with its shapes, inside ``scan`` bodies
(multiplied by the scan's length), ``jit``/``remat``/``custom_jvp`` calls and ``vmap``-ed
batch dimensions alike.

Convention (the usual model FLOPs): 2 FLOPs per multiply-add of every ``dot_general``;
elementwise work (activations, softmax, LayerNorm, the optimiser) is not counted; a
``cond`` counts its costliest branch; a rematerialised program also counts its
recomputation, so count a program built without remat for model FLOPs
(``model.remat_policy='everything_saveable'``: on a CPU a scanned transformer's blocks are
otherwise recomputed, ``ncjax.models.execution``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
from jax.extend import core


def dot_flops(eqn) -> int:
    """2 × (output elements) × (contracted elements per output) of one ``dot_general``."""
    (contracting, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracting)


def jaxpr_flops(jaxpr: core.Jaxpr) -> int:
    """Matmul FLOPs of ``jaxpr`` and every jaxpr nested in it."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += dot_flops(eqn)
        elif name == "while":
            raise ValueError("a while loop has no static trip count; count a program built with lax.scan")
        elif name == "cond":
            total += max(jaxpr_flops(branch.jaxpr) for branch in eqn.params["branches"])
        else:
            inner = sum(jaxpr_flops(sub.jaxpr if isinstance(sub, core.ClosedJaxpr) else sub)
                        for value in eqn.params.values()
                        for sub in (value if isinstance(value, (tuple, list)) else (value,))
                        if isinstance(sub, (core.Jaxpr, core.ClosedJaxpr)))
            total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total


def count_flops(fn: Callable, *args: Any) -> int:
    """Matmul FLOPs of one call ``fn(*args)``; ``args`` may be arrays or ``jax.ShapeDtypeStruct``s."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)
