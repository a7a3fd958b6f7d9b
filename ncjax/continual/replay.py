"""A small class-balanced replay buffer: which old training samples a run may keep.

The paper's runs keep 200 samples (``--buffer_size 200``) chosen at random, balanced
over the classes seen (Mammoth's ``fill_buffer`` without herding), and train each
new task on its data plus the buffer. Here the buffer is a set of row indices into
``dataset.train_x``; the runner concatenates them with the next task's rows.
"""

from __future__ import annotations

import numpy as np

from ncjax.continual.splits import TaskSplit
from ncjax.errors import ConfigError


def replay_indices(split: TaskSplit, task: int, buffer_size: int, seed: int) -> np.ndarray:
    """Rows of ``dataset.train_x`` in a buffer of ``buffer_size`` samples after training tasks ``0 … task``.

    The ``S`` seen classes share the buffer round-robin (class ``ℓ`` keeps
    ``⌈(buffer_size − ℓ)/S⌉`` samples, or all of its samples when it has fewer).
    Class ``ℓ``'s samples are the first ones of a permutation of its rows drawn
    from ``np.random.default_rng([seed, ℓ])``, and its share only shrinks as classes
    arrive, so each buffer's old-class samples are a subset of the previous
    buffer's: the selection never needs the data of a task already left behind.
    Sorted; empty when ``buffer_size`` is 0.
    """
    if isinstance(buffer_size, bool) or not isinstance(buffer_size, (int, np.integer)) or buffer_size < 0:
        raise ConfigError(f"replay buffer size must be a non-negative integer; got {buffer_size!r}")
    num_seen = split.num_seen(task)
    kept = []
    for label in range(min(num_seen, buffer_size)):
        share = -(-(buffer_size - label) // num_seen)  # ⌈(M − ℓ)/S⌉
        rows = np.flatnonzero(split.train_labels == label)
        kept.append(rows[np.random.default_rng([seed, label]).permutation(rows.size)[:share]])
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, np.int64)
