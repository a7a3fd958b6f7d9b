"""The sharded train step: same numbers on 1 and 8 devices, FSDP = data parallel, the paper's objective."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ncjax import experiment, models, objective, parallel, train


def small_setup(name="t11", depth=2, width=16):
    c = experiment.base_config()
    c.model.name, c.model.width, c.model.num_heads, c.model.depth = name, width, 2, depth
    c.model.patch_size = 4
    c.train.steps = 3
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 32, 8, 8, 1)).astype(np.float32)  # [seeds, batch, H, W, C]
    y = rng.integers(0, 10, size=(2, 32)).astype(np.int32)
    return c, x, y


def losses_on(mesh, c, x, y, steps=3):
    module = models.build(c.model)
    program = train.build_program(module, c.train, c.model.depth, x[0], 2, steps, mesh)
    state = program.init(jnp.asarray([0, 1], jnp.uint32))
    xs = jax.device_put(x, program.batch_sharding(x.ndim))
    ys = jax.device_put(y, program.batch_sharding(y.ndim))
    out = []
    for _ in range(steps):
        state, aux = program.step(state, xs, ys)
        out.append(np.asarray(aux["loss"]))
    return np.stack(out), state


@pytest.mark.parametrize("name", ["t11", "rn2"])
def test_one_device_and_eight_devices_give_the_same_loss(name):
    c, x, y = small_setup(name)
    one, _ = losses_on(parallel.make_mesh(devices=jax.devices()[:1]), c, x, y)
    eight, state = losses_on(parallel.make_mesh(), c, x, y)
    np.testing.assert_allclose(eight, one, rtol=2e-5)
    assert np.all(np.diff(one[:, 0]) < 0)  # it trains
    fsdp, fsdp_state = losses_on(parallel.make_mesh(data=2, fsdp=4), c, x, y)
    np.testing.assert_allclose(fsdp, one, rtol=2e-5)
    # FSDP really splits parameters: the embedding's width axis lives on 4 devices
    kernel = fsdp_state.params["embed"]["kernel"]
    assert kernel.sharding.spec[-1] == "fsdp"
    assert kernel.addressable_shards[0].data.shape[-1] == kernel.shape[-1] // 4


def test_seeds_differ_and_match_separate_training():
    c, x, y = small_setup("rn1")
    mesh = parallel.make_mesh()
    both, _ = losses_on(mesh, c, x, y)
    assert not np.allclose(both[:, 0], both[:, 1])  # different initialisations and data


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
