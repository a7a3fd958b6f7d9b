"""ncjax.objective's L2 penalty and masks against a float64 NumPy reference written from the
definitions: which parameters, path exclusions, and packed (masked) depths."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ncjax import models, objective


def model_params(seed=0):
    """A real L-T12 parameter tree (affine LayerNorms, biases, CLS, positions) with NumPy values."""
    c = models.default_config()
    c.update(name="t12", depth=4, width=8, num_heads=2, patch_size=4, norm="pre", norm_affine=True, head_depth=1)
    module = models.build(c)
    x = np.zeros((1, 8, 8, 1), np.float32)
    shapes = jax.eval_shape(lambda: models.init(module, jax.random.key(0), x))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def reference_penalty(params, which="all", exclude=(), active_depth=None):
    """Σ θ² in float64 over the named leaves, blocks beyond active_depth left out, by explicit iteration."""
    total = 0.0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        names = [k.key for k in path]
        if which == "weights" and names[-1] in ("bias", "scale"):
            continue
        if any(re.search(p, "/".join(names)) for p in exclude):
            continue
        leaf = np.asarray(leaf, np.float64)
        if names[0] == "blocks" and active_depth is not None:
            leaf = leaf[:active_depth]
        total += float(np.sum(leaf * leaf))
    return total


@pytest.mark.parametrize("which, exclude, active_depth", [
    ("all", (), None),
    ("weights", (), None),
    ("all", ("embed", "head/classifier/bias"), None),
    ("all", (), 2),
    ("weights", ("positions",), 1),
    ("all", (), 0),
])
def test_penalty_matches_float64_reference(which, exclude, active_depth):
    params = model_params()
    got = objective.l2_penalty(params, exclude, which=which, active_depth=active_depth)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), reference_penalty(params, which, exclude, active_depth), rtol=1e-6)


def test_weights_leave_out_biases_and_layer_norm_parameters():
    params = model_params()
    kept = objective.penalised(params, "weights")
    blocks = kept["blocks"]
    assert blocks["linear_1"]["kernel"] and not blocks["linear_1"]["bias"]
    assert not blocks["norm_1"]["scale"] and not blocks["norm_1"]["bias"]
    assert kept["positions"] and kept["cls"] and kept["head"]["classifier"]["kernel"]
    assert all(jax.tree.leaves(objective.penalised(params, "all")))
    with pytest.raises(ValueError, match="which='biases'"):
        objective.penalised(params, "biases")


def test_vmapped_active_depth_penalty_and_zero_gradient_on_masked_blocks():
    """Packed runs of depths 1, 3, 4: each lane's penalty is its own network's, and the penalty's
    gradient on the masked blocks is exactly zero."""
    params = model_params(1)
    depths = jnp.array([1, 3, 4])
    penalties, grads = jax.jit(jax.vmap(jax.value_and_grad(
        lambda p, d: objective.l2_penalty(p, active_depth=d)), in_axes=(None, 0)))(params, depths)
    for i, depth in enumerate((1, 3, 4)):
        np.testing.assert_allclose(float(penalties[i]), reference_penalty(params, active_depth=depth), rtol=1e-6)
        for leaf, grad in zip(jax.tree.leaves(params["blocks"]), jax.tree.leaves(grads["blocks"])):
            assert np.all(np.asarray(grad[i, depth:]) == 0)
            np.testing.assert_allclose(grad[i, :depth], 2 * leaf[:depth], rtol=1e-6)


def test_decay_mask_selects_penalised_entries_of_active_blocks():
    params = model_params()
    masks = objective.decay_mask(params, "weights", ("cls",), active_depth=3)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        names = [k.key for k in path]
        mask = np.broadcast_to(np.asarray(_leaf(masks, names)), leaf.shape)
        decayed = names[-1] not in ("bias", "scale") and names[0] != "cls"
        want = np.zeros(leaf.shape) + decayed
        if names[0] == "blocks":
            want[3:] = 0
        np.testing.assert_array_equal(mask, want)


def _leaf(tree, names):
    for name in names:
        tree = tree[name]
    return tree


def test_masks_fit_optax():
    """penalised() is the mask optax's adamw takes; depth_mask() multiplies updates so masked blocks never move."""
    params = jax.tree.map(jnp.asarray, model_params())
    tx = optax.adamw(0.1, weight_decay=0.5, mask=objective.penalised(params, "weights"))
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.abs(updates["blocks"]["linear_1"]["kernel"]).min()) > 0  # decayed
    assert float(jnp.abs(updates["blocks"]["linear_1"]["bias"]).max()) == 0  # not decayed
    updates = jax.tree.map(lambda u, m: u * m, updates, objective.depth_mask(params, 2))
    assert float(jnp.abs(updates["blocks"]["linear_1"]["kernel"][2:]).max()) == 0
    assert float(jnp.abs(updates["blocks"]["linear_1"]["kernel"][:2]).min()) > 0


def test_l2_forms():
    assert objective.L2_FORMS == {"full": 1.0, "half": 0.5, "decoupled": 0.0}
