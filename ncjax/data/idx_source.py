"""Folders of IDX files: full-size MNIST, Fashion-MNIST and KMNIST without a network.

IDX is the format these data sets are distributed in, and Debian/Ubuntu's
`dataset-fashion-mnist` package installs the whole Fashion-MNIST (60,000 + 10,000
images) in it under /usr/share/datasets/fashion-mnist. The format is small enough
to read here with numpy, so the source needs neither TFDS nor a download.
"""

from __future__ import annotations

import gzip
import math
import zlib

import numpy as np
from absl import logging
from etils import epath

from ncjax.data.dataset import DataError, Dataset

# IDX header: two zero bytes, a type code, the number of dimensions, then one
# big-endian uint32 per dimension; the values follow in C order, big-endian.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SPLIT_PREFIXES = {"train": "train", "test": "t10k"}
EXPECTED_FILES = (
    "train-images-idx3-ubyte, train-labels-idx1-ubyte and optionally t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte (each may end in .gz; '.idx3-ubyte' spellings are accepted too)"
)


def load_idx(folder: str) -> Dataset:
    """Loads the train split (and the t10k test split, when present) of an IDX folder.

    Images become float32 [N, H, W, 1] in [0, 1], labels int32; `num_classes` is
    the largest label + 1, which must be at least 2, and every class must occur in
    training (class means are undefined otherwise).
    Without both t10k files the data set has no test split (a warning says so).
    """
    root = epath.Path(folder).expanduser()
    name = f"idx:{folder}"
    if not root.is_dir():
        raise DataError(
            f"{name}: {root} is not a folder; --config.data.source=idx:<folder> names a folder "
            f"holding {EXPECTED_FILES}"
        )
    train = _load_split(root, "train", name)
    if train is None:
        raise DataError(
            f"{name}: {root} has no training files; expected {EXPECTED_FILES}; "
            "point --config.data.source=idx:<folder> at the folder that holds them"
        )
    test = _load_split(root, "test", name)
    if test is None:
        logging.warning("%s: no t10k-*-ubyte files in %s, so there is no test split", name, root)
    elif test[0].shape[1:] != train[0].shape[1:]:
        raise DataError(
            f"{name}: test images are {test[0].shape[1:]} pixels but training images "
            f"{train[0].shape[1:]}; the two splits must come from one data set"
        )
    num_classes = 1 + max(int(split[1].max()) for split in (train, test) if split is not None)
    if num_classes < 2:
        raise DataError(f"{name}: every label is 0, a single class; collapse needs at least 2")
    absent = np.flatnonzero(np.bincount(train[1], minlength=num_classes) == 0)
    if len(absent):
        raise DataError(
            f"{name}: class {absent[0]} of 0..{num_classes - 1} has no training example; "
            "labels must run 0..K-1 with every class in the training split"
        )

    def as_images(pixels):
        return np.divide(pixels[..., None], 255.0, dtype=np.float32)

    return Dataset(
        train_x=as_images(train[0]),
        train_y=train[1],
        test_x=None if test is None else as_images(test[0]),
        test_y=None if test is None else test[1],
        num_classes=num_classes,
        kind="image",
        name=name,
    )


def read_idx(path: epath.Path) -> np.ndarray:
    """The array one IDX file holds (gunzipped when its name ends in .gz), in native byte order."""
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # Bad header, truncated, corrupt stream.
            raise DataError(f"{path} is not a readable gzip file ({e}); download it again") from e
    return parse_idx(raw, str(path))


def parse_idx(raw: bytes, origin: str) -> np.ndarray:
    """The array in the bytes of an IDX file, checked against its header; `origin` names it."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DataError(
            f"{origin} is not an IDX file: it starts with {raw[:4].hex() or 'nothing'}, not 0000 "
            f"then a type code ({', '.join(f'{c:02x}' for c in IDX_TYPES)}) and a dimension count"
        )
    ndim = raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataError(f"{origin} is truncated: {len(raw)} bytes, shorter than its IDX header")
    shape = tuple(int(n) for n in np.frombuffer(raw, ">u4", ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    count = math.prod(shape)
    if len(raw) != start + count * dtype.itemsize:
        raise DataError(
            f"{origin}: its header promises {shape} {dtype.name} values "
            f"({start + count * dtype.itemsize} bytes) but the file has {len(raw)} bytes; "
            "it is truncated or not an IDX file, download it again"
        )
    values = np.frombuffer(raw, dtype, count, offset=start).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=False)


def _load_split(root: epath.Path, split: str, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(uint8 images [N, H, W], int32 labels [N]) of a split; None when both files are absent."""
    prefix = SPLIT_PREFIXES[split]
    images_path = _find(root, prefix, "images", 3)
    labels_path = _find(root, prefix, "labels", 1)
    if images_path is None and labels_path is None:
        return None
    if images_path is None or labels_path is None:
        found, missing = (
            (images_path, f"{prefix}-labels-idx1-ubyte")
            if labels_path is None
            else (labels_path, f"{prefix}-images-idx3-ubyte")
        )
        raise DataError(
            f"{name}: {root} has {found.name} but no {missing}[.gz]; the {split} split needs both "
            f"(expected {EXPECTED_FILES}); fix the folder or --config.data.source"
        )
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or len(images) == 0:
        raise DataError(
            f"{images_path} holds {images.dtype.name} values of shape {images.shape}; "
            "expected unsigned bytes [N >= 1, height, width] (grey-scale pixels 0-255)"
        )
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise DataError(
            f"{labels_path} holds {labels.dtype.name} values of shape {labels.shape}; "
            "expected integer class labels [N]"
        )
    if len(labels) != len(images):
        raise DataError(
            f"{name}: {labels_path.name} has {len(labels)} labels but {images_path.name} has "
            f"{len(images)} images; the two files of a split must match"
        )
    if labels.min() < 0:
        raise DataError(f"{labels_path} has negative labels; class labels run 0..K-1")
    return images, labels.astype(np.int32)


def _find(root: epath.Path, prefix: str, what: str, ndim: int) -> epath.Path | None:
    """The first spelling found: uncompressed before .gz (faster to read), '-idx' before '.idx'."""
    for suffix in ("", ".gz"):
        for separator in ("-", "."):
            path = root / f"{prefix}-{what}{separator}idx{ndim}-ubyte{suffix}"
            if path.is_file():
                return path
    return None
