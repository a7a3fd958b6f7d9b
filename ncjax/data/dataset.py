"""The one shape every data source returns, and the one error every source raises."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

KINDS = ("image", "vector", "tokens")


from ncjax.errors import DataError  # noqa: F401  (re-exported: every source raises it)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A whole data set in host memory: every data set of the paper fits.

    `train_x`/`test_x`: float32 [N, H, W, C] ('image'), float32 [N, D] ('vector')
    or int32 [N, max_len] token ids ('tokens'); `train_y`/`test_y`: int32 [N] in
    0..num_classes-1. `test_x`/`test_y` are None when the source has no test split.
    `vocab_size` is set only for 'tokens'.

    Data made for several values of a number that generates it (a mixture's SNR: see
    ``sources.VALUE_KEYS``) holds, per example, the *parts* every value combines
    (``train_x`` [N, P, ...]), and ``compose(parts, value)`` makes the inputs of one value, on
    the device: the runs of all values then share one array and one compiled program.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray | None
    test_y: np.ndarray | None
    num_classes: int
    kind: str
    name: str
    vocab_size: int | None = None
    compose: Callable[[Any, Any], Any] | None = None  # (parts [B, P, ...], value) → inputs [B, ...]; traceable

    def inputs(self, x, value):
        """The model inputs of rows ``x`` of a split, for data generated with ``value``."""
        return x if self.compose is None else self.compose(x, value)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DataError(f"Dataset kind must be one of {KINDS}, got {self.kind!r}")
        for x, y in ((self.train_x, self.train_y), (self.test_x, self.test_y)):
            if (x is None) != (y is None) or (x is not None and len(x) != len(y)):
                raise DataError(f"{self.name}: inputs and labels of a split differ in length")
