"""benchmarks/flops.py: the matmul FLOPs of a real train-step gradient against the closed form."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncjax import models, objective

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import flops  # noqa: E402

B, SIDE, PATCH, D, HEADS, K, L = 6, 8, 4, 16, 2, 5, 3


def vit_forward_flops(seeds=1):
    """Closed form of one L-T11 forward (CLS pooling, no head layers): the patch embedding, per block
    the q, k, v and output projections, the scores, the weighted values and the one-layer MLP, then
    the classifier."""
    n = (SIDE // PATCH) ** 2
    t = n + 1
    embed = 2 * B * n * PATCH * PATCH * D
    block = 2 * B * t * D * D * 5 + 2 * 2 * B * t * t * D
    return seeds * embed, seeds * (embed + L * block + 2 * B * D * K)


@pytest.mark.parametrize("scan, seeds", [(True, 1), (False, 1), (True, 3)])
def test_gradient_step_flops_match_closed_form(scan, seeds):
    """A gradient with respect to the parameters costs the forward plus two matmuls per forward matmul,
    except the embedding, whose input needs no gradient: 3·F − F_embed."""
    c = models.default_config()
    c.update(name="t11", depth=L, width=D, num_heads=HEADS, patch_size=PATCH, num_classes=K, head_depth=0,
             pooling="cls", scan=scan, remat_policy="everything_saveable")  # model FLOPs: no recomputation
    module = models.build(c)
    x = jax.ShapeDtypeStruct((seeds, B, SIDE, SIDE, 1), jnp.float32)
    y = jax.ShapeDtypeStruct((seeds, B), jnp.int32)
    params = jax.eval_shape(jax.vmap(lambda k: models.init(module, k, np.zeros((1, SIDE, SIDE, 1), np.float32))),
                            jax.random.split(jax.random.key(0), seeds))["params"]

    def loss(p, x, y):
        logits, _ = module.apply({"params": p}, x)
        return objective.data_loss(logits, y) + 0.005 * objective.l2_penalty(p)

    embed, forward = vit_forward_flops(seeds)
    assert flops.count_flops(jax.vmap(loss), params, x, y) == forward
    assert flops.count_flops(jax.vmap(jax.grad(loss)), params, x, y) == 3 * forward - embed


def test_scan_length_and_cond_branches():
    def body(h, w):
        return jax.lax.cond(h.sum() > 0, lambda: h @ w, lambda: h), None

    h = jax.ShapeDtypeStruct((4, 8), jnp.float32)
    ws = jax.ShapeDtypeStruct((7, 8, 8), jnp.float32)
    assert flops.count_flops(lambda h, ws: jax.lax.scan(body, h, ws)[0], h, ws) == 7 * 2 * 4 * 8 * 8
    with pytest.raises(ValueError, match="while loop"):
        flops.count_flops(lambda h: jax.lax.while_loop(lambda v: v.sum() < 1, lambda v: v @ v.T @ v, h), h)
