"""``python -m ncjax.collapse``: files in, a table and JSON out; bad files, arrays or options give one line and exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from nc_reference import reference_details, reference_metrics, reference_rhubarbwu

from ncjax import collapse
from ncjax.collapse import __main__ as command
from ncjax.collapse import files

ROOT = Path(__file__).resolve().parents[1]


def data(seed=0, k=4, d=8, n=240, layers=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n).astype(np.int32)
    means = rng.normal(size=(k, d)) * 2
    noise = rng.normal(size=(max(layers, 1), n, d)) * np.linspace(0.3, 1.5, max(layers, 1))[:, None, None]
    h = (means[y][None] + noise).astype(np.float32)
    w = rng.normal(size=(k, d)).astype(np.float32)
    b = rng.normal(size=k).astype(np.float32)
    ood = (rng.normal(size=(max(layers, 1), 60, d)) + 1.0).astype(np.float32)
    return (h if layers else h[0]), y, w, b, (ood if layers else ood[0])


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ncjax.collapse", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                       "JAX_PLATFORMS": "cpu", "HOME": str(cwd)})


def test_npz_with_layers_classifier_and_ood(tmp_path):
    h, y, w, b, ood = data(layers=3)
    np.savez(tmp_path / "feats.npz", features=h, labels=y, weight=w, bias=b, ood_features=ood)
    done = run(tmp_path / "feats.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "feats.collapse.json").read_text())
    assert report["layers"] == 3 and report["num_samples"] == y.size and report["num_classes"] == 4
    values = report["metrics"]
    for layer in range(3):
        want = reference_metrics(h[layer], y, 4, ood=ood[layer])
        for name in ("nc1", "cdnv", "nc2_etf", "gnc2_log", "ncc_accuracy", "nc5", "effective_rank_means"):
            assert values[name][layer] == pytest.approx(want[name], rel=2e-4), name
    last = reference_metrics(h[-1], y, 4, w, b)
    for name in collapse.CLASSIFIER:
        assert values[name] == pytest.approx(last[name], rel=2e-4, abs=1e-9), name
    assert "nc1" in done.stdout and "(last layer)" in done.stdout


def test_npy_pair_with_separate_weight(tmp_path):
    h, y, w, b, _ = data(seed=1)
    for name, array in (("h", h), ("y", y), ("w", w), ("b", b)):
        np.save(tmp_path / f"{name}.npy", array)
    done = run("h.npy", "--weight", "w.npy", "y.npy", "--bias=b.npy", "--json", "out.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    values = json.loads((tmp_path / "out.json").read_text())["metrics"]
    want = reference_metrics(h, y, 4, w, b)
    assert set(values) == set(collapse.METRIC_NAMES) - {"nc5", "effective_rank_features"}
    for name, value in values.items():
        assert value == pytest.approx(want[name], rel=2e-4, abs=1e-9), name


def test_a_file_that_is_not_numpy_is_one_line_and_status_2(tmp_path):
    (tmp_path / "bad.npz").write_text("not an array")
    done = run(tmp_path / "bad.npz", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "neither an .npy nor an .npz" in done.stderr


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("no_labels", "lacks array(s) ['labels']"),
    ("one_npy", "give the labels too"),
    ("float_labels", "labels must be a 1-D integer array"),
    ("short_labels", "features must be [N, D] or [L, N, D] with N = 10"),
    ("few_classes", "labels must lie in [0, 2)"),
    ("bad_weight", "weight must be [num_classes, dim] = [4, 8]"),
    ("bad_flag", "Unknown command line flag 'frobnicate'"),
    ("nan_features", "features: 2 of 1920 values are non-finite"),
    ("inf_weight", "weight: 1 of 32 values are non-finite"),
    ("nan_labels", "labels: 1 of 240 values are non-finite"),
    ("zero_dim", "features have D = 0 dimensions"),
    ("zero_classes", "--num-classes must be at least 2; got 0"),
    ("bad_conventions", "value should be one of <ncjax|rhubarbwu>"),
    ("missing_value", "Missing value for flag --json"),
    ("no_paths", "give FEATURES.npz, FEATURES.safetensors or FEATURES.npy LABELS.npy"),
])
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, case, message):
    h, y, w, _, _ = data(seed=2)
    np.save(tmp_path / "h.npy", h)
    np.save(tmp_path / "y.npy", y)
    argv = {
        "missing": [str(tmp_path / "nope.npz")],
        "no_labels": [str(tmp_path / "a.npz")],
        "one_npy": [str(tmp_path / "h.npy")],
        "float_labels": [str(tmp_path / "h.npy"), str(tmp_path / "yf.npy")],
        "short_labels": [str(tmp_path / "h.npy"), str(tmp_path / "y10.npy")],
        "few_classes": [str(tmp_path / "h.npy"), str(tmp_path / "y.npy"), "--num-classes=2"],
        "bad_weight": [str(tmp_path / "h.npy"), str(tmp_path / "y.npy"), f"--weight={tmp_path / 'wt.npy'}"],
        "bad_flag": [str(tmp_path / "h.npy"), str(tmp_path / "y.npy"), "--frobnicate"],
        "nan_features": [str(tmp_path / "hnan.npy"), str(tmp_path / "y.npy")],
        "inf_weight": [str(tmp_path / "h.npy"), str(tmp_path / "y.npy"), f"--weight={tmp_path / 'winf.npy'}"],
        "nan_labels": [str(tmp_path / "h.npy"), str(tmp_path / "ynan.npy")],
        "zero_dim": [str(tmp_path / "h0.npy"), str(tmp_path / "y.npy")],
        "zero_classes": [str(tmp_path / "h.npy"), str(tmp_path / "y.npy"), "--num-classes=0"],
        "bad_conventions": [str(tmp_path / "h.npy"), str(tmp_path / "y.npy"), "--conventions", "torch"],
        "missing_value": [str(tmp_path / "h.npy"), str(tmp_path / "y.npy"), "--json"],
        "no_paths": ["--covariance"],
    }[case]
    np.savez(tmp_path / "a.npz", features=h)
    np.save(tmp_path / "yf.npy", y.astype(np.float32))
    np.save(tmp_path / "y10.npy", y[:10])
    np.save(tmp_path / "wt.npy", w.T)
    np.save(tmp_path / "hnan.npy", np.where(np.isin(np.arange(h.size).reshape(h.shape), [5, 700]), np.nan, h))
    np.save(tmp_path / "winf.npy", np.where(np.arange(w.size).reshape(w.shape) == 3, np.inf, w))
    np.save(tmp_path / "ynan.npy", np.where(np.arange(y.size) == 7, np.nan, y))
    np.save(tmp_path / "h0.npy", h[:, :0])
    assert command.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error:") and message in err, err


def test_uncompressed_npz_is_memory_mapped_and_compressed_is_read(tmp_path):
    h, y, *_ = data(seed=3)
    fortran = np.asfortranarray(h)
    np.savez(tmp_path / "plain.npz", features=fortran, labels=y)
    np.savez_compressed(tmp_path / "packed.npz", features=h, labels=y)
    plain = files.read_array(tmp_path / "plain.npz")
    assert isinstance(plain["features"], np.memmap)
    np.testing.assert_array_equal(plain["features"], h)
    np.testing.assert_array_equal(files.read_array(tmp_path / "packed.npz")["features"], h)
    np.save(tmp_path / "h.npy", h)
    assert isinstance(files.read_array(tmp_path / "h.npy"), np.memmap)


def test_safetensors_gives_the_npz_result(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    h, y, w, b, ood = data(seed=4)
    arrays = dict(features=h, labels=y.astype(np.int64), weight=w, bias=b, ood_features=ood)
    np.savez(tmp_path / "f.npz", **arrays)
    safetensors_numpy.save_file(arrays, tmp_path / "f.safetensors")
    assert command.main([str(tmp_path / "f.npz")]) == 0
    assert command.main([str(tmp_path / "f.safetensors"), "--json", str(tmp_path / "s.json")]) == 0
    from_npz = json.loads((tmp_path / "f.collapse.json").read_text())["metrics"]
    from_safetensors = json.loads((tmp_path / "s.json").read_text())["metrics"]
    assert from_safetensors == from_npz
    want = reference_metrics(h, y, 4, w, b, ood)
    for name, value in from_safetensors.items():
        assert value == pytest.approx(want[name], rel=2e-4, abs=1e-9), name


def test_without_the_safetensors_package_one_line_says_what_to_install(tmp_path, capsys, monkeypatch):
    (tmp_path / "f.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors now raises ImportError
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    assert command.main([str(tmp_path / "f.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "install safetensors (pip install safetensors)" in err, err


def test_big_endian_npz_is_read(tmp_path):
    h, y, w, b, _ = data(seed=5)
    np.savez(tmp_path / "be.npz", features=h.astype(">f4"), labels=y.astype(">i8"), weight=w.astype(">f4"),
             bias=b.astype(">f4"))
    assert command.main([str(tmp_path / "be.npz")]) == 0
    values = json.loads((tmp_path / "be.collapse.json").read_text())["metrics"]
    want = reference_metrics(h, y, 4, w, b)
    for name, value in values.items():
        assert value == pytest.approx(want[name], rel=2e-4, abs=1e-9), name


def test_rhubarbwu_conventions_and_details(tmp_path):
    h, y, w, _, _ = data(seed=6, n=300)
    np.savez(tmp_path / "f.npz", features=h, labels=y, weight=w)
    assert command.main([str(tmp_path / "f.npz"), "--conventions=rhubarbwu", "--details"]) == 0
    report = json.loads((tmp_path / "f.collapse.json").read_text())
    want = reference_rhubarbwu(h, y, 4, w)
    assert report["conventions"] == "rhubarbwu"
    assert report["metrics"]["nc4"] == pytest.approx(want["nc4"], abs=1e-12)
    assert report["metrics"]["nc1"] == pytest.approx(want["nc1"], rel=2e-4)
    details = reference_details(h, y, 4, "classes")
    np.testing.assert_allclose(report["details"]["class_mean_norms"], details["class_mean_norms"], rtol=2e-4)
    np.testing.assert_allclose(report["details"]["pairwise_cosines"], details["pairwise_cosines"], rtol=2e-4,
                               atol=1e-6)


def test_help_lists_the_options(tmp_path):
    done = run("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for option in ("--weight", "--bias", "--ood-features", "--num-classes", "--[no]covariance", "--chunk",
                   "--conventions", "--[no]details", "--json", ".safetensors"):
        assert option in done.stdout, option
