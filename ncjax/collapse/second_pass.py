"""Pass 2: what needs the final class means, accumulated on the device against them.

Every sample is compared with the final means of pass 1 (:class:`Reference`):
the nearest class centre (``ncc_accuracy``, and ``nc4`` against the classifier's
argmax), the cosine to its class's classifier row (``nc3_cos``), and on the
K×K route of ``nc1`` the projection of its deviation onto the centred class
means, ``z_i = M̃(h_i − μ_{y_i})``, whose outer products sum to ``N·M̃Σ_WM̃ᵀ``.

One matmul serves both the projection and the nearest-centre rule:
``M̃(h_i − μ_G) = z_i + (M̃M̃ᵀ)[y_i]``, so pass 2 costs N·D·K (+ N·K² for the
outer products) instead of pass 1's N·D² scatter; given the classifier, the
same matmul takes W's rows too (N·D·2K in all), and the logits, ``nc3_cos``'s
inner products and ``‖h_i − μ_G‖`` follow in K-space. Deviations are formed before
projecting, so a collapsed network (tiny ``h − μ_y``) loses no precision.

Pure ``jax.numpy`` like pass 1; second-pass statistics merge by addition
(``jax.tree.map(jnp.add, a, b)``).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from ncjax.collapse.statistics import HIGHEST, ClassStats, column_gram, map_leading, valid_rows


class Reference(NamedTuple):
    """The final pass-1 quantities pass 2 compares every sample with (leading axes allowed).

    mean:        [..., K, D]        class means μ_c.
    global_mean: [..., D]           μ_G, the mean of all samples.
    centred:     [..., K, D]        M̃: rows μ_c − μ_G, zero for classes without samples.
    present:     [..., K]           classes with samples (bool).
    gram:        [..., K, K] | None M̃M̃ᵀ on the K×K route of ``nc1`` (the stats carry no scatter).
    """

    mean: jax.Array
    global_mean: jax.Array
    centred: jax.Array
    present: jax.Array
    gram: jax.Array | None


class SecondPassStats(NamedTuple):
    """Pass-2 sums (leading axes allowed; merge by addition).

    count:        [...]              valid samples seen (must equal pass 1's).
    ncc_correct:  [...]              samples whose nearest class mean is their own class.
    projected:    [..., K, K] | None ``Σ_i z_i z_iᵀ``, ``z_i = M̃(h_i − μ_{y_i})`` (K×K route of nc1).
    nc4_mismatch: [...] | None       samples where the classifier's argmax ≠ the nearest class mean.
    nc3_cos_sum:  [...] | None       ``Σ_i cos(h_i − μ_G, w_{y_i})``.
    """

    count: jax.Array
    ncc_correct: jax.Array
    projected: jax.Array | None
    nc4_mismatch: jax.Array | None
    nc3_cos_sum: jax.Array | None


def reference(stats: ClassStats) -> Reference:
    """What pass 2 needs from final pass-1 ``stats``: compute once, outside the pass-2 scan. Pure."""
    count = stats.count.astype(jnp.float32)
    present = stats.count > 0
    total = jnp.maximum(jnp.sum(count, -1, keepdims=True), 1.0)
    global_mean = jnp.einsum("...k,...kd->...d", count / total, stats.mean, precision=HIGHEST)
    centred = jnp.where(present[..., None], stats.mean - global_mean[..., None, :], 0.0)
    gram = None
    if stats.scatter is None:
        gram = jnp.einsum("...kd,...jd->...kj", centred, centred, precision=HIGHEST)
    return Reference(mean=stats.mean, global_mean=global_mean, centred=centred, present=present, gram=gram)


def empty_second(stats: ClassStats, classifier: bool = False) -> SecondPassStats:
    """Zero pass-2 sums laid out for ``stats`` (same leading axes).

    The K×K projections are kept exactly when ``stats`` has no scatter;
    ``classifier=True`` adds the sums that need ``weight`` (``nc4``, ``nc3_cos``).
    """
    lead = stats.count.shape[:-1]
    num_classes = stats.count.shape[-1]
    return SecondPassStats(
        count=jnp.zeros(lead, jnp.int32),
        ncc_correct=jnp.zeros(lead, jnp.int32),
        projected=jnp.zeros(lead + (num_classes, num_classes), jnp.float32) if stats.scatter is None else None,
        nc4_mismatch=jnp.zeros(lead, jnp.int32) if classifier else None,
        nc3_cos_sum=jnp.zeros(lead, jnp.float32) if classifier else None,
    )


def first_argmin(x: jax.Array) -> jax.Array:
    """``jnp.argmin(x, -1)`` (first occurrence; NaN counts as the minimum) from two plain reductions.

    XLA's CPU argmin is a variadic (value, index) reduction that does not vectorise: over [1,024, 100]
    it costs three times a min followed by the first index equal to it.
    """
    key = jnp.where(jnp.isnan(x), -jnp.inf, x)
    hit = key == jnp.min(key, -1, keepdims=True)
    size = x.shape[-1]
    return jnp.minimum(jnp.min(jnp.where(hit, jnp.arange(size, dtype=jnp.int32), size), -1), size - 1)


def first_argmax(x: jax.Array) -> jax.Array:
    """``jnp.argmax(x, -1)`` (first occurrence; NaN counts as the maximum), as :func:`first_argmin`."""
    key = jnp.where(jnp.isnan(x), jnp.inf, x)
    hit = key == jnp.max(key, -1, keepdims=True)
    size = x.shape[-1]
    return jnp.minimum(jnp.min(jnp.where(hit, jnp.arange(size, dtype=jnp.int32), size), -1), size - 1)


def _accumulate_second_one(second: SecondPassStats, ref: Reference, features, labels, weight, bias, logits):
    num_classes = ref.mean.shape[-2]
    h = features.astype(jnp.float32)
    valid = valid_rows(labels, num_classes)
    safe = jnp.where(valid, labels, 0)
    global_mean = ref.global_mean
    classifier = second.nc4_mismatch is not None
    w = weight.astype(jnp.float32) if classifier else None
    # Without the caller's logits, one GEMM projects a deviation on the centred means and on the classifier's
    # rows together (instead of two skinny GEMMs, a gather of W's rows and more passes over [B, D]): on the
    # K×K route the deviation from the own class mean h − μ_y (the projections z need it), on the scatter
    # route h − μ_G. Everything else the classifier sums need follows in K-space.
    together = classifier and logits is None
    to_rows = None
    if ref.gram is not None:
        dev = h - ref.mean[safe]  # h − μ_y
        if together:
            both = jnp.dot(dev, jnp.concatenate([ref.centred, w]).T, precision=HIGHEST)  # [B, 2K]
            z, to_rows = both[:, :num_classes], both[:, num_classes:]  # M̃(h − μ_y), W(h − μ_y)
        else:
            z = jnp.dot(dev, ref.centred.T, precision=HIGHEST)  # M̃(h − μ_y): [B, K]
        to_centres = z + ref.gram[safe]  # M̃(h − μ_G)
        projected = second.projected + column_gram(z * valid[:, None])
    elif together:
        dev = h - global_mean
        both = jnp.dot(dev, jnp.concatenate([ref.centred, w]).T, precision=HIGHEST)  # [B, 2K]
        to_centres, to_rows = both[:, :num_classes], both[:, num_classes:]  # M̃(h − μ_G), W(h − μ_G)
        projected = None
    else:
        to_centres = jnp.dot(h - global_mean, ref.centred.T, precision=HIGHEST)
        projected = None
    # ‖h − μ_c‖² − ‖h − μ_G‖² = ‖μ_c − μ_G‖² − 2⟨μ_c − μ_G, h − μ_G⟩
    dist = jnp.sum(ref.centred**2, -1) - 2.0 * to_centres
    nearest = first_argmin(jnp.where(ref.present, dist, jnp.inf))
    out = SecondPassStats(
        count=second.count + jnp.sum(valid, dtype=jnp.int32),
        ncc_correct=second.ncc_correct + jnp.sum(valid & (nearest == labels), dtype=jnp.int32),
        projected=projected,
        nc4_mismatch=None,
        nc3_cos_sum=None,
    )
    if not classifier:
        return out
    own = lambda rows: jnp.take_along_axis(rows, safe[:, None], 1)[:, 0]  # noqa: E731  column y_i of row i
    row_norms = jnp.linalg.norm(w, axis=-1)[safe]
    bias = bias.astype(jnp.float32)
    if together and ref.gram is not None:  # from h − μ_y: hWᵀ + b = W(h − μ_y) + Wμ_y + b
        logits = to_rows + (jnp.dot(ref.mean, w.T, precision=HIGHEST) + bias)[safe]
        inner = own(to_rows) + jnp.sum(ref.centred * w, -1)[safe]  # ⟨h − μ_y, w_y⟩ + ⟨μ_y − μ_G, w_y⟩
        # ‖h − μ_G‖² = ‖h − μ_y‖² + 2⟨h − μ_y, μ_y − μ_G⟩ + ‖μ_y − μ_G‖², the middle term z's own column
        squared = jnp.sum(dev * dev, -1) + 2.0 * own(z) + jnp.sum(ref.centred**2, -1)[safe]
        centred_norms = jnp.sqrt(jnp.maximum(squared, 0.0))
    elif together:  # from h − μ_G: hWᵀ + b = W(h − μ_G) + (Wμ_G + b)
        logits = to_rows + (jnp.dot(w, global_mean, precision=HIGHEST) + bias)
        inner = own(to_rows)  # ⟨h − μ_G, w_y⟩
        centred_norms = jnp.linalg.norm(dev, axis=-1)
    else:
        centred_h = h - global_mean
        inner = jnp.sum(centred_h * w[safe], -1)  # ⟨h − μ_G, w_y⟩
        centred_norms = jnp.linalg.norm(centred_h, axis=-1)
    predicted = first_argmax(jnp.where(ref.present, logits.astype(jnp.float32), -jnp.inf))
    mismatch = jnp.sum(valid & (predicted != nearest), dtype=jnp.int32)
    norms = centred_norms * row_norms
    cos = inner / jnp.where(norms > 0, norms, 1.0)  # 0 where h = μ_G or w_y = 0
    return out._replace(nc4_mismatch=second.nc4_mismatch + mismatch,
                        nc3_cos_sum=second.nc3_cos_sum + jnp.sum(jnp.where(valid, cos, 0.0)))


def accumulate_second(second: SecondPassStats, ref: Reference, features: jax.Array, labels: jax.Array,
                      weight: jax.Array | None = None, bias: jax.Array | None = None,
                      logits: jax.Array | None = None) -> SecondPassStats:
    """``second`` plus one batch, compared with the final means ``ref``. Pure (jit/scan/vmap it).

    ``features`` ``[*lead, B, D]`` and ``labels`` ``[B]`` as in pass 1. When
    ``second`` has classifier sums, ``weight`` ``[*lead, K, D]`` or ``[K, D]`` (rows
    are classes) is required, ``bias`` ``[*lead, K]``/``[K]`` optional, and
    ``logits`` ``[*lead, B, K]`` may be passed to skip recomputing ``h Wᵀ + b``.
    """
    lead = second.count.shape
    num_classes, dim = ref.mean.shape[-2:]
    chex.assert_shape(features, lead + (labels.shape[0], dim))
    chex.assert_rank(labels, 1)
    if second.nc4_mismatch is not None and weight is None:
        raise ValueError("these second-pass sums include nc4 and nc3_cos: pass the classifier's weight [K, D]")
    if weight is not None:
        chex.assert_shape(weight, (lead if weight.ndim > 2 else ()) + (num_classes, dim))
        if bias is None:
            bias = jnp.zeros(weight.shape[:-1], jnp.float32)
        chex.assert_shape(bias, weight.shape[:-1])
    if logits is not None:
        chex.assert_shape(logits, lead + (labels.shape[0], num_classes))
    axes = (0, 0, 0, None, 0 if weight is not None and weight.ndim > 2 else None,
            0 if bias is not None and bias.ndim > 1 else None, 0 if logits is not None else None)
    fn = map_leading(_accumulate_second_one, len(lead), axes)
    return fn(second, ref, features, labels.astype(jnp.int32), weight, bias, logits)
