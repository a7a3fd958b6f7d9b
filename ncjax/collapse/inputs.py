"""Checks of the caller's arrays at the public boundary, so a bad input is one clear error, never a wrong number.

Shapes, dtypes, label range, finiteness and byte order are checked where a
user hands arrays in (:func:`ncjax.collapse.measure`, :func:`~ncjax.collapse.update`,
the plain-matrix functions, the command line), each failure a one-line
:class:`ncjax.errors.DataError` naming the array. Never inside jitted code or on
statistics: the trainer's evaluators rely on a diverged member's NaN features
giving NaN metrics for that member alone.
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ncjax import errors


def is_traced(*arrays) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


def check(condition_fn: Callable[[], None], message: str) -> None:
    """Run a chex assertion; its failure becomes a one-line :class:`ncjax.errors.DataError`."""
    try:
        condition_fn()
    except AssertionError as error:
        raise errors.DataError(message) from error


def native(array):
    """``array`` in the machine's byte order (big-endian files convert here; XLA reads native order only)."""
    dtype = getattr(array, "dtype", None)
    if isinstance(dtype, np.dtype) and not dtype.isnative:
        return np.asarray(array).astype(dtype.newbyteorder("="))
    return array


def nonfinite(array) -> int | jax.Array:
    """How many values of ``array`` are NaN or ±inf (0 for integers): an int, or a device scalar for a
    device array (summed without waiting for it)."""
    if not jnp.issubdtype(array.dtype, jnp.inexact):
        return 0
    if isinstance(array, jax.Array):
        return jnp.sum(~jnp.isfinite(array))
    array = np.asarray(array)
    if array.size and np.isfinite(array.min()) and np.isfinite(array.max()):
        return 0  # NaN and ±inf show in the extremes: two reductions, no boolean copy of the batch
    return int(np.count_nonzero(~np.isfinite(array)))


def require_finite(name: str, count: int | jax.Array, size: int) -> None:
    """A DataError naming ``name`` when ``count`` of its ``size`` values are non-finite."""
    count = int(count)
    if count:
        raise errors.DataError(f"{name}: {count} of {size} values are non-finite (NaN or ±inf); "
                               "collapse metrics of them would be meaningless")


def finite(name: str, array) -> None:
    """:func:`require_finite` of one whole array (concrete arrays only; skipped under ``jit``)."""
    if array is not None and not is_traced(array):
        require_finite(name, nonfinite(array), int(np.size(array)))


def check_batch(features, labels, num_classes: int, dim: int | None = None,
                lead: tuple[int, ...] | None = None, padding: bool = True) -> None:
    """Shapes, dtypes and label range of one batch (DataError if wrong).

    ``features`` ``[*lead, B, D]`` real numbers with D ≥ 1, ``labels`` ``[B]``
    integers in ``[0, K)``, or negative for padding when ``padding``. Value
    checks run only on concrete arrays (not under ``jit``); finiteness is
    :func:`finite`'s (streams sum it over every batch before refusing).
    """
    check(lambda: chex.assert_rank(labels, 1), f"labels must be a 1-D array [B]; got shape {np.shape(labels)}")
    check(lambda: chex.assert_type(labels, int), f"labels must be integers; got dtype {labels.dtype}")
    where = "" if lead is None else f" (led by {list(lead)})"
    check(lambda: chex.assert_rank(features, {2, 3} if lead is None else len(lead) + 2),
          f"features must be [B, D] or [L, B, D]{where}; got shape {list(np.shape(features))}")
    expected = (tuple(features.shape[:-2]) if lead is None else tuple(lead)) + (labels.shape[0], dim)
    check(lambda: chex.assert_shape(features, expected),
          f"features must be [*leading, B, D] with B = len(labels) = {labels.shape[0]}"
          f"{'' if dim is None else f' and D = {dim}'}{where}; got shape {list(np.shape(features))}")
    if features.shape[-1] == 0:
        raise errors.DataError(f"features have D = 0 dimensions (shape {list(features.shape)}): nothing to measure")
    if not (jnp.issubdtype(features.dtype, jnp.floating) or jnp.issubdtype(features.dtype, jnp.integer)):
        raise errors.DataError(f"features must be real numbers; got dtype {features.dtype}")
    if is_traced(labels) or labels.shape[0] == 0:
        return
    values = np.asarray(labels)
    low, high = int(values.min()), int(values.max())
    if high >= num_classes or (low < 0 and not padding):
        allowed = f"[0, {num_classes})" + (" (negative labels mark padding)" if padding else "")
        raise errors.DataError(f"labels must lie in {allowed}; got values in [{low}, {high}]: check num_classes")


def classifier(weight, bias, num_classes: int, dim: int, lead: tuple[int, ...] = ()):
    """``weight`` [K, D] (or [*lead, K, D]) and ``bias`` [K] (zeros if None) as native float32, checked."""
    weight = native(weight)
    shapes = {(num_classes, dim), tuple(lead) + (num_classes, dim)}
    if tuple(np.shape(weight)) not in shapes:
        raise errors.DataError(
            f"weight must be [num_classes, dim] = [{num_classes}, {dim}] (rows are classes; transpose a "
            f"Flax Dense kernel or pass torch's nn.Linear.weight as it is); got shape {list(np.shape(weight))}")
    bias = jnp.zeros(np.shape(weight)[:-1], jnp.float32) if bias is None else native(bias)
    if tuple(np.shape(bias)) != tuple(np.shape(weight)[:-1]):
        raise errors.DataError(f"bias must have shape {list(np.shape(weight)[:-1])}; got {list(np.shape(bias))}")
    finite("weight", weight)
    finite("bias", bias)
    return jnp.asarray(weight, jnp.float32), jnp.asarray(bias, jnp.float32)
