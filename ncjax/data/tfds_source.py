"""TFDS data sets read into host memory without TensorFlow.

TensorFlow Datasets is an optional extra (`pip install 'ncjax[tfds]'`), imported only when a
`tfds:` source is loaded.

A missing data set on a machine without network must fail in seconds with a
message saying how to prepare it: TFDS itself retries for minutes offline.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import urllib.parse

import numpy as np

from ncjax.data.dataset import DataError, Dataset

TOKEN_VOCAB_SIZE = 257  # token id = UTF-8 byte + 1; 0 is padding
PROBE_TIMEOUT_S = 3.0
_GCS_HOST = ("storage.googleapis.com", 443)


def load_tfds(name: str, data_dir: str | None, download: bool, max_len: int) -> Dataset:
    """Loads the 'train' and (when present) 'test' splits of TFDS data set `name`.

    Image data sets (features 'image' and 'label') give float32 [N, H, W, C] in
    [0, 1]. Text data sets (features 'text' and 'label', e.g. imdb_reviews) give
    byte-level tokens: the first `max_len` UTF-8 bytes, id = byte + 1, padded with
    0 to `max_len`. A data set that is not prepared is downloaded and prepared in
    the array_record format (readable without TensorFlow) when `download` allows.
    """
    tfds = _import_tfds(name)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # TFDS raises several types for a bad name, config or version.
        raise DataError(f"tfds:{name}: {_first_line(e)}") from e
    features = builder.info.features
    input_key = next((k for k in ("image", "text") if k in features), None)
    if input_key is None or "label" not in features:
        raise DataError(
            f"tfds:{name} has features {sorted(features)}; "
            "ncjax reads 'image' or 'text' with 'label'"
        )
    if not builder.is_prepared():
        encodes_images = isinstance(features[input_key], tfds.features.Image)
        _prepare(builder, name, download, encodes_images)

    def split(split_name):
        inputs, labels = _read_split(builder, split_name, input_key)
        if input_key == "image":
            inputs = np.divide(np.stack(inputs), 255.0, dtype=np.float32)
        else:
            inputs = bytes_to_tokens(inputs, max_len)
        return inputs, labels.astype(np.int32)

    train_x, train_y = split("train")
    test_x, test_y = split("test") if "test" in builder.info.splits else (None, None)
    return Dataset(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=features["label"].num_classes,
        kind="image" if input_key == "image" else "tokens",
        name=f"tfds:{name}",
        vocab_size=None if input_key == "image" else TOKEN_VOCAB_SIZE,
    )


def _import_tfds(name: str):
    """TFDS, imported only for `tfds:` sources: an optional extra (`ncjax[tfds]`).

    Lazy also because the import takes a second that mnist_5k runs skip.
    """
    try:
        import tensorflow_datasets as tfds
    except ModuleNotFoundError as e:
        if e.name != "tensorflow_datasets":
            raise  # TFDS is there but broken: its own traceback says more.
        raise DataError(f"tfds:{name} needs TensorFlow Datasets: pip install 'ncjax[tfds]'") from None
    return tfds


def bytes_to_tokens(texts, max_len: int) -> np.ndarray:
    """UTF-8 bytes of each text, truncated to `max_len`, as ids byte+1, right-padded with 0."""
    tokens = np.zeros((len(texts), max_len), np.int32)
    for i, text in enumerate(texts):
        raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        row = np.frombuffer(raw[:max_len], np.uint8)
        tokens[i, : len(row)] = row.astype(np.int32) + 1
    return tokens


def _read_split(builder, split_name: str, input_key: str):
    """Every example of a split as (list of inputs, int labels)."""
    try:
        source = builder.as_data_source(split_name)
    except NotImplementedError:  # Prepared elsewhere as tfrecord: only tf.data reads it.
        return _read_split_with_tf(builder, split_name, input_key)
    examples = [source[i] for i in range(len(source))]
    return [ex[input_key] for ex in examples], np.array([ex["label"] for ex in examples])


def _read_split_with_tf(builder, split_name: str, input_key: str):
    if not _has_tensorflow():
        raise DataError(
            f"tfds:{builder.name} is prepared in {builder.data_dir} as tfrecord, which needs "
            "tensorflow to read: `pip install tensorflow`, or rebuild it with `tfds build "
            f"{builder.name} --data_dir={builder.data_dir_root} --file_format=array_record`"
        )
    import tensorflow_datasets as tfds

    arrays = tfds.as_numpy(builder.as_dataset(split_name, batch_size=-1))
    return list(arrays[input_key]), np.asarray(arrays["label"])


def _prepare(builder, name: str, download: bool, encodes_images: bool) -> None:
    """Downloads and prepares a missing data set, or says in one line why it cannot."""
    root = builder.data_dir_root
    missing = f"TFDS data set {name!r} is not prepared in {root}"
    how = (
        "prepare it on a machine with network and tensorflow "
        f"(`tfds build {name} --data_dir={root} --file_format=array_record`) and copy "
        f"{root}/{builder.name} here, or choose another --config.data.source (e.g. mnist_5k)"
    )
    if not download:
        raise DataError(f"{missing} and data.download=False; {how}")
    for host, port in download_hosts(builder):
        if not reachable(host, port):
            raise DataError(f"{missing} and its download host {host} cannot be reached; {how}")
    if encodes_images and not _has_tensorflow():
        raise DataError(
            f"{missing}, and TFDS needs tensorflow to encode its images "
            f"(`pip install tensorflow`); or {how}"
        )
    try:
        builder.download_and_prepare(file_format="array_record")
    except Exception as e:  # Network, disk and checksum failures mean the same to the user.
        raise DataError(
            f"preparing TFDS data set {name!r} in {root} failed ({_first_line(e)}); {how}"
        ) from e


def download_hosts(builder) -> list[tuple[str, int]]:
    """(host, port) of every URL the builder downloads from, per its registered checksums.

    Without registered URLs the GCS host stands in as the test of being online.
    """
    hosts = set()
    for url in builder.url_infos or {}:
        parts = urllib.parse.urlsplit(url)
        if parts.hostname:
            hosts.add((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)))
    return sorted(hosts) or [_GCS_HOST]


def reachable(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection opens within `timeout` seconds, DNS lookup included.

    DNS lookups ignore socket timeouts, so the probe runs in a daemon thread that
    is abandoned when the timeout passes.
    """
    opened = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)


def _has_tensorflow() -> bool:
    """TFDS needs TensorFlow only to read tfrecord files and to encode images."""
    return importlib.util.find_spec("tensorflow") is not None


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
