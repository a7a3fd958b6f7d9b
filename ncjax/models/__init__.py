"""Depth-scalable L-RN1/L-RN2 ResNets, L-T11/L-T12 transformers and plain ReLU MLPs (Flax Linen).

Public API::

    cfg = default_config(); cfg.name = "rn1"; cfg.depth = 512
    module = build(cfg)                                  # validates cfg first (ConfigError)
    variables = init(module, rng, sample_input)          # {'params': plain arrays}
    logits, out = module.apply(variables, x)            # out = {"features": [B, d]}
    logits, out = module.apply(variables, x, return_blocks=True)    # out also has "blocks": [L, B, d]
    logits, out = module.apply(variables, x, active_depth=L)        # the depth-L network
    W, b = classifier_weights(variables["params"])      # [K, d], [K] or None
    specs = logical_specs(module, sample_input)          # logical PartitionSpecs of the params

    module = ResNet(depth=8, width=64, num_classes=10)   # no ConfigDict: every other field has
    module = Transformer(depth=4, width=64, num_classes=10)  # default_config()'s value (as does MLP)

``module.apply(variables, x, train=False, return_blocks=False, active_depth=None)``
returns ``(logits, out)`` with ``out`` a dict of named outputs. ``x`` is float
[B, H, W, C] (images), float [B, D] (vectors, ResNets) or int [B, T] (tokens,
transformers). ``logits`` [B, K] float32; ``out["features"]`` [B, d] the vectors
that enter the classifier (after pooling, final LayerNorm and the linear head);
``out["blocks"]`` [L, B, d] (only with ``return_blocks=True``) every block's output
(transformers: pooled like the features, before the final LayerNorm and head).
``train`` is accepted by every model and has no effect yet (no dropout or batch
statistics).

Depth-consistent parameters and packing several depths in one program
(``stack.py``): the blocks' parameters are ``params['blocks']``, every leaf with a
leading 'layers' axis [L, ...]; block l is initialised from ``fold_in(key, l)``, so
``init`` of a depth-L model gives exactly the first L blocks of a deeper model's
``init`` with the same key, and every other parameter (embedding, positions, CLS,
head) does not depend on the depth. ``active_depth`` (an int32 scalar: a Python int,
a traced value, or one lane of a ``jax.vmap``) makes blocks ≥ active_depth the
identity, so one model of depth ``max(depths)`` computes every depth-L network and
the masked blocks get exactly zero gradient; their entries of ``blocks`` are zeros.

Depth knobs (config): ``scan`` (one traced block; False unrolls L blocks),
``unroll`` (blocks per scan iteration), ``remat_policy`` (a jax.checkpoint_policies
name: recompute each block in the backward pass; None: the backend's choice,
:mod:`ncjax.models.execution`), ``remat_group`` (also recompute groups of k blocks:
~L/k + k saved carries). None of them changes the parameters.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ncjax.models import execution
from ncjax.models.config import RESNETS, default_config, validate
from ncjax.models.layers import CLASSIFIER, Layers
from ncjax.models.mlp import MLP
from ncjax.models.resnet import ResNet
from ncjax.models.stack import BLOCKS
from ncjax.models.transformer import Transformer

__all__ = ["BLOCKS", "MLP", "ResNet", "Transformer", "build", "classifier_weights", "default_config", "init",
           "logical_specs", "validate"]


def build(c: ml_collections.ConfigDict) -> nn.Module:
    """The Linen module that ``c`` describes (``c.name`` in rn1, rn2, t11, t12, mlp); raises ConfigError on bad
    values."""
    validate(c)
    layers = Layers(use_bias=c.use_bias, init_scale=c.init_scale, dtype=jnp.dtype(c.dtype), precision=c.precision,
                    norm_affine=c.norm_affine)
    common = dict(depth=c.depth, width=c.width, num_classes=c.num_classes, two_layer=c.name in ("rn2", "t12"),
                  mlp_dim=c.mlp_dim, activation=c.activation, norm=c.norm, classifier_bias=c.classifier_bias,
                  head_depth=c.head_depth, layers=layers, scan=c.scan, unroll=c.unroll,
                  remat_policy=execution.remat_policy(c), remat_group=c.remat_group)
    if c.name == "mlp":
        return MLP(depth=c.depth, width=c.width, num_classes=c.num_classes, activation=c.activation,
                   classifier_bias=c.classifier_bias, head_depth=c.head_depth, layers=layers)
    if c.name in RESNETS:
        return ResNet(**common)
    return Transformer(**common, num_heads=c.num_heads, pooling=c.pooling, input=c.input,
                       patch_size=c.patch_size, vocab_size=c.vocab_size, max_len=c.max_len)


def _unboxed_init(module: nn.Module, rng: jax.Array, sample_input: jax.Array) -> dict[str, Any]:
    return nn.meta.unbox(module.init(rng, sample_input))


_init_on_accelerators = jax.jit(_unboxed_init, static_argnums=0)
# Init runs once per model: on CPU, skipping LLVM's optimisations cuts its compile time about 4×
# (compiler options are allowed on a top-level jit only).
_init_on_cpu = jax.jit(_unboxed_init, static_argnums=0, compiler_options={"xla_backend_optimization_level": 0})


def init(module: nn.Module, rng: jax.Array, sample_input: jax.Array) -> dict[str, Any]:
    """Variables of ``module`` as plain arrays (``module.init`` unboxed), from one jitted init
    compiled once per module and input shape.

    Jitting the whole init traces one block, so a depth-1024 model initialises as fast
    as a depth-2 one (eager init would dispatch op by op). Depth-consistent: see above.
    """
    traced = any(isinstance(a, jax.core.Tracer) for a in (rng, sample_input))  # inside jit/eval_shape/vmap
    jitted = _init_on_cpu if jax.default_backend() == "cpu" and not traced else _init_on_accelerators
    return jitted(module, rng, sample_input)


def logical_specs(module: nn.Module, sample_input: jax.Array) -> Any:
    """The params' logical PartitionSpecs (names of layers.py), computed shape-only."""
    boxed = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), sample_input)
    return nn.get_partition_spec(boxed)


def classifier_weights(params: dict[str, Any]) -> tuple[jax.Array, jax.Array | None]:
    """The classifier's ``W`` [K, d] (rows are classes) and ``b`` [K] (None without a bias)."""
    head = params
    for key in CLASSIFIER:
        head = head[key]
    return head["kernel"].T, head.get("bias")
