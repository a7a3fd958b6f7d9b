"""The loss a continual task trains, wired into the engine: against float64 NumPy references of its terms."""

import jax
import numpy as np
import optax
import pytest

from ncjax import models, parallel, train
from ncjax.continual import methods
from ncjax.continual.config import base_config
from ncjax.continual.etf import grow_etf, random_etf
from ncjax.continual.losses import LossWeights
from ncjax.continual.objective import task_loss
from ncjax.data import Dataset
from ncjax.data.feed import DeviceFeed, epoch_order

K, D, B = 6, 8, 16


@pytest.fixture(scope="module")
def setup():
    config = base_config()
    config.model.depth, config.model.width, config.model.num_classes, config.model.input = 1, D, K, "vector"
    module = models.build(config.model)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, 5)).astype(np.float32)
    y = rng.integers(0, 4, B).astype(np.int32)
    params = models.init(module, jax.random.key(0), x[:1])["params"]
    teacher = models.init(module, jax.random.key(1), x[:1])["params"]
    masks = np.arange(K)[None, :].repeat(K, 0) < 4  # class-incremental after 4 classes
    targets = np.zeros((K, D), np.float32)
    targets[:4] = grow_etf(random_etf(2, D, 0), 2, seed=1)
    return module, params, teacher, x, y, masks, targets


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _reference(module, params, teacher, x, y, masks, targets, weights, l2):
    """CE over the masked logits, dot regression to the label's target and to the teacher's features, + λ‖θ‖²."""
    apply = jax.jit(module.apply)
    logits, out = apply({"params": params}, x)
    logits, h = np.asarray(logits, np.float64), np.asarray(out["features"], np.float64)
    h_old = np.asarray(apply({"params": teacher}, x)[1]["features"], np.float64)
    ce = []
    for z, label in zip(logits, y):
        competing = z[masks[label]]
        ce.append(np.log(np.sum(np.exp(competing - competing.max()))) + competing.max() - z[label])
    align = np.mean(0.5 * (np.sum(_unit(h) * targets[y], 1) - 1) ** 2)
    distill = np.mean(0.5 * (np.sum(_unit(h) * _unit(h_old), 1) - 1) ** 2)
    penalty = sum(np.sum(np.asarray(p, np.float64) ** 2) for p in jax.tree.leaves(params))
    terms = dict(ce=np.mean(ce), align=align, distill=distill)
    return weights.ce * terms["ce"] + weights.align * align + weights.distill * distill + l2 * penalty, terms


def _hyper(l2):
    return train.Hyper.of([0], [l2], [0.1], [1])


def test_task_loss_is_the_weighted_sum_of_the_reference_terms(setup):
    module, params, teacher, x, y, masks, targets = setup
    weights = LossWeights(ce=1.0, align=18.0, distill=170.0)
    extras = dict(masks=masks, targets=targets, teacher=teacher)
    hyper = jax.tree.map(lambda a: a[0], _hyper(0.01))
    loss, logs = jax.jit(task_loss(module, weights))(params, hyper, x, y, extras)
    expected, terms = _reference(module, params, teacher, x, y, masks, targets, weights, 0.01)
    np.testing.assert_allclose(loss, expected, rtol=2e-5)
    for name, value in terms.items():
        np.testing.assert_allclose(logs[name], value, rtol=2e-5, atol=1e-7)


def test_distillation_from_an_identical_model_is_zero_and_pulls_nothing(setup):
    module, params, _, x, y, masks, _ = setup
    fn = jax.jit(jax.value_and_grad(task_loss(module, LossWeights(ce=0.0, distill=1.0)), has_aux=True))
    hyper = jax.tree.map(lambda a: a[0], _hyper(0.0))
    (loss, logs), grads = fn(params, hyper, x, y, dict(masks=masks, teacher=params))
    assert abs(float(logs["distill"])) < 1e-12 and abs(float(loss)) < 1e-12
    assert float(optax.tree_utils.tree_norm(grads)) < 1e-5
    other = jax.tree.map(lambda p: p + 0.1, params)
    (_, moved), _ = fn(params, hyper, x, y, dict(masks=masks, teacher=other))
    assert float(moved["distill"]) > 1e-6  # a different teacher does pull


def test_without_targets_or_teacher_their_terms_are_absent(setup):
    module, params, _, x, y, masks, _ = setup
    hyper = jax.tree.map(lambda a: a[0], _hyper(0.0))
    loss, logs = jax.jit(task_loss(module, LossWeights(ce=1.0)))(params, hyper, x, y, dict(masks=masks))
    assert float(logs["align"]) == 0.0 and float(logs["distill"]) == 0.0
    np.testing.assert_allclose(loss, logs["ce"], rtol=1e-6)
    with pytest.raises(ValueError, match="align"):  # a weighted term without its inputs is a bug, not a silent 0
        task_loss(module, LossWeights(ce=1.0, align=1.0))(params, hyper, x, y, dict(masks=masks))


def test_each_member_gets_its_own_slice_of_the_extras(setup):
    """Two seeds in one Program, each with its own targets: one block's logs equal each member's loss alone."""
    module, _, _, _, _, masks, _ = setup
    rng = np.random.default_rng(1)
    data = Dataset(train_x=rng.standard_normal((64, 5)).astype(np.float32),
                   train_y=rng.integers(0, 4, 64).astype(np.int32), test_x=None, test_y=None, num_classes=K,
                   kind="vector", name="toy")
    mesh = parallel.make_mesh(-1, 1)
    config = base_config().train
    seeds = (3, 7)
    hyper = train.Hyper.of(seeds, [0.0, 0.0], [0.1, 0.1], [1, 1])
    weights = LossWeights(ce=1.0, align=18.0)
    program = train.Program(module, config, DeviceFeed(data, B, mesh), mesh, 4, data.train_x[:1], hyper,
                            loss=task_loss(module, weights))
    targets = np.zeros((2, K, D), np.float32)
    targets[0, :4], targets[1, :4] = random_etf(4, D, 11), random_etf(4, D, 12)
    extras = dict(masks=np.stack([masks, masks]), targets=targets)
    state = program.init()
    params = jax.device_get(state.params)
    _, _, logs = program.run_block(state, program.carry(0), 0, 1, extras)
    for m, seed in enumerate(seeds):
        rows = np.asarray(epoch_order(seed, 0, 64))[:B]  # the batch the feed gives member m at step 0
        member = jax.tree.map(lambda a: a[m], params)
        one = jax.tree.map(lambda a: a[m], hyper)
        loss, alone = jax.jit(task_loss(module, weights))(member, one, data.train_x[rows], data.train_y[rows],
                                                 dict(masks=masks, targets=targets[m]))
        np.testing.assert_allclose(np.asarray(logs["loss"])[0, m], loss, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(logs["align"])[0, m], alone["align"], rtol=1e-5)


# (ce, align, distill) on the first task and on a later one, with the configured weights 1 / 18 / 170; whether
# targets exist on the first task and on a later one; what the CE scores.
EXPECTED = {
    "pronc": ((1, 0, 0), (1, 18, 170), (False, True), "head"),  # CE alone until the first targets exist
    "pronc_replay": ((1, 0, 0), (1, 18, 170), (False, True), "head"),
    "fixed_etf": ((0, 18, 0), (0, 18, 170), (True, True), "head"),  # no CE at all: the head never trains
    "fixed_etf_ce": ((1, 0, 0), (1, 0, 0), (True, True), "targets"),
    "finetune": ((1, 0, 0), (1, 0, 0), (False, False), "head"),
    "finetune_replay": ((1, 0, 0), (1, 0, 0), (False, False), "head"),
}


def test_every_method_has_an_expected_row():
    assert set(EXPECTED) == set(methods.METHODS)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_method_weights_by_task(name):
    method = methods.get(name)
    first, later, targets, scores = EXPECTED[name]
    assert method.weights(0, 1.0, 18.0, 170.0) == LossWeights(*first)
    assert method.weights(2, 1.0, 18.0, 170.0) == LossWeights(*later)
    assert (method.has_targets(0), method.has_targets(2)) == targets
    assert method.ce_logits == scores


def test_fixed_etf_cross_entropy_trains_the_features_against_the_etf_and_leaves_the_head(setup):
    """``ce_on_targets``: the loss is CE of ⟨h, v_c⟩ (float64 reference from the model's features) + λ‖θ‖²;
    the linear head, unused, gets no gradient."""
    module, params, _, x, y, masks, _ = setup
    targets = random_etf(K, D, 5).astype(np.float32)
    hyper = jax.tree.map(lambda a: a[0], _hyper(0.01))
    fn = jax.jit(jax.value_and_grad(task_loss(module, LossWeights(ce=1.0), ce_on_targets=True), has_aux=True))
    (loss, logs), grads = fn(params, hyper, x, y, dict(masks=masks, targets=targets))
    h = np.asarray(jax.jit(module.apply)({"params": params}, x)[1]["features"], np.float64)
    z = h @ targets.astype(np.float64).T
    ce = np.mean([np.log(np.sum(np.exp(row[masks[label]]))) - row[label] for row, label in zip(z, y)])
    penalty = sum(np.sum(np.asarray(p, np.float64) ** 2) for p in jax.tree.leaves(params))
    np.testing.assert_allclose(logs["ce"], ce, rtol=2e-5)
    np.testing.assert_allclose(loss, ce + 0.01 * penalty, rtol=2e-5)
    for g, p in zip(jax.tree.leaves(grads["head"]["classifier"]), jax.tree.leaves(params["head"]["classifier"])):
        np.testing.assert_allclose(g, 2 * 0.01 * np.asarray(p), rtol=1e-6, atol=1e-9)  # the L2 term's alone
