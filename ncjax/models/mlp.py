"""Plain ReLU networks: the shallow nets of Hong & Ling (arXiv 2409.01832) and the MLP feature
maps of Jacot et al. (arXiv 2410.04887), docs/paper.md#deep-linear-heads-jacot-et-al.

``depth`` hidden layers ``h ← σ(W h + b)`` of ``width`` units (no residual, no LayerNorm:
a "2-layer network" is depth 1, a "3-layer network" depth 2), then the head: ``head_depth``
linear layers without activation (the deep linear head of 2410.04887) and the classifier.
The features are the classifier's input; ``blocks`` are the hidden layers' outputs.

Depth-consistent and packable like the stacked models: hidden layer ``l`` is its own
named module (Flax derives its key from the name, so a depth-L network's layers are the
first L of a deeper one's), and with ``active_depth`` the layers ``l ≥ active_depth``
(never the first) pass their input through unchanged, with exactly zero gradient.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ncjax.models.layers import ACTIVATIONS, Head, Layers


class MLP(nn.Module):
    """``depth`` hidden ReLU layers of ``width`` units, then the head. Input [B, ...] float, flattened.

    Fields default to ``models.default_config()``'s values; returns ``(logits, {"features", "blocks"})``
    like the other models."""

    depth: int = 8
    width: int = 64
    num_classes: int = 10
    activation: str = "relu"
    classifier_bias: bool = True
    head_depth: int = 0
    layers: Layers = Layers()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_blocks: bool = False,
                 active_depth: jax.Array | int | None = None):
        del train  # no stochastic or batch-dependent layers; kept for one signature across models
        act = ACTIVATIONS[self.activation]
        h = jnp.reshape(x, (x.shape[0], -1)).astype(self.layers.dtype)
        outputs = []
        for layer in range(self.depth):
            axes = ("input", "embed") if layer == 0 else ("mlp", "embed")
            new = act(self.layers.dense(self.width, axes, name=f"hidden_{layer}")(h))
            if active_depth is not None and layer > 0:
                keep = layer < active_depth
                new, out = jnp.where(keep, new, h), jnp.where(keep, new, jnp.zeros_like(new))
            else:
                out = new
            h = new
            outputs.append(out)
        logits, features = Head(self.num_classes, self.head_depth, final_norm=False,
                                classifier_bias=self.classifier_bias, layers=self.layers, name="head")(h)
        return logits, ({"features": features, "blocks": jnp.stack(outputs)} if return_blocks
                        else {"features": features})
