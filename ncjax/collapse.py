"""Neural-collapse statistics and metrics: streaming, mergeable, jitted.

The metrics of ``shared/docs/science.md`` §4 need only a few sufficient
statistics per class: counts, means, the pooled within-class scatter and the
per-class sum of squared deviations. They are accumulated on the device in one
pass (jitted, any sharding), merged exactly with the parallel-variance rule of
Chan et al. (no ``Σhhᵀ − nμμᵀ`` cancellation), and turned into metrics by a
small amount of float64 algebra on the host. ``Σ_B^†`` is never formed: ``nc1``
goes through the K×K eigen-problem of ``M̃M̃ᵀ``.

Typical use::

    stats = None
    for h, y in batches:                     # h: [B, D] (or [L, B, D] per block)
        stats = update(stats, h, y, num_classes)
    scores = metrics(stats, weight=W, bias=b)
    mismatches = sum(nc4_counts(h, y, stats, W, b) for h, y in batches)  # 2nd pass

Labels outside ``[0, num_classes)`` mark padding and contribute nothing, so a
ragged last batch can be padded to a fixed shape without recompiling.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

METRIC_NAMES = (
    "nc1",
    "nc1_quotient",
    "cdnv",
    "nc2_equinorm",
    "nc2_equiangle",
    "nc2_etf",
    "nc2_etf_w",
    "nc3",
    "nc4",
)

# Pseudo-inverse cut-off: the class means are float32 numbers, so singular
# values of M̃ below this many float32 ulps of the means' scale are round-off.
_FLOAT32_EPS = float(np.finfo(np.float32).eps)
_HIGHEST = jax.lax.Precision.HIGHEST


class ClassStats(NamedTuple):
    """Sufficient statistics of labelled features (a pytree; leading axes allowed).

    count:   [..., K]     samples per class (int32, exact).
    mean:    [..., K, D]  per-class means.
    scatter: [..., D, D]  pooled within-class scatter ``Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ``.
    sq_dev:  [..., K]     per-class ``Σ_{i∈c} ‖h_i − μ_c‖²``.
    """

    count: jax.Array
    mean: jax.Array
    scatter: jax.Array
    sq_dev: jax.Array


def empty_stats(num_classes: int, dim: int, leading: tuple[int, ...] = ()) -> ClassStats:
    """The identity of :func:`merge`: statistics of no samples."""
    return ClassStats(
        count=jnp.zeros(leading + (num_classes,), jnp.int32),
        mean=jnp.zeros(leading + (num_classes, dim), jnp.float32),
        scatter=jnp.zeros(leading + (dim, dim), jnp.float32),
        sq_dev=jnp.zeros(leading + (num_classes,), jnp.float32),
    )


def _update_one(stats: ClassStats, features: jax.Array, labels: jax.Array) -> ClassStats:
    """Fold one [B, D] batch into ``stats`` (Welford/Chan form, one B×D×D matmul).

    Each class has a reference point ``r``: its old mean, or for a class seen
    for the first time one of its own samples. With ``μ'`` the updated mean,
    ``Σ_i (h_i − r)(h_i − μ')ᵀ`` equals the batch scatter plus Chan's
    ``n_a n_b/(n_a+n_b) δδᵀ`` correction, so no large raw second moments are
    formed, and exactly collapsed classes give an exactly zero scatter.
    """
    num_classes = stats.count.shape[-1]
    h = features.astype(jnp.float32)
    valid = (labels >= 0) & (labels < num_classes)  # other labels mark padding
    safe_labels = jnp.where(valid, labels, 0)
    mask = valid[:, None].astype(jnp.float32)
    segment_sum = functools.partial(jax.ops.segment_sum, segment_ids=safe_labels, num_segments=num_classes)
    batch_count = segment_sum(valid.astype(jnp.int32))

    old_n = stats.count.astype(jnp.float32)
    new_n = old_n + batch_count.astype(jnp.float32)
    rows = jnp.where(valid, jnp.arange(labels.shape[0]), labels.shape[0])
    first_row = jax.ops.segment_min(rows, safe_labels, num_segments=num_classes)
    first_sample = h[jnp.clip(first_row, 0, labels.shape[0] - 1)]  # [K, D]: one sample per class
    reference = jnp.where((old_n > 0)[:, None], stats.mean, first_sample)
    dev_ref = (h - reference[safe_labels]) * mask
    new_mean = reference + segment_sum(dev_ref) / jnp.maximum(new_n, 1.0)[:, None]
    new_mean = jnp.where((new_n > 0)[:, None], new_mean, 0.0)
    dev_new = (h - new_mean[safe_labels]) * mask
    scatter = stats.scatter + jnp.dot(dev_ref.T, dev_new, precision=_HIGHEST)
    sq_dev = stats.sq_dev + segment_sum(jnp.sum(dev_ref * dev_new, -1))
    return ClassStats(
        count=stats.count + batch_count,
        mean=new_mean,
        scatter=scatter,
        sq_dev=sq_dev,
    )


def _vmapped_over_leading(fn, stats: ClassStats, features: jax.Array, labels: jax.Array):
    for _ in range(features.ndim - 2):
        fn = jax.vmap(fn, in_axes=(0, 0, None))
    return fn(stats, features, labels)


@functools.partial(jax.jit, donate_argnums=0)
def _update_jit(stats: ClassStats, features: jax.Array, labels: jax.Array) -> ClassStats:
    return _vmapped_over_leading(_update_one, stats, features, labels)


def update(
    stats: ClassStats | None,
    features: jax.Array,
    labels: jax.Array,
    num_classes: int | None = None,
) -> ClassStats:
    """Statistics of ``stats``' samples plus one batch. Jitted; donates ``stats``.

    ``features`` is [B, D], or [L, B, D] for L blocks sharing the labels (the
    stats then carry a leading L axis). ``stats=None`` starts from empty and
    needs ``num_classes``. Shardings of the inputs are respected: a batch
    sharded over devices gives replicated statistics (XLA inserts the sums).
    """
    if stats is None:
        if num_classes is None:
            raise ValueError("update(None, ...) needs num_classes to start from empty statistics")
        stats = empty_stats(num_classes, features.shape[-1], tuple(features.shape[:-2]))
    return _update_jit(stats, features, labels)


def class_stats(features: jax.Array, labels: jax.Array, num_classes: int) -> ClassStats:
    """Statistics of one batch: features [B, D] (or [L, B, D]), integer labels [B]."""
    return update(None, features, labels, num_classes)


@jax.jit
def merge(a: ClassStats, b: ClassStats) -> ClassStats:
    """Statistics of the union of two disjoint sample sets: exact and associative.

    Chan et al.'s pairwise rule per class, ``S = S_a + S_b + Σ_c w_c δ_c δ_cᵀ``
    with ``δ_c = μ_c^b − μ_c^a`` and ``w_c = n_a n_b / (n_a + n_b)``; usable as
    the reduction across batches, devices and hosts.
    """
    na = a.count.astype(jnp.float32)
    nb = b.count.astype(jnp.float32)
    n = na + nb
    safe_n = jnp.maximum(n, 1.0)
    delta = b.mean - a.mean
    mean = a.mean + delta * (nb / safe_n)[..., None]
    w = na * nb / safe_n
    weighted = delta * w[..., None]
    correction = jnp.einsum("...kd,...ke->...de", weighted, delta, precision=_HIGHEST)
    return ClassStats(
        count=a.count + b.count,
        mean=mean,
        scatter=a.scatter + b.scatter + correction,
        sq_dev=a.sq_dev + b.sq_dev + w * jnp.sum(delta * delta, -1),
    )


def stream_stats(batches: Iterable[tuple[jax.Array, jax.Array]], num_classes: int) -> ClassStats:
    """Fold an iterable of ``(features, labels)`` batches into statistics."""
    stats = None
    for features, labels in batches:
        if stats is not None:  # the next batch is ready: wait for the last, so memory does not grow with N
            jax.block_until_ready(stats)
        stats = update(stats, features, labels, num_classes)
    if stats is None:
        raise ValueError("stream_stats got no batches: there is nothing to measure")
    return stats


# ----------------------------------------------------------------- host algebra


def present_classes(stats: ClassStats) -> np.ndarray:
    """Indices of the classes with at least one sample (any block)."""
    count = np.asarray(stats.count)
    return np.flatnonzero(count.reshape(-1, count.shape[-1]).sum(0) > 0)


def _checked_present(stats: ClassStats) -> np.ndarray:
    num_classes = stats.count.shape[-1]
    present = present_classes(stats)
    if present.size < 2:
        raise ValueError(
            f"collapse metrics need samples of at least two classes; got {present.size} "
            f"class(es) with samples out of num_classes={num_classes}"
        )
    missing = np.setdiff1d(np.arange(num_classes), present)
    if missing.size:
        warnings.warn(
            f"classes {missing.tolist()} have no samples and are left out of the collapse metrics",
            stacklevel=3,
        )
    return present


def _checked_weight(weight, bias, num_classes: int, dim: int):
    weight = np.asarray(weight, np.float64)
    if weight.shape != (num_classes, dim):
        raise ValueError(
            f"weight must be [num_classes, dim] = [{num_classes}, {dim}] (rows are classes; "
            f"transpose a Flax Dense kernel); got shape {weight.shape}"
        )
    if bias is None:
        bias = np.zeros(num_classes)
    bias = np.asarray(bias, np.float64)
    if bias.shape != (num_classes,):
        raise ValueError(f"bias must have shape [{num_classes}]; got {bias.shape}")
    return weight, bias


def _etf_distance(gram: np.ndarray) -> np.ndarray:
    k = gram.shape[-1]
    target = (np.eye(k) - np.ones((k, k)) / k) / np.sqrt(k - 1)
    fro = np.linalg.norm(gram, axis=(-2, -1), keepdims=True)
    return np.linalg.norm(gram / fro - target, axis=(-2, -1))


def metrics(stats: ClassStats, weight=None, bias=None) -> dict[str, np.ndarray]:
    """Collapse metrics (science.md §4, same names) from accumulated statistics.

    Float64 on the host. ``weight`` is the classifier [K, D] (rows are classes);
    ``nc2_etf_w`` and ``nc3`` need it. ``nc4`` needs a second pass over the
    data (:func:`nc4_counts`), so it is not here. Stats with leading axes (per
    block) give arrays of that shape; plain stats give 0-d arrays. Classes
    without samples are left out with a warning.
    """
    present = _checked_present(stats)
    k = present.size
    count = np.asarray(stats.count, np.float64)[..., present]
    mean = np.asarray(stats.mean, np.float64)[..., present, :]
    scatter = np.asarray(stats.scatter, np.float64)
    sq_dev = np.asarray(stats.sq_dev, np.float64)[..., present]
    dim = mean.shape[-1]

    total = count.sum(-1)
    global_mean = np.einsum("...k,...kd->...d", count, mean) / total[..., None]
    centred = mean - global_mean[..., None, :]  # M̃: [..., K, D]
    within = 0.5 * (scatter + np.swapaxes(scatter, -1, -2)) / total[..., None, None]  # Σ_W

    gram = centred @ np.swapaxes(centred, -1, -2)  # M̃M̃ᵀ: [..., K, K]
    eigval, eigvec = np.linalg.eigh(gram)
    # Singular values of M̃ below max(K, D) float32 ulps of the means' scale are round-off.
    scale = np.maximum(eigval[..., -1], np.sum(mean**2, (-2, -1)))
    cutoff = (max(k, dim) * _FLOAT32_EPS) ** 2 * scale
    keep = eigval > cutoff[..., None]
    inv_sq = np.where(keep, 1.0 / np.where(keep, eigval, 1.0) ** 2, 0.0)
    projected = centred @ within @ np.swapaxes(centred, -1, -2)  # M̃ Σ_W M̃ᵀ
    diag = np.einsum("...ik,...ij,...jk->...k", eigvec, projected, eigvec)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {"nc1": np.sum(inv_sq * diag, -1)}

        trace_within = sq_dev.sum(-1) / total
        trace_between = np.sum(centred**2, (-2, -1)) / k
        out["nc1_quotient"] = trace_within / trace_between

        variance = sq_dev / count
        sq_norm = np.diagonal(gram, axis1=-2, axis2=-1)
        pair_dist = sq_norm[..., :, None] + sq_norm[..., None, :] - 2 * gram
        upper = np.triu_indices(k, 1)
        ratio = (variance[..., :, None] + variance[..., None, :]) / (2 * pair_dist)
        out["cdnv"] = ratio[..., upper[0], upper[1]].mean(-1)

        norms = np.sqrt(sq_norm)
        out["nc2_equinorm"] = norms.std(-1) / norms.mean(-1)
        cosine = gram / (norms[..., :, None] * norms[..., None, :])
        off = ~np.eye(k, dtype=bool)
        out["nc2_equiangle"] = np.abs(cosine[..., off] + 1.0 / (k - 1)).mean(-1)
        out["nc2_etf"] = _etf_distance(gram)

        if weight is not None:
            w, _ = _checked_weight(weight, bias, stats.count.shape[-1], dim)
            w = w[present]
            out["nc2_etf_w"] = _etf_distance(w @ w.T) * np.ones_like(total)
            w_unit = w / np.linalg.norm(w)
            m_unit = centred / np.linalg.norm(centred, axis=(-2, -1), keepdims=True)
            out["nc3"] = np.sum((w_unit - m_unit) ** 2, (-2, -1))
    return out


# ----------------------------------------------------------------- NC4 (second pass)


@jax.jit
def _nc4_counts_jit(features, labels, stats: ClassStats, weight, bias):
    count = stats.count.astype(jnp.float32)
    present = stats.count > 0
    global_mean = jnp.dot(count, stats.mean, precision=_HIGHEST) / jnp.sum(count)
    h = features.astype(jnp.float32)
    logits = jnp.dot(h, weight.T.astype(jnp.float32), precision=_HIGHEST) + bias
    logits = jnp.where(present, logits, -jnp.inf)
    # ‖h − μ_c‖² up to the per-sample constant ‖h‖², on centred values to limit cancellation.
    h = h - global_mean
    centred_means = stats.mean - global_mean
    dist = jnp.sum(centred_means**2, -1) - 2 * jnp.dot(h, centred_means.T, precision=_HIGHEST)
    dist = jnp.where(present, dist, jnp.inf)
    valid = (labels >= 0) & (labels < stats.mean.shape[0])
    mismatch = (jnp.argmax(logits, -1) != jnp.argmin(dist, -1)) & valid
    return jnp.stack([jnp.sum(mismatch, dtype=jnp.int32), jnp.sum(valid, dtype=jnp.int32)])


def nc4_counts(features, labels, stats: ClassStats, weight, bias=None) -> jax.Array:
    """[mismatches, samples] of one batch (on device); summed over batches, their ratio is ``nc4``.

    The classifier's argmax and the nearest-class-mean rule are both taken over
    the classes that have samples. Labels only mark padding (outside [0, K)).
    """
    num_classes, dim = stats.mean.shape[-2:]
    if tuple(np.shape(weight)) != (num_classes, dim):
        _checked_weight(weight, bias, num_classes, dim)  # raises the explanatory error
    bias = jnp.zeros((num_classes,), jnp.float32) if bias is None else jnp.asarray(bias, jnp.float32)
    return _nc4_counts_jit(features, labels, stats, jnp.asarray(weight), bias)


# ----------------------------------------------------------------- one-shot


def _chunks(features, labels, chunk: int):
    n = features.shape[0]
    for start in range(0, n, chunk):
        h = features[start : start + chunk]
        y = labels[start : start + chunk]
        if h.shape[0] < chunk and n > chunk:  # pad the ragged tail: no recompilation
            pad = chunk - h.shape[0]
            h = np.concatenate([h, np.zeros((pad,) + h.shape[1:], h.dtype)])
            y = np.concatenate([y, np.full((pad,), -1, y.dtype)])
        yield h, y


def nc1_per_block(features, labels, num_classes: int) -> np.ndarray:
    """``nc1`` of every block's output, features [L, N, D] sharing labels [N] (one vmapped pass)."""
    return metrics(class_stats(jnp.asarray(features), jnp.asarray(labels, jnp.int32), num_classes))["nc1"]


def measure(
    features,
    labels,
    num_classes: int,
    weight=None,
    bias=None,
    chunk: int = 4096,
) -> dict[str, float]:
    """Every collapse metric of features [N, D] with labels [N] in one call.

    Streams the data in chunks (two passes: statistics, then ``nc4``), so the
    working memory beyond the inputs does not grow with N. Without a
    ``weight`` the classifier metrics (``nc2_etf_w``, ``nc3``, ``nc4``) are left out.
    """
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"measure needs features [N, D] and labels [N]; got {features.shape} and {labels.shape}"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2; got {num_classes}")
    if np.unique(labels).size < 2:
        raise ValueError(
            f"collapse metrics need samples of at least two classes; got labels {np.unique(labels).tolist()}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got values in [{labels.min()}, {labels.max()}]"
        )
    labels = labels.astype(np.int32)
    return measure_batches(lambda: _chunks(features, labels, chunk), num_classes, weight, bias)


def measure_batches(
    make_batches: Callable[[], Iterable[tuple[jax.Array, jax.Array]]],
    num_classes: int,
    weight=None,
    bias=None,
) -> dict[str, float]:
    """Every collapse metric of a data stream too big to hold: two passes over ``make_batches()``.

    ``make_batches`` returns a fresh iterable of ``(features [B, D], labels [B])``
    each time it is called (the first pass accumulates statistics, the second
    counts ``nc4`` disagreements against the final class means).
    """
    stats = stream_stats(make_batches(), num_classes)
    out = metrics(stats, weight, bias)
    if weight is not None:
        counts = np.zeros(2, np.int64)
        for h, y in make_batches():
            counts += np.asarray(nc4_counts(h, y, stats, weight, bias))
        out["nc4"] = counts[0] / counts[1]
    return {name: float(value) for name, value in out.items()}
