"""ncjax.ufm: closed forms against the solver and random points, optimal geometry, trained-net distances."""

import dataclasses
import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from ncjax import collapse, objective, ufm

# One solver compilation each (the slow part); λ is traced, so each also runs at a second λ for free.
SOLVED = {
    "ce_layernorm": ufm.UFM(4, 6, "ce", "layernorm", 5e-3),  # ETF inside 1^⊥: needs d ≥ K
    "ce_free": ufm.UFM(4, 3, "ce", "free", 1e-2, l2_h=1e-2),  # d = K − 1 suffices
    "mse_free_nobias": ufm.UFM(4, 5, "mse", "free", 1e-2, l2_h=1e-2, bias=False),  # orthogonal frame
    "mse_free_freebias": ufm.UFM(4, 3, "mse", "free", 1e-2, l2_h=1e-2, l2_b=0.0),  # ETF, d = K − 1
    "mse_layernorm": ufm.UFM(3, 5, "mse", "layernorm", 5e-3),  # penalised bias: ETF plus an offset
}
# Closed forms checked without the solver: every loss × features × bias variant.
VARIANTS = [
    ufm.UFM(k, d, loss, features, lam, l2_h=(0.02 if features == "free" else 0.0), bias=bias, l2_b=l2_b)
    for loss in ("ce", "mse") for features in ufm.FEATURES for bias, l2_b in ((True, None), (True, 0.0), (False, None))
    for k, d, lam in ((3, 6, 0.005), (5, 7, 0.05))
]


def scaled(u: ufm.UFM, factor: float) -> ufm.UFM:
    return dataclasses.replace(u, l2_w=u.l2_w * factor, l2_h=u.l2_h * factor,
                               l2_b=None if u.l2_b is None else u.l2_b * factor)


@pytest.fixture(scope="module", params=list(SOLVED), ids=list(SOLVED))
def solved(request):
    u = SOLVED[request.param]
    return request.param, [(v, ufm.closed_form(v), ufm.solve(v)) for v in (u, scaled(u, 4.0))]


def class_means(features, labels, k):
    return np.stack([features[labels == c].mean(0) for c in range(k)])


def test_solver_reaches_closed_form(solved):
    _, runs = solved
    for u, exact, found in runs:
        assert found.value >= exact.value * (1 - 1e-5), "the closed form must be a lower bound"
        np.testing.assert_allclose(found.value, exact.value, rtol=1e-4)


def test_solver_optimum_is_collapsed(solved):
    name, runs = solved
    for u, _, found in runs:
        k = u.num_classes
        m = collapse.measure(found.features, found.labels, k, found.weight, found.bias)
        assert m["nc1"] < 1e-4 and m["nc4"] == 0, m
        assert m["nc2_etf"] < 1e-3, m  # centred means: a simplex ETF in every variant
        means = class_means(found.features, found.labels, k)
        if name == "mse_free_nobias":  # raw means and W: orthogonal frames, W ∝ M
            gram = means @ means.T
            np.testing.assert_allclose(gram / np.trace(gram), np.eye(k) / k, atol=1e-3)
            np.testing.assert_allclose(found.weight / np.linalg.norm(found.weight),
                                       means / np.linalg.norm(means), atol=1e-3)
        elif name != "mse_layernorm":  # the ETF cases: W is the same ETF (self-duality)
            assert m["nc2_etf_w"] < 1e-3 and m["nc3"] < 1e-4, m
        assert ufm.optimum_distance(means, found.weight, u) < 1e-4


@pytest.mark.parametrize("u", VARIANTS, ids=lambda u: f"{u.loss}-{u.features}-b{int(u.bias)}{u.l2_b}-K{u.num_classes}")
def test_closed_form_configuration_attains_value_and_bounds_random_points(u):
    exact = ufm.closed_form(u)
    assert abs(ufm.value(u, exact.features, exact.labels, exact.weight, exact.bias) - exact.value) <= 1e-5 * exact.value
    if u.features != "free":
        np.testing.assert_allclose(np.linalg.norm(exact.features, axis=1), u.r, rtol=1e-9)
    if u.features == "layernorm":
        np.testing.assert_allclose(exact.features.sum(1), 0, atol=1e-9)
    rng = np.random.default_rng(0)
    k, d = u.num_classes, u.width
    for step in (1e-3, 1e-2, 1e-1, 1.0):  # perturbed optima and random points never beat it
        for _ in range(5):
            feats = np.asarray(ufm.project(u, exact.features + step * rng.normal(size=(k, d)) * u.r))
            w = exact.weight + step * rng.normal(size=(k, d)) * np.linalg.norm(exact.weight) / np.sqrt(k * d)
            b = None if exact.bias is None else exact.bias + step * rng.normal(size=k) * 0.1
            assert ufm.value(u, feats, exact.labels, w, b) >= exact.value * (1 - 1e-6)


def test_closed_form_collapse_metrics_vanish():
    for u in VARIANTS:
        exact = ufm.closed_form(u)
        labels = np.repeat(np.arange(u.num_classes), 3)
        m = collapse.measure(exact.features[labels], labels, u.num_classes, exact.weight, exact.bias)
        assert m["nc1"] < 1e-8 and m["nc2_etf"] < 1e-5 and m["nc4"] == 0, (u, m)
        if u.loss == "ce" or (u.features == "free" and u.lam_b == 0):
            assert m["nc3"] < 1e-8, (u, m)


def test_too_narrow_features_are_refused():
    with pytest.raises(ValueError, match="increase the width"):
        ufm.closed_form(ufm.UFM(4, 3, "ce", "layernorm"))  # a K-simplex in 1^⊥ needs d ≥ K
    with pytest.raises(ValueError, match="λ_H"):
        ufm.UFM(4, 8, "ce", "free")


# ----------------------------------------------------------------- trained nets


def trained(u: ufm.UFM, noise: float, seed: int = 0, n: int = 5, affine: bool = True):
    """Optimal features and classifier with within-class noise, a LayerNorm affine and a perturbed W."""
    rng = np.random.default_rng(seed)
    exact = ufm.closed_form(u)
    k, d = u.num_classes, u.width
    labels = np.repeat(np.arange(k), n)
    h = exact.features[labels] + noise * u.r * rng.normal(size=(k * n, d)) / np.sqrt(d)
    if noise and affine:
        h = np.asarray(ufm.project(u, h)) * (1 + 0.1 * rng.normal(size=d)) + 0.05 * rng.normal(size=d)
    w = exact.weight + noise * rng.normal(size=(k, d)) * np.linalg.norm(exact.weight) / np.sqrt(k * d)
    return h, labels, w, exact.bias


def gap_and_distance(u, h, labels, w, b):
    stats = collapse.class_stats(jnp.asarray(h, jnp.float32), jnp.asarray(labels), u.num_classes)
    t = ufm.trained_ufm(stats, loss=u.loss, l2=u.l2_w, bias=u.bias, l2_bias=u.l2_b,
                        layernorm=u.features == "layernorm")
    logits = h @ w.T + (0.0 if b is None else b)
    loss = float(objective.data_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), u.loss))
    return ufm.last_layer_gap(loss, w, b, t), ufm.optimum_distance(np.asarray(stats.mean), w, t, stats.count)


TRAINED = [ufm.UFM(4, 8, "ce", "layernorm", 5e-3), ufm.UFM(4, 8, "mse", "layernorm", 5e-3),
           ufm.UFM(4, 8, "mse", "sphere", 5e-3, bias=False), ufm.UFM(5, 8, "mse", "layernorm", 5e-3, l2_b=0.0)]


@pytest.mark.parametrize("u", TRAINED, ids=lambda u: f"{u.loss}-{u.features}-b{int(u.bias)}")
def test_gap_and_distance_vanish_at_optimum_and_grow_with_perturbation(u):
    values = [gap_and_distance(u, *trained(u, noise)) for noise in (0.0, 0.05, 0.3)]
    gaps, dists = np.array(values).T
    assert abs(gaps[0]) < 1e-5 and dists[0] < 1e-8, values
    assert 0 < gaps[1] < gaps[2] and 0 < dists[1] < dists[2], values


@pytest.mark.parametrize("u", TRAINED, ids=lambda u: f"{u.loss}-{u.features}-b{int(u.bias)}")
def test_gap_is_nonnegative_even_for_the_best_last_layer(u):
    """docs/ufm.md's bound: uncollapsed LayerNorm-affine features lose to the UFM for every (W, b)."""
    rng = np.random.default_rng(1)
    k, d = u.num_classes, u.width
    for seed in range(4):
        h, labels, _, _ = trained(u, noise=1.0, seed=seed)
        x = np.concatenate([h, np.ones((len(h), 1))], 1) if u.bias else h
        if u.loss == "mse":  # the exact best (W, b): ridge regression on the trained features
            pen = np.full(x.shape[1], u.l2_w)
            if u.bias:
                pen[-1] = u.lam_b
            theta = np.linalg.solve(x.T @ x + 2 * len(h) * np.diag(pen), x.T @ np.eye(k)[labels])
        else:  # CE: the class-mean classifier at many scales
            means = class_means(h, labels, k)
            theta = np.concatenate([means - means.mean(0), np.zeros((k, 1))], 1).T[: x.shape[1]]
            theta = theta * rng.uniform(0.1, 3.0)
        w, b = theta[:d].T, (theta[d] if u.bias else None)
        gap, _ = gap_and_distance(u, h, labels, w, b)
        assert gap > -1e-6, gap


def test_distance_ignores_rotation_and_scales():
    u = TRAINED[0]
    h, labels, w, _ = trained(u, 0.3)
    means = class_means(h, labels, u.num_classes)
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(u.width, u.width)))
    t = dataclasses.replace(u, radius=1.0)
    base = ufm.optimum_distance(means, w, t)
    np.testing.assert_allclose(ufm.optimum_distance(3.0 * means @ q, 0.2 * w @ q, t), base, rtol=1e-9)
    assert 0 < base <= 2


def test_sweep_records_agree_with_closed_form():
    spec = importlib.util.spec_from_file_location("ufm_config", Path(__file__).parents[1] / "configs" / "ufm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("quick,ce,layernorm,bias")
    config.num_classes, config.widths, config.l2s = (4,), (6,), (0.005, 0.02)  # the shape SOLVED compiled
    records = ufm.sweep(config)
    assert len(records) == 2
    for r in records:
        assert abs(r["relative_error"]) < 1e-4 and r["nc1"] < 1e-4 and r["optimum_distance"] < 1e-4, r


def test_weighted_classes_use_the_solver_and_keep_the_gap_near_zero():
    u = dataclasses.replace(TRAINED[0], class_weights=(0.4, 0.2, 0.2, 0.2))
    best = ufm.optimum(u)
    balanced = ufm.closed_form(dataclasses.replace(u, class_weights=None))
    assert best.value <= ufm.value(u, balanced.features, balanced.labels, balanced.weight, balanced.bias, u.pi())
    counts = np.array([8, 4, 4, 4])
    labels = np.repeat(np.arange(4), counts)
    gap, dist = gap_and_distance(u, best.features[labels], labels, best.weight, best.bias)
    assert abs(gap) < 1e-4 * best.value and dist < 1e-4, (gap, dist)


def test_ufm_config_runs_through_main(tmp_path):
    """`python -m ncjax.main --config=configs/ufm.py:quick` writes the workdir files."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "ncjax.main", "--config=configs/ufm.py:quick",
                             f"--workdir={tmp_path / 'w'}"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    line = json.loads((tmp_path / "w" / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(line["relative_error"]) < 1e-4 and line["nc1"] < 1e-6
    assert (tmp_path / "w" / "summary.csv").exists() and (tmp_path / "w" / "ufm_vs_l2.png").exists()
