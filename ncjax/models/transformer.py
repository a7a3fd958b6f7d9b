"""L-T11 and L-T12 (docs/paper.md#architectures): transformer blocks of multi-head self-attention plus a
one-layer (``σ(W h + b)``) or two-layer MLP, on image patches or on token sequences, pooled
by a CLS token or a mean.

LayerNorm placement (``norm``): 'post' normalises after each residual add,
``h ← LN(h + Attn(h)); h ← LN(h + MLP(h))``, with no LayerNorm before the head (the
vision transformers' most likely reading, an inference: docs/paper.md#architectures); 'pre' normalises
each branch's input, ``h ← h + Attn(LN(h)); h ← h + MLP(LN(h))``, plus one LayerNorm
before the head (the paper's text models).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ncjax.models.layers import ACTIVATIONS, Head, Layers
from ncjax.models.stack import run_blocks

PAD_TOKEN = 0  # token id 0 is padding: masked out of attention and of mean pooling


def pool(h: jax.Array, pooling: str, valid: jax.Array | None) -> jax.Array:
    """[B, T, d] → [B, d]: the CLS token (prepended at position 0) or the mean over valid tokens
    (``valid`` [B, T] bool, None when every token is valid)."""
    if pooling == "cls":
        return h[:, 0]
    if valid is None:
        return jnp.mean(h, axis=1)
    weights = valid.astype(h.dtype)[..., None]
    return jnp.sum(h * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1)


class SelfAttention(nn.Module):
    """Multi-head self-attention with kernels named ('embed', 'heads', 'kv') and ('heads', 'kv', 'embed').

    ``valid`` [B, T] masks padding keys; None (images: no token is padding) means no mask at all.
    """

    num_heads: int
    layers: Layers

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array | None) -> jax.Array:
        d = x.shape[-1]
        shape = (self.num_heads, d // self.num_heads)

        def proj(name):
            return self.layers.dense_general(shape, -1, ("embed", "heads", "kv"), name=name)(x)

        mask = None if valid is None else valid[:, None, None, :]
        y = nn.dot_product_attention(proj("query"), proj("key"), proj("value"), mask=mask, dtype=self.layers.dtype,
                                     precision=self.layers.lax_precision)
        return self.layers.dense_general(d, (-2, -1), ("heads", "kv", "embed"), name="out")(y)


class TransformerBlock(nn.Module):
    """Attention then MLP, each a residual branch (placement ``norm`` as in the module docstring).
    ``mlp_dim`` None: one-layer MLP (L-T11); an int: two layers through that width (L-T12)."""

    width: int
    num_heads: int
    mlp_dim: int | None
    activation: str
    norm: str
    pooling: str
    layers: Layers

    def _mlp(self, u: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        if self.mlp_dim is None:
            return act(self.layers.dense(self.width, ("embed", "mlp"), name="linear")(u))
        u = act(self.layers.dense(self.mlp_dim, ("embed", "mlp"), name="linear_1")(u))
        return self.layers.dense(self.width, ("mlp", "embed"), name="linear_2")(u)

    @nn.compact
    def __call__(self, h: jax.Array, valid: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        attn = SelfAttention(self.num_heads, self.layers, name="attention")
        norm_1 = self.layers.layer_norm("norm_1")
        norm_2 = self.layers.layer_norm("norm_2")
        if self.norm == "pre":
            h = h + attn(norm_1(h), valid)
            h = h + self._mlp(norm_2(h))
        else:
            h = norm_1(h + attn(h, valid))
            h = norm_2(h + self._mlp(h))
        return h, pool(h, self.pooling, valid)


class Transformer(nn.Module):
    """L-T11 (``two_layer=False``) / L-T12.

    ``input='image'``: float [B, H, W, C] cut into ``patch_size`` squares, each
    flattened and embedded linearly. ``input='tokens'``: int [B, T], T ≤ ``max_len``,
    id 0 (``PAD_TOKEN``) is padding, ignored by attention and mean pooling.
    Both get learned positions; ``pooling='cls'`` prepends a learned CLS token.

    Every field defaults to ``models.default_config()``'s value (L-T11, post-LN, CLS pooling,
    7×7 patches), so ``Transformer(depth=4, width=64, num_classes=10)`` is ``models.build`` of
    that config with name 't11'. Returns ``(logits, {"features": ..., "blocks": ...})``.
    """

    depth: int = 8
    width: int = 64
    num_classes: int = 10
    two_layer: bool = False
    mlp_dim: int | None = None
    num_heads: int = 4
    activation: str = "relu"
    norm: str = "post"
    pooling: str = "cls"
    input: str = "image"
    patch_size: int = 7
    vocab_size: int = 256
    max_len: int = 512
    classifier_bias: bool = True
    head_depth: int = 0
    layers: Layers = Layers()
    scan: bool = True
    unroll: int = 1
    remat_policy: str | None = None
    remat_group: int | None = None

    def _embed(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """Embedded tokens [B, T, d] and their validity mask [B, T] (None: no token is padding)."""
        dtype = self.layers.dtype
        if self.input == "image":
            b, hgt, wid, c = x.shape
            p = self.patch_size
            if hgt % p or wid % p:
                raise ValueError(f"image {hgt}x{wid} is not divisible into model.patch_size={p} patches; "
                                 f"choose a patch_size that divides both sides")
            x = x.reshape(b, hgt // p, p, wid // p, p, c).transpose(0, 1, 3, 2, 4, 5)
            x = x.reshape(b, (hgt // p) * (wid // p), p * p * c).astype(dtype)
            h = self.layers.dense(self.width, ("input", "embed"), name="embed")(x)
            num_positions = h.shape[1]
            valid = None
        else:
            if x.shape[1] > self.max_len:
                raise ValueError(f"sequence length {x.shape[1]} exceeds model.max_len={self.max_len}; "
                                 "raise max_len or truncate the inputs")
            table = nn.with_logical_partitioning(
                nn.initializers.variance_scaling(self.layers.init_scale**2, "fan_in", "normal", out_axis=0),
                ("vocab", "embed"))
            h = nn.Embed(self.vocab_size, self.width, dtype=dtype, param_dtype=jnp.float32,
                         embedding_init=table, name="embed")(x)
            num_positions = self.max_len
            valid = x != PAD_TOKEN
        positions = self.param("positions", nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
                               (num_positions, self.width), jnp.float32)
        h = h + positions[: h.shape[1]].astype(dtype)
        if self.pooling == "cls":
            cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
                             (self.width,), jnp.float32)
            h = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (h.shape[0], 1, self.width)), h], axis=1)
            if valid is not None:
                valid = jnp.concatenate([jnp.ones((h.shape[0], 1), bool), valid], axis=1)
        return h, valid

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_blocks: bool = False,
                 active_depth: jax.Array | int | None = None):
        del train  # no stochastic or batch-dependent layers; kept for one signature across models
        h, valid = self._embed(x)
        block = TransformerBlock(self.width, self.num_heads, (self.mlp_dim or self.width) if self.two_layer else None,
                                 self.activation, self.norm, self.pooling, self.layers, parent=None)
        h, blocks = run_blocks(self, block, h, (valid,), depth=self.depth, scan=self.scan, unroll=self.unroll,
                               remat_policy=self.remat_policy, remat_group=self.remat_group,
                               active_depth=active_depth)
        logits, features = Head(self.num_classes, self.head_depth, final_norm=self.norm == "pre",
                                classifier_bias=self.classifier_bias, layers=self.layers,
                                name="head")(pool(h, self.pooling, valid))
        return logits, ({"features": features, "blocks": blocks} if return_blocks else {"features": features})
