"""ncjax.collapse against an independent float64 reference, closed forms and invariants."""


import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from nc_reference import reference_metrics

from ncjax import collapse

ALL = ("nc1", "nc1_quotient", "cdnv", "nc2_equinorm", "nc2_equiangle", "nc2_etf", "nc2_etf_w", "nc3", "nc4")


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
        if name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(k=6, d=16),
        dict(k=10, d=4),  # D < K − 1
        dict(k=4, d=32, sizes=[50, 120, 80, 200]),  # unbalanced
        dict(k=3, d=8, noise=2.0),
    ],
)
def test_matches_float64_reference(kwargs):
    h, y, w, b = mixture(0, **kwargs)
    k = w.shape[0]
    got = collapse.measure(h, y, k, weight=w, bias=b, chunk=128)
    want = reference_metrics(h, y, k, w, b)
    assert set(got) == set(ALL)
    assert_close(got, want)


def test_without_classifier_leaves_out_classifier_metrics():
    h, y, _, _ = mixture(1)
    got = collapse.measure(h, y, 6)
    assert set(got) == set(ALL) - {"nc2_etf_w", "nc3", "nc4"}


def test_large_global_offset_is_stable():
    """Features far from the origin: no raw-moment cancellation in float32."""
    h, y, w, b = mixture(2, k=5, d=12, noise=0.5, offset=200.0)
    got = collapse.measure(h, y, 5, weight=w, bias=b, chunk=64)
    want = reference_metrics(h, y, 5, w, b)
    assert_close(got, want, rtol=5e-3, names=("nc1", "nc1_quotient", "cdnv", "nc2_equinorm", "nc2_etf", "nc3"))


def simplex_etf(k, d, rng):
    """K vertices of a simplex ETF in R^d (d ≥ K), randomly rotated."""
    m = np.sqrt(k / (k - 1)) * (np.eye(k) - np.ones((k, k)) / k)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return np.pad(m, ((0, 0), (0, d - k))) @ q.T


def test_simplex_etf_with_self_dual_classifier_is_fully_collapsed():
    rng = np.random.default_rng(3)
    k, d = 5, 12
    means = simplex_etf(k, d, rng) * 3.0 + rng.normal(size=d)  # any global offset
    y = np.repeat(np.arange(k), 20).astype(np.int32)
    h = means[y].astype(np.float32)
    centred = means - means.mean(0)
    got = collapse.measure(h, y, k, weight=centred.astype(np.float32) * 0.7, bias=None)
    for name in ALL:
        assert np.isfinite(got[name]), name
        assert abs(got[name]) < 1e-5, (name, got[name])


def test_exactly_collapsed_features_give_zero_not_nan():
    rng = np.random.default_rng(4)
    means = rng.normal(size=(4, 6))
    y = np.repeat(np.arange(4), 7).astype(np.int32)
    got = collapse.measure(means[y].astype(np.float32), y, 4)
    assert got["nc1"] == 0.0 and got["nc1_quotient"] == 0.0 and got["cdnv"] == 0.0


def test_nc1_grows_with_noise():
    values = [collapse.measure(*mixture(5, noise=s)[:2], 6)["nc1"] for s in (0.1, 0.3, 1.0, 3.0)]
    quotients = [collapse.measure(*mixture(5, noise=s)[:2], 6)["nc1_quotient"] for s in (0.1, 0.3, 1.0, 3.0)]
    assert np.all(np.diff(values) > 0) and np.all(np.diff(quotients) > 0)


def test_missing_class_is_left_out_and_named():
    h, y, w, b = mixture(6, k=5, d=10)
    y = np.where(y == 2, 0, y)  # nobody left in class 2
    with pytest.warns(UserWarning, match=r"\[2\]"):
        got = collapse.measure(h, y, 5, weight=w, bias=b)
    assert_close(got, reference_metrics(h, y, 5, w, b))


@pytest.mark.parametrize("labels", [np.zeros(10, np.int32), np.array([], np.int32)])
def test_fewer_than_two_classes_is_a_clear_error(labels):
    h = np.random.default_rng(0).normal(size=(labels.size, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="at least two classes"):
        collapse.measure(h, labels, 3)


def test_bad_inputs_are_clear_errors():
    h, y, w, _ = mixture(7)
    with pytest.raises(ValueError, match="labels must lie in"):
        collapse.measure(h, y + 1, 6)
    with pytest.raises(ValueError, match="weight must be"):
        collapse.measure(h, y, 6, weight=w.T)
    with pytest.raises(ValueError, match="features"):
        collapse.measure(h[None], y, 6)


def test_rotation_and_scale_invariance():
    h, y, w, b = mixture(8, k=5, d=9)
    base = collapse.measure(h, y, 5, weight=w, bias=b)
    q, _ = np.linalg.qr(np.random.default_rng(9).normal(size=(9, 9)))
    rotated = collapse.measure(h @ q.T.astype(np.float32), y, 5, weight=w @ q.T.astype(np.float32), bias=b)
    assert_close(rotated, base, rtol=1e-4)
    scaled = collapse.measure(h * 37.0, y, 5, weight=w, bias=b)
    assert_close(scaled, base, rtol=1e-4, names=[n for n in ALL if n != "nc4"])


def stats_close(a, b, rtol=1e-4, atol=1e-3):
    np.testing.assert_array_equal(a.count, b.count)
    for field in ("mean", "scatter", "sq_dev"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=rtol, atol=atol, err_msg=field)


def test_merge_of_any_split_equals_the_whole():
    h, y, _, _ = mixture(10, k=4, d=8, n_per_class=50)
    whole = collapse.class_stats(h, y, 4)
    rng = np.random.default_rng(11)
    for _ in range(3):
        cuts = np.sort(rng.choice(np.arange(1, y.size), size=4, replace=False))
        parts = [collapse.class_stats(hp, yp, 4) for hp, yp in zip(np.split(h, cuts), np.split(y, cuts))]
        left = parts[0]
        for part in parts[1:]:
            left = collapse.merge(left, part)
        right = parts[-1]
        for part in parts[-2::-1]:
            right = collapse.merge(part, right)
        stats_close(left, whole)
        stats_close(right, whole)
    # a piece in which some classes are absent, and the empty identity
    only = y < 2
    merged = collapse.merge(collapse.class_stats(h[only], y[only], 4), collapse.class_stats(h[~only], y[~only], 4))
    stats_close(merged, whole)
    stats_close(collapse.merge(whole, collapse.empty_stats(4, 8)), whole)


def test_merge_matches_reference_scatter():
    h, y, _, _ = mixture(12, k=3, d=5, offset=50.0)
    a = collapse.class_stats(h[:100], y[:100], 3)
    b = collapse.class_stats(h[100:], y[100:], 3)
    merged = collapse.merge(a, b)
    h64 = h.astype(np.float64)
    mu = np.stack([h64[y == c].mean(0) for c in range(3)])
    dev = h64 - mu[y]
    np.testing.assert_allclose(merged.scatter, dev.T @ dev, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(merged.mean, mu, rtol=1e-6, atol=1e-4)


def test_padding_labels_contribute_nothing():
    h, y, _, _ = mixture(13, k=3, d=4, n_per_class=10)
    padded_h = np.concatenate([h, np.full((5, 4), 99.0, np.float32)])
    padded_y = np.concatenate([y, np.full(5, -1, np.int32)])
    stats_close(collapse.class_stats(padded_h, padded_y, 3), collapse.class_stats(h, y, 3))


def test_per_block_nc1_in_one_call():
    rng = np.random.default_rng(14)
    y = rng.integers(0, 4, size=200).astype(np.int32)
    means = rng.normal(size=(4, 6))
    blocks = np.stack([means[y] + s * rng.normal(size=(200, 6)) for s in (0.1, 0.5, 2.0)]).astype(np.float32)
    stats = collapse.class_stats(blocks, y, 4)
    assert stats.scatter.shape == (3, 6, 6)
    per_block = collapse.metrics(stats)["nc1"]
    want = [reference_metrics(b, y, 4)["nc1"] for b in blocks]
    np.testing.assert_allclose(per_block, want, rtol=1e-3)
    np.testing.assert_allclose(collapse.nc1_per_block(blocks, y, 4), want, rtol=1e-3)


def test_sharded_batch_equals_single_device():
    devices = np.array(jax.devices())
    assert devices.size == 8, "tests run with 8 fake CPU devices (conftest.py)"
    mesh = Mesh(devices, ("data",))
    h, y, _, _ = mixture(15, k=5, d=16, n_per_class=64)  # 320 rows = 8 × 40
    sharded = jax.device_put(h, NamedSharding(mesh, P("data", None)))
    sharded_y = jax.device_put(y, NamedSharding(mesh, P("data")))
    stats_fn = jax.jit(lambda a, b: collapse.class_stats(a, b, 5), out_shardings=NamedSharding(mesh, P()))
    got = stats_fn(sharded, sharded_y)
    single = collapse.class_stats(jax.device_put(h, devices[0]), jax.device_put(y, devices[0]), 5)
    stats_close(got, single, rtol=1e-5, atol=1e-4)
    # the per-device statistics reduced with merge give the same
    per_device = [collapse.class_stats(h[i::8], y[i::8], 5) for i in range(8)]
    total = per_device[0]
    for part in per_device[1:]:
        total = collapse.merge(total, part)
    stats_close(total, single)


def test_nc4_counts_add_up_over_batches():
    h, y, w, b = mixture(16, k=4, d=6, noise=1.5)
    stats = collapse.class_stats(h, y, 4)
    whole = collapse.nc4_counts(h, y, stats, w, b)
    parts = sum(collapse.nc4_counts(hp, yp, stats, w, b) for hp, yp in zip(np.split(h, 4), np.split(y, 4)))
    np.testing.assert_array_equal(np.asarray(whole), np.asarray(parts))
    assert whole[1] == y.size
    assert whole[0] / whole[1] == pytest.approx(reference_metrics(h, y, 4, w, b)["nc4"])


def test_streaming_equals_one_shot_with_ragged_tail():
    h, y, w, b = mixture(17, k=5, d=8, n_per_class=61)
    one = collapse.measure(h, y, 5, weight=w, bias=b, chunk=10_000)
    many = collapse.measure(h, y, 5, weight=w, bias=b, chunk=64)
    assert_close(many, one, rtol=1e-4)
