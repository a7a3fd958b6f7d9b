"""Layers shared by the ResNets and the transformers: activations, the factory of logically
named linear maps and LayerNorms, and the head (the part after the blocks).

Every parameter carries logical axis names so that sharding rules, not code,
decide where it lives: 'embed' (width d), 'mlp' (a block's hidden width),
'heads', 'kv', 'vocab', 'classes', 'input', and 'layers' (added by the block stack).
A square d×d block kernel is named ('embed', 'mlp'), never ('embed', 'embed'),
because one mesh axis may appear only once in a PartitionSpec.

LayerNorm convention (the feature radius). Every LayerNorm here, with or without
affine parameters, first maps a vector ``h ∈ R^d`` to ``(h − mean(h)) / sqrt(var(h) + ε)``
with ``ε = 1e-6``: zero mean and Euclidean norm ``√d · sqrt(var / (var + ε)) ≈ √d``.
``norm_affine=False`` (the theory's LayerNorm: no scale, no shift) stops there, so
the features a block or the head hands on lie on the sphere of radius √d inside
``1^⊥``. The unconstrained-features model of ``ncjax.ufm`` uses the same radius √d
for its ``layernorm`` features (a radius r with λ is the same problem as radius 1
with λ/r², docs/paper.md#architectures), so a trained net and its UFM are compared on one scale.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "tanh": jnp.tanh,
    "silu": nn.silu,
    "elu": nn.elu,
    "leaky_relu": nn.leaky_relu,
    "sigmoid": nn.sigmoid,
    "identity": lambda x: x,
}

# model.precision → the precision of every matmul of the model (Dense, DenseGeneral, attention).
# 'highest': float32 operands are multiplied exactly on every backend (GPUs would otherwise
# use TF32, TPUs bfloat16 passes); 'high': bf16_3x/TF32-class; 'default': whatever the backend does.
PRECISIONS = {"highest": jax.lax.Precision.HIGHEST, "high": jax.lax.Precision.HIGH,
              "default": jax.lax.Precision.DEFAULT}

LAYER_NORM_EPSILON = 1e-6


def kernel_init(init_scale: float, axes: Sequence[str | None]):
    """LeCun-normal (std = init_scale / sqrt(fan_in)) with logical axis names.

    Flax's DenseGeneral initialises a flattened 2-D kernel, so fan_in is always axis -2.
    """
    init = nn.initializers.variance_scaling(init_scale**2, "fan_in", "truncated_normal")
    return nn.with_logical_partitioning(init, tuple(axes))


def zeros(axes: Sequence[str | None]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), tuple(axes))


@dataclasses.dataclass(frozen=True)
class Layers:
    """The numerics every layer of one model shares, and the factory of its layers.

    ``dtype`` is the compute dtype (params are always float32), ``precision`` a key of
    :data:`PRECISIONS`, ``norm_affine`` whether LayerNorms have a learnable scale and
    shift (``use_bias`` then also governs the shift). The defaults are ``models.default_config()``'s.
    """

    use_bias: bool = True
    init_scale: float = 1.0
    dtype: Any = jnp.dtype("float32")
    precision: str = "highest"
    norm_affine: bool = False

    @property
    def lax_precision(self) -> jax.lax.Precision:
        return PRECISIONS[self.precision]

    def dense(self, features: int, axes: tuple[str | None, str], *, name: str, dtype=None,
              use_bias: bool | None = None) -> nn.Dense:
        """A Dense layer whose kernel is named ``axes`` (in, out) and whose bias is named (out,)."""
        return nn.Dense(features, use_bias=self.use_bias if use_bias is None else use_bias,
                        dtype=self.dtype if dtype is None else dtype, param_dtype=jnp.float32,
                        precision=self.lax_precision, kernel_init=kernel_init(self.init_scale, axes),
                        bias_init=zeros(axes[-1:]), name=name)

    def dense_general(self, features, axis, kernel_axes: tuple[str, ...], *, name: str) -> nn.DenseGeneral:
        """A DenseGeneral (multi-axis in or out) with logically named kernel and bias."""
        out_axes = kernel_axes[-len(features):] if isinstance(features, tuple) else kernel_axes[-1:]
        return nn.DenseGeneral(features, axis=axis, use_bias=self.use_bias, dtype=self.dtype,
                               param_dtype=jnp.float32, precision=self.lax_precision,
                               kernel_init=kernel_init(self.init_scale, kernel_axes), bias_init=zeros(out_axes),
                               name=name)

    def layer_norm(self, name: str) -> nn.LayerNorm:
        """LayerNorm over the last axis (radius convention: module docstring)."""
        ones = nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",))
        return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, use_scale=self.norm_affine,
                            use_bias=self.norm_affine and self.use_bias, dtype=self.dtype, param_dtype=jnp.float32,
                            scale_init=ones, bias_init=zeros(("embed",)), name=name)


CLASSIFIER = ("head", "classifier")  # the params path of every model's classifier (the Head named "head")


class Head(nn.Module):
    """Optional final LayerNorm, ``head_depth`` linear layers, then the classifier.

    Returns ``(logits, features)``: the features are exactly the vectors the
    classifier sees, the object of the neural-collapse metrics. The classifier
    runs in float32 so that logits and losses stay accurate under bf16 compute.
    """

    num_classes: int
    head_depth: int
    final_norm: bool
    classifier_bias: bool
    layers: Layers

    @nn.compact
    def __call__(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.final_norm:
            h = self.layers.layer_norm("final_norm")(h)
        for i in range(self.head_depth):
            h = self.layers.dense(h.shape[-1], ("embed", "mlp"), name=f"linear_head_{i}")(h)
        logits = self.layers.dense(self.num_classes, ("embed", "classes"), use_bias=self.classifier_bias,
                                   dtype=jnp.float32, name="classifier")(h)
        return logits, h
