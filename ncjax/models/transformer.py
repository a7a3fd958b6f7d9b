"""L-T11 and L-T12 (science.md §2): transformer blocks of multi-head
self-attention plus a one-layer (``σ(W h + b)``) or two-layer MLP, pre-LN or
post-LN, on image patches or on token sequences, pooled by a CLS token or a mean.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ncjax.models.layers import ACTIVATIONS, Head, dense, kernel_init, layer_norm, zeros
from ncjax.models.stack import run_blocks

PAD_TOKEN = 0  # token id 0 is padding: masked out of attention and of mean pooling


def pool(h: jax.Array, pooling: str, valid: jax.Array) -> jax.Array:
    """[B, T, d] → [B, d]: the CLS token (prepended at position 0) or the mean over valid tokens."""
    if pooling == "cls":
        return h[:, 0]
    weights = valid.astype(h.dtype)[..., None]
    return jnp.sum(h * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1)


class SelfAttention(nn.Module):
    """Multi-head self-attention with kernels named ('embed', 'heads', 'kv') and ('heads', 'kv', 'embed')."""

    num_heads: int
    use_bias: bool
    init_scale: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        d = x.shape[-1]
        shape = (self.num_heads, d // self.num_heads)

        def proj(name):
            return nn.DenseGeneral(shape, axis=-1, use_bias=self.use_bias, dtype=self.dtype, param_dtype=jnp.float32,
                                   kernel_init=kernel_init(self.init_scale, ("embed", "heads", "kv")),
                                   bias_init=zeros(("heads", "kv")), name=name)(x)

        y = nn.dot_product_attention(proj("query"), proj("key"), proj("value"), dtype=self.dtype,
                                     mask=valid[:, None, None, :])
        return nn.DenseGeneral(d, axis=(-2, -1), use_bias=self.use_bias, dtype=self.dtype, param_dtype=jnp.float32,
                               kernel_init=kernel_init(self.init_scale, ("heads", "kv", "embed")),
                               bias_init=zeros(("embed",)), name="out")(y)


class TransformerBlock(nn.Module):
    """Attention then MLP, each a residual branch; 'pre' normalises branch inputs,
    'post' normalises after each add. ``mlp_dim`` None: one-layer MLP (L-T11)."""

    width: int
    num_heads: int
    mlp_dim: int | None
    activation: str
    norm: str
    pooling: str
    use_bias: bool
    init_scale: float
    dtype: jnp.dtype

    def _mlp(self, u: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        common = dict(use_bias=self.use_bias, init_scale=self.init_scale, dtype=self.dtype)
        if self.mlp_dim is None:
            return act(dense(self.width, ("embed", "mlp"), name="linear", **common)(u))
        u = act(dense(self.mlp_dim, ("embed", "mlp"), name="linear_1", **common)(u))
        return dense(self.width, ("mlp", "embed"), name="linear_2", **common)(u)

    @nn.compact
    def __call__(self, carry: tuple[jax.Array, jax.Array], _) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        h, valid = carry  # valid [B, T]: the padding mask rides along the scan's carry
        attn = SelfAttention(self.num_heads, self.use_bias, self.init_scale, self.dtype, name="attention")
        norm_1 = layer_norm(use_bias=self.use_bias, dtype=self.dtype, name="norm_1")
        norm_2 = layer_norm(use_bias=self.use_bias, dtype=self.dtype, name="norm_2")
        if self.norm == "pre":
            h = h + attn(norm_1(h), valid)
            h = h + self._mlp(norm_2(h))
        else:
            h = norm_1(h + attn(h, valid))
            h = norm_2(h + self._mlp(h))
        return (h, valid), pool(h, self.pooling, valid)


class Transformer(nn.Module):
    """L-T11 (``two_layer=False``) / L-T12.

    ``input='image'``: float [B, H, W, C] cut into ``patch_size`` squares, each
    flattened and embedded linearly. ``input='tokens'``: int [B, T], T ≤ ``max_len``,
    id 0 (``PAD_TOKEN``) is padding, ignored by attention and mean pooling.
    Both get learned positions; ``pooling='cls'`` prepends a learned CLS token.
    """

    depth: int
    width: int
    num_classes: int
    two_layer: bool
    mlp_dim: int | None
    num_heads: int
    activation: str
    norm: str
    pooling: str
    input: str
    patch_size: int
    vocab_size: int
    max_len: int
    use_bias: bool
    classifier_bias: bool
    head_depth: int
    init_scale: float
    dtype: jnp.dtype
    scan: bool
    unroll: int
    remat_policy: str | None
    remat_group: int | None

    def _embed(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Embedded tokens [B, T, d] and their validity mask [B, T]."""
        if self.input == "image":
            b, hgt, wid, c = x.shape
            p = self.patch_size
            if hgt % p or wid % p:
                raise ValueError(f"image {hgt}x{wid} is not divisible into model.patch_size={p} patches; "
                                 f"choose a patch_size that divides both sides")
            x = x.reshape(b, hgt // p, p, wid // p, p, c).transpose(0, 1, 3, 2, 4, 5)
            x = x.reshape(b, (hgt // p) * (wid // p), p * p * c).astype(self.dtype)
            h = dense(self.width, ("input", "embed"), use_bias=self.use_bias, init_scale=self.init_scale,
                      dtype=self.dtype, name="embed")(x)
            num_positions = h.shape[1]
            valid = jnp.ones(h.shape[:2], bool)
        else:
            if x.shape[1] > self.max_len:
                raise ValueError(f"sequence length {x.shape[1]} exceeds model.max_len={self.max_len}; "
                                 "raise max_len or truncate the inputs")
            table = nn.with_logical_partitioning(
                nn.initializers.variance_scaling(self.init_scale**2, "fan_in", "normal", out_axis=0),
                ("vocab", "embed"))
            h = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, param_dtype=jnp.float32,
                         embedding_init=table, name="embed")(x)
            num_positions = self.max_len
            valid = x != PAD_TOKEN
        positions = self.param("positions", nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
                               (num_positions, self.width), jnp.float32)
        h = h + positions[: h.shape[1]].astype(self.dtype)
        if self.pooling == "cls":
            cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
                             (self.width,), jnp.float32)
            h = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (h.shape[0], 1, self.width)), h], axis=1)
            valid = jnp.concatenate([jnp.ones((h.shape[0], 1), bool), valid], axis=1)
        return h, valid

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_blocks: bool = False):
        del train  # no stochastic or batch-dependent layers; kept for one signature across models
        h, valid = self._embed(x)
        (h, _), blocks = run_blocks(
            TransformerBlock, (h, valid), depth=self.depth, scan=self.scan, unroll=self.unroll,
            remat_policy=self.remat_policy, remat_group=self.remat_group, width=self.width,
            num_heads=self.num_heads,
            mlp_dim=(self.mlp_dim or self.width) if self.two_layer else None, activation=self.activation,
            norm=self.norm, pooling=self.pooling, use_bias=self.use_bias, init_scale=self.init_scale,
            dtype=self.dtype)
        logits, features = Head(self.num_classes, self.head_depth, final_norm=self.norm == "pre",
                                use_bias=self.use_bias, classifier_bias=self.classifier_bias,
                                init_scale=self.init_scale, dtype=self.dtype, name="head")(pool(h, self.pooling, valid))
        return (logits, features, blocks) if return_blocks else (logits, features)
