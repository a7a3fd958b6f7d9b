"""L-RN1 and L-RN2 (science.md §2): a linear embedding to width d, L residual
blocks with one (``h + σ(W h + b)``) or two (``h + W2 σ(W1 h + b1)``) linear
layers, then the head. Images are flattened, so the model takes any vector data.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ncjax.models.layers import ACTIVATIONS, Head, dense, layer_norm
from ncjax.models.stack import run_blocks


class ResBlock(nn.Module):
    """One residual block. ``norm``: 'pre' normalises the branch input, 'post'
    normalises after the add, 'final' leaves the block bare (LN only in the head).
    ``mlp_dim`` None: one linear layer (L-RN1); an int: two layers through that width (L-RN2).
    """

    width: int
    mlp_dim: int | None
    activation: str
    norm: str
    use_bias: bool
    init_scale: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, h: jax.Array, _) -> tuple[jax.Array, jax.Array]:
        act = ACTIVATIONS[self.activation]
        common = dict(use_bias=self.use_bias, init_scale=self.init_scale, dtype=self.dtype)
        u = layer_norm(use_bias=self.use_bias, dtype=self.dtype, name="norm")(h) if self.norm == "pre" else h
        if self.mlp_dim is None:
            u = act(dense(self.width, ("embed", "mlp"), name="linear", **common)(u))
        else:
            u = act(dense(self.mlp_dim, ("embed", "mlp"), name="linear_1", **common)(u))
            u = dense(self.width, ("mlp", "embed"), name="linear_2", **common)(u)
        h = h + u
        if self.norm == "post":
            h = layer_norm(use_bias=self.use_bias, dtype=self.dtype, name="norm")(h)
        return h, h


class ResNet(nn.Module):
    """L-RN1 (``two_layer=False``) / L-RN2. Input [B, ...] float, flattened to [B, D]."""

    depth: int
    width: int
    num_classes: int
    two_layer: bool
    mlp_dim: int | None
    activation: str
    norm: str
    use_bias: bool
    classifier_bias: bool
    head_depth: int
    init_scale: float
    dtype: jnp.dtype
    scan: bool
    unroll: int
    remat_policy: str | None
    remat_group: int | None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_blocks: bool = False):
        del train  # no stochastic or batch-dependent layers; kept for one signature across models
        x = jnp.reshape(x, (x.shape[0], -1)).astype(self.dtype)
        h = dense(self.width, ("input", "embed"), use_bias=self.use_bias, init_scale=self.init_scale,
                  dtype=self.dtype, name="embed")(x)
        h, blocks = run_blocks(
            ResBlock, h, depth=self.depth, scan=self.scan, unroll=self.unroll, remat_policy=self.remat_policy,
            remat_group=self.remat_group,
            width=self.width, mlp_dim=(self.mlp_dim or self.width) if self.two_layer else None,
            activation=self.activation, norm=self.norm, use_bias=self.use_bias, init_scale=self.init_scale,
            dtype=self.dtype)
        logits, features = Head(self.num_classes, self.head_depth, final_norm=self.norm != "post",
                                use_bias=self.use_bias, classifier_bias=self.classifier_bias,
                                init_scale=self.init_scale, dtype=self.dtype, name="head")(h)
        return (logits, features, blocks) if return_blocks else (logits, features)
