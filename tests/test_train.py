"""The block of train steps: bit-identical whatever the block length or feed, the same on 1 and 8 devices,
FSDP = data parallel, a diverging member frozen while the others train, and the paper's objective."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ncjax import data, config, models, objective, parallel, train
from ncjax.data import feed as feeds

TOTAL = 12


def _dataset(n=96):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int32)
    return data.Dataset(x, y, None, None, 10, "image", "noise")


def _program(name="rn1", mesh=None, placement="device", learning_rates=(0.005, 0.005), depth=2):
    c = config.base_config()
    c.model.update(name=name, width=16, num_heads=2, depth=depth, patch_size=4)
    c.train.batch_size = 32
    ds = _dataset()
    mesh = mesh or parallel.make_mesh()
    feed = feeds.choose(placement, ds, c.train.batch_size, mesh)
    hyper = train.Hyper.of([0, 1], [0.005, 0.005], learning_rates, [depth, depth])
    return train.Program(models.build(c.model), c.train, feed, mesh, TOTAL, ds.train_x[:1], hyper)


def _train(program, lengths):
    """Train TOTAL steps in blocks of the given lengths (cycled); the state and the per-step logs [T, M].

    A program compiles once per block length, so tests reuse programs and lengths."""
    state, carry, step, logs = program.init(), program.carry(0), 0, []
    for i in range(TOTAL):
        if step == TOTAL:
            break
        n = min(lengths[i % len(lengths)], TOTAL - step)
        state, carry, block_logs = program.run_block(state, carry, step, n)
        logs.append(jax.device_get(block_logs))
        step += n
    return jax.device_get(state), {k: np.concatenate([b[k] for b in logs]) for k in logs[0]}


def _bitwise_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("name, depth, variants", [("rn1", 2, ([1], [7])), ("t11", 1, ([1],))])
def test_block_length_and_feed_do_not_change_a_bit(name, depth, variants):
    """Blocks of 1, 7 or all steps, data on the device or streamed: the same bits (every length compiles once)."""
    program = _program(name, depth=depth)
    state, logs = _train(program, [TOTAL])
    assert logs["loss"].shape == (TOTAL, 2) and np.all(np.isfinite(logs["loss"]))
    for lengths in variants:
        again, again_logs = _train(program, lengths)
        assert _bitwise_equal(again.params, state.params) and np.array_equal(again_logs["loss"], logs["loss"])
    if name == "rn1":
        streamed, _ = _train(_program(name, placement="host", depth=depth), [TOTAL])
        assert _bitwise_equal(streamed.params, state.params)


def test_one_device_and_eight_devices_and_fsdp_agree():
    _, one = _train(_program("rn2", mesh=parallel.make_mesh(devices=jax.devices()[:1])), [TOTAL])
    _, eight = _train(_program("rn2"), [TOTAL])
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=2e-5)
    program = _program("rn2", mesh=parallel.make_mesh(data=2, fsdp=4))
    state, fsdp = _train(program, [TOTAL])
    np.testing.assert_allclose(fsdp["loss"], one["loss"], rtol=2e-5)
    assert not np.allclose(one["loss"][:, 0], one["loss"][:, 1])  # different initialisations and data
    # FSDP really splits parameters: the embedding's width axis lives on 4 devices
    kernel = program.init().params["embed"]["kernel"]
    assert kernel.sharding.spec[-1] == "fsdp" and kernel.addressable_shards[0].data.shape[-1] == 16 // 4


def test_a_diverging_member_is_frozen_and_the_other_trains_on():
    state, logs = _train(_program("rn1", learning_rates=(0.005, 1e30)), [5])
    diverged = np.asarray(state.diverged_at)
    assert diverged[0] == 0 and 1 <= diverged[1] <= TOTAL
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params))  # last finite parameters kept
    assert not np.all(np.isfinite(logs["loss"][:, 1]))
    _, alone = _train(_program("rn1"), [TOTAL])
    np.testing.assert_allclose(logs["loss"][:, 0], alone["loss"][:, 0], rtol=1e-5)


def test_objective_is_data_loss_plus_l2_times_squared_norm():
    rng = np.random.default_rng(1)
    params = {"a": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4)}, "norm": {"scale": np.ones(4)}}
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
    want = sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in jax.tree.leaves(params))
    assert float(objective.l2_penalty(params)) == pytest.approx(want, rel=1e-6)
    without_bias = want - float(np.sum(np.asarray(params["a"]["bias"], np.float64) ** 2))
    assert float(objective.l2_penalty(params, exclude=("bias",))) == pytest.approx(without_bias, rel=1e-6)

    logits = rng.normal(size=(5, 3)).astype(np.float32)
    labels = np.array([0, 2, 1, 1, 0])
    shifted = logits - logits.max(1, keepdims=True)
    ce = -(shifted[np.arange(5), labels] - np.log(np.exp(shifted).sum(1))).mean()
    assert float(objective.data_loss(logits, labels, "ce")) == pytest.approx(ce, rel=1e-5)
    mse = 0.5 * ((logits - 2.0 * np.eye(3)[labels]) ** 2).sum(1).mean()
    assert float(objective.data_loss(logits, labels, "mse", 2.0)) == pytest.approx(mse, rel=1e-5)


def test_inverse_depth_l2_schedule():
    t = ml_collections.ConfigDict(dict(l2=0.005, l2_schedule="inverse_depth"))
    assert train.l2_coefficient(t, 5) == pytest.approx(0.001)
    t.l2_schedule = "constant"
    assert train.l2_coefficient(t, 5) == 0.005


def test_mesh_shapes():
    assert parallel.mesh_shape(-1, 1, 8) == (8, 1)
    assert parallel.mesh_shape(2, -1, 8) == (2, 4)
    with pytest.raises(parallel.MeshError, match="must equal"):
        parallel.mesh_shape(3, 1, 8)
    with pytest.raises(parallel.MeshError, match="at most one"):
        parallel.mesh_shape(-1, -1, 8)


def test_a_packed_group_is_the_separate_runs():
    """Depths 1 and 3 in one program (blocks beyond a member's depth masked) train exactly as apart."""
    c = config.base_config()
    c.model.update(name="rn1", width=16, depth=3)
    c.train.batch_size = 32
    ds = _dataset()
    mesh = parallel.make_mesh()
    feed = feeds.choose("device", ds, 32, mesh)

    def program(depths, depth):
        c.model.depth = depth
        hyper = train.Hyper.of([0] * len(depths), [train.l2_coefficient(c.train, d) for d in depths],
                               [0.005] * len(depths), depths)
        return train.Program(models.build(c.model), c.train, feed, mesh, TOTAL, ds.train_x[:1], hyper,
                             packed=len(set(depths)) > 1)

    c.train.l2_schedule = "inverse_depth"  # λ(L) differs per member too
    packed, packed_logs = _train(program([1, 3], 3), [TOTAL])
    for member, depth in enumerate((1, 3)):
        alone, alone_logs = _train(program([depth], depth), [TOTAL])
        np.testing.assert_allclose(packed_logs["loss"][:, member], alone_logs["loss"][:, 0], rtol=2e-5)
        for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(packed.params)):
            np.testing.assert_allclose(b[member][:a.shape[1]] if a.shape[1:] != b.shape[1:] else b[member], a[0],
                                       rtol=2e-4, atol=2e-6)
    blocks = packed.params["blocks"]
    initial = program([1, 3], 3).init().params["blocks"]
    for leaf, start in zip(jax.tree.leaves(blocks), jax.tree.leaves(initial)):
        np.testing.assert_array_equal(leaf[0, 1:], start[0, 1:])  # the depth-1 member's masked blocks never move


@pytest.mark.parametrize("form, params", [("full", "all"), ("half", "weights"), ("decoupled", "weights")])
def test_l2_conventions_in_the_step(form, params):
    """One SGD step against the update written out: θ − η(∇loss + c·2λθ) for the penalty forms (c = 1, ½),
    θ − η(∇loss + λθ) for decoupled decay, on the penalised parameters only."""
    c = config.base_config()
    c.model.update(name="rn1", width=8, depth=2)
    c.train.update(batch_size=32, optimizer="sgd", momentum=0.0, schedule="constant", learning_rate=0.1,
                   l2=0.05, l2_form=form, l2_params=params)
    ds = _dataset()
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    module = models.build(c.model)
    program = train.Program(module, c.train, feeds.choose("device", ds, 32, mesh), mesh, TOTAL, ds.train_x[:1],
                            train.Hyper.of([0], [0.05], [0.1], [2]))
    state = program.init()
    start = jax.tree.map(lambda a: np.asarray(a[0], np.float64), jax.device_get(state.params))
    x, y = ds.train_x[:32], ds.train_y[:32]
    grads = jax.grad(lambda p: objective.data_loss(module.apply({"params": p}, x)[0], y))(
        jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), start))
    penalised = objective.penalised(start, params)
    step = {"full": 2 * 0.05, "half": 0.05, "decoupled": 0.05}[form]
    want = jax.tree.map(lambda p, g, keep: p - 0.1 * (np.asarray(g, np.float64) + (step * p if keep else 0.0)),
                        start, grads, penalised)
    state, _ = program.step(state, x[None], y[None])
    got = jax.tree.map(lambda a: np.asarray(a[0]), jax.device_get(state.params))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def _schedule_reference(schedule, peak, step, total, warmup):
    """The learning rate at ``step`` in float64, from the schedules' closed forms."""
    if schedule == "constant":
        return peak
    if schedule == "cosine":
        return peak * 0.5 * (1 + np.cos(np.pi * min(step, total) / total))
    if step < warmup:
        return peak * step / warmup
    return peak * 0.5 * (1 + np.cos(np.pi * min(step - warmup, total - warmup) / (total - warmup)))


@pytest.mark.parametrize("schedule", ["constant", "cosine", "warmup_cosine"])
def test_every_schedule_takes_a_vmapped_learning_rate(schedule):
    """Members train with their own (traced) learning rate under every schedule: SGD's first step on
    f(θ) = θ after ``step`` updates moves θ by −η(step), the schedule's closed form."""
    c = config.base_config().train
    c.update(optimizer="sgd", momentum=0.0, schedule=schedule, warmup_steps=4)
    total, peaks = 20, np.array([0.1, 0.03], np.float32)

    def lr_at(peak, step):
        opt = train.make_optimizer(c, total, learning_rate=peak)
        state = opt.init(jnp.zeros(()))
        state = jax.tree.map(lambda leaf: jnp.asarray(step, leaf.dtype) if leaf.dtype == jnp.int32 else leaf,
                             state)
        updates, _ = opt.update(jnp.ones(()), state)
        return -updates

    for step in (0, 2, 4, 11, 19):
        got = jax.jit(jax.vmap(lr_at, in_axes=(0, None)))(peaks, step)
        want = [_schedule_reference(schedule, float(p), step, total, 4) for p in peaks]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
