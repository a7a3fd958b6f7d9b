"""Evaluation batches of in-memory arrays, in order, padded, split by host.

Every process holds the whole arrays and takes its own slice of each global batch.
(Training batches come from ``ncjax.data.feed``.)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ncjax.data.dataset import DataError

PAD_LABEL = -1


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
