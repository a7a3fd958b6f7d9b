"""ncjax.models: float64 NumPy references of every architecture, scanned == unrolled == remat,
depth-consistent init, masked (packed) depth, matmul precision, shapes/dtypes, depth 1024
with remat, logical axis names, and clear errors for bad configs."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncjax import models
from ncjax.errors import ConfigError
from ncjax.models import execution

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
    logits, out = outputs
    return (jnp.sum(jnp.sin(logits)) + jnp.sum(out["features"].astype(jnp.float32) ** 2)
            + jnp.sum(jnp.tanh(out["blocks"])))


def flat(outputs):
    """``(logits, {"features", "blocks"})`` → ``(logits, features, blocks)``, in the references' order."""
    logits, out = outputs
    return logits, out["features"], out["blocks"]


def random_params(module, x, seed=0):
    """Params with the module's shapes, drawn by NumPy: non-trivial biases and norms, and
    no jitted RNG init to compile (that alone takes seconds per model on CPU)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: models.init(module, jax.random.key(0), x))["params"]
    return jax.tree_util.tree_map_with_path(
        lambda path, s: (rng.normal(size=s.shape) * 0.3 + ("scale" in str(path[-1]))).astype(np.float32), shapes)


def forward_and_grad(module, params, x, **apply_kwargs):
    """Outputs and gradient from one jitted call: eager dispatch or several compiles would dominate the test time."""
    def loss(p):
        out = module.apply({"params": p}, x, return_blocks=True, **apply_kwargs)
        return scalar(out), out
    grad, out = jax.jit(jax.grad(loss, has_aux=True))(params)
    return out, grad


# ------------------------------------------------------------------ float64 NumPy references

def _layer_norm(h, p):
    """LayerNorm with ε = 1e-6; ``p`` holds 'scale'/'bias' when affine, else nothing."""
    mu = h.mean(-1, keepdims=True)
    var = ((h - mu) ** 2).mean(-1, keepdims=True)
    return (h - mu) / np.sqrt(var + 1e-6) * p.get("scale", 1.0) + p.get("bias", 0.0)


def _linear(h, p):
    return h @ p["kernel"] + p.get("bias", 0.0)


def _head(h, head, final_norm, head_depth):
    f = _layer_norm(h, head.get("final_norm", {})) if final_norm else h
    for j in range(head_depth):
        f = _linear(f, head[f"linear_head_{j}"])
    return _linear(f, head["classifier"]), f


def resnet_reference(p, x, *, norm, two_layer, depth, head_depth):
    """L-RN1/L-RN2 in float64: post h ← LN(h + σ(Wh+b)) (or W2 σ(W1 h+b1)), pre h ← h + σ(W LN(h) + b),
    final h ← h + σ(Wh+b) with one LN before the head."""
    h = _linear(x.reshape(x.shape[0], -1), p["embed"])
    blocks = []
    for i in range(depth):
        layer = jax.tree.map(lambda a: a[i], p["blocks"])
        u = _layer_norm(h, layer["norm"] if "norm" in layer else {}) if norm == "pre" else h
        if two_layer:
            u = _linear(np.maximum(_linear(u, layer["linear_1"]), 0), layer["linear_2"])
        else:
            u = np.maximum(_linear(u, layer["linear"]), 0)
        h = h + u
        if norm == "post":
            h = _layer_norm(h, layer.get("norm", {}))
        blocks.append(h)
    logits, f = _head(h, p["head"], norm != "post", head_depth)
    return logits, f, np.stack(blocks)


def transformer_reference(p, x, *, norm, heads, patch, depth, head_depth, pooling="cls"):
    """L-T11 on images in float64, written from the formulas (no padding: no mask)."""
    b, hgt, wid, c = x.shape
    tokens = x.reshape(b, hgt // patch, patch, wid // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    h = _linear(tokens.reshape(b, -1, patch * patch * c), p["embed"]) + p["positions"]
    if pooling == "cls":
        h = np.concatenate([np.broadcast_to(p["cls"], (b, 1, h.shape[-1])), h], axis=1)
    pool = (lambda v: v[:, 0]) if pooling == "cls" else (lambda v: v.mean(1))

    def attention(u, a):
        q, k, v = (np.einsum("btd,dhk->bhtk", u, a[n]["kernel"]) + a[n]["bias"][None, :, None] for n in
                   ("query", "key", "value"))
        s = np.einsum("bhtk,bhsk->bhts", q, k) / np.sqrt(q.shape[-1])
        w = np.exp(s - s.max(-1, keepdims=True))
        y = np.einsum("bhts,bhsk->bthk", w / w.sum(-1, keepdims=True), v)
        return np.einsum("bthk,hkd->btd", y, a["out"]["kernel"]) + a["out"]["bias"]

    blocks = []
    for i in range(depth):
        layer = jax.tree.map(lambda a: a[i], p["blocks"])
        n1, n2 = layer.get("norm_1", {}), layer.get("norm_2", {})

        def mlp(u):
            return np.maximum(_linear(u, layer["linear"]), 0)

        if norm == "pre":
            h = h + attention(_layer_norm(h, n1), layer["attention"])
            h = h + mlp(_layer_norm(h, n2))
        else:
            h = _layer_norm(h + attention(h, layer["attention"]), n1)
            h = _layer_norm(h + mlp(h), n2)
        blocks.append(pool(h))
    logits, f = _head(pool(h), p["head"], norm == "pre", head_depth)
    return logits, f, np.stack(blocks)


def _float64(params):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), params)


@pytest.mark.parametrize("name, norm, affine", [
    ("rn1", "post", False), ("rn1", "post", True), ("rn1", "pre", True), ("rn1", "final", False),
    ("rn2", "post", False),
])
def test_resnets_match_float64_numpy(name, norm, affine):
    """Every placement, with and without LayerNorm affine parameters, and the two-layer form."""
    x = INPUTS[name][1]
    module = models.build(config(name, norm=norm, norm_affine=affine, head_depth=2))
    params = random_params(module, x, seed=3)
    assert ("norm" in params["blocks"]) == (norm != "final" and affine)
    apply = jax.jit(lambda p, d: module.apply({"params": p}, x, return_blocks=True, active_depth=d))
    for depth in (3, 2):  # the whole stack, and its first two blocks as a masked (packed) depth
        want = resnet_reference(_float64(params), x.astype(np.float64), norm=norm, two_layer=name == "rn2",
                                depth=depth, head_depth=2)
        logits, features, blocks = flat(apply(params, depth))
        for g, w in zip((logits, features, blocks[:depth]), want):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("norm, affine", [("post", False), ("pre", True)])
def test_vision_transformer_matches_float64_numpy(norm, affine):
    x = INPUTS["t11"][1]
    module = models.build(config("t11", norm=norm, norm_affine=affine))
    params = random_params(module, x, seed=4)
    apply = jax.jit(lambda p, d: module.apply({"params": p}, x, return_blocks=True, active_depth=d))
    for depth in (3, 1):
        want = transformer_reference(_float64(params), x.astype(np.float64), norm=norm, heads=4, patch=4,
                                     depth=depth, head_depth=1)
        logits, features, blocks = flat(apply(params, depth))
        for g, w in zip((logits, features, blocks[:depth]), want):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)


def test_parameter_free_layer_norm_has_radius_sqrt_width():
    """The convention of layers.py: post-LN features have zero mean and norm √d (up to ε)."""
    x = INPUTS["rn2"][1]
    module = models.build(config("rn2", norm="post", head_depth=0))
    _, features, blocks = flat(jax.jit(lambda p: module.apply({"params": p}, x, return_blocks=True))(
        random_params(module, x)))
    for h in (features, *blocks):
        np.testing.assert_allclose(np.linalg.norm(h, axis=-1), np.sqrt(16), rtol=1e-5)
        np.testing.assert_allclose(h.mean(-1), 0, atol=1e-6)


def test_module_without_a_config_equals_the_built_default():
    """``ResNet(depth=8, width=64, num_classes=10)`` needs no ConfigDict: it is ``models.build`` of the default
    config (same module, same params from the same key, same outputs)."""
    x = INPUTS["rn1"][1]
    c = models.default_config()
    c.update(depth=8, width=64, num_classes=10)
    direct, built = models.ResNet(depth=8, width=64, num_classes=10), models.build(c)
    assert direct == built
    key = jax.random.key(11)
    params = models.init(direct, key, x)
    chex.assert_trees_all_equal(params, models.init(built, key, x))
    logits, out = direct.apply(params, x, return_blocks=True)
    chex.assert_shape([logits, out["features"], out["blocks"]], [(4, 10), (4, 64), (8, 4, 64)])
    chex.assert_trees_all_equal((logits, out), built.apply(params, x, return_blocks=True))
    c.update(name="t11", depth=4)  # remat_policy=None in a config is the backend's choice (models.execution)
    direct = models.Transformer(depth=4, width=64, num_classes=10, remat_policy=execution.remat_policy(c))
    assert direct == models.build(c)


@pytest.mark.parametrize("module, name", [(models.ResNet, "rn1"), (models.Transformer, "t11"),
                                          (models.MLP, "mlp")])
def test_field_defaults_are_the_default_config(module, name):
    """Every field of the modules (and of Layers) defaults to ``default_config()``'s value, as ``build`` reads it."""
    c = models.default_config()
    c.name = name
    built = models.build(c)
    defaults = module()
    for field in dataclasses.fields(module):
        if field.name not in ("parent", "name", "remat_policy"):
            assert getattr(defaults, field.name) == getattr(built, field.name), field.name
    if hasattr(defaults, "remat_policy"):  # the module stores by default; the config leaves it to the backend
        assert defaults.remat_policy is None and built.remat_policy == execution.remat_policy(c)


def test_the_backend_chooses_remat_and_options_only_for_scanned_transformers_on_a_cpu():
    """On a CPU a scanned transformer recomputes its blocks and compiles with YNNPACK given the matmuls alone;
    an explicit policy wins; ResNets, MLPs and unrolled transformers keep XLA's defaults."""
    assert jax.default_backend() == "cpu"  # tests/conftest.py
    c = models.default_config()
    c.name = "t11"
    assert execution.remat_policy(c) == "nothing_saveable"
    assert execution.step_compiler_options(models.build(c)) == execution.CPU_TRANSFORMER_OPTIONS
    c.remat_policy = "everything_saveable"
    assert execution.remat_policy(c) == "everything_saveable"
    c.remat_policy, c.scan = None, False
    assert execution.remat_policy(c) is None
    for name in ("rn1", "rn2", "mlp"):
        c = models.default_config()
        c.name = name
        assert execution.remat_policy(c) is None and execution.step_compiler_options(models.build(c)) is None


# ------------------------------------------------------------------ execution variants

REMAT = {"remat_policy": "nothing_saveable", "unroll": 2}


# Every model, norm and pooling at least once; remat and scan unrolling on some (each case costs compiles).
@pytest.mark.parametrize("name, norm, pooling, variants", [
    ("rn1", "pre", "cls", [{"scan": False}, REMAT]),
    ("rn2", "final", "cls", [{"unroll": 3}]),
    ("t11", "post", "cls", [{"scan": False, "remat_policy": "dots_saveable"},
                            {"remat_policy": "everything_saveable"}]),
])
def test_execution_variants_agree(name, norm, pooling, variants):
    """Scanned, unrolled, rematerialised: one parameter layout, the same numbers (to float tolerance)."""
    x = INPUTS[name][1]
    scanned = models.build(config(name, norm=norm, pooling=pooling, norm_affine=True))
    params = random_params(scanned, x)
    ref, ref_grad = forward_and_grad(scanned, params, x)
    for overrides in variants:
        variant = models.build(config(name, norm=norm, pooling=pooling, norm_affine=True, **overrides))
        chex.assert_trees_all_equal_shapes(
            jax.eval_shape(lambda: models.init(variant, jax.random.key(0), x))["params"], params)
        out, grad = forward_and_grad(variant, params, x)
        chex.assert_trees_all_close(out, ref, rtol=1e-5, atol=1e-5)
        chex.assert_trees_all_close(grad, ref_grad, rtol=1e-4, atol=5e-5)


# ------------------------------------------------------------------ depth consistency and packing

def test_init_is_depth_consistent():
    """Block l comes from fold_in(key, l): depth 2's blocks are depth 5's first two; nothing else
    (embedding, positions, CLS token, head) depends on depth."""
    name = "t11"
    x = INPUTS[name][1]
    key = jax.random.key(42)
    shallow = models.init(models.build(config(name, depth=2)), key, x)["params"]
    deep = models.init(models.build(config(name, depth=5)), key, x)["params"]
    chex.assert_trees_all_equal(jax.tree.map(lambda a: a[:2], deep["blocks"]), shallow["blocks"])
    chex.assert_trees_all_equal({k: v for k, v in deep.items() if k != models.BLOCKS},
                                {k: v for k, v in shallow.items() if k != models.BLOCKS})
    assert not np.allclose(deep["blocks"]["linear"]["kernel"][0], deep["blocks"]["linear"]["kernel"][1])
    other = models.init(models.build(config(name, depth=2)), jax.random.key(43), x)["params"]
    assert not np.allclose(other["embed"]["kernel"], shallow["embed"]["kernel"])


@pytest.mark.parametrize("name, norm, packed_overrides, depths", [
    ("rn1", "post", {"scan": False}, (1, 3)),
    ("t12", "pre", {"remat_policy": "nothing_saveable", "remat_group": 2, "pooling": "mean", "input": "image"},
     (2, 4)),
])
def test_packed_depths_equal_separate_models(name, norm, packed_overrides, depths):
    """A stack of max(depths) blocks vmapped over active_depth equals the separate plain models of each
    depth (same key) in outputs and gradients; masked blocks get exactly zero gradient. The second case
    also checks two-level remat against the plain scan."""
    x = INPUTS["t11" if packed_overrides.get("input") == "image" else name][1]
    key = jax.random.key(7)
    packed = models.build(config(name, depth=max(depths), norm=norm, **packed_overrides))
    params = models.init(packed, key, x)["params"]
    outs, grads = _packed(packed, params, x, jnp.asarray(depths, jnp.int32))
    for i, depth in enumerate(depths):
        single = models.build(config(name, depth=depth, norm=norm, pooling=packed_overrides.get("pooling", "cls"),
                                     input=packed_overrides.get("input", INPUTS[name][0])))
        ref, ref_grad = forward_and_grad(single, models.init(single, key, x)["params"], x)
        logits, features, blocks = flat(jax.tree.map(lambda a: a[i], outs))
        chex.assert_trees_all_close((logits, features, blocks[:depth]), flat(ref), rtol=1e-5, atol=1e-5)
        grad = jax.tree.map(lambda a: a[i], grads)
        chex.assert_trees_all_close({k: v for k, v in grad.items() if k != models.BLOCKS},
                                    {k: v for k, v in ref_grad.items() if k != models.BLOCKS}, rtol=1e-4, atol=5e-5)
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[:depth], grad[models.BLOCKS]), ref_grad[models.BLOCKS],
                                    rtol=1e-4, atol=5e-5)
        for leaf in jax.tree.leaves(grad[models.BLOCKS]):
            assert np.all(np.asarray(leaf[depth:]) == 0)


def _packed(module, params, x, depths):
    """Outputs and gradients of ``module`` vmapped over active depths (masked blocks' outputs left out of the loss)."""
    def one(d):
        def loss(p):
            logits, out = module.apply({"params": p}, x, return_blocks=True, active_depth=d)
            kept = out["blocks"] * (jnp.arange(out["blocks"].shape[0]) < d)[:, None, None]
            return scalar((logits, dict(out, blocks=kept))), (logits, out)
        grad, out = jax.grad(loss, has_aux=True)(params)
        return out, grad
    return jax.jit(jax.vmap(one))(depths)


def test_active_depth_as_python_int_and_its_range():
    x = INPUTS["rn1"][1]
    module = models.build(config("rn1", depth=3))
    variables = {"params": random_params(module, x)}
    full = jax.jit(lambda v: module.apply(v, x))(variables)
    chex.assert_trees_all_close(jax.jit(lambda v: module.apply(v, x, active_depth=3))(variables), full,
                                rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="active_depth=4 must lie in 0..3"):
        module.apply(variables, x, active_depth=4)


# ------------------------------------------------------------------ precision, shapes, dtypes

def _dot_precisions(jaxpr):
    """The precision of every dot_general in ``jaxpr`` and in every sub-jaxpr (scan, cond, remat, pjit)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    found += _dot_precisions(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    found += _dot_precisions(sub)
    return found


@pytest.mark.parametrize("precision, expected", [("highest", jax.lax.Precision.HIGHEST),
                                                 ("default", jax.lax.Precision.DEFAULT)])
def test_every_matmul_has_the_configured_precision(precision, expected):
    """model.precision reaches every product of the forward and backward pass (attention included)."""
    for name in ("rn2", "t12"):
        x = INPUTS[name][1]
        module = models.build(config(name, precision=precision, norm_affine=True))
        params = jax.eval_shape(lambda: models.init(module, jax.random.key(0), x))["params"]
        jaxpr = jax.make_jaxpr(jax.grad(lambda p: scalar(module.apply({"params": p}, x, return_blocks=True,
                                                                      active_depth=2))))(params)
        precisions = _dot_precisions(jaxpr.jaxpr)
        assert len(precisions) >= (6 if name == "rn2" else 20)
        for p in precisions:
            assert p is not None and all(q == expected for q in (p if isinstance(p, tuple) else (p, p))), p


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["rn1", "rn2", "t11", "t12"])
def test_shapes_and_dtypes(name, dtype):
    x = INPUTS[name][1]
    module = models.build(config(name, dtype=dtype, norm_affine=True))
    shapes = jax.eval_shape(lambda: models.init(module, jax.random.key(0), x))
    chex.assert_trees_all_equal_dtypes(shapes, jax.tree.map(lambda p: np.zeros((), np.float32), shapes))
    variables = {"params": random_params(module, x)}
    both = jax.jit(lambda v: (module.apply(v, x, return_blocks=True), module.apply(v, x)))
    (logits, out), (logits2, out2) = both(variables)
    assert set(out) == {"features", "blocks"} and set(out2) == {"features"}
    features, blocks, features2 = out["features"], out["blocks"], out2["features"]
    chex.assert_shape(logits, (4, 5))
    chex.assert_shape(features, (4, 16))
    chex.assert_shape(blocks, (3, 4, 16))
    chex.assert_type(logits, jnp.float32)
    chex.assert_type([features, blocks], jnp.dtype(dtype))
    chex.assert_tree_all_finite((logits, features, blocks))
    chex.assert_trees_all_close((logits2, features2), (logits, features), rtol=1e-6, atol=1e-6)
    w, b = models.classifier_weights(variables["params"])
    chex.assert_shape([w, b], [(5, 16), (5,)])
    np.testing.assert_allclose(features.astype(np.float32) @ np.asarray(w).T + b, logits, rtol=2e-2, atol=2e-2)


def test_classifier_without_bias():
    module = models.build(config("rn1", classifier_bias=False))
    w, b = models.classifier_weights(random_params(module, INPUTS["rn1"][1]))
    assert w.shape == (5, 16) and b is None


def test_depth_1024_with_remat_has_finite_gradients():
    x = np.random.default_rng(0).normal(size=(2, 5)).astype(np.float32)
    module = models.build(config("rn1", input="vector", depth=1024, width=8, head_depth=0,
                                 remat_policy="nothing_saveable"))
    params = models.init(module, jax.random.key(0), x)["params"]
    assert params["blocks"]["linear"]["kernel"].shape == (1024, 8, 8)
    grads = jax.jit(jax.grad(lambda p: scalar(module.apply({"params": p}, x, return_blocks=True))))(params)
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
        grad = jax.grad(lambda p: scalar(module.apply({"params": p}, x, return_blocks=True, active_depth=2)))
        return len(str(jax.make_jaxpr(grad)(params))) + len(str(jaxpr))

    small, big = size(2), size(1024)
    assert big < 1.05 * small, (small, big)


@pytest.mark.parametrize("name", ["rn2", "t11", "t12"])
def test_logical_axis_names(name):
    x = INPUTS[name][1]
    module = models.build(config(name, norm_affine=True))
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
    ("precision", "tf32", "model.precision='tf32' is not supported; choose one of: highest, high, default"),
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
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
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
             pooling=pooling, num_classes=3, norm="pre")
    module = models.build(c)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 20, size=(3, 5)).astype(np.int32)
    tokens[1, 3:] = 0  # one sequence shorter than the others
    short = np.pad(tokens, ((0, 0), (0, 1)))
    long = np.pad(tokens, ((0, 0), (0, 6)))
    variables = {"params": random_params(module, short)}
    apply = jax.jit(module.apply)
    chex.assert_trees_all_close(apply(variables, short), apply(variables, long), rtol=1e-5, atol=1e-5)


def test_mlp_against_numpy_and_packed_depths():
    """The plain ReLU network: a float64 NumPy forward; depth-consistent layers; active_depth = the shallower net."""
    c = models.default_config()
    c.update(name="mlp", depth=3, width=8, num_classes=3, input="vector", head_depth=2)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    deep = models.build(c)
    params = models.init(deep, jax.random.key(1), x)["params"]
    h = np.asarray(x, np.float64)
    outputs = []
    for layer in range(3):
        h = np.maximum(h @ np.asarray(params[f"hidden_{layer}"]["kernel"], np.float64)
                       + np.asarray(params[f"hidden_{layer}"]["bias"], np.float64), 0)
        outputs.append(h)
    for i in range(2):
        h = h @ np.asarray(params["head"][f"linear_head_{i}"]["kernel"]) + np.asarray(params["head"][f"linear_head_{i}"]["bias"])
    logits_want = h @ np.asarray(params["head"]["classifier"]["kernel"]) + np.asarray(params["head"]["classifier"]["bias"])
    logits, out = deep.apply({"params": params}, x, return_blocks=True)
    blocks = out["blocks"]
    np.testing.assert_allclose(logits, logits_want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(blocks, np.stack(outputs), rtol=1e-5, atol=1e-6)

    c.depth = 1
    shallow = models.build(c)
    shallow_params = models.init(shallow, jax.random.key(1), x)["params"]
    chex.assert_trees_all_equal(shallow_params["hidden_0"], params["hidden_0"])  # depth-consistent
    chex.assert_trees_all_equal(shallow_params["head"], params["head"])
    packed = deep.apply({"params": params}, x, active_depth=1)[0]
    np.testing.assert_allclose(packed, shallow.apply({"params": {**shallow_params}}, x)[0], rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda p: jnp.sum(deep.apply({"params": p}, x, active_depth=1)[0]))(params)
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads["hidden_2"]))
