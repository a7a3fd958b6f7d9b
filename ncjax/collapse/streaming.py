"""Host convenience: checked, jitted, shape-stable streaming of batches through both passes.

The public boundary of the package: inputs are checked here (:mod:`ncjax.collapse.inputs`:
shapes and dtypes with chex, labels in range, finite values, native byte
order), then re-cut into fixed-size pieces (padded with label −1), so one
compiled program serves every batch and chunk size, and a ragged tail never
recompiles. Only the loops here donate their own state; :func:`update` and
:func:`update_second` never delete the caller's statistics.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Callable, Iterable, Iterator

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ncjax import errors
from ncjax.collapse.conventions import checked as checked_conventions
from ncjax.collapse.details import class_details
from ncjax.collapse.finalise import CLASSIFIER, SecondPassWarning, as_json, metrics
from ncjax.collapse.inputs import (check, check_batch, classifier, finite, is_traced, native, nonfinite,
                                   require_finite)
from ncjax.collapse.second_pass import SecondPassStats, accumulate_second, empty_second, reference
from ncjax.collapse.statistics import ClassStats, accumulate, empty_stats, prefer_scatter

PIECE_FLOATS = 1 << 26  # a piece's [*lead, rows, max(D, K)] float32 temporaries: about 256 MB
IN_FLIGHT = 2  # pieces dispatched before waiting: the host prepares the next while the device computes

_pass1 = jax.jit(accumulate)
_pass1_donating = jax.jit(accumulate, donate_argnums=0)




def _second_piece(second: SecondPassStats, stats: ClassStats, features, labels, weight=None, bias=None):
    """Pass 2 of one piece; the reference is recomputed per piece (K·D work) to keep to two compiled programs."""
    return accumulate_second(second, reference(stats), features, labels, weight, bias)


_pass2 = jax.jit(_second_piece)
_pass2_donating = jax.jit(_second_piece, donate_argnums=0)


def piece_rows(lead_size: int, dim: int, num_classes: int) -> int:
    """Rows per compiled piece: a power of two in [16, 1024] that bounds the per-piece memory."""
    fit = PIECE_FLOATS // max(1, lead_size * max(dim, num_classes))
    return 1 << max(4, min(10, int(math.log2(max(fit, 1)))))


_batch_pieces: dict[tuple, set[int]] = {}  # piece sizes already used per (pass, shapes): compiled programs
BATCH_SIZES = 4  # distinct batch-sized programs per pass and shapes; beyond, powers of two


def batch_piece_rows(kind: str, rows: int, lead: tuple[int, ...], dim: int, num_classes: int) -> int:
    """Rows per piece for one batch of ``rows`` rows handed to :func:`update` or :func:`update_second`.

    :func:`piece_rows` bounds it. Below that a batch runs as it is, in a program of its own size (no
    padded copy: a loop of 1,000-row batches hands each batch over whole), unless a program already
    compiled for these shapes holds it: then it is padded to the smallest such (a ragged last batch
    reuses the program of the batches before it). After :data:`BATCH_SIZES` sizes, new sizes round up
    to powers of two, so the number of compilations stays bounded whatever the batches.
    """
    cap = piece_rows(int(np.prod(lead, dtype=int)), dim, num_classes)
    if rows >= cap:
        return cap
    used = _batch_pieces.setdefault((kind, lead, dim, num_classes), set())
    fits = [size for size in used if rows <= size]
    if fits:
        return min(fits)
    size = max(rows, 16) if len(used) < BATCH_SIZES else min(cap, 1 << max(4, (rows - 1).bit_length()))
    used.add(size)
    return size


def update(stats: ClassStats | None, features, labels, num_classes: int | None = None, *,
           covariance: bool = False) -> ClassStats:
    """Statistics of ``stats``' samples plus one batch, as new arrays (``stats`` is left intact).

    ``features`` is [B, D], or [L, B, D] for L blocks sharing the labels (the
    stats then carry a leading L axis). ``stats=None`` starts from empty and
    needs ``num_classes``; it takes the cheaper ``nc1`` route, as
    :func:`measure_batches` does (:func:`ncjax.collapse.prefer_scatter`: no D×D
    scatter when K ≤ D, ``nc1`` then comes from the second pass), unless
    ``covariance=True`` keeps the scatter (``effective_rank_features``, and
    ``nc1`` from this pass alone). Checked at this boundary; inside a ``jit`` it
    is :func:`ncjax.collapse.accumulate` (shardings respected: a batch sharded
    over devices gives replicated statistics).
    """
    if stats is None:
        if num_classes is None:
            raise errors.DataError("update(None, ...) needs num_classes to start from empty statistics")
        dim = np.shape(features)[-1]
        stats = empty_stats(num_classes, dim, tuple(np.shape(features)[:-2]),
                            scatter=covariance or prefer_scatter(num_classes, dim))
    num_classes, dim = stats.mean.shape[-2:]
    features, labels = native(features), native(labels)
    check_batch(features, labels, num_classes, dim, tuple(stats.count.shape[:-1]))
    if is_traced(*jax.tree.leaves(stats), features, labels):
        return accumulate(stats, features, labels)
    finite("features", features)
    rows = batch_piece_rows("pass1", labels.shape[0], tuple(stats.count.shape[:-1]), dim, num_classes)
    step = _pass1
    for h, y in _pieces([(features, labels)], rows):
        stats, step = step(stats, h, y), _pass1_donating  # later pieces update our own copy
    return stats


def update_second(second: SecondPassStats | None, stats: ClassStats, features, labels, weight=None,
                  bias=None) -> SecondPassStats:
    """Pass-2 sums of ``second``'s samples plus one batch, against the final pass-1 ``stats`` (new arrays).

    Call it for every batch of the same data again, after the last :func:`update`:
    it compares each sample with the final class means (``ncc_accuracy``; ``nc1``
    when ``stats`` has no scatter) and, given the classifier ``weight`` [K, D]
    (rows are classes) and ``bias`` [K], with its decisions (``nc4``, ``nc3_cos``).
    ``second=None`` starts from empty sums. Checked like :func:`update`; inside a
    ``jit`` it is ``accumulate_second(second, reference(stats), ...)``.
    """
    num_classes, dim = stats.mean.shape[-2:]
    lead = tuple(stats.count.shape[:-1])
    features, labels = native(features), native(labels)
    check_batch(features, labels, num_classes, dim, lead)
    if weight is not None:
        weight, bias = classifier(weight, bias, num_classes, dim, lead)
    if second is None:
        second = empty_second(stats, classifier=weight is not None)
    elif (second.nc4_mismatch is not None) != (weight is not None):
        raise errors.DataError("update_second: pass the classifier's weight on every batch of the second pass "
                               "or on none")
    if is_traced(*jax.tree.leaves((second, stats)), features, labels):
        return accumulate_second(second, reference(stats), features, labels, weight, bias)
    finite("features", features)
    rows = batch_piece_rows("pass2", labels.shape[0], lead, dim, num_classes)
    step = _pass2
    for h, y in _pieces([(features, labels)], rows):
        second, step = step(second, stats, h, y, weight, bias), _pass2_donating  # later pieces: our own copy
    return second


def class_stats(features, labels, num_classes: int) -> ClassStats:
    """Statistics of one batch: features [B, D] (or [L, B, D]), integer labels [B]; with the D×D scatter,
    so ``nc1`` needs no second pass."""
    return update(None, features, labels, num_classes, covariance=True)


def stream_stats(batches: Iterable[tuple[jax.Array, jax.Array]], num_classes: int) -> ClassStats:
    """Fold an iterable of ``(features, labels)`` batches into statistics (with the scatter)."""
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise errors.DataError("stream_stats got no batches: there is nothing to measure")
    stats = empty_stats(num_classes, np.shape(first[0])[-1], tuple(np.shape(first[0])[:-2]))
    return _first_pass(stats, itertools.chain([first], iterator))


def _pieces(batches: Iterable, rows: int) -> Iterator[tuple]:
    """Re-cut ``(features [*lead, B, D], labels [B])`` batches into pieces of exactly ``rows`` rows.

    Whole pieces pass through without a copy; remainders are gathered into a
    fresh host array per piece (``device_put`` may alias host memory, so a
    buffer is never reused), and the last piece is padded with label −1.
    """
    pending, filled = [], 0
    for h, y in batches:
        start, n = 0, y.shape[0]
        while start < n:
            if not pending and n - start >= rows:
                yield h[..., start:start + rows, :], y[start:start + rows]
                start += rows
                continue
            take = min(rows - filled, n - start)
            pending.append((h[..., start:start + take, :], y[start:start + take]))
            filled, start = filled + take, start + take
            if filled == rows:
                yield _joined(pending, rows)
                pending, filled = [], 0
    if pending:
        yield _joined(pending, rows)


def _joined(parts: list, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """One fresh ``rows``-row piece from parts, padded with zeros and label −1."""
    first = np.asarray(parts[0][0])
    h = np.empty(first.shape[:-2] + (rows, first.shape[-1]), first.dtype)
    y = np.full(rows, -1, np.int32)
    filled = 0
    for part_h, part_y in parts:
        take = part_y.shape[0]
        h[..., filled:filled + take, :] = part_h
        y[filled:filled + take] = part_y
        filled += take
    h[..., filled:, :] = 0  # only the padding is zeroed: one write of the piece, not two
    return h, y


def _native(batches: Iterable) -> Iterator[tuple]:
    return ((native(h), native(y)) for h, y in batches)


def _checked(batches: Iterable, num_classes: int, dim: int, lead: tuple[int, ...], tally: dict) -> Iterator[tuple]:
    """The batches, checked; ``tally`` sums their non-finite feature values (refused after the pass, with the total)."""
    for h, y in _native(batches):
        check_batch(h, y, num_classes, dim, lead)
        tally["nonfinite"] = tally["nonfinite"] + nonfinite(h)
        tally["size"] += int(np.size(h))
        yield h, y


def _first_pass(stats: ClassStats, batches: Iterable) -> ClassStats:
    num_classes, dim = stats.mean.shape[-2:]
    lead = tuple(stats.count.shape[:-1])
    rows = piece_rows(int(np.prod(lead, dtype=int)), dim, num_classes)
    tally = {"nonfinite": 0, "size": 0}
    for index, (h, y) in enumerate(_pieces(_checked(batches, num_classes, dim, lead, tally), rows)):
        if index % IN_FLIGHT == 0:
            jax.block_until_ready(stats)  # a bounded number of pieces in flight: memory does not grow with N
        stats = _pass1_donating(stats, h, y)
    require_finite("features", tally["nonfinite"], tally["size"])
    return stats


def _ood_stats(batches: Iterable, dim: int, lead: tuple[int, ...]) -> ClassStats:
    """One-class statistics of out-of-distribution features: only their mean matters (``nc5``),
    summed on the host in float64 (no compilation for a sum)."""
    total, count, bad = np.zeros(lead + (dim,)), 0, 0
    for h in batches:
        check(lambda: chex.assert_shape(h, lead + (None, dim)),
              f"ood features must be [*{list(lead)}, M, {dim}]; got shape {list(np.shape(h))}")
        h = np.asarray(h, np.float64)
        bad += nonfinite(h)
        total += np.sum(h, axis=-2)
        count += np.shape(h)[-2]
    if count == 0:
        raise errors.DataError("the out-of-distribution stream is empty: nc5 needs features")
    require_finite("ood_features", bad, int(np.prod(lead, dtype=int)) * count * dim)
    return ClassStats(count=np.full(lead + (1,), count), mean=(total / count)[..., None, :], scatter=None,
                      sq_dev=np.zeros(lead + (1,)), out_of_range=np.zeros(lead, np.int32))


def nc4_counts(features, labels, stats: ClassStats, weight, bias=None) -> jax.Array:
    """[mismatches, samples] of one batch [B, D] (on device); summed over batches, their ratio is ``nc4``.

    The classifier's argmax and the nearest-class-mean rule are both taken over
    the classes that have samples. Negative labels mark padding.
    """
    num_classes, dim = stats.mean.shape[-2:]
    features, labels = native(features), native(labels)
    check_batch(features, labels, num_classes, dim, ())
    finite("features", features)
    weight, bias = classifier(weight, bias, num_classes, dim)
    return _nc4_counts(jnp.asarray(features), jnp.asarray(labels, jnp.int32), stats, weight, bias)


@jax.jit
def _nc4_counts(features, labels, stats: ClassStats, weight, bias):
    ref = reference(stats)._replace(gram=None)  # nc4 needs no K×K projections
    zero = jnp.zeros((), jnp.int32)
    second = SecondPassStats(zero, zero, None, zero, jnp.zeros((), jnp.float32))
    second = accumulate_second(second, ref, features, labels, weight, bias)
    return jnp.stack([second.nc4_mismatch, second.count])


def nc1_per_block(features, labels, num_classes: int) -> np.ndarray:
    """``nc1`` of every block's output, features [L, N, D] sharing labels [N] (one vmapped pass, with the scatter)."""
    stats = class_stats(features, np.asarray(labels, np.int32), num_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecondPassWarning)  # nc1 needs no second pass here
        return metrics(stats)["nc1"]


# ----------------------------------------------------------------- whole data sets


def measure(features, labels, num_classes: int, weight=None, bias=None, chunk: int = 4096, *,
            ood_features=None, covariance: bool = False, conventions: str = "ncjax", details: bool = False) -> dict:
    """Every collapse metric of features [N, D] (or [L, N, D] per layer) with labels [N], in one call.

    Streams the arrays in ``chunk``-row slices (memory-mapped arrays are fine:
    nothing beyond a chunk is read at once), two passes. Without ``weight`` the
    classifier metrics are left out; ``ood_features`` [M, D] (or [L, M, D]) adds
    ``nc5``; ``covariance=True`` accumulates the D×D scatter (N·D² work) for
    ``effective_rank_features``. Returns floats, or for [L, N, D] a list per
    classifier-free metric (one value per layer) and floats for the classifier
    metrics, which use the last layer ``features[-1]`` as the classifier's input.
    ``conventions="rhubarbwu"`` as in :func:`ncjax.collapse.metrics`;
    ``details=True`` adds ``"details"``: :func:`ncjax.collapse.class_details` as lists.
    Non-finite features, weights or biases are a :class:`ncjax.errors.DataError`.
    """
    labels = native(np.asarray(labels))
    features = features if hasattr(features, "shape") and hasattr(features, "dtype") else np.asarray(features)
    if np.ndim(features) not in (2, 3) or labels.shape != np.shape(features)[-2:-1]:
        raise errors.DataError(f"measure needs features [N, D] or [L, N, D] and labels [N]; "
                               f"got {list(np.shape(features))} and {list(labels.shape)}")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise errors.DataError(f"num_classes must be an integer ≥ 2; got {num_classes!r}")
    check_batch(features, labels, num_classes, padding=False)
    if np.unique(labels).size < 2:
        raise errors.DataError(f"collapse metrics need samples of at least two classes; "
                               f"got labels {np.unique(labels).tolist()}")
    if chunk < 1:
        raise errors.DataError(f"chunk must be a positive number of rows; got {chunk}")

    def slices(array, with_labels):
        n = np.shape(array)[-2]
        for start in range(0, n, chunk):
            h = array[..., start:start + chunk, :]
            y = labels[start:start + chunk] if with_labels else np.zeros(np.shape(h)[-2], np.int32)
            yield h, y

    make_ood = None if ood_features is None else (lambda: (h for h, _ in slices(ood_features, False)))
    return measure_batches(lambda: slices(features, True), num_classes, weight, bias, make_ood_batches=make_ood,
                           covariance=covariance, conventions=conventions, details=details)


def measure_batches(make_batches: Callable[[], Iterable[tuple]], num_classes: int, weight=None, bias=None, *,
                    make_ood_batches: Callable[[], Iterable] | None = None, covariance: bool = False,
                    conventions: str = "ncjax", details: bool = False) -> dict:
    """Every collapse metric of a data stream too big to hold: two passes over ``make_batches()``.

    ``make_batches`` returns a fresh iterable of ``(features [B, D] or [L, B, D],
    labels [B])`` each time it is called (pass 1 accumulates statistics, pass 2
    compares every sample with the final class means). ``make_ood_batches``
    likewise yields out-of-distribution features alone (for ``nc5``). The
    ``nc1`` route is the cheaper one (:func:`ncjax.collapse.prefer_scatter`)
    unless ``covariance`` asks for the scatter. Options and return values as in :func:`measure`.
    """
    conventions = checked_conventions(conventions)
    iterator = iter(make_batches())
    first = next(iterator, None)
    if first is None:
        raise errors.DataError("measure_batches got no batches: there is nothing to measure")
    shape = np.shape(first[0])
    lead, dim = tuple(shape[:-2]), shape[-1]
    if weight is not None:
        weight, bias = classifier(weight, bias, num_classes, dim)
    scatter = covariance or prefer_scatter(num_classes, dim)
    stats = _first_pass(empty_stats(num_classes, dim, lead, scatter=scatter), itertools.chain([first], iterator))
    if int(np.sum(stats.count)) == 0:
        raise errors.DataError("measure_batches: every label was padding; there is nothing to measure")
    ood = None if make_ood_batches is None else _ood_stats(make_ood_batches(), dim, lead)
    layered = bool(lead)
    second = empty_second(stats, classifier=weight is not None and not layered)
    final = None
    if weight is not None and layered:
        last = lambda tree: jax.tree.map(lambda x: x[(-1,) * len(lead)], tree)  # noqa: E731
        final = (last(stats), empty_second(last(stats), classifier=True))
    rows = piece_rows(int(np.prod(lead, dtype=int)), dim, num_classes)
    for index, (h, y) in enumerate(_pieces(_native(make_batches()), rows)):
        if index % IN_FLIGHT == 0:
            jax.block_until_ready(second)
        if layered:
            second = _pass2_donating(second, stats, h, y)
            if final is not None:
                final = (final[0], _pass2_donating(final[1], final[0], h[(-1,) * len(lead)], y, weight, bias))
        else:
            second = _pass2_donating(second, stats, h, y, weight, bias)

    values = as_json(metrics(stats, None if layered else weight, bias, second=second, ood=ood,
                             conventions=conventions))
    if final is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # already said for every layer above
            last_layer = as_json(metrics(final[0], weight, bias, second=final[1], conventions=conventions))
        values.update({name: value for name, value in last_layer.items() if name in CLASSIFIER})
    if details:
        values["details"] = {name: array.tolist() for name, array in class_details(stats, conventions).items()}
    return values
