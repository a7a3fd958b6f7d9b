"""The data config and the one entry point that turns it into a Dataset."""

from __future__ import annotations

import math

import ml_collections
from ml_collections import config_dict

from ncjax.data.dataset import DataError, Dataset
from ncjax.data.gaussian_mixture import make_gaussian_mixture, make_gaussian_mixture_parts
from ncjax.data.idx_source import load_idx
from ncjax.data.mnist_5k import load_mnist_5k
from ncjax.data.synthetic_sequences import make_synthetic_sequences
from ncjax.data.tfds_source import load_tfds
from ncjax.data.transforms import normalize_images, subset_per_class

TFDS_PREFIX = "tfds:"
IDX_PREFIX = "idx:"
VALID_SOURCES = (
    "'mnist_5k' (embedded, offline), 'gaussian_mixture', 'synthetic_sequences', 'tfds:<name>' "
    "(e.g. tfds:mnist, tfds:fashion_mnist, tfds:cifar10, tfds:cifar100, tfds:imdb_reviews), or "
    "'idx:<folder>' (MNIST-style IDX files, offline, e.g. idx:/usr/share/datasets/fashion-mnist "
    "from Debian's dataset-fashion-mnist)"
)

# Per source, the config key of the number that generates its data without changing its shapes: runs
# that differ in it alone train in one program (``load(..., values=...)``).
VALUE_KEYS = {"gaussian_mixture": "gaussian_mixture.snr"}


def value_key(source: str) -> str | None:
    """``'data.<key>'`` of the generating number of data source ``source`` (the mixture's SNR), or None."""
    key = VALUE_KEYS.get(source)
    return None if key is None else f"data.{key}"


def default_config() -> ml_collections.ConfigDict:
    """The data section of a run config (`config.data`); every field is overridable."""
    return ml_collections.ConfigDict({
        "source": "mnist_5k",
        "data_dir": config_dict.placeholder(str),  # TFDS data_dir; None = TFDS default.
        "download": True,  # Let TFDS download and prepare a missing data set.
        "n_per_class": config_dict.placeholder(int),  # Training subset per class; None = all.
        "max_len": 256,  # Text: bytes per sequence.
        "normalize": True,  # Images: standardise channels with train statistics.
        "placement": "auto",  # Training data: auto | device | host (see ncjax.data.feed.choose).
        "gaussian_mixture": {
            "num_classes": 10,
            "dim": 32,
            "n_per_class_train": 100,
            "n_per_class_test": 100,
            "snr": 1.0,  # ||class mean|| / RMS noise norm; see make_gaussian_mixture.
        },
        "synthetic_sequences": {  # label = the most frequent cue token; see make_synthetic_sequences
            "num_classes": 2,
            "vocab_size": 64,
            "length": 64,
            "n_per_class_train": 500,
            "n_per_class_test": 200,
        },
    })


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise DataError (a ValueError) for a generating number no data can be made from (before any is)."""
    snr = config.gaussian_mixture.snr
    if not (isinstance(snr, (int, float)) and not isinstance(snr, bool) and math.isfinite(snr) and snr >= 0):
        raise DataError(f"data.gaussian_mixture.snr={snr!r} must be a finite number >= 0")
    if config.n_per_class is not None and (not isinstance(config.n_per_class, int) or config.n_per_class < 1):
        raise DataError(f"data.n_per_class={config.n_per_class!r} must be a positive integer (or unset: all)")


def load(config: ml_collections.ConfigDict, seed: int = 0, values=None) -> Dataset:
    """Loads `config.source` fully into host memory.

    `values`: the values of the source's generating number (:func:`value_key`) the data
    is made for at once; the Dataset then holds parts and composes them per value
    (``Dataset.compose``). Only for a source in ``VALUE_KEYS``.

    Then, in this order: keeps `n_per_class` training examples per class (chosen
    by `seed`) when set, and standardises images when `normalize` is set (vector
    and token data are left as they are, so the Gaussian mixture keeps its SNR).
    `seed` also draws the Gaussian mixture.
    """
    source = config.source
    if values is not None and source not in VALUE_KEYS:
        raise DataError(f"data.source {source!r} has no generating number to make the data for several values "
                        f"of; sources that have one: {', '.join(VALUE_KEYS)}")
    if source == "mnist_5k":
        ds = load_mnist_5k()
    elif source == "gaussian_mixture":
        gm = config.gaussian_mixture
        sizes = (gm.num_classes, gm.dim, gm.n_per_class_train, gm.n_per_class_test)
        ds = (make_gaussian_mixture(*sizes, gm.snr, seed) if values is None
              else make_gaussian_mixture_parts(*sizes, tuple(values), seed))
    elif source == "synthetic_sequences":
        sq = config.synthetic_sequences
        ds = make_synthetic_sequences(
            sq.num_classes, sq.vocab_size, sq.length, sq.n_per_class_train, sq.n_per_class_test, seed
        )
    elif source.startswith(TFDS_PREFIX) and len(source) > len(TFDS_PREFIX):
        if config.max_len < 1:
            raise DataError(f"data.max_len must be positive, got {config.max_len}")
        ds = load_tfds(source[len(TFDS_PREFIX):], config.data_dir, config.download, config.max_len)
    elif source.startswith(IDX_PREFIX) and len(source) > len(IDX_PREFIX):
        ds = load_idx(source[len(IDX_PREFIX):])
    else:
        raise DataError(f"unknown data.source {source!r}; valid sources: {VALID_SOURCES}")
    if config.n_per_class is not None:
        ds = subset_per_class(ds, config.n_per_class, seed)
    if config.normalize and ds.kind == "image":
        ds = normalize_images(ds)
    return ds
