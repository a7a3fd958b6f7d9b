"""The ``fashion`` preset end to end on tiny IDX files, with the fixed-ETF + cross-entropy baseline."""

import importlib
import struct

import jax
import ml_collections
import numpy as np
import pytest

from ncjax import data, models, records
from ncjax.checkpoints import GroupCheckpoints
from ncjax.continual import runner

CLASSES, TRAIN, TEST, KEEP, SIDE, SEEDS, STEPS = 10, 12, 4, 8, 6, (0, 1), 6


def _idx(values) -> bytes:
    """IDX bytes written from the format's definition: 0, 0, type 0x08 (uint8), ndim, big-endian sizes, values."""
    values = np.asarray(values, np.uint8)
    return bytes([0, 0, 0x08, values.ndim]) + struct.pack(f">{values.ndim}I", *values.shape) + values.tobytes()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", TRAIN), ("t10k", TEST)):
        labels = np.repeat(np.arange(CLASSES), n)
        images = rng.integers(0, 60, (len(labels), SIDE * SIDE))
        images[np.arange(len(labels)), labels] = 255  # class c: pixel c bright
        images = images.reshape(-1, SIDE, SIDE)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(images))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels))
    config = importlib.import_module("ncjax.configs.continual").get_config("fashion")
    config.data.source, config.data.n_per_class = f"idx:{folder}", KEEP
    config.seeds, config.model.width = SEEDS, 16
    config.continual.methods, config.continual.scenarios = ("fixed_etf_ce",), ("class_incremental",)
    config.train.update(steps=STEPS, batch_size=8, learning_rate=0.1)
    config.checkpoint.every_steps, config.log_every_steps, config.eval_batch_size, config.progress = STEPS, 3, 16, False
    workdir = tmp_path_factory.mktemp("continual") / "w"
    runner.run(config, workdir)
    return workdir, workdir / "method_fixed_etf_ce-scenario_class_incremental", config, folder


def test_the_preset_reads_fashion_mnist_idx_files_with_the_training_subset():
    config = importlib.import_module("ncjax.configs.continual").get_config("fashion")
    assert config.data.source == "idx:/usr/share/datasets/fashion-mnist" and config.data.n_per_class == 400
    assert "fixed_etf_ce" in config.continual.methods and len(config.seeds) == 3


def test_fixed_etf_ce_keeps_its_etf_and_scores_by_it(finished):
    """Five tasks of two classes from the IDX files (KEEP of the TRAIN images per class); the targets are
    a simplex ETF of all ten classes, the same at every task's end; each recorded accuracy equals the
    cosine-to-the-ETF argmax over the seen classes, recomputed from the checkpoint in float64."""
    workdir, point, config, folder = finished
    checkpoints = GroupCheckpoints(point, read_only=True)
    try:
        ends = [checkpoints.restore_params(STEPS * (t + 1)) for t in range(5)]
    finally:
        checkpoints.close()
    assert ends[0][1]["rows_per_task"] == [2 * KEEP] * 5
    stored = records.read_config(workdir)
    module = models.build(ml_collections.ConfigDict(stored["model"]))
    test = data.load(config.data)  # the test split whole, standardised by the kept training images
    for m, seed in enumerate(SEEDS):
        v = np.asarray(ends[0][0]["targets"][m], np.float64)
        np.testing.assert_allclose(v @ v.T, (np.eye(CLASSES) - 1 / CLASSES) * CLASSES / (CLASSES - 1), atol=2e-6)
        for tree, _ in ends[1:]:
            np.testing.assert_array_equal(np.asarray(tree["targets"][m]), ends[0][0]["targets"][m])
        lines = records.read_metrics(point / f"seed_{seed}")
        assert [line["num_seen"] for line in lines] == [2, 4, 6, 8, 10]
        assert all(line["predicts_with"] == "targets" for line in lines)
        params = jax.tree.map(lambda a: a[m], ends[-1][0]["model"])
        h = np.asarray(module.apply({"params": params}, test.test_x)[1]["features"], np.float64)
        predicted = (h / np.linalg.norm(h, axis=1, keepdims=True) @ v.T).argmax(1)  # all ten classes are seen
        labels = np.asarray(test.test_y)
        assert len(labels) == CLASSES * TEST
        expected = [np.mean(predicted[labels // 2 == t] == labels[labels // 2 == t]) for t in range(5)]
        np.testing.assert_allclose(lines[-1]["accuracy_per_task"], expected, atol=1e-9)
