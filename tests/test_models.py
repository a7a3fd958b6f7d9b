"""ncjax.models: scanned == unrolled, shapes/dtypes, a float64 NumPy reference,
depth 1024 with remat, logical axis names, and clear errors for bad configs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncjax import models

LOGICAL_NAMES = {"embed", "mlp", "heads", "kv", "vocab", "classes", "input", "layers", None}
INPUTS = {  # name -> (input kind, sample)
    "rn1": ("image", np.random.default_rng(0).normal(size=(4, 6, 6, 1)).astype(np.float32)),
    "rn2": ("vector", np.random.default_rng(1).normal(size=(4, 12)).astype(np.float32)),
    "t11": ("image", np.random.default_rng(2).normal(size=(4, 8, 8, 2)).astype(np.float32)),
    "t12": ("tokens", np.random.default_rng(3).integers(0, 50, size=(4, 7)).astype(np.int32)),
}


def config(name, **overrides):
    c = models.default_config()
    c.update(name=name, input=INPUTS[name][0], depth=3, width=16, num_heads=4, patch_size=4, vocab_size=50,
             max_len=10, num_classes=5, head_depth=1, mlp_dim=24)
    c.update(**overrides)
    return c


def scalar(outputs):
    """A loss that reaches every output, so the gradients check all of them."""
    logits, features, blocks = outputs
    return jnp.sum(jnp.sin(logits)) + jnp.sum(features.astype(jnp.float32) ** 2) + jnp.sum(jnp.tanh(blocks))


def loss_fn(module, x):
    return lambda params: scalar(module.apply({"params": params}, x, return_blocks=True))


def random_params(module, x, seed=0):
    """Params with the module's shapes, drawn by NumPy: non-trivial biases and norms, and
    no jitted RNG init to compile (that alone takes seconds per model on CPU)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: models.init(module, jax.random.key(0), x))["params"]
    return jax.tree_util.tree_map_with_path(
        lambda path, s: (rng.normal(size=s.shape) * 0.3 + ("scale" in str(path[-1]))).astype(np.float32), shapes)


def forward_and_grad(module, params, x):
    """Outputs and gradient from one jitted call: eager dispatch or several compiles would dominate the test time."""
    def loss(p):
        out = module.apply({"params": p}, x, return_blocks=True)
        return scalar(out), out
    grad, out = jax.jit(jax.grad(loss, has_aux=True))(params)
    return out, grad


REMAT = {"remat_policy": "nothing_saveable", "unroll": 2}


# Every model, norm and pooling at least once; remat and scan unrolling on some (each case costs compiles).
@pytest.mark.parametrize("name, norm, pooling, variants", [
    ("rn1", "pre", "cls", [{}, REMAT]),
    ("rn1", "final", "cls", [{"unroll": 3}]),
    ("rn2", "post", "cls", [{}]),
    ("t11", "pre", "cls", [{}]),
    ("t11", "post", "cls", [{}]),
    ("t12", "pre", "mean", [{"remat_policy": "dots_saveable", "unroll": 2}]),
])
def test_scanned_equals_unrolled(name, norm, pooling, variants):
    x = INPUTS[name][1]
    unrolled = models.build(config(name, norm=norm, pooling=pooling, scan=False))
    params = random_params(unrolled, x)
    stacked = models.stack_params(params)
    chex.assert_trees_all_equal(models.unstack_params(stacked), params)
    ref, ref_grad = forward_and_grad(unrolled, params, x)
    for overrides in variants:
        scanned = models.build(config(name, norm=norm, pooling=pooling, scan=True, **overrides))
        chex.assert_trees_all_equal_shapes(jax.eval_shape(lambda: models.init(scanned, jax.random.key(0), x))["params"],
                                           stacked)
        out, grad = forward_and_grad(scanned, stacked, x)
        chex.assert_trees_all_close(out, ref, rtol=1e-5, atol=1e-5)
        grad = models.unstack_params(grad)
        chex.assert_trees_all_close(grad, ref_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["rn1", "t11"])
def test_two_level_remat_equals_unrolled(name):
    """remat_group regroups the scan as 3 × 2 blocks but keeps the [L, ...] parameter layout."""
    x = INPUTS[name][1]
    unrolled = models.build(config(name, depth=6, scan=False))
    params = random_params(unrolled, x)
    ref, ref_grad = forward_and_grad(unrolled, params, x)
    grouped = models.build(config(name, depth=6, remat_policy="nothing_saveable", remat_group=2))
    stacked = models.stack_params(params)
    chex.assert_trees_all_equal_shapes(jax.eval_shape(lambda: models.init(grouped, jax.random.key(0), x))["params"],
                                       stacked)
    out, grad = forward_and_grad(grouped, stacked, x)
    chex.assert_trees_all_close(out, ref, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(models.unstack_params(grad), ref_grad, rtol=1e-4, atol=1e-5)
    specs = models.logical_specs(grouped, x)["params"]["blocks"]
    for spec in jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)):
        assert spec[0] == "layers" and "layers" not in spec[1:]


@pytest.mark.parametrize("name", ["rn1", "t11"])
def test_blocks_are_the_unrolled_block_outputs(name):
    """Each slice of ``blocks`` equals the output of a model truncated after that block."""
    x = INPUTS[name][1]
    full = models.build(config(name, scan=False))
    params = random_params(full, x, seed=1)
    _, _, blocks = full.apply({"params": params}, x, return_blocks=True)
    for depth in (1, 2):
        truncated = {k: v for k, v in params.items() if not k.startswith("blocks_") or int(k[7:]) < depth}
        _, _, head = models.build(config(name, scan=False, depth=depth)).apply(
            {"params": truncated}, x, return_blocks=True)
        np.testing.assert_allclose(blocks[depth - 1], head[-1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["rn1", "rn2", "t11", "t12"])
def test_shapes_and_dtypes(name, dtype):
    x = INPUTS[name][1]
    module = models.build(config(name, dtype=dtype))
    shapes = jax.eval_shape(lambda: models.init(module, jax.random.key(0), x))
    chex.assert_trees_all_equal_dtypes(shapes, jax.tree.map(lambda p: np.zeros((), np.float32), shapes))
    variables = {"params": random_params(module, x)}
    both = jax.jit(lambda v: (module.apply(v, x, return_blocks=True), module.apply(v, x)))
    (logits, features, blocks), (logits2, features2) = both(variables)
    chex.assert_shape(logits, (4, 5))
    chex.assert_shape(features, (4, 16))
    chex.assert_shape(blocks, (3, 4, 16))
    chex.assert_type(logits, jnp.float32)
    chex.assert_type([features, blocks], jnp.dtype(dtype))
    chex.assert_tree_all_finite((logits, features, blocks))
    chex.assert_trees_all_equal((logits2, features2), (logits, features))
    w, b = models.classifier_weights(variables["params"])
    chex.assert_shape([w, b], [(5, 16), (5,)])
    np.testing.assert_allclose(features.astype(np.float32) @ np.asarray(w).T + b, logits, rtol=2e-2, atol=2e-2)


def test_classifier_without_bias():
    module = models.build(config("rn1", classifier_bias=False))
    w, b = models.classifier_weights(models.init(module, jax.random.key(0), INPUTS["rn1"][1])["params"])
    assert w.shape == (5, 16) and b is None


def _layer_norm(h, scale, bias):
    mu = h.mean(-1, keepdims=True)
    var = ((h - mu) ** 2).mean(-1, keepdims=True)
    return (h - mu) / np.sqrt(var + 1e-6) * scale + bias


@pytest.mark.parametrize("norm", ["pre", "post", "final"])
def test_rn1_matches_float64_numpy(norm):
    """L-RN1, depth 3, against a hand-written float64 forward: h ← h + relu(W LN(h) + b) etc."""
    x = INPUTS["rn1"][1]
    module = models.build(config("rn1", norm=norm, scan=True, head_depth=2))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), random_params(module, x, seed=3))
    h = x.reshape(4, -1).astype(np.float64) @ p["embed"]["kernel"] + p["embed"]["bias"]
    blocks = []
    for i in range(3):
        layer = jax.tree.map(lambda a: a[i], p["blocks"])
        ln = lambda v: _layer_norm(v, layer["norm"]["scale"], layer["norm"]["bias"])
        u = ln(h) if norm == "pre" else h
        h = h + np.maximum(u @ layer["linear"]["kernel"] + layer["linear"]["bias"], 0)
        h = ln(h) if norm == "post" else h
        blocks.append(h)
    head = p["head"]
    f = h if norm == "post" else _layer_norm(h, head["final_norm"]["scale"], head["final_norm"]["bias"])
    for j in range(2):
        f = f @ head[f"linear_head_{j}"]["kernel"] + head[f"linear_head_{j}"]["bias"]
    logits = f @ head["classifier"]["kernel"] + head["classifier"]["bias"]
    out = module.apply({"params": jax.tree.map(lambda a: a.astype(np.float32), p)}, x, return_blocks=True)
    for got, want in zip(out, (logits, f, np.stack(blocks))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_depth_1024_with_remat_has_finite_gradients():
    x = np.random.default_rng(0).normal(size=(2, 5)).astype(np.float32)
    module = models.build(config("rn1", input="vector", depth=1024, width=8, head_depth=0,
                                 remat_policy="nothing_saveable"))
    params = models.init(module, jax.random.key(0), x)["params"]
    assert params["blocks"]["linear"]["kernel"].shape == (1024, 8, 8)
    grads = jax.jit(jax.grad(loss_fn(module, x)))(params)
    chex.assert_tree_all_finite(grads)
    assert float(jnp.abs(grads["embed"]["kernel"]).sum()) > 0


@pytest.mark.parametrize("name", ["rn2", "t12"])
def test_scanned_trace_does_not_grow_with_depth(name):
    """Compile cost is set by the traced program: the scanned init/apply trace the block once."""
    x = INPUTS[name][1]

    def size(depth):
        module = models.build(config(name, depth=depth, remat_policy="nothing_saveable"))
        jaxpr = jax.make_jaxpr(lambda r: module.init(r, x))(jax.random.key(0))
        params = jax.eval_shape(lambda: models.init(module, jax.random.key(0), x)["params"])
        return len(str(jax.make_jaxpr(jax.grad(loss_fn(module, x)))(params))) + len(str(jaxpr))

    small, big = size(2), size(1024)
    assert big < 1.05 * small, (small, big)


@pytest.mark.parametrize("name", ["rn2", "t11", "t12"])
def test_logical_axis_names(name):
    x = INPUTS[name][1]
    module = models.build(config(name))
    specs = models.logical_specs(module, x)["params"]
    names = {n for spec in jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
             for n in spec}
    assert names <= LOGICAL_NAMES and "layers" in names and "embed" in names
    for spec in jax.tree.leaves(specs["blocks"], is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)):
        assert spec[0] == "layers"
    shapes = jax.eval_shape(lambda: models.init(module, jax.random.key(0), x))["params"]
    jax.tree.map(lambda spec, s: len(spec) == s.ndim or pytest.fail(f"{spec} vs {s.shape}"), specs, shapes,
                 is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))


@pytest.mark.parametrize("field, value, message", [
    ("depth", 0, "model.depth=0 must be a positive integer"),
    ("width", 30, "not divisible by model.num_heads"),
    ("name", "rn3", "model.name='rn3' is not supported"),
    ("activation", "swish2", "model.activation='swish2'"),
    ("remat_policy", "save_only_these_names", "model.remat_policy"),
    ("remat_policy", "nothing", "model.remat_policy"),
    ("pooling", "max", "model.pooling='max'"),
    ("norm", "final", "model.norm='final'"),  # transformers have pre/post only
    ("norm", "sandwich", "model.norm='sandwich'"),
    ("input", "vector", "model.input='vector'"),
    ("head_depth", -1, "model.head_depth=-1"),
    ("init_scale", 0.0, "model.init_scale"),
    ("dtype", "float64", "model.dtype='float64'"),
    ("unroll", 0, "model.unroll=0"),
    ("remat_group", 2, "model.remat_group=2 needs scan=True, a remat_policy"),
])
def test_bad_config_raises(field, value, message):
    c = config("t11")
    c[field] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        models.build(c)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="patch_size=4"):
        models.init(models.build(config("t11")), jax.random.key(0), np.zeros((1, 6, 6, 1), np.float32))
    with pytest.raises(ValueError, match="max_len=10"):
        models.init(models.build(config("t12")), jax.random.key(0), np.zeros((1, 11), np.int32))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_token_padding_changes_nothing(pooling):
    """Id 0 is padding: more of it (a longer padded batch) leaves logits and features unchanged."""
    c = models.default_config()
    c.update(name="t11", depth=2, width=16, num_heads=2, input="tokens", vocab_size=20, max_len=12,
             pooling=pooling, num_classes=3)
    module = models.build(c)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 20, size=(3, 5)).astype(np.int32)
    tokens[1, 3:] = 0  # one sequence shorter than the others
    short = np.pad(tokens, ((0, 0), (0, 1)))
    long = np.pad(tokens, ((0, 0), (0, 6)))
    variables = models.init(module, jax.random.key(0), jnp.asarray(short))
    out_short = module.apply(variables, jnp.asarray(short))
    out_long = module.apply(variables, jnp.asarray(long))
    for a, b in zip(out_short, out_long):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
