"""The configs of the neighbouring papers run end to end (quick presets) and record what their papers need."""

import csv
import importlib
import json
import shutil

import numpy as np
import pytest

from ncjax import errors, records
from ncjax.evaluate.reevaluate import reevaluate
from ncjax.sweep import runner as sweep


def _run(name, tmp_path):
    config = importlib.import_module(f"ncjax.configs.{name}").get_config("quick")
    config.progress = False
    return _run_config(config, tmp_path / name)


def _run_config(config, workdir):
    sweep.run(config, workdir)
    return workdir, list(csv.DictReader((workdir / "summary.csv").open()))


@pytest.fixture(scope="module")
def shallow_snr(tmp_path_factory):
    return _run("shallow_snr", tmp_path_factory.mktemp("snr"))


def test_shallow_snr_records_collapse_and_test_accuracy_per_point(shallow_snr):
    workdir, rows = shallow_snr
    assert [(r["depth"], float(r["data.gaussian_mixture.snr"]), r["seed"]) for r in rows] == [
        ("1", 0.3, "0"), ("1", 0.3, "1"), ("1", 3.0, "0"), ("1", 3.0, "1")]
    assert all(0 <= float(r["test_accuracy"]) <= 1 and float(r["nc1_quotient"]) > 0 for r in rows)
    high, low = [[float(r["nc1_quotient"]) for r in rows if float(r["data.gaussian_mixture.snr"]) == s]
                 for s in (3.0, 0.3)]
    assert max(high) < min(low)  # separable data collapse more
    slopes = list(csv.DictReader((workdir / "slopes.csv").open()))
    assert {s["metric"] for s in slopes} >= {"nc1_quotient", "nc2_etf_w"}
    assert (workdir / "nc_vs_snr-depth_001.png").exists()
    shows_a_result(workdir, rows)


def test_snrs_train_in_one_program_as_they_train_apart(shallow_snr, tmp_path):
    """The SNR generates the data without changing its shapes: every SNR and seed of a depth is one
    group (one program, one checkpoint folder), and each run equals the same SNR trained alone (the
    data composed on the device: equal up to float32 rounding)."""
    workdir, rows = shallow_snr
    assert sorted(p.parent.name for p in workdir.glob("*/checkpoints")) == ["depth_001"]
    alone = importlib.import_module("ncjax.configs.shallow_snr").get_config("quick")
    alone.progress, alone.sweep, alone.data.gaussian_mixture.snr = False, (), 3.0
    sweep.run(alone, tmp_path / "alone")
    apart = list(csv.DictReader((tmp_path / "alone" / "summary.csv").open()))
    together = [r for r in rows if float(r["data.gaussian_mixture.snr"]) == 3.0]
    for key in ("train_loss", "test_accuracy", "nc1_quotient", "nc2_etf_w", "l2_penalty"):
        np.testing.assert_allclose([float(r[key]) for r in together], [float(r[key]) for r in apart], rtol=1e-4,
                                   err_msg=key)


def test_shallow_snr_width_preset_fits_collapse_against_the_width(tmp_path):
    """The width preset at toy sizes: the width is the slope axis, the SNR splits the panels, and each
    seed's slope is the least-squares slope of log10(NC1) on log10(width) of summary.csv (last3 columns)."""
    config = importlib.import_module("ncjax.configs.shallow_snr").get_config("width")
    assert config.summary.slope_axis == "model.width" and dict(config.sweep)["model.width"][-1] == 4096
    assert "ufm" not in config.evaluate.evaluators
    config.progress, config.depths = False, (1,)
    config.sweep = (("model.width", (8, 64)), ("data.gaussian_mixture.snr", (0.3, 3.0)))
    config.data.gaussian_mixture.update(dim=8, n_per_class_train=20)
    config.train.steps = 40  # (steps take precedence over the preset's epochs)
    config.checkpoint.every_steps, config.evaluate.every_steps, config.log_every_steps = 40, 20, 20
    workdir, rows = _run_config(config, tmp_path / "width")
    assert sorted({int(r["model.width"]) for r in rows}) == [8, 64]
    assert all(0 <= float(r["test_accuracy"]) <= 1 for r in rows)
    slopes = [s for s in csv.DictReader((workdir / "slopes.csv").open()) if s["metric"] == "nc1_quotient"]
    for snr in ("0.3", "3.0"):
        for seed in ("0", "1"):
            mine = [r for r in rows if r["data.gaussian_mixture.snr"] == snr and r["seed"] == seed]
            x = np.log10([float(r["model.width"]) for r in mine])
            y = np.log10([float(r["nc1_quotient_last3"]) for r in mine])
            got = next(s for s in slopes if s["seed"] == seed and float(s["data.gaussian_mixture.snr"]) == float(snr))
            np.testing.assert_allclose(float(got["slope_last3"]), np.polyfit(x, y, 1)[0], rtol=1e-6)
    assert sorted(p.name for p in workdir.glob("nc_vs_width-*.png")) == [
        "nc_vs_width-depth_001-snr_0.3.png", "nc_vs_width-depth_001-snr_3.png"]
    shows_a_result(workdir, rows)


def test_only_a_source_with_a_generating_number_shares_a_program_across_its_values():
    """The SNR is a member of the group for the mixture; for MNIST (swept beside it) it is not a number
    of the data, so its points get a program each (and their data is loaded whole)."""
    from ncjax import plan

    config = importlib.import_module("ncjax.configs.shallow_snr").get_config("quick")
    config.sweep = (("data.source", ("gaussian_mixture", "mnist_5k")), ("data.gaussian_mixture.snr", (0.3, 3.0)))
    got = [(g.name, g.data_values(), len(g.runs)) for g in plan.groups(config)]
    assert got == [("depth_001-source_gaussian_mixture", (0.3, 0.3, 3.0, 3.0), 4),
                   ("depth_001-source_mnist_5k-snr_0.3", None, 2), ("depth_001-source_mnist_5k-snr_3", None, 2)]


def test_max_members_splits_a_group_into_programs_that_train_the_same(shallow_snr, tmp_path):
    """Depths packed, SNRs vmapped, data streamed from the host, five runs per program: the depth-1
    runs equal the fixture's (one program of four, data on the device), and re-evaluation agrees."""
    config = importlib.import_module("ncjax.configs.shallow_snr").get_config("quick")
    config.progress, config.max_members, config.pack, config.depths = False, 5, True, (1, 2)
    config.data.placement = "host"
    workdir, rows = _run_config(config, tmp_path / "parts")
    assert sorted(p.parent.name for p in workdir.glob("*/checkpoints")) == ["packed-part_0", "packed-part_1"]
    depth1 = [r for r in rows if r["depth"] == "1"]
    for key in ("train_loss", "test_accuracy", "nc1_quotient"):
        np.testing.assert_allclose([float(r[key]) for r in depth1], [float(r[key]) for r in shallow_snr[1]],
                                   rtol=1e-5, err_msg=key)
    before = (workdir / "summary.csv").read_text()
    reevaluate(workdir)
    assert (workdir / "summary.csv").read_text() == before
    config.max_members = 0
    with pytest.raises(errors.ConfigError, match="max_members=0 must be a positive integer"):
        sweep.run(config, tmp_path / "never")
    config.max_members, config.sweep = None, (("data.gaussian_mixture.snr", ("high", 1.0)),)
    with pytest.raises(errors.ConfigError, match="'high' is not of type float"):
        sweep.run(config, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_a_workdir_grouped_differently_is_refused_untouched(shallow_snr, tmp_path):
    """An older ncjax trained each SNR in its own group: resuming its workdir would restart them."""
    workdir = tmp_path / "older"
    shutil.copytree(shallow_snr[0], workdir)
    (workdir / "depth_001-snr_3" / "checkpoints").mkdir()
    metrics = workdir / "depth_001-snr_3" / "seed_0" / "metrics.jsonl"
    before = metrics.read_bytes()
    config = importlib.import_module("ncjax.configs.shallow_snr").get_config("quick")
    config.progress = False
    with pytest.raises(errors.WorkdirError, match="grouped the runs differently"):
        sweep.run(config, workdir)
    config.max_members = 2  # a different experiment is named as one, before the layout is looked at
    with pytest.raises(errors.WorkdirError, match="different config .differs in: max_members"):
        sweep.run(config, workdir)
    assert metrics.read_bytes() == before


def shows_a_result(workdir, rows, slopes=True):
    """What a quick preset promises (issue 22): every run passes the failed-run rule, and the paper's NC1
    has a slope with a finite spread over seeds in every panel."""
    assert [r["status"] for r in rows] == ["ok"] * len(rows), [(r["status"], r["reason"]) for r in rows]
    if slopes:
        table = [r for r in csv.DictReader((workdir / "slopes.csv").open()) if r["metric"] == "nc1_quotient"]
        spreads = [float(r["slope"]) for r in table if r["seed"] == "std"]
        assert spreads and all(np.isfinite(spreads)), table


def test_linear_head_sweeps_the_head_depth(tmp_path):
    workdir, rows = _run("linear_head", tmp_path)
    assert sorted(int(r["model.head_depth"]) for r in rows) == [1, 1, 2, 2, 4, 4]
    config = json.loads((workdir / "config.json").read_text())
    assert config["summary"]["slope_axis"] == "model.head_depth"
    line = records.read_metrics(workdir / "depth_003-head_depth_2-loss_ce-l2_0.001" / "seed_0")[-1]
    assert line["model.head_depth"] == 2 and line["train.loss"] == "ce"
    assert len(line["balancedness_per_layer"]) == 2
    shows_a_result(workdir, rows)


@pytest.mark.parametrize("preset", ["sgd,quick", "momentum,quick"])
def test_linear_head_gradient_descent_quick_presets_show_a_result(tmp_path, preset):
    config = importlib.import_module("ncjax.configs.linear_head").get_config(preset)
    config.progress = False
    workdir, rows = _run_config(config, tmp_path / "head")
    lines = records.read_metrics(workdir / "depth_003-head_depth_2-loss_ce-l2_0.001" / "seed_0")
    assert [line["step"] for line in lines] == [100, 200, 300]
    assert all(len(line["balancedness_per_layer"]) == 2 for line in lines)
    shows_a_result(workdir, rows)


@pytest.mark.parametrize("preset", ["sgd", "momentum"])
def test_linear_head_gradient_descent_presets_train_long_enough_to_balance(preset):
    """Under gradient flow on loss + λ‖θ‖² a linear pair's imbalance W_{l+1}ᵀW_{l+1} − W_l W_lᵀ − b_l b_lᵀ
    shrinks by e^{−4λt}; heavy ball with step η and momentum β moves t by η/(1−β) a step. Every λ of the
    preset reaches e^{−4λt} ≤ e^{−3} ≈ 0.05, on the whole training set, at a constant step, without biases."""
    config = importlib.import_module("ncjax.configs.linear_head").get_config(preset)
    t = config.train
    flow_time = t.steps * t.learning_rate / (1.0 - t.momentum)
    assert (t.optimizer, t.schedule, t.l2_form, config.model.use_bias) == ("sgd", "constant", "full", False)
    assert t.momentum == {"sgd": 0.0, "momentum": 0.9}[preset]
    assert all(np.exp(-4.0 * l2 * flow_time) <= np.exp(-3.0) + 1e-12 for l2 in dict(config.sweep)["train.l2"])
    gm = config.data.gaussian_mixture
    assert t.batch_size == gm.num_classes * gm.n_per_class_train
    assert dict(config.sweep)["model.head_depth"] == (0, 1, 2, 4, 8)


@pytest.mark.parametrize("name, preset", [("vit_depth", "quick"), ("text_depth", "synthetic,quick")])
def test_the_quick_presets_show_a_result(tmp_path, name, preset):
    config = importlib.import_module(f"ncjax.configs.{name}").get_config(preset)
    config.progress = False
    shows_a_result(*_run_config(config, tmp_path / name))


def test_training_dynamics_records_loss_and_gradient_norm_often(tmp_path):
    workdir, _ = _run("training_dynamics", tmp_path)
    lines = records.read_metrics(workdir / "depth_002" / "seed_0")
    assert [line["step"] for line in lines] == [25, 50, 75, 100]
    assert all(line["gradient_norm"] > 0 and line["train_loss"] > 0 for line in lines)
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert (workdir / "collapse_vs_loss.png").exists()
    shows_a_result(workdir, list(csv.DictReader((workdir / "summary.csv").open())), slopes=False)  # one depth


def test_a_config_stored_by_an_older_ncjax_gets_todays_defaults_for_new_keys():
    from ncjax import config as ncjax_config

    stored = ncjax_config.base_config().to_dict()
    del stored["evaluate"]["per_block"], stored["summary"]  # keys that older workdirs lack
    stored["train"]["l2"], stored["depths"] = 0.123, [2, 5]
    config = ncjax_config.stored_config(stored)
    assert config.evaluate.per_block == ncjax_config.base_config().evaluate.per_block
    assert config.summary.min_train_accuracy == 0.99
    assert config.train.l2 == 0.123 and list(config.depths) == [2, 5]


@pytest.mark.parametrize("name", ["linear_head", "resnet_depth", "shallow_snr", "text_depth", "training_dynamics",
                                  "vit_depth", "continual"])
def test_every_preset_is_a_valid_config(name):
    """Each word of each preset group gives a config its runner accepts (checked before any data is loaded)."""
    from ncjax import config as ncjax_config
    from ncjax.continual import config as continual_config

    module = importlib.import_module(f"ncjax.configs.{name}")
    for word in sorted({w for words in module.PRESETS.values() for w in words}):
        config = module.get_config(word)
        (continual_config.validate if config.get("kind") == "continual" else ncjax_config.validate)(config)
