"""Data for ncjax: TFDS, the embedded MNIST subset, Gaussian mixtures, and their batches (``feed``: training).

Imports nothing else of ncjax.
"""

from ncjax.data.batches import PAD_LABEL, eval_batches
from ncjax.data.dataset import DataError, Dataset
from ncjax.data.sources import default_config, load, validate, value_key

__all__ = [
    "PAD_LABEL",
    "DataError",
    "Dataset",
    "default_config",
    "eval_batches",
    "load",
    "validate",
    "value_key",
]
