"""Deterministic, resumable, host-sharded batches of in-memory arrays.

The order depends only on (seed, epoch), never on the number of processes, so
1-process and N-process runs, and resumed runs, see the same data. Every
process holds the whole arrays and takes its own slice of each global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ncjax.data.dataset import DataError

PAD_LABEL = -1


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch: the ragged remainder is dropped."""
    return n // batch_size


def train_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields this process's slice of every global batch of one epoch, from `start_step` on.

    The epoch's order is `np.random.default_rng([seed, epoch]).permutation(len(x))`;
    global batch s holds positions [s*batch_size, (s+1)*batch_size) of it, and
    process p gets the contiguous part [p*b, (p+1)*b) of that, b = batch_size //
    process_count. Starting at `start_step` skips earlier batches without building them.
    """
    local = _local_batch_size(batch_size, process_index, process_count)
    steps = steps_per_epoch(len(x), batch_size)
    if steps == 0:
        raise DataError(f"batch_size={batch_size} is larger than the {len(x)} training examples")
    if not 0 <= start_step <= steps:
        raise DataError(f"start_step={start_step} outside the epoch's {steps} steps")
    order = np.random.default_rng([seed, epoch]).permutation(len(x))
    for step in range(start_step, steps):
        start = step * batch_size + process_index * local
        idx = order[start : start + local]
        yield x[idx], y[idx]


def eval_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields this process's slice of every global batch, in order, covering every example once.

    The last global batch is padded to full size (inputs zero, label PAD_LABEL = -1),
    so every batch has one shape and a jitted step never recompiles.
    """
    local = _local_batch_size(batch_size, process_index, process_count)
    for start in range(0, len(x), batch_size):
        bx, by = x[start : start + batch_size], y[start : start + batch_size]
        pad = batch_size - len(bx)
        if pad:
            bx = np.concatenate([bx, np.zeros((pad, *x.shape[1:]), x.dtype)])
            by = np.concatenate([by, np.full(pad, PAD_LABEL, y.dtype)])
        part = slice(process_index * local, (process_index + 1) * local)
        yield bx[part], by[part]


def _local_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
    if batch_size < 1 or process_count < 1 or batch_size % process_count:
        raise DataError(
            f"the global batch_size={batch_size} must be a positive multiple of the "
            f"process count {process_count}"
        )
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} outside 0..{process_count - 1}")
    return batch_size // process_count
