"""L-RN1 and L-RN2 (docs/paper.md#architectures): a linear embedding to width d, L residual blocks with
one (``σ(W h + b)``) or two (``W2 σ(W1 h + b1)``) linear layers in the branch, then the head.
Images are flattened, so the model takes any vector data.

LayerNorm placement (``norm``): 'post' (the paper's most likely reading, an inference:
docs/paper.md#architectures) normalises after every residual add, ``h ← LN(h + σ(W h + b))``, and the
head adds none, so the classifier sees LayerNorm outputs; 'pre' normalises each branch's
input, ``h ← h + σ(W LN(h) + b)``, plus one LayerNorm before the head; 'final' leaves the
blocks bare, ``h ← h + σ(W h + b)``, with one LayerNorm before the head (departs from the
theory: the residual stream then grows about 1.4× per block at initialisation).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ncjax.models.layers import ACTIVATIONS, Head, Layers
from ncjax.models.stack import run_blocks


class ResBlock(nn.Module):
    """One residual block (placement ``norm`` as in the module docstring).
    ``mlp_dim`` None: one linear layer (L-RN1); an int: two layers through that width (L-RN2).
    """

    width: int
    mlp_dim: int | None
    activation: str
    norm: str
    layers: Layers

    @nn.compact
    def __call__(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        act = ACTIVATIONS[self.activation]
        u = self.layers.layer_norm("norm")(h) if self.norm == "pre" else h
        if self.mlp_dim is None:
            u = act(self.layers.dense(self.width, ("embed", "mlp"), name="linear")(u))
        else:
            u = act(self.layers.dense(self.mlp_dim, ("embed", "mlp"), name="linear_1")(u))
            u = self.layers.dense(self.width, ("mlp", "embed"), name="linear_2")(u)
        h = h + u
        if self.norm == "post":
            h = self.layers.layer_norm("norm")(h)
        return h, h


class ResNet(nn.Module):
    """L-RN1 (``two_layer=False``) / L-RN2. Input [B, ...] float, flattened to [B, D].

    Every field defaults to ``models.default_config()``'s value (L-RN1, post-LN, width 64), so
    ``ResNet(depth=8, width=64, num_classes=10)`` is ``models.build`` of that config.
    Returns ``(logits, {"features": ..., "blocks": ...})`` (blocks only with ``return_blocks``).
    """

    depth: int = 8
    width: int = 64
    num_classes: int = 10
    two_layer: bool = False
    mlp_dim: int | None = None
    activation: str = "relu"
    norm: str = "post"
    classifier_bias: bool = True
    head_depth: int = 0
    layers: Layers = Layers()
    scan: bool = True
    unroll: int = 1
    remat_policy: str | None = None
    remat_group: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_blocks: bool = False,
                 active_depth: jax.Array | int | None = None):
        del train  # no stochastic or batch-dependent layers; kept for one signature across models
        x = jnp.reshape(x, (x.shape[0], -1)).astype(self.layers.dtype)
        h = self.layers.dense(self.width, ("input", "embed"), name="embed")(x)
        block = ResBlock(self.width, (self.mlp_dim or self.width) if self.two_layer else None, self.activation,
                         self.norm, self.layers, parent=None)
        h, blocks = run_blocks(self, block, h, depth=self.depth, scan=self.scan, unroll=self.unroll,
                               remat_policy=self.remat_policy, remat_group=self.remat_group,
                               active_depth=active_depth)
        logits, features = Head(self.num_classes, self.head_depth, final_norm=self.norm != "post",
                                classifier_bias=self.classifier_bias, layers=self.layers, name="head")(h)
        return logits, ({"features": features, "blocks": blocks} if return_blocks else {"features": features})
