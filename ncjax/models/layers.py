"""Layers shared by the ResNets and the transformers: activations, logically named
linear maps and LayerNorm, and the head (pooling-free part after the blocks).

Every parameter carries logical axis names so that sharding rules, not code,
decide where it lives: 'embed' (width d), 'mlp' (a block's hidden width),
'heads', 'kv', 'vocab', 'classes', 'input', and 'layers' (added by the scan).
A square d×d block kernel is named ('embed', 'mlp'), never ('embed', 'embed'),
because one mesh axis may appear only once in a PartitionSpec.
"""

from __future__ import annotations

from typing import Callable, Sequence

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


def kernel_init(init_scale: float, axes: Sequence[str | None]):
    """LeCun-normal (std = init_scale / sqrt(fan_in)) with logical axis names.

    Flax's DenseGeneral initialises a flattened 2-D kernel, so fan_in is always axis -2.
    """
    init = nn.initializers.variance_scaling(init_scale**2, "fan_in", "truncated_normal")
    return nn.with_logical_partitioning(init, tuple(axes))


def zeros(axes: Sequence[str | None]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), tuple(axes))


def dense(features: int, axes: tuple[str, str], *, use_bias: bool, init_scale: float, dtype, name: str) -> nn.Dense:
    """A Dense layer whose kernel is named ``axes`` (in, out) and whose bias is named (out,)."""
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=kernel_init(init_scale, axes), bias_init=zeros(axes[-1:]), name=name)


def layer_norm(*, use_bias: bool, dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
                        bias_init=zeros(("embed",)), name=name)


class Head(nn.Module):
    """Optional final LayerNorm, ``head_depth`` linear layers, then the classifier.

    Returns ``(logits, features)``: the features are exactly the vectors the
    classifier sees, the object of the neural-collapse metrics. The classifier
    runs in float32 so that logits and losses stay accurate under bf16 compute.
    """

    num_classes: int
    head_depth: int
    final_norm: bool
    use_bias: bool
    classifier_bias: bool
    init_scale: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.final_norm:
            h = layer_norm(use_bias=self.use_bias, dtype=self.dtype, name="final_norm")(h)
        for i in range(self.head_depth):
            h = dense(h.shape[-1], ("embed", "mlp"), use_bias=self.use_bias, init_scale=self.init_scale,
                      dtype=self.dtype, name=f"linear_head_{i}")(h)
        logits = dense(self.num_classes, ("embed", "classes"), use_bias=self.classifier_bias,
                       init_scale=self.init_scale, dtype=jnp.float32, name="classifier")(h)
        return logits, h
