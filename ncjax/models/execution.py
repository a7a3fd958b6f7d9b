"""How a model's train step runs on the backend at hand, where the config leaves it open: no number changes.

A small transformer's train step on a CPU is bound by memory traffic and per-operation costs, not by
its matmuls: the scan stores every block's activations for the backward pass (stacks of
[L, B, T, D] arrays, zero-filled, copied and sliced each step), and YNNPACK's fused reductions
(LayerNorm, softmax) run slower there than XLA's own. Recomputing each block in the backward pass
(``nothing_saveable``) and giving YNNPACK the matmuls alone make the L-T11 step 1.2 to 2 times as
fast (docs/performance.md). The ResNets gain nothing consistent from either, and an accelerator
stores faster than it recomputes, so every other case keeps the defaults.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import ml_collections

from ncjax.models.config import family
from ncjax.models.transformer import Transformer

CPU_TRANSFORMER_REMAT = "nothing_saveable"
# An experimental XLA option (in jax 0.10): probed once, left out where this jaxlib does not know it.
CPU_TRANSFORMER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def remat_policy(c: ml_collections.ConfigDict) -> str | None:
    """``model.remat_policy``, or where it is None the backend's choice: a scanned transformer on a CPU
    recomputes its blocks; anything else stores them (``everything_saveable`` asks for that everywhere)."""
    if c.remat_policy is not None:
        return c.remat_policy
    cpu_transformer = family(c.name) == "t" and c.scan and jax.default_backend() == "cpu"
    return CPU_TRANSFORMER_REMAT if cpu_transformer else None


def step_compiler_options(module: nn.Module) -> dict[str, str] | None:
    """XLA options for the programs that train ``module`` (None: XLA's defaults)."""
    if isinstance(module, Transformer) and jax.default_backend() == "cpu" and _cpu_options_known():
        return dict(CPU_TRANSFORMER_OPTIONS)
    return None


@functools.cache
def _cpu_options_known() -> bool:
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_TRANSFORMER_OPTIONS).lower(1.0).compile()
    except jax.errors.JaxRuntimeError:  # "No such compile option" / "not a valid enum value"
        return False
    return True
