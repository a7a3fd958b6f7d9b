"""The evaluators against direct computations on the whole data at once: losses, accuracies, the collapse
metrics of the final features and of every block (the float64 NumPy reference), the full-batch gradient
norm; the training set resident on the device or streamed from the host gives the same lines."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nc_reference import reference_metrics
from ncjax import data, evaluate, config, models, objective, parallel, train
from ncjax.data import feed as feeds

K, N, DEPTH = 4, 100, 2  # N is not a multiple of the evaluation batch: the padded tail is exercised


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(K, 6)) * 2
    y = np.arange(N, dtype=np.int32) % K
    x = (means[y] + rng.normal(size=(N, 6))).astype(np.float32)
    dataset = data.Dataset(x, y, x[:40], y[:40], K, "vector", "mixture")
    c = config.base_config()
    c.model.update(name="rn1", depth=DEPTH, width=16, num_classes=K, input="vector")
    c.train.update(batch_size=32, l2=0.01)
    c.eval_batch_size = 24
    c.evaluate.evaluators += ("gradient_norm",)
    mesh = parallel.make_mesh()
    feed = feeds.choose("device", dataset, 32, mesh)
    module = models.build(c.model)
    hyper = train.Hyper.of([0, 1], [0.01, 0.02], [0.01, 0.01], [DEPTH, DEPTH])
    program = train.Program(module, c.train, feed, mesh, 20, x[:1], hyper)
    state, _, _ = program.run_block(program.init(), program.carry(0), 0, 20)  # non-trivial parameters
    return c, dataset, mesh, module, hyper, program, feed, state


def _lines(setup, resident):
    c, dataset, mesh, module, hyper, program, feed, state = setup
    evaluator = evaluate.build(module, dataset, c, mesh, hyper, packed=False,
                               abstract_params=program.abstract_state.params,
                               train_arrays=feed.arrays if resident else None)
    try:
        return evaluator(state.params, [dict(seed=0), dict(seed=1)])
    finally:
        evaluator.close()


def test_lines_equal_direct_computations(setup):
    c, dataset, mesh, module, hyper, program, feed, state = setup
    lines = _lines(setup, resident=True)
    for m, line in enumerate(lines):
        params = jax.tree.map(lambda a: np.asarray(a[m]), jax.device_get(state.params))
        logits, out = module.apply({"params": params}, dataset.train_x, return_blocks=True)
        features, blocks = out["features"], out["blocks"]
        logits = np.asarray(logits, np.float64)
        shifted = logits - logits.max(1, keepdims=True)
        ce = -(shifted[np.arange(N), dataset.train_y] - np.log(np.exp(shifted).sum(1)))
        assert line["train_loss"] == pytest.approx(ce.mean(), rel=1e-5)
        assert line["train_accuracy"] == pytest.approx(np.mean(logits.argmax(1) == dataset.train_y))
        weight, bias = models.classifier_weights(params)
        want = reference_metrics(features, dataset.train_y, K, weight, bias)
        for name, value in want.items():
            assert line[name] == pytest.approx(value, rel=2e-4, abs=1e-6), name
        per_block = [reference_metrics(b, dataset.train_y, K) for b in np.asarray(blocks)]
        compared = [name for name in per_block[0] if f"{name}_per_block" in line]
        assert {"nc1", "nc1_quotient", "cdnv", "nc2_etf", "ncc_accuracy"} <= set(compared)
        for name in compared:
            np.testing.assert_allclose(line[f"{name}_per_block"], [b[name] for b in per_block], rtol=2e-4,
                                       atol=1e-6, err_msg=name)
        penalty = float(objective.l2_penalty(params))
        assert line["l2_penalty"] == pytest.approx(penalty, rel=1e-5)
        assert line["objective"] == pytest.approx(ce.mean() + hyper.l2[m] * penalty, rel=1e-5)

        def full_objective(p):
            logits, _ = module.apply({"params": p}, dataset.train_x)
            return objective.data_loss(logits, dataset.train_y) + hyper.l2[m] * objective.l2_penalty(p)

        grads = jax.grad(full_objective)(params)
        norm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in jax.tree.leaves(grads)))
        assert line["gradient_norm"] == pytest.approx(norm, rel=1e-4)
        test_logits, test_out = module.apply({"params": params}, dataset.test_x)
        test_logits, test_features = (np.asarray(a, np.float64) for a in (test_logits, test_out["features"]))
        assert line["test_accuracy"] == pytest.approx(np.mean(test_logits.argmax(1) == dataset.test_y))
        # Test-set collapse: NC1 around the test classes' own means; NCC and NC4 against the training means.
        test_y = dataset.test_y
        assert line["test_nc1_quotient"] == pytest.approx(
            reference_metrics(test_features, test_y, K)["nc1_quotient"], rel=2e-4)
        train_means = np.stack([np.asarray(features, np.float64)[dataset.train_y == c].mean(0) for c in range(K)])
        nearest = np.argmin(((test_features[:, None, :] - train_means[None]) ** 2).sum(-1), 1)
        assert line["test_ncc_accuracy"] == pytest.approx(np.mean(nearest == test_y))
        assert line["test_nc4"] == pytest.approx(np.mean(nearest != test_logits.argmax(1)))
        # Every block's own ‖θ_l‖², and the whole objective against the UFM optimum.
        blocks_params = jax.tree.leaves(params["blocks"])
        per_block = [sum(np.sum(np.asarray(leaf[l], np.float64) ** 2) for leaf in blocks_params) for l in range(DEPTH)]
        np.testing.assert_allclose(line["block_l2_per_block"], per_block, rtol=1e-5)
        assert line["blocks_l2"] == pytest.approx(sum(per_block), rel=1e-5)
        w = np.asarray(weight, np.float64)
        norms = np.array([np.linalg.norm(row) for row in w])
        cos = [w[a] @ w[b] / (norms[a] * norms[b]) for a in range(K) for b in range(K) if a != b]
        assert line["w_norm_spread"] == pytest.approx(norms.std() / norms.mean(), rel=1e-5)
        assert line["w_angle_spread"] == pytest.approx(np.std(cos), rel=1e-5)
        assert line["w_row_mean"] == pytest.approx(np.linalg.norm(w.sum(0)) / np.linalg.norm(w), rel=1e-5)
        centred = w - w.mean(0)
        gram = centred @ centred.T
        etf = (np.eye(K) - np.ones((K, K)) / K) / np.sqrt(K - 1)
        assert line["nc2_etf_w_centred"] == pytest.approx(np.linalg.norm(gram / np.linalg.norm(gram) - etf), rel=1e-5)
        assert line["ufm_gap_full_relative"] == pytest.approx(
            (line["objective"] - line["ufm_optimum"]) / line["ufm_optimum"], rel=1e-6)


def test_resident_and_streamed_splits_agree(setup):
    resident, streamed = _lines(setup, resident=True), _lines(setup, resident=False)
    for a, b in zip(resident, streamed):
        assert set(a) == set(b)
        for key, value in a.items():
            np.testing.assert_allclose(b[key], value, rtol=1e-5, atol=1e-7, err_msg=key)


def test_a_linear_head_reports_its_balancedness(tmp_path):
    """balancedness of consecutive linear layers (out × in), written out with NumPy."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = (np.arange(64) % 3).astype(np.int32)
    dataset = data.Dataset(x, y, None, None, 3, "vector", "noise")
    c = config.base_config()
    c.model.update(name="mlp", depth=1, width=8, num_classes=3, input="vector", head_depth=2)
    c.train.batch_size, c.eval_batch_size = 32, 32
    mesh = parallel.make_mesh()
    module = models.build(c.model)
    hyper = train.Hyper.of([0], [0.01], [0.01], [1])
    program = train.Program(module, c.train, feeds.choose("device", dataset, 32, mesh), mesh, 4, x[:1], hyper)
    state = program.init()
    evaluator = evaluate.build(module, dataset, c, mesh, hyper, packed=False,
                               abstract_params=program.abstract_state.params)
    try:
        (line,) = evaluator(state.params, [dict(seed=0)])
    finally:
        evaluator.close()
    head = jax.device_get(state.params["head"])
    kernels = [np.asarray(head[n]["kernel"][0], np.float64).T for n in ("linear_head_0", "linear_head_1", "classifier")]
    want = [np.linalg.norm(b.T @ b - a @ a.T) / np.linalg.norm(a @ a.T) for a, b in zip(kernels, kernels[1:])]
    np.testing.assert_allclose(line["balancedness_per_layer"], want, rtol=1e-6)
    assert line["balancedness"] == pytest.approx(np.mean(want))


def test_one_program_keeping_the_outputs_equals_two_forward_passes(setup, monkeypatch):
    """A resident training set measured by one program (pass 1 keeps the outputs, pass 2 reads them back),
    in one piece (small outputs) or batch by batch, gives the lines of the two-program route that runs the
    forward pass twice."""
    from ncjax.evaluate import evaluators

    whole = _lines(setup, resident=True)
    monkeypatch.setattr(evaluators, "WHOLE_SPLIT_BYTES", 0)
    batched = _lines(setup, resident=True)
    monkeypatch.setattr(evaluators, "KEEP_OUTPUTS_BYTES", 0)
    apart = _lines(setup, resident=True)
    for fused in (whole, batched):
        assert fused[0].keys() == apart[0].keys()
        for one, two in zip(fused, apart):
            for key, value in two.items():
                if isinstance(value, str) or key == "seed":
                    assert one[key] == value, key
                else:
                    np.testing.assert_allclose(one[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
