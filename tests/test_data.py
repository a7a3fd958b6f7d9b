"""Tests of ncjax.data: sources, subsets, batching, and TFDS on mock data (no downloads)."""

import gzip
import importlib.resources
import struct
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

import ncjax.data as data
from ncjax.data import tfds_source


def _config(**overrides):
    config = data.default_config()
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def mnist_5k():
    return data.load(_config(normalize=False))


@pytest.fixture(scope="module")
def mnist_5k_rows():
    """The embedded CSV read independently of the code under test (csv text, not np.loadtxt)."""
    path = importlib.resources.files("ncjax.data") / "mnist_5k.csv.gz"
    with path.open("rb") as f:
        lines = gzip.decompress(f.read()).decode().split()
    return np.array([[int(v) for v in line.split(",")] for line in lines])


# --- mnist_5k -----------------------------------------------------------------


def test_mnist_5k_shapes_and_split(mnist_5k, mnist_5k_rows):
    ds = mnist_5k
    assert (ds.name, ds.kind, ds.num_classes, ds.vocab_size) == ("mnist_5k", "image", 10, None)
    assert ds.train_x.shape == (4000, 28, 28, 1) and ds.train_x.dtype == np.float32
    assert ds.test_x.shape == (1000, 28, 28, 1) and ds.test_y.dtype == np.int32
    assert np.bincount(ds.train_y).tolist() == [400] * 10
    assert np.bincount(ds.test_y).tolist() == [100] * 10
    assert 0.0 <= ds.train_x.min() and ds.train_x.max() <= 1.0
    labels = mnist_5k_rows[:, -1]
    for c in (0, 7):
        rows = mnist_5k_rows[labels == c]
        np.testing.assert_allclose(
            ds.train_x[ds.train_y == c].reshape(400, -1), rows[:400, :-1] / 255.0, atol=1e-6
        )
        np.testing.assert_allclose(
            ds.test_x[ds.test_y == c].reshape(100, -1), rows[400:, :-1] / 255.0, atol=1e-6
        )


def test_mnist_5k_deterministic_and_normalized(mnist_5k):
    ds = data.load(_config())
    again = data.load(_config())
    np.testing.assert_array_equal(ds.train_x, again.train_x)
    np.testing.assert_array_equal(ds.train_y, mnist_5k.train_y)
    assert abs(float(ds.train_x.mean(dtype=np.float64))) < 1e-4
    assert abs(float(ds.train_x.std(dtype=np.float64)) - 1.0) < 1e-4
    mean, std = mnist_5k.train_x.mean(dtype=np.float64), mnist_5k.train_x.std(dtype=np.float64)
    np.testing.assert_allclose(ds.test_x, (mnist_5k.test_x - mean) / std, atol=1e-4)


def test_n_per_class_subset(mnist_5k):
    ds = data.load(_config(n_per_class=37, normalize=False), seed=3)
    assert np.bincount(ds.train_y).tolist() == [37] * 10
    assert ds.test_x.shape == mnist_5k.test_x.shape
    again = data.load(_config(n_per_class=37, normalize=False), seed=3)
    np.testing.assert_array_equal(ds.train_x, again.train_x)
    other = data.load(_config(n_per_class=37, normalize=False), seed=4)
    assert not np.array_equal(ds.train_x, other.train_x)
    full = mnist_5k.train_x.reshape(4000, -1)
    rows = {r.tobytes() for r in full}
    assert all(r.tobytes() in rows for r in ds.train_x.reshape(len(ds.train_x), -1))


# --- gaussian mixture -----------------------------------------------------------


def test_gaussian_mixture_shapes_and_snr():
    config = _config(source="gaussian_mixture")
    config.gaussian_mixture.update(num_classes=4, dim=16, n_per_class_train=3000, snr=2.0)
    ds = data.load(config, seed=1)
    assert (ds.kind, ds.num_classes) == ("vector", 4)
    assert ds.train_x.shape == (12000, 16) and ds.train_x.dtype == np.float32
    assert ds.test_x.shape == (400, 16)
    assert np.bincount(ds.train_y).tolist() == [3000] * 4
    x = ds.train_x.astype(np.float64)
    means = np.stack([x[ds.train_y == c].mean(0) for c in range(4)])
    noise_rms = np.sqrt(np.mean(np.sum((x - means[ds.train_y]) ** 2, axis=1)))
    np.testing.assert_allclose(noise_rms, np.sqrt(16), rtol=0.02)
    np.testing.assert_allclose(np.linalg.norm(means, axis=1) / noise_rms, 2.0, rtol=0.03)
    np.testing.assert_array_equal(ds.train_x, data.load(config, seed=1).train_x)
    assert not np.array_equal(ds.train_x, data.load(config, seed=2).train_x)


def test_gaussian_mixture_made_for_several_snrs_composes_each():
    """The parts (noise, signal at SNR 1) composed at an SNR give the mixture drawn at that SNR."""
    config = _config(source="gaussian_mixture", n_per_class=7)
    config.gaussian_mixture.update(num_classes=3, dim=5, n_per_class_train=20, n_per_class_test=4)
    parts = data.load(config, seed=3, values=(0.0, 0.5, 4.0))
    assert parts.train_x.shape == (21, 2, 5) and parts.test_x.shape == (12, 2, 5)
    for snr in (0.0, 0.5, 4.0):
        config.gaussian_mixture.snr = snr
        alone = data.load(config, seed=3)
        np.testing.assert_array_equal(parts.train_y, alone.train_y)
        for split in ("train_x", "test_x"):
            got = np.asarray(parts.inputs(getattr(parts, split), np.float32(snr)))
            np.testing.assert_allclose(got, getattr(alone, split), rtol=1e-6, atol=1e-6, err_msg=f"{split} {snr}")
    assert alone.inputs(alone.train_x, 7.0) is alone.train_x  # data of one value is its own input


def test_data_for_several_values_needs_a_generating_number_and_valid_values():
    with pytest.raises(data.DataError, match="'mnist_5k' has no generating number.*gaussian_mixture"):
        data.load(_config(), values=(1.0, 2.0))
    with pytest.raises(data.DataError, match="snr >= 0.*-1"):
        data.load(_config(source="gaussian_mixture"), values=(1.0, -1.0))
    with pytest.raises(data.DataError, match="snr=1e\\+39 is too large for float32 data in 32 dimensions"):
        data.load(_config(source="gaussian_mixture"), values=(1.0, 1e39))


# --- bad inputs -----------------------------------------------------------------


@pytest.mark.parametrize("source", ["cifar10", "tfds:", "mnist"])
def test_unknown_source(source):
    valid = r"unknown data.source.*mnist_5k.*gaussian_mixture.*tfds:<name>"
    with pytest.raises(data.DataError, match=valid):
        data.load(_config(source=source))


def test_n_per_class_too_large_or_not_positive():
    too_many = "n_per_class=401 but class 0 of mnist_5k has only 400"
    with pytest.raises(data.DataError, match=too_many):
        data.load(_config(n_per_class=401))
    with pytest.raises(data.DataError, match="positive"):
        data.load(_config(n_per_class=0))


def test_data_error_is_a_value_error():
    assert issubclass(data.DataError, ValueError)


# --- evaluation batches (training batches: tests/test_feed.py) ---------------------


def test_eval_batches_pad_the_tail():
    x = np.arange(1, 11, dtype=np.float32).reshape(10, 1)
    y = np.arange(10, dtype=np.int32)
    batches = list(data.eval_batches(x, y, 4))
    assert [b[0].shape for b in batches] == [(4, 1)] * 3
    np.testing.assert_array_equal(batches[-1][1], [8, 9, data.PAD_LABEL, data.PAD_LABEL])
    np.testing.assert_array_equal(batches[-1][0][2:], 0)
    labels = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(labels[labels != data.PAD_LABEL], y)
    parts = [list(data.eval_batches(x, y, 4, process_index=p, process_count=2)) for p in range(2)]
    for step, (bx, by) in enumerate(batches):
        np.testing.assert_array_equal(np.concatenate([parts[0][step][0], parts[1][step][0]]), bx)
        np.testing.assert_array_equal(np.concatenate([parts[0][step][1], parts[1][step][1]]), by)


# --- TFDS (local builders, mock data or an unreachable host; never a download) ------------


class NcjaxTestImages(tfds.core.GeneratorBasedBuilder):
    """A tiny image data set generated locally: TFDS's real prepare and read path, offline."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = {"image": tfds.features.Tensor(shape=(4, 4, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=3)}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(12), "test": self._generate_examples(6)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"image": np.full((4, 4, 1), 20 * i, np.uint8), "label": i % 3}


class NcjaxTestTexts(tfds.core.GeneratorBasedBuilder):
    """A tiny text data set generated locally."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2)}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(5):
            yield i, {"text": "é" * i, "label": i % 2}


def test_tfds_prepares_then_reads_array_record(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "reachable", lambda host, port: True)
    config = _config(source="tfds:ncjax_test_images", data_dir=str(tmp_path), normalize=False)
    ds = data.load(config)  # Not prepared: download_and_prepare generates it locally.
    assert (ds.kind, ds.num_classes) == ("image", 3)
    assert ds.train_x.shape == (12, 4, 4, 1) and ds.test_x.shape == (6, 4, 4, 1)
    index = np.rint(ds.train_x[:, 0, 0, 0] * 255 / 20).astype(int)
    assert sorted(index) == list(range(12))
    np.testing.assert_array_equal(ds.train_y, index % 3)
    config.update(normalize=True, download=False)
    again = data.load(config)  # Prepared now: read directly.
    assert abs(float(again.train_x.mean())) < 1e-5 and again.test_x.shape == (6, 4, 4, 1)


def test_tfds_text_as_bytes_from_array_record(tmp_path):
    builder = tfds.builder("ncjax_test_texts", data_dir=str(tmp_path))
    builder.download_and_prepare(file_format="array_record")
    config = _config(source="tfds:ncjax_test_texts", data_dir=str(tmp_path), max_len=7)
    ds = data.load(config)
    assert (ds.kind, ds.vocab_size, ds.train_x.shape, ds.test_x) == ("tokens", 257, (5, 7), None)
    lengths = (ds.train_x > 0).sum(1)
    assert sorted(lengths) == [0, 2, 4, 6, 7]  # 2 bytes per "é"; the 8 of "éééé" truncated
    np.testing.assert_array_equal(ds.train_y, ((lengths + 1) // 2) % 2)
    e_acute = [0xC3 + 1, 0xA9 + 1]
    np.testing.assert_array_equal(ds.train_x[lengths == 7][0], e_acute * 3 + e_acute[:1])


def _fake_prepared(name, root, splits):
    """Writes only the metadata of a prepared TFDS data set, so that mock_data reads it."""
    builder = tfds.builder(name, data_dir=root)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0)
        for split, n in splits.items()
    ]))
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)


@pytest.mark.parametrize(
    "name, shape, num_classes",
    [("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10), ("cifar100", (32, 32, 3), 100)],
)
def test_tfds_images_on_mock_data(tmp_path, name, shape, num_classes):
    _fake_prepared(name, str(tmp_path), {"train": 24, "test": 24})
    config = _config(source=f"tfds:{name}", data_dir=str(tmp_path), download=False, normalize=False)
    with tfds.testing.mock_data(num_examples=24, data_dir=str(tmp_path)):
        ds = data.load(config)
    assert (ds.name, ds.kind, ds.num_classes) == (f"tfds:{name}", "image", num_classes)
    assert ds.train_x.shape == (24, *shape) and ds.train_x.dtype == np.float32
    assert ds.test_x.shape == (24, *shape) and ds.test_y.dtype == np.int32
    assert 0.0 <= ds.train_x.min() and ds.train_x.max() <= 1.0
    assert ds.train_x.max() > 0.5
    assert 0 <= ds.train_y.min() and ds.train_y.max() < num_classes


def test_tfds_imdb_reviews_as_bytes_on_mock_data(tmp_path, monkeypatch):
    texts = ["ab", "é" * 10]
    source = [{"text": t, "label": np.int64(i)} for i, t in enumerate(texts)]
    monkeypatch.setattr(tfds_source, "reachable", lambda host, port: True)  # Never download.
    config = _config(source="tfds:imdb_reviews", data_dir=str(tmp_path), max_len=8)
    with tfds.testing.mock_data(as_data_source_fn=lambda self, split: source):
        ds = data.load(config)
    assert (ds.kind, ds.num_classes, ds.vocab_size) == ("tokens", 2, 257)
    assert ds.train_x.shape == (2, 8) and ds.train_x.dtype == np.int32
    np.testing.assert_array_equal(ds.train_x[0], [ord("a") + 1, ord("b") + 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(ds.train_x[1], [0xC3 + 1, 0xA9 + 1] * 4)  # truncated UTF-8
    np.testing.assert_array_equal(ds.train_y, [0, 1])


def test_tfds_imdb_reviews_mock_generated(tmp_path):
    _fake_prepared("imdb_reviews", str(tmp_path), {"train": 6, "test": 6})
    config = _config(source="tfds:imdb_reviews", data_dir=str(tmp_path), download=False)
    with tfds.testing.mock_data(num_examples=6, data_dir=str(tmp_path)):
        ds = data.load(config)
    assert ds.train_x.shape == ds.test_x.shape == (6, 256)
    assert ds.train_x.min() >= 0 and ds.train_x.max() <= 256
    assert (ds.train_x[:, 0] > 0).all()


def test_tfds_unprepared_and_unreachable_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "reachable", lambda host, port: False)
    with pytest.raises(data.DataError) as error:
        data.load(_config(source="tfds:cifar10", data_dir=str(tmp_path)))
    message = str(error.value)
    assert "\n" not in message
    for part in ("'cifar10'", str(tmp_path), "www.cs.toronto.edu", "tfds build cifar10"):
        assert part in message
    assert "--config.data.source" in message


def test_tfds_unprepared_offline_fails_within_seconds(tmp_path):
    """The real probe, on this offline machine; skipped where the host is reachable."""
    if tfds_source.reachable("storage.googleapis.com", 443):
        pytest.skip("network reachable: this would download mnist")
    start = time.monotonic()
    expected = r"'mnist' is not prepared in .*cannot be reached.*tfds build mnist"
    with pytest.raises(data.DataError, match=expected):
        data.load(_config(source="tfds:mnist", data_dir=str(tmp_path)))
    assert time.monotonic() - start < 10


def test_tfds_preparing_images_needs_tensorflow(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "reachable", lambda host, port: True)
    monkeypatch.setattr(tfds_source, "_has_tensorflow", lambda: False)  # Never download.
    with pytest.raises(data.DataError, match="'cifar10' is not prepared .*needs tensorflow"):
        data.load(_config(source="tfds:cifar10", data_dir=str(tmp_path)))


def test_tfds_download_disabled(tmp_path):
    with pytest.raises(data.DataError, match=r"'mnist' is not prepared .*data.download=False"):
        data.load(_config(source="tfds:mnist", data_dir=str(tmp_path), download=False))


def test_tfds_bad_name_and_features(tmp_path):
    with pytest.raises(data.DataError, match="tfds:no_such_data_set_xyz"):
        data.load(_config(source="tfds:no_such_data_set_xyz", data_dir=str(tmp_path)))
    with pytest.raises(data.DataError, match="reads 'image' or 'text' with 'label'"):
        data.load(_config(source="tfds:squad", data_dir=str(tmp_path)))


# --- IDX folders (files written here; the layout MNIST, Fashion-MNIST and KMNIST ship in) ------


def _idx_bytes(values, type_code=0x08, fmt="B"):
    """An IDX file written with struct, independently of the reader: header, big-endian values."""
    values = np.asarray(values)
    header = bytes([0, 0, type_code, values.ndim]) + struct.pack(f">{values.ndim}I", *values.shape)
    return header + struct.pack(f">{values.size}{fmt}", *values.ravel().tolist())


def _write(folder, name, content):
    (folder / name).write_bytes(gzip.compress(content) if name.endswith(".gz") else content)


def _idx_split(rng, n, shape=(5, 7), num_classes=3):
    labels = np.arange(n) % num_classes
    return rng.integers(0, 256, size=(n, *shape)), rng.permutation(labels)


@pytest.fixture
def idx_folder(tmp_path):
    """Train raw and gzipped, test spelt '.idx3-ubyte': every kind of name the reader accepts."""
    rng = np.random.default_rng(0)
    splits = {"train": _idx_split(rng, 12), "test": _idx_split(rng, 6)}
    _write(tmp_path, "train-images-idx3-ubyte", _idx_bytes(splits["train"][0]))
    _write(tmp_path, "train-labels-idx1-ubyte.gz", _idx_bytes(splits["train"][1]))
    _write(tmp_path, "t10k-images.idx3-ubyte.gz", _idx_bytes(splits["test"][0]))
    _write(tmp_path, "t10k-labels.idx1-ubyte", _idx_bytes(splits["test"][1]))
    return tmp_path, splits


def test_idx_reads_raw_gzip_and_both_spellings(idx_folder):
    folder, splits = idx_folder
    ds = data.load(_config(source=f"idx:{folder}", normalize=False))
    assert (ds.name, ds.kind, ds.num_classes, ds.vocab_size) == (f"idx:{folder}", "image", 3, None)
    for x, y, (pixels, labels) in ((ds.train_x, ds.train_y, splits["train"]),
                                   (ds.test_x, ds.test_y, splits["test"])):
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.shape == (len(pixels), 5, 7, 1)
        np.testing.assert_allclose(x[..., 0], pixels / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(y, labels)


def test_idx_prefers_uncompressed_and_goes_through_subset_and_normalize(idx_folder):
    folder, splits = idx_folder
    _write(folder, "train-images-idx3-ubyte.gz", b"not read: the uncompressed file comes first")
    ds = data.load(_config(source=f"idx:{folder}", n_per_class=2), seed=1)
    assert np.bincount(ds.train_y).tolist() == [2, 2, 2] and ds.test_x.shape == (6, 5, 7, 1)
    kept = np.flatnonzero(np.isin(np.arange(12), _kept_rows(splits["train"][1], 2, seed=1)))
    raw = splits["train"][0][kept] / 255.0
    np.testing.assert_allclose(ds.train_x[..., 0], (raw - raw.mean()) / raw.std(), atol=1e-5)
    np.testing.assert_allclose(
        ds.test_x[..., 0], (splits["test"][0] / 255.0 - raw.mean()) / raw.std(), atol=1e-5
    )


def _kept_rows(labels, n_per_class, seed):
    """subset_per_class's documented rule: the first n of each class in the seed's permutation."""
    order = np.random.default_rng(seed).permutation(len(labels))
    return np.concatenate([order[labels[order] == c][:n_per_class] for c in np.unique(labels)])


def test_idx_without_test_files_has_no_test_split(idx_folder):
    folder, _ = idx_folder
    for name in ("t10k-images.idx3-ubyte.gz", "t10k-labels.idx1-ubyte"):
        (folder / name).unlink()
    ds = data.load(_config(source=f"idx:{folder}"))
    assert ds.test_x is None and ds.test_y is None and ds.train_x.shape == (12, 5, 7, 1)


def test_idx_parses_multibyte_big_endian_types():
    from ncjax.data.idx_source import parse_idx

    shorts = np.array([[[1, -2], [300, -32768]]])
    np.testing.assert_array_equal(parse_idx(_idx_bytes(shorts, 0x0B, "h"), "x"), shorts)
    floats = np.array([0.5, -1.25e3, 3.0])
    np.testing.assert_array_equal(parse_idx(_idx_bytes(floats, 0x0D, "f"), "x"), floats)


def _break(folder, case):
    """Damages the fixture's folder in one way a user could meet."""
    if case == "byte-swapped magic":
        content = (folder / "train-images-idx3-ubyte").read_bytes()
        _write(folder, "train-images-idx3-ubyte", bytes([3, 8, 0, 0]) + content[4:])
    elif case == "truncated":
        content = (folder / "train-images-idx3-ubyte").read_bytes()
        _write(folder, "train-images-idx3-ubyte", content[:-10])
    elif case == "truncated gzip":
        content = (folder / "train-labels-idx1-ubyte.gz").read_bytes()
        (folder / "train-labels-idx1-ubyte.gz").write_bytes(content[: len(content) // 2])
    elif case == "count mismatch":
        _write(folder, "train-labels-idx1-ubyte.gz", _idx_bytes(np.arange(11) % 3))
    elif case == "labels missing":
        (folder / "train-labels-idx1-ubyte.gz").unlink()
    elif case == "one test file":
        (folder / "t10k-labels.idx1-ubyte").unlink()
    elif case == "images as labels":
        _write(folder, "train-labels-idx1-ubyte.gz", _idx_bytes(np.zeros((12, 5, 7), int)))
    elif case == "class without examples":
        _write(folder, "train-labels-idx1-ubyte.gz", _idx_bytes(np.arange(12) % 2 * 2))
    elif case == "one class":
        _write(folder, "train-labels-idx1-ubyte.gz", _idx_bytes(np.zeros(12, int)))
        _write(folder, "t10k-labels.idx1-ubyte", _idx_bytes(np.zeros(6, int)))
    elif case == "test size differs":
        _write(folder, "t10k-images.idx3-ubyte.gz", _idx_bytes(np.zeros((6, 7, 5), int)))
    elif case == "empty folder":
        for path in folder.iterdir():
            path.unlink()


@pytest.mark.parametrize("case, expected", [
    ("byte-swapped magic", "train-images-idx3-ubyte is not an IDX file: it starts with 03080000"),
    ("truncated", r"promises \(12, 5, 7\) uint8 values \(436 bytes\) but the file has 426"),
    ("truncated gzip", "train-labels-idx1-ubyte.gz is not a readable gzip file"),
    ("count mismatch", "has 11 labels but train-images-idx3-ubyte has 12 images"),
    ("labels missing", "has train-images-idx3-ubyte but no train-labels-idx1-ubyte.*config.data"),
    ("one test file", "has t10k-images.idx3-ubyte.gz but no t10k-labels-idx1-ubyte"),
    ("images as labels", r"uint8 values of shape \(12, 5, 7\); expected integer class labels"),
    ("class without examples", "class 1 of 0..2 has no training example"),
    ("one class", "a single class"),
    ("test size differs", r"test images are \(7, 5\) pixels but training images \(5, 7\)"),
    ("empty folder", "no training files; expected train-images-idx3-ubyte, .*config.data.source"),
])
def test_idx_broken_folder_is_a_one_line_data_error(idx_folder, case, expected):
    folder, _ = idx_folder
    _break(folder, case)
    with pytest.raises(data.DataError, match=expected) as error:
        data.load(_config(source=f"idx:{folder}"))
    assert "\n" not in str(error.value) and str(folder) in str(error.value)


def test_idx_missing_folder_names_the_expected_files(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(data.DataError, match="is not a folder; --config.data.source=idx:<folder>"):
        data.load(_config(source=f"idx:{missing}"))
