"""ncjax.collapse against an independent float64 reference, closed forms and invariants."""

import functools
import math
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from nc_reference import (
    reference_balancedness,
    reference_details,
    reference_matrices,
    reference_metrics,
    reference_rhubarbwu,
    reference_variance_ratio,
)

from ncjax import collapse, errors
from ncjax.collapse import streaming

ALL = collapse.METRIC_NAMES
CLASSIFIER_FREE = collapse.CLASSIFIER_FREE


def mixture(seed, k=6, d=16, n_per_class=100, noise=0.5, offset=0.0, sizes=None):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 2.0 + offset
    sizes = sizes if sizes is not None else [n_per_class] * k
    y = np.concatenate([np.full(s, c) for c, s in enumerate(sizes)]).astype(np.int32)
    h = means[y] + noise * rng.normal(size=(y.size, d))
    perm = rng.permutation(y.size)
    w = rng.normal(size=(k, d))
    b = rng.normal(size=k) * 0.1
    return h[perm].astype(np.float32), y[perm], w.astype(np.float32), b.astype(np.float32)


def assert_close(got, want, rtol=1e-3, atol=1e-6, names=ALL):
    for name in names:
        if name in want and name in got:  # which names must be there is asserted separately
            np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)


def simplex_etf(k, d, rng):
    """K vertices of a simplex ETF in R^d (d ≥ K), randomly rotated."""
    m = np.sqrt(k / (k - 1)) * (np.eye(k) - np.ones((k, k)) / k)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return np.pad(m, ((0, 0), (0, d - k))) @ q.T


# ----------------------------------------------------------------- against the reference


@pytest.mark.parametrize(
    "kwargs, covariance",
    [
        (dict(k=6, d=16), False),  # K×K route: nc1 from pass-2 projections
        (dict(k=6, d=16), True),  # scatter kept: nc1 through M̃Σ_WM̃ᵀ, effective_rank_features
        (dict(k=10, d=4), False),  # K > D: D×D eigen-problem (scatter chosen automatically)
        (dict(sizes=[50, 120, 80, 200, 30, 90], noise=2.0, offset=30.0), False),  # unbalanced, noisy, far out
    ],
)
def test_every_metric_matches_float64_reference(kwargs, covariance):
    h, y, w, b = mixture(0, **kwargs)
    k, d = w.shape
    ood = np.random.default_rng(1).normal(size=(150, d)).astype(np.float32) + 1.0
    got = collapse.measure(h, y, k, weight=w, bias=b, chunk=128, ood_features=ood, covariance=covariance)
    want = reference_metrics(h, y, k, w, b, ood)
    expected = set(ALL) if covariance or collapse.prefer_scatter(k, d) else set(ALL) - {"effective_rank_features"}
    assert set(got) == expected
    assert_close(got, want, rtol=2e-4)
    assert all(isinstance(v, float) for v in got.values())


def test_without_classifier_or_ood_leaves_those_out():
    h, y, _, _ = mixture(1)
    got = collapse.measure(h, y, 6)
    assert set(got) == set(CLASSIFIER_FREE) - {"nc5", "effective_rank_features"}


def test_large_global_offset_is_stable():
    """Features far from the origin: no raw-moment cancellation in float32, on either route."""
    h, y, w, b = mixture(2, noise=0.5, offset=200.0)
    want = reference_metrics(h, y, 6, w, b)
    for covariance in (False, True):
        got = collapse.measure(h, y, 6, weight=w, bias=b, chunk=64, covariance=covariance)
        assert_close(got, want, rtol=5e-3, names=("nc1", "nc1_quotient", "cdnv", "nc2_equinorm", "nc2_etf", "nc3",
                                                  "gnc2_dist", "effective_rank_means", "nc3_cos", "unc3"))


def test_two_routes_give_the_same_nc1():
    """K×K projections (pass 2) and the D×D scatter (pass 1) are two routes to one number."""
    for seed, kwargs in [(3, dict(k=6, d=16, noise=0.01)), (4, dict(k=6, d=16, noise=3.0, offset=50.0)),
                         (5, dict(k=10, d=4))]:
        h, y, _, _ = mixture(seed, **kwargs)
        k = kwargs["k"]
        values = []
        for scatter in (False, True):
            stats = streaming._first_pass(collapse.empty_stats(k, h.shape[1], scatter=scatter), [(h, y)])
            second = collapse.empty_second(stats)
            for hp, yp in streaming._pieces([(h, y)], 1024):
                second = streaming._pass2_donating(second, stats, hp, yp)
            values.append(collapse.metrics(stats, second=second)["nc1"])
        np.testing.assert_allclose(values[0], values[1], rtol=1e-4)
        np.testing.assert_allclose(values[0], reference_metrics(h, y, k)["nc1"], rtol=2e-4)


@pytest.mark.parametrize("d", [255, 257, 300])
def test_column_gram_in_symmetric_blocks_matches_float64(d):
    """From D = SPLIT_GRAM on, xᵀx comes from its upper blocks: exactly symmetric, float64-close (odd D too)."""
    from ncjax.collapse import statistics

    x = (np.random.default_rng(d).normal(size=(96, d)) + 3.0).astype(np.float32)
    got = np.asarray(jax.jit(statistics.column_gram)(x), np.float64)
    want = x.astype(np.float64).T @ x.astype(np.float64)
    if d >= statistics.SPLIT_GRAM:
        np.testing.assert_array_equal(got, got.T)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def readme_loop(h, y, k, w, b, rows, covariance=False):
    """The README's two loops over ``rows``-row batches: ``update`` per batch, then ``update_second``."""
    stats = second = None
    for i in range(0, y.size, rows):
        stats = collapse.update(stats, h[i:i + rows], y[i:i + rows], k, covariance=covariance)
    for i in range(0, y.size, rows):
        second = collapse.update_second(second, stats, h[i:i + rows], y[i:i + rows], weight=w, bias=b)
    return stats, second


@pytest.mark.parametrize("noise, offset", [(0.5, 0.0), (1e-3, 30.0)])
def test_readme_loop_at_width_300_matches_float64(noise, offset):
    """The streaming API with the scatter (``covariance=True``) at D ≥ SPLIT_GRAM (the scatter from symmetric
    blocks), far from and near collapse."""
    h, y, w, b = mixture(47, k=7, d=300, n_per_class=60, noise=noise, offset=offset)
    stats, second = readme_loop(h, y, 7, w, b, rows=96, covariance=True)  # a ragged tail
    got = collapse.metrics(stats, w, b, second=second)
    want = reference_metrics(h, y, 7, w, b)
    assert set(got) == set(ALL) - {"nc5"}
    assert_close(got, want, rtol=2e-4, atol=1e-9)
    measured = collapse.measure(h, y, 7, weight=w, bias=b, chunk=96, covariance=True)  # the same route, one call
    assert_close(measured, got, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("noise, offset", [(0.5, 0.0), (1e-3, 30.0)])
def test_readme_loop_on_the_k_route_matches_float64(noise, offset):
    """The README's loop when K ≤ D: nc1 from the K×K projections, and the classifier's sums (nc4, nc3_cos)
    derived in K-space from one GEMM of h − μ_y, far from and near collapse (far from the origin)."""
    h, y, w, b = mixture(49, k=7, d=40, n_per_class=60, noise=noise, offset=offset)
    stats, second = readme_loop(h, y, 7, w, b, rows=96)  # a ragged tail
    assert stats.scatter is None and second.projected is not None
    want = reference_metrics(h, y, 7, w, b)
    assert_close(collapse.metrics(stats, w, b, second=second),
                 {name: value for name, value in want.items() if name != "effective_rank_features"},
                 rtol=2e-4, atol=1e-9)


def test_small_batches_run_at_their_own_size_and_a_ragged_tail_compiles_nothing():
    """update/update_second run a 96-row batch as it is (not padded to the 1,024 rows of a piece), and
    the 36-row last batch reuses that program; sizes beyond BATCH_SIZES round up to powers of two."""
    h, y, w, b = mixture(48, k=5, d=24, n_per_class=84)  # 420 rows: 4 × 96 + 36
    streaming._batch_pieces.clear()
    before = (streaming._pass1._cache_size(), streaming._pass2._cache_size())
    stats = second = None
    for i in range(0, y.size, 96):
        stats = collapse.update(stats, h[i:i + 96], y[i:i + 96], 5)
    for i in range(0, y.size, 96):
        second = collapse.update_second(second, stats, h[i:i + 96], y[i:i + 96], weight=w, bias=b)
    assert streaming._batch_pieces[("pass1", (), 24, 5)] == {96}
    assert streaming._batch_pieces[("pass2", (), 24, 5)] == {96}
    assert (streaming._pass1._cache_size(), streaming._pass2._cache_size()) <= (before[0] + 1, before[1] + 1)
    assert_close(collapse.metrics(stats, w, b, second=second), reference_metrics(h, y, 5, w, b), rtol=2e-4)
    sizes = [streaming.batch_piece_rows("test", rows, (), 24, 5) for rows in (100, 50, 200, 300, 400, 500, 450)]
    assert sizes == [100, 100, 200, 300, 400, 512, 512]  # the fifth new size is a power of two, then reused


def test_many_classes_scatter_sums_and_tiled_pairs(monkeypatch):
    """K = 300: per-class sums by segment scatter; pairs summed over many small row tiles."""
    from ncjax.collapse import pairwise

    monkeypatch.setattr(pairwise, "TILE_BYTES", 8 * 300 * 7)  # 7 rows per tile
    h, y, w, b = mixture(35, k=300, d=8, n_per_class=3, noise=0.3)
    got = collapse.measure(h, y, 300, weight=w, bias=b)
    want = reference_metrics(h, y, 300, w, b)
    assert_close(got, want, rtol=2e-4, names=("nc1", "nc1_quotient", "cdnv", "nc2_equiangle", "nc2_etf", "nc2_ortho",
                                              "gnc2_dist", "gnc2_log", "nc2_etf_w", "nc3", "nc3_cos", "nc4",
                                              "ncc_accuracy", "effective_rank_means", "effective_rank_features"))


# ----------------------------------------------------------------- the evaluator's protocol


def test_pure_protocol_in_jitted_scan_with_members_and_blocks():
    """jit + lax.scan over padded fixed-shape batches, a member axis, L blocks: each slice equals
    measuring that block of that member alone."""
    rng = np.random.default_rng(6)
    k, d, n, members, depth, batch = 5, 12, 350, 3, 4, 64
    y = rng.integers(0, k, n).astype(np.int32)
    means = rng.normal(size=(k, d)) * 2
    noise = np.array([[0.2, 0.5, 1.0, 2.0]]) * np.array([[1.0], [0.7], [1.3]])  # [M, L]
    blocks = (means[y][None, None] + noise[..., None, None] * rng.normal(size=(members, depth, n, d))
              ).astype(np.float32)
    features = blocks[:, -1]
    weight = rng.normal(size=(members, k, d)).astype(np.float32)
    bias = rng.normal(size=(members, k)).astype(np.float32)
    pad = (-n) % batch  # fixed shapes: pad with label −1
    y_pad = np.concatenate([y, np.full(pad, -1, np.int32)]).reshape(-1, batch)
    b_pad = np.concatenate([blocks, np.zeros((members, depth, pad, d), np.float32)], 2)
    b_pad = b_pad.reshape(members, depth, -1, batch, d).transpose(2, 0, 1, 3, 4)  # [T, M, L, B, D]
    f_pad = b_pad[:, :, -1]

    @jax.jit
    def pass1(feats, blks, labels):
        def step(carry, xs):
            s_final, s_blocks = carry
            h, hb, lab = xs
            s_final = jax.vmap(collapse.accumulate, in_axes=(0, 0, None))(s_final, h, lab)
            return (s_final, collapse.accumulate(s_blocks, hb, lab)), None  # [M, L] leading axes
        init = (collapse.empty_stats(k, d, (members,), scatter=False),
                collapse.empty_stats(k, d, (members, depth), scatter=False))
        return jax.lax.scan(step, init, (feats, blks, labels))[0]

    @jax.jit
    def pass2(s_final, s_blocks, feats, blks, labels, w, b):
        ref_final, ref_blocks = collapse.reference(s_final), collapse.reference(s_blocks)

        def step(carry, xs):
            c_final, c_blocks = carry
            h, hb, lab = xs
            logits = jnp.einsum("mbd,mkd->mbk", h, w) + b[:, None]
            c_final = jax.vmap(collapse.accumulate_second, in_axes=(0, 0, 0, None, 0, 0, 0))(
                c_final, ref_final, h, lab, w, b, logits)
            return (c_final, collapse.accumulate_second(c_blocks, ref_blocks, hb, lab)), None
        init = (collapse.empty_second(s_final, classifier=True), collapse.empty_second(s_blocks))
        return jax.lax.scan(step, init, (feats, blks, labels))[0]

    s_final, s_blocks = pass1(f_pad, b_pad, y_pad)
    assert s_blocks.scatter is None  # no L×D×D array on the K×K route
    c_final, c_blocks = pass2(s_final, s_blocks, f_pad, b_pad, y_pad, weight, bias)
    per_block = collapse.metrics(s_blocks, second=c_blocks)
    final = collapse.metrics(s_final, weight, bias, second=c_final)
    for m in range(members):
        want = reference_metrics(features[m], y, k, weight[m], bias[m])
        assert_close({name: v[m] for name, v in final.items()}, want, rtol=2e-4)
        for layer in range(depth):
            want = reference_metrics(blocks[m, layer], y, k)
            got = {name: v[m, layer] for name, v in per_block.items()}
            assert set(got) == set(CLASSIFIER_FREE) - {"nc5", "effective_rank_features"}
            assert_close(got, want, rtol=2e-4)
    assert per_block["nc1"].shape == (members, depth)
    assert np.all(np.diff(per_block["nc1"], axis=1) > 0)  # more noise per block, larger nc1


def test_per_block_measure_equals_each_block_alone():
    h, y, w, b = mixture(7)
    blocks = np.stack([h, 0.3 * h + 1.0, h * np.linspace(0.5, 2.0, 16)]).astype(np.float32)
    got = collapse.measure(blocks, y, 6, weight=w, bias=b, chunk=100)
    for layer in range(3):
        want = reference_metrics(blocks[layer], y, 6)
        for name in CLASSIFIER_FREE:
            if name in got:
                np.testing.assert_allclose(got[name][layer], want[name], rtol=2e-4, err_msg=name)
    last = reference_metrics(blocks[-1], y, 6, w, b)
    assert_close(got, last, rtol=2e-4, names=collapse.CLASSIFIER)


def test_a_non_finite_slice_gets_nan_and_leaves_the_others_alone():
    """One member's overflowing features in the trainer's jitted passes make its metrics NaN (never an
    error: the trainer records a diverged member); LAPACK never sees them, and the other slices equal the
    reference."""
    h, y, _, _ = mixture(7)
    bad = h.copy()
    bad[3, 2] = np.inf
    stats = jax.jit(collapse.accumulate)(collapse.empty_stats(6, 16, (2,)), np.stack([h, bad]), y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = collapse.metrics(stats)
    want = reference_metrics(h, y, 6)
    for name in ("nc1", "nc1_quotient", "cdnv", "nc2_etf", "gnc2_log", "effective_rank_means"):
        np.testing.assert_allclose(got[name][0], want[name], rtol=2e-4, err_msg=name)
        assert np.isnan(got[name][1]), name


def test_update_keeps_its_input_and_checks_labels():
    h, y, _, _ = mixture(8)
    stats = collapse.class_stats(h[:300], y[:300], 6)
    before = jax.tree.map(np.array, stats)
    after = collapse.update(stats, h[300:], y[300:])
    assert not stats.count.is_deleted() and not stats.scatter.is_deleted()
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, stats), before)
    assert int(after.count.sum()) == y.size
    with pytest.raises(errors.DataError, match=r"labels must lie in \[0, 6\)"):
        collapse.update(stats, h[:10], np.full(10, 6, np.int32))
    with pytest.raises(errors.DataError, match="labels must be integers"):
        collapse.update(stats, h[:10], y[:10].astype(np.float32))
    with pytest.raises(errors.DataError, match="features must be"):
        collapse.update(stats, h[:10, :5], y[:10])


def test_labels_beyond_num_classes_in_a_jitted_pass_are_refused():
    """Inside jit nothing can raise: the statistics count them and metrics() refuses them."""
    h, y, _, _ = mixture(9)
    stats = streaming._pass1(collapse.empty_stats(5, 16), np.pad(h, ((0, 424), (0, 0))),
                             np.pad(y, (0, 424), constant_values=-1))  # labels reach 5 = K
    with pytest.raises(errors.DataError, match="labels were ≥ num_classes=5"):
        collapse.metrics(stats)


def test_second_pass_over_different_data_is_refused():
    h, y, _, _ = mixture(10)
    stats = collapse.class_stats(h, y, 6)
    piece = next(streaming._pieces([(h[:100], y[:100])], 1024))
    second = streaming._pass2_donating(collapse.empty_second(stats), stats, *piece)
    with pytest.raises(errors.DataError, match="both passes must stream the same data"):
        collapse.metrics(stats, second=second)


def test_no_recompilation_per_chunk_size():
    h, y, w, b = mixture(11, n_per_class=150)
    collapse.measure(h, y, 6, weight=w, bias=b, chunk=64)
    sizes = (streaming._pass1_donating._cache_size(), streaming._pass2_donating._cache_size())
    for chunk in (100, 333, 900, 5000):
        collapse.measure(h, y, 6, weight=w, bias=b, chunk=chunk)
    assert (streaming._pass1_donating._cache_size(), streaming._pass2_donating._cache_size()) == sizes


def test_pieces_survive_a_consumer_that_never_waits():
    """Pieces assembled in reused host buffers stay intact even when nothing blocks between them."""
    rng = np.random.default_rng(36)
    batches = [(rng.normal(size=(2, n, 3)).astype(np.float32), rng.integers(0, 5, n).astype(np.int32))
               for n in rng.integers(1, 40, size=60)]
    pieces = list(streaming._pieces(batches, 16))  # every piece dispatched before any is read
    h = np.concatenate([np.asarray(p[0]) for p in pieces], axis=1)
    y = np.concatenate([np.asarray(p[1]) for p in pieces])
    n = sum(b[1].size for b in batches)
    np.testing.assert_array_equal(y[:n], np.concatenate([b[1] for b in batches]))
    np.testing.assert_array_equal(h[:, :n], np.concatenate([b[0] for b in batches], axis=1))
    assert np.all(y[n:] == -1) and y.size % 16 == 0


def test_route_choice():
    assert not collapse.prefer_scatter(100, 512) and not collapse.prefer_scatter(10, 768)
    assert collapse.prefer_scatter(16_384, 1_024) and collapse.prefer_scatter(10, 4)
    assert collapse.empty_stats(10, 768, (5, 256), scatter=False).scatter is None


# ----------------------------------------------------------------- closed forms


def test_simplex_etf_with_self_dual_classifier_is_fully_collapsed():
    rng = np.random.default_rng(12)
    k, d = 6, 16
    means = simplex_etf(k, d, rng) * 3.0 + rng.normal(size=d)  # any global offset
    y = np.repeat(np.arange(k), 20).astype(np.int32)
    h = means[y].astype(np.float32)
    centred = means - means.mean(0)
    weight = 0.7 * centred  # self-dual; the bias cancels the global offset's effect on the logits
    got = collapse.measure(h, y, k, weight=weight.astype(np.float32), bias=-(weight @ means.mean(0)).astype(np.float32),
                           covariance=True)
    zero = ("nc1", "nc1_quotient", "cdnv", "nc2_equinorm", "nc2_equiangle", "nc2_etf", "nc2_etf_w", "nc3",
            "nc3_cos", "nc4", "gnc2_dist", "gnc2_log", "unc3", "unc3_normalised")
    for name in zero:
        assert abs(got[name]) < 1e-5, (name, got[name])
    assert got["ncc_accuracy"] == 1.0
    assert got["effective_rank_means"] == pytest.approx(k - 1, rel=1e-5)
    assert got["effective_rank_features"] == pytest.approx(k - 1, rel=1e-5)


def test_etf_is_not_an_orthogonal_frame_but_nc2_etf_cannot_tell():
    rng = np.random.default_rng(13)
    k, d = 6, 16
    y = np.repeat(np.arange(k), 10).astype(np.int32)
    etf = simplex_etf(k, d, rng) * 2.0  # centred: Σ_c μ_c = 0
    got = collapse.measure(etf[y].astype(np.float32), y, k)
    assert got["nc2_ortho"] == pytest.approx(math.sqrt(2 - 2 * math.sqrt((k - 1) / k)), rel=1e-5)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    ortho = 2.5 * q[:k]  # orthonormal rows: the MSE-without-bias optimum
    got = collapse.measure(ortho[y].astype(np.float32), y, k)
    assert got["nc2_ortho"] < 1e-5 and got["nc2_etf"] < 1e-5  # its centred means are a simplex ETF


def test_gnc2_is_minimal_at_the_etf():
    """Equidistant normalised means minimise the kernel energy's spread: 0 at the ETF, > 0 when perturbed."""
    rng = np.random.default_rng(14)
    k, d = 6, 16
    y = np.repeat(np.arange(k), 5).astype(np.int32)
    etf = simplex_etf(k, d, rng)
    at_etf = collapse.measure(etf[y].astype(np.float32), y, k)
    assert at_etf["gnc2_dist"] < 1e-10 and at_etf["gnc2_log"] < 1e-10
    for scale in (0.01, 0.1):
        moved = etf + scale * rng.normal(size=etf.shape)
        got = collapse.measure(moved[y].astype(np.float32), y, k)
        want = reference_metrics(moved[y].astype(np.float32), y, k)
        assert got["gnc2_dist"] > at_etf["gnc2_dist"] and got["gnc2_log"] > at_etf["gnc2_log"]
        assert_close(got, want, rtol=1e-4, names=("gnc2_dist", "gnc2_log"))


def test_exactly_collapsed_features_give_zero_not_nan():
    rng = np.random.default_rng(15)
    means = rng.normal(size=(6, 16))
    y = np.repeat(np.arange(6), 7).astype(np.int32)
    got = collapse.measure(means[y].astype(np.float32), y, 6)
    assert got["nc1"] == 0.0 and got["nc1_quotient"] == 0.0 and got["cdnv"] == 0.0


def test_nc1_grows_with_noise():
    for name in ("nc1", "nc1_quotient", "cdnv"):
        values = [collapse.measure(*mixture(16, noise=s)[:2], 6)[name] for s in (0.1, 0.3, 1.0, 3.0)]
        assert np.all(np.diff(values) > 0), name


def test_rotation_and_scale_invariance():
    h, y, w, b = mixture(17)
    base = collapse.measure(h, y, 6, weight=w, bias=b)
    q, _ = np.linalg.qr(np.random.default_rng(18).normal(size=(16, 16)))
    rotated = collapse.measure(h @ q.T.astype(np.float32), y, 6, weight=w @ q.T.astype(np.float32), bias=b)
    assert_close(rotated, base, rtol=1e-4)
    scaled = collapse.measure(h * 37.0, y, 6, weight=w, bias=b)
    assert_close(scaled, base, rtol=1e-4, names=[n for n in ALL if n not in ("nc4", "unc3")])


# ----------------------------------------------------------------- NaN with a reason


def test_two_classes_make_centred_nc2_nan_with_a_reason():
    h, y, w, b = mixture(19, k=2)
    with pytest.warns(collapse.UndefinedMetricWarning, match="K = 2"):
        got = collapse.measure(h, y, 2, weight=w, bias=b)
    for name in ("nc2_equinorm", "nc2_equiangle", "nc2_etf", "gnc2_dist", "gnc2_log"):
        assert math.isnan(got[name]), name
    want = reference_metrics(h, y, 2, w, b)
    assert_close(got, want, rtol=2e-4, names=("nc1", "nc1_quotient", "cdnv", "nc2_etf_w", "nc2_ortho", "nc3", "nc4"))


def test_coinciding_class_means_make_nc1_nan_not_zero():
    rng = np.random.default_rng(20)
    y = np.repeat(np.arange(6), 30).astype(np.int32)
    h = np.tile(np.ones(16, np.float32) * 4.0, (180, 1))  # every class mean is the same point
    with pytest.warns(collapse.UndefinedMetricWarning, match="coincide"):
        got = collapse.measure(h, y, 6, weight=rng.normal(size=(6, 16)).astype(np.float32))
    for name in ("nc1", "nc1_quotient", "cdnv", "nc2_etf", "nc3", "unc3_normalised", "effective_rank_means"):
        assert math.isnan(got[name]), name
    assert json_ready(got)


def json_ready(values):
    import json

    json.dumps(collapse.as_json(values))
    return True


# ----------------------------------------------------------------- plain matrices


def test_balancedness_matches_reference_and_is_zero_for_balanced_pairs():
    rng = np.random.default_rng(21)
    kernels = [rng.normal(size=(7, 5)), rng.normal(size=(6, 7)), rng.normal(size=(3, 6))]
    np.testing.assert_allclose(collapse.balancedness(kernels), reference_balancedness(kernels), rtol=1e-12)
    u, s, vt = np.linalg.svd(rng.normal(size=(6, 4)), full_matrices=False)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    lower = u @ np.diag(s) @ vt  # 6×4
    upper = q[:, :4] @ np.diag(s) @ u.T  # 6×6: W_{l+1}ᵀW_{l+1} = U S² Uᵀ = W_l W_lᵀ
    assert collapse.balancedness([lower, upper])[0] < 1e-12
    stacked = collapse.balancedness([np.stack([lower, 2 * lower]), np.stack([upper, upper])])
    assert stacked.shape == (2, 1) and stacked[0, 0] < 1e-12 and stacked[1, 0] > 0.1
    with pytest.raises(errors.DataError, match="do not chain"):
        collapse.balancedness([lower, lower])


def test_effective_rank_closed_forms():
    rng = np.random.default_rng(22)
    k = 7
    etf = simplex_etf(k, 11, rng)
    assert collapse.effective_rank(etf) == pytest.approx(k - 1, rel=1e-10)
    assert collapse.effective_rank(etf.astype(np.float32)) == pytest.approx(k - 1, rel=1e-5)
    assert collapse.effective_rank(np.eye(4)) == pytest.approx(4)
    assert collapse.effective_rank(np.outer(rng.normal(size=5), rng.normal(size=3))) == pytest.approx(1)
    sigma = np.array([3.0, 1.0])
    p = sigma / sigma.sum()
    assert collapse.effective_rank(np.diag(sigma)) == pytest.approx(np.exp(-np.sum(p * np.log(p))))


def test_nc5_orthogonal_ood_mean_gives_zero():
    rng = np.random.default_rng(23)
    k, d = 6, 16
    means = np.zeros((k, d))
    means[:, :k] = simplex_etf(k, k, rng)
    ood = np.zeros(d)
    ood[k + 1] = 3.0  # outside the span of the centred class means
    assert collapse.nc5(means, ood) < 1e-12
    h, y, _, _ = mixture(24, k=k, d=d)
    ood_features = rng.normal(size=(50, d)) + 2.0
    stats = collapse.class_stats(h, y, k)
    want = reference_metrics(h, y, k, ood=ood_features)["nc5"]
    assert collapse.nc5(stats.mean, ood_features.mean(0), stats.count) == pytest.approx(want, rel=1e-5)


# ----------------------------------------------------------------- statistics


def test_missing_class_is_left_out_and_named():
    h, y, w, b = mixture(25)
    y = np.where(y == 2, 0, y)  # nobody left in class 2
    with pytest.warns(UserWarning, match=r"\[2\]"):
        got = collapse.measure(h, y, 6, weight=w, bias=b)
    assert_close(got, reference_metrics(h, y, 6, w, b), rtol=2e-4)


@pytest.mark.parametrize("labels", [np.zeros(10, np.int32), np.array([], np.int32)])
def test_fewer_than_two_classes_is_a_clear_error(labels):
    h = np.random.default_rng(0).normal(size=(labels.size, 3)).astype(np.float32)
    with pytest.raises(errors.DataError, match="at least two classes"):
        collapse.measure(h, labels, 3)


def test_bad_inputs_are_clear_errors():
    h, y, w, _ = mixture(26)
    with pytest.raises(errors.DataError, match="labels must lie in"):
        collapse.measure(h, y + 1, 6)
    with pytest.raises(errors.DataError, match="weight must be"):
        collapse.measure(h, y, 6, weight=w.T)
    with pytest.raises(errors.DataError, match="features"):
        collapse.measure(h[None, None], y, 6)
    with pytest.raises(errors.DataError, match="ood"):
        collapse.metrics(collapse.class_stats(h, y, 6), ood=collapse.class_stats(h, y, 6))


def stats_close(a, b, rtol=1e-4, atol=1e-3):
    np.testing.assert_array_equal(a.count, b.count)
    for field in ("mean", "scatter", "sq_dev"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=rtol, atol=atol, err_msg=field)


def test_merge_of_any_split_equals_the_whole():
    h, y, _, _ = mixture(27, n_per_class=50)
    whole = collapse.class_stats(h, y, 6)
    rng = np.random.default_rng(28)
    merge = jax.jit(collapse.merge)
    for _ in range(3):
        cuts = np.sort(rng.choice(np.arange(1, y.size), size=4, replace=False))
        parts = [collapse.class_stats(hp, yp, 6) for hp, yp in zip(np.split(h, cuts), np.split(y, cuts))]
        stats_close(functools.reduce(merge, parts), whole)
        stats_close(functools.reduce(lambda a, b: merge(b, a), parts[::-1]), whole)
    only = y < 2  # a piece in which some classes are absent, and the empty identity
    stats_close(merge(collapse.class_stats(h[only], y[only], 6), collapse.class_stats(h[~only], y[~only], 6)), whole)
    stats_close(merge(whole, collapse.empty_stats(6, 16)), whole)


def test_merge_matches_reference_scatter():
    h, y, _, _ = mixture(29, offset=50.0)
    first, rest = collapse.class_stats(h[:100], y[:100], 6), collapse.class_stats(h[100:], y[100:], 6)
    merged = jax.jit(collapse.merge)(first, rest)
    h64 = h.astype(np.float64)
    mu = np.stack([h64[y == c].mean(0) for c in range(6)])
    dev = h64 - mu[y]
    np.testing.assert_allclose(merged.scatter, dev.T @ dev, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(merged.mean, mu, rtol=1e-6, atol=1e-4)


def test_padding_labels_contribute_nothing():
    h, y, _, _ = mixture(30, n_per_class=10)
    padded_h = np.concatenate([h, np.full((5, 16), 99.0, np.float32)])
    padded_y = np.concatenate([y, np.full(5, -1, np.int32)])
    stats_close(collapse.class_stats(padded_h, padded_y, 6), collapse.class_stats(h, y, 6))


def test_per_block_nc1_in_one_call():
    rng = np.random.default_rng(31)
    y = rng.integers(0, 4, size=200).astype(np.int32)
    means = rng.normal(size=(4, 6))
    blocks = np.stack([means[y] + s * rng.normal(size=(200, 6)) for s in (0.1, 0.5, 2.0)]).astype(np.float32)
    stats = collapse.class_stats(blocks, y, 4)
    assert stats.scatter.shape == (3, 6, 6)
    want = [reference_metrics(b, y, 4)["nc1"] for b in blocks]
    with pytest.warns(collapse.SecondPassWarning, match="ncc_accuracy left out"):
        np.testing.assert_allclose(collapse.metrics(stats)["nc1"], want, rtol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", collapse.SecondPassWarning)  # it asks for nc1 alone
        np.testing.assert_allclose(collapse.nc1_per_block(blocks, y, 4), want, rtol=1e-3)


def test_sharded_batch_equals_single_device():
    devices = np.array(jax.devices())
    assert devices.size == 8, "tests run with 8 fake CPU devices (conftest.py)"
    mesh = Mesh(devices, ("data",))
    h, y, _, _ = mixture(32, k=5, d=16, n_per_class=64)  # 320 rows = 8 × 40 (a jit of its own anyway)
    sharded = jax.device_put(h, NamedSharding(mesh, P("data", None)))
    sharded_y = jax.device_put(y, NamedSharding(mesh, P("data")))
    stats_fn = jax.jit(lambda a, b: collapse.class_stats(a, b, 5), out_shardings=NamedSharding(mesh, P()))
    got = stats_fn(sharded, sharded_y)
    single = collapse.class_stats(jax.device_put(h, devices[0]), jax.device_put(y, devices[0]), 5)
    stats_close(got, single, rtol=1e-5, atol=1e-4)
    per_device = [collapse.class_stats(h[i::8], y[i::8], 5) for i in range(8)]
    stats_close(functools.reduce(jax.jit(collapse.merge), per_device), single)


def test_nc4_counts_add_up_over_batches():
    h, y, w, b = mixture(33, noise=1.5)
    stats = collapse.class_stats(h, y, 6)
    whole = collapse.nc4_counts(h, y, stats, w, b)
    parts = sum(collapse.nc4_counts(hp, yp, stats, w, b) for hp, yp in zip(np.split(h, 4), np.split(y, 4)))
    np.testing.assert_array_equal(np.asarray(whole), np.asarray(parts))
    assert whole[1] == y.size
    assert whole[0] / whole[1] == pytest.approx(reference_metrics(h, y, 6, w, b)["nc4"])


def test_streaming_equals_one_shot_with_ragged_tail():
    h, y, w, b = mixture(34, n_per_class=61)
    one = collapse.measure(h, y, 6, weight=w, bias=b, chunk=10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about here
        many = collapse.measure(h, y, 6, weight=w, bias=b, chunk=64)
    assert_close(many, one, rtol=1e-4)


def test_nc1_of_nearly_low_rank_means_is_not_round_off():
    """Class means nearly in a 3-dimensional subspace of 64 (a deep linear head does that) and float32
    statistics: nc1 inverts only the between-class directions above max(K, D)·ε₃₂ of the largest, where
    the within-class round-off cannot dominate; it is finite, ≥ 0, and equals the float64 value on them."""
    rng = np.random.default_rng(3)
    k, d, n = 10, 64, 100
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    means = rng.normal(size=(k, 3)) @ basis[:, :3].T * 5 + rng.normal(size=(k, d)) @ basis.T * 1e-5
    y = np.repeat(np.arange(k), n)
    h = (means[y] + rng.normal(size=(k * n, 3)) @ basis[:, :3].T).astype(np.float32)
    value = collapse.measure(h, y, k)["nc1"]
    h64 = np.asarray(h, np.float64)
    mu = np.stack([h64[y == c].mean(0) for c in range(k)])
    centred = mu - h64.mean(0)
    within = sum((h64[y == c] - mu[c]).T @ (h64[y == c] - mu[c]) for c in range(k)) / len(y)
    values, vectors = np.linalg.eigh(centred.T @ centred / k)  # Σ_B
    keep = values > max(k, d) * np.finfo(np.float32).eps * values[-1]
    want = np.sum([vectors[:, i] @ within @ vectors[:, i] / values[i] for i in np.flatnonzero(keep)]) / k
    assert np.isfinite(value) and value >= 0
    assert value == pytest.approx(want, rel=1e-3)


# ----------------------------------------------------------------- plain matrices, details, conventions


def test_plain_matrix_functions_match_reference():
    rng = np.random.default_rng(40)
    means, w = rng.normal(size=(2, 5, 8)), rng.normal(size=(2, 5, 8))
    mu_g = rng.normal(size=8)
    for centre in (None, mu_g):
        want = reference_matrices(means[0], w[0], centre)
        got_etf = collapse.etf_error(means[0], centre)
        assert isinstance(got_etf, float) and got_etf == pytest.approx(want["etf_error"], rel=1e-10)
        assert collapse.self_duality(w[0], means[0], centre) == pytest.approx(want["self_duality"], rel=1e-10)
        np.testing.assert_allclose(collapse.class_mean_norms(means[0], centre), want["class_mean_norms"], rtol=1e-10)
        np.testing.assert_allclose(collapse.pairwise_cosines(means[0], centre), want["pairwise_cosines"], rtol=1e-10)
    assert collapse.etf_error(w[0], centre=0) == pytest.approx(reference_matrices(w[0], centre=0)["etf_error"])
    batched = collapse.etf_error(means)  # leading axes give arrays
    np.testing.assert_allclose(batched, [reference_matrices(m)["etf_error"] for m in means], rtol=1e-10)
    assert collapse.pairwise_cosines(means).shape == (2, 5, 5)
    etf = simplex_etf(5, 8, rng)
    assert collapse.etf_error(etf + 3.0) == pytest.approx(0.0, abs=1e-7)  # centred by the mean of the rows
    assert collapse.self_duality(2.0 * etf, etf + 3.0) == pytest.approx(0.0, abs=1e-12)


def test_variance_ratio_matches_reference_and_measure():
    h, y, _, _ = mixture(41, sizes=[50, 120, 80, 200, 30, 90], noise=1.0)
    h64 = h.astype(np.float64)
    mu = np.stack([h64[y == c].mean(0) for c in range(6)])
    centred = mu - h64.mean(0)
    sigma_b = centred.T @ centred / 6
    sigma_w = (h64 - mu[y]).T @ (h64 - mu[y]) / y.size
    want = reference_variance_ratio(sigma_w, sigma_b, 6)
    assert collapse.variance_ratio(sigma_w, sigma_b, 6) == pytest.approx(want, rel=1e-8)
    assert want == pytest.approx(reference_metrics(h, y, 6)["nc1"], rel=1e-8)
    assert collapse.variance_ratio(sigma_w.astype(np.float32), sigma_b.astype(np.float32), 6) == pytest.approx(
        want, rel=1e-4)


def test_plain_matrix_functions_refuse_bad_input():
    rng = np.random.default_rng(42)
    means = rng.normal(size=(4, 3))
    bad = means.copy()
    bad[1, 2] = np.nan
    with pytest.raises(errors.DataError, match="means: 1 of 12 values are non-finite"):
        collapse.etf_error(bad)
    with pytest.raises(errors.DataError, match="weight: 1 of 12"):
        collapse.self_duality(bad, means)
    with pytest.raises(errors.DataError, match="weight .* and means .* must both be"):
        collapse.self_duality(means.T, means)
    with pytest.raises(errors.DataError, match="K ≥ 2 rows"):
        collapse.class_mean_norms(means[:1])
    with pytest.raises(errors.DataError, match="centre must be a vector"):
        collapse.pairwise_cosines(means, centre=np.zeros(5))
    with pytest.raises(errors.DataError, match="num_classes must be an integer ≥ 2"):
        collapse.variance_ratio(np.eye(3), np.eye(3), 1)
    with pytest.raises(errors.DataError, match="sigma_b: 3 of 9"):
        collapse.variance_ratio(np.eye(3), np.where(np.eye(3) > 0, np.inf, 0.0), 4)


@pytest.mark.parametrize("conventions, centre", [("ncjax", "samples"), ("rhubarbwu", "classes")])
def test_class_details_match_reference(conventions, centre):
    h, y, w, b = mixture(43, sizes=[50, 120, 0, 200, 30, 90])  # class 2 has no samples
    with pytest.warns(UserWarning, match=r"classes \[2\] have no samples"):
        got = collapse.measure(h, y, 6, weight=w, bias=b, details=True, conventions=conventions)["details"]
    want = reference_details(h, y, 6, centre)
    np.testing.assert_array_equal(got["class_counts"], want["class_counts"])
    for name in ("class_mean_norms", "class_variances", "pairwise_cosines"):
        np.testing.assert_allclose(np.array(got[name], float), want[name], rtol=2e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("kwargs, covariance", [
    (dict(k=6, d=16), False),  # K×K route: pass 2's projections double-centred on the host
    (dict(k=6, d=16), True),  # the scatter
    (dict(k=10, d=4), False),  # K > D: the D×D eigen-problem
])
def test_rhubarbwu_conventions_give_that_librarys_numbers(kwargs, covariance):
    """Unbalanced classes, so the mean of the class means differs from the sample mean."""
    k = kwargs["k"]
    sizes = list(np.random.default_rng(44).integers(20, 200, size=k))
    h, y, w, _ = mixture(45, sizes=sizes, noise=1.0, offset=3.0, **kwargs)
    got = collapse.measure(h, y, k, weight=w, covariance=covariance, conventions="rhubarbwu")
    want = reference_rhubarbwu(h, y, k, w)
    assert_close(got, want, rtol=2e-4, names=("nc1", "nc1_quotient", "cdnv", "nc2_etf", "gnc2_dist", "gnc2_log"))
    assert got["nc4"] == pytest.approx(want["nc4"], abs=1e-12)
    assert got["unc3"] * k / (k - 1) == pytest.approx(want["unc3_unbiased"], rel=2e-4)
    ours = collapse.measure(h, y, k, weight=w, covariance=covariance)
    assert abs(ours["nc1"] - got["nc1"]) > 1e-3 * got["nc1"]  # the conventions differ on these data
    assert ours["nc4"] == pytest.approx(1.0 - got["nc4"], abs=1e-12)
    with pytest.raises(errors.DataError, match="conventions must be one of ncjax, rhubarbwu"):
        collapse.measure(h, y, k, conventions="torch")


def test_two_pass_loop_of_the_readme_matches_reference_and_warns_only_without_second_pass():
    h, y, w, b = mixture(46, n_per_class=70)
    stats, second = readme_loop(h, y, 6, w, b, rows=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", collapse.SecondPassWarning)
        got = collapse.metrics(stats, w, b, second=second)
    assert stats.scatter is None  # K ≤ D: the loop takes the K×K route of nc1 (no D×D scatter, no N·D² GEMM)
    assert set(got) == set(ALL) - {"nc5", "effective_rank_features"}
    assert_close(got, reference_metrics(h, y, 6, w, b), rtol=2e-4)
    with pytest.warns(collapse.SecondPassWarning, match="ncc_accuracy, nc1, nc4, nc3_cos left out") as caught:
        one_pass = collapse.metrics(stats, w, b)
    assert len(caught) == 1 and not {"ncc_accuracy", "nc1", "nc4", "nc3_cos"} & set(one_pass)
    plain = collapse.update_second(None, stats, h, y)  # without the classifier's sums
    with pytest.warns(collapse.SecondPassWarning, match=r"^nc4, nc3_cos left out"):
        collapse.metrics(stats, w, b, second=plain)
    k_route = collapse.empty_stats(6, 16, scatter=False)
    with pytest.warns(collapse.SecondPassWarning, match=r"^ncc_accuracy, nc1 left out"):
        collapse.metrics(jax.jit(collapse.accumulate)(k_route, h, y))
    with pytest.raises(errors.DataError, match="on every batch of the second pass or on none"):
        collapse.update_second(plain, stats, h, y, weight=w)


def test_the_trainers_calls_do_not_warn():
    """The evaluator's pattern: members × blocks without a classifier, final features with one."""
    h, y, w, b = mixture(47)
    blocks = np.stack([h, 2 * h])[None]  # [M=1, L=2, N, D]
    block_stats = jax.jit(collapse.accumulate)(collapse.empty_stats(6, 16, (1, 2), scatter=False), blocks, y)
    blocks_second = jax.jit(lambda s, r: collapse.accumulate_second(s, r, blocks, y))(
        collapse.empty_second(block_stats), collapse.reference(block_stats))
    stats = jax.jit(collapse.accumulate)(collapse.empty_stats(6, 16, (1,)), h[None], y)
    final = jax.jit(lambda s, r: collapse.accumulate_second(s, r, h[None], y, w[None], b[None]))(
        collapse.empty_second(stats, classifier=True), collapse.reference(stats))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collapse.metrics(stats, w[None], b[None], second=final)
        collapse.metrics(block_stats, second=blocks_second)


def test_non_finite_inputs_are_refused_at_the_boundary():
    h, y, w, b = mixture(48)
    bad = h.copy()
    bad[[3, 70], [2, 5]] = [np.nan, -np.inf]
    with pytest.raises(errors.DataError, match=r"^features: 2 of 9600 values are non-finite"):
        collapse.measure(bad, y, 6, chunk=128)
    with pytest.raises(errors.DataError, match=r"^features: 2 of 19200"):
        collapse.measure(np.stack([h, bad]), y, 6)
    with pytest.raises(errors.DataError, match=r"^weight: 1 of 96"):
        collapse.measure(h, y, 6, weight=np.where(np.arange(96).reshape(6, 16) == 5, np.inf, w), bias=b)
    with pytest.raises(errors.DataError, match=r"^bias: 6 of 6"):
        collapse.measure(h, y, 6, weight=w, bias=np.full(6, np.nan))
    with pytest.raises(errors.DataError, match=r"^ood_features: 1 of"):
        collapse.measure(h, y, 6, ood_features=bad[:50])
    with pytest.raises(errors.DataError, match=r"^features: 2 of"):
        collapse.update(None, bad, y, 6)
    with pytest.raises(errors.DataError, match=r"^features: 2 of"):
        collapse.update_second(None, collapse.class_stats(h, y, 6), bad, y)
    with pytest.raises(errors.DataError, match="D = 0 dimensions"):
        collapse.measure(h[:, :0], y, 6)
    with pytest.raises(errors.DataError, match="num_classes must be an integer ≥ 2"):
        collapse.measure(h, y, 0)


def test_big_endian_arrays_are_accepted():
    h, y, w, b = mixture(49)
    got = collapse.measure(h.astype(">f4"), y.astype(">i4"), 6, weight=w.astype(">f8"), bias=b.astype(">f4"))
    assert_close(got, reference_metrics(h, y, 6, w, b), rtol=2e-4)


def test_import_needs_neither_flax_optax_orbax_nor_matplotlib():
    heavy = ("flax", "optax", "orbax", "matplotlib")
    code = f"import sys, ncjax.collapse; print([m for m in sys.modules if m.split('.')[0] in {heavy!r}])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_first_argmin_and_argmax_equal_numpy_with_ties_and_nan():
    """The two-reduction argmin/argmax of pass 2 pick what jnp.argmin/argmax pick: first of ties, NaN first."""
    from ncjax.collapse.second_pass import first_argmax, first_argmin

    x = np.random.default_rng(49).normal(size=(40, 9)).astype(np.float32)
    x[:10, 6] = x[:10].min(1)  # ties with an earlier minimum
    x[10:20, 2] = x[10:20].max(1)
    x[20, 4] = x[21, 0] = np.nan
    x[22, [3, 7]] = np.inf
    x[23, [1, 5]] = -np.inf
    x[24] = np.nan
    for ours, theirs in ((first_argmin, jnp.argmin), (first_argmax, jnp.argmax)):
        np.testing.assert_array_equal(jax.jit(ours)(x), theirs(x, -1))
