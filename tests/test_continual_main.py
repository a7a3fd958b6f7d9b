"""Continual runs end to end through ``python -m ncjax.main``: the workdir, resume after kill -9, bad input."""

import csv
import importlib.util
import json
import math
import shutil
import time

import numpy as np
import pytest
from test_main import REPO, _files, _sizes, _start, _until, metrics_lines, ncjax, tree_digest

from ncjax.checkpoints import GroupCheckpoints
from ncjax.continual import config as continual_config
from ncjax.continual import runner
from ncjax.continual.etf import random_etf
from ncjax.errors import ConfigError, DataError

QUICK = ["--config=configs/continual.py:quick"]
PRONC = "method_pronc_replay-scenario_class_incremental"
POINTS = (PRONC, "method_fixed_etf-scenario_class_incremental", "method_finetune-scenario_class_incremental")
TASKS, STEPS, SEEDS, K, WIDTH = 3, 12, (0, 1), 6, 16


def _preset(name):
    spec = importlib.util.spec_from_file_location("continual_config_file", REPO / "configs" / "continual.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(name)


def _quick():
    return _preset("quick")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("continual") / "w"
    ncjax(*QUICK, f"--workdir={workdir}", check=0)
    return workdir


def _gram_is_simplex_etf(v):
    k = len(v)
    np.testing.assert_allclose(v @ v.T, (np.eye(k) - 1 / k) * k / (k - 1), atol=2e-6)


def test_one_line_per_task_with_accuracy_forgetting_and_collapse(finished):
    for point in POINTS:
        for seed in SEEDS:
            lines = metrics_lines(finished / point / f"seed_{seed}")
            assert [r["task"] for r in lines] == list(range(TASKS))
            assert [r["step"] for r in lines] == [STEPS * (t + 1) for t in range(TASKS)]
            acc = np.full((TASKS, TASKS), np.nan)
            for r in lines:
                acc[r["task"], : r["task"] + 1] = r["accuracy_per_task"]
            for t, r in enumerate(lines):
                assert r["seed"] == seed and r["num_seen"] == 2 * (t + 1)
                assert all(0 <= a <= 1 for a in r["accuracy_per_task"])
                assert r["average_accuracy"] == pytest.approx(np.mean(acc[t, : t + 1]))
                expected = np.mean([acc[j:t, j].max() - acc[t, j] for j in range(t)]) if t else math.nan
                assert r["forgetting"] == pytest.approx(expected, nan_ok=True)
                for metric in ("nc1", "nc1_quotient", "nc2_etf_w", "nc3", "nc4"):
                    assert np.isfinite(r[metric]), (point, metric)
            rule = [r["predicts_with"] for r in lines]
            assert rule == {"method_pronc_replay": ["head", "targets", "targets"],
                            "method_fixed_etf": ["targets"] * 3, "method_finetune": ["head"] * 3}[point.split("-")[0]]
            log = _log(finished / point / f"seed_{seed}")
            assert [r["step"] for r in log] == list(range(4, TASKS * STEPS + 1, 4))
            assert all(np.isfinite(r["loss"]) and r["task"] == (r["step"] - 1) // STEPS for r in log)
    # ProNC distils from the second task on
    assert all((r["distill"] > 0) == (r["task"] > 0) for r in _log(finished / PRONC / "seed_0"))


def _log(run):
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_summary_table_and_figure(finished):
    rows = list(csv.DictReader((finished / "summary.csv").open()))
    for point in POINTS:
        method = point.split("-")[0].removeprefix("method_")
        mine = [r for r in rows if r["method"] == method]
        assert [r["seed"] for r in mine] == ["0", "1", "mean", "std"]
        finals = [metrics_lines(finished / point / f"seed_{s}")[-1] for s in SEEDS]
        for key in ("average_accuracy", "forgetting", "nc1", "nc3"):
            values = [f[key] for f in finals]
            assert float(mine[2][key]) == pytest.approx(np.mean(values), rel=1e-5)
            assert float(mine[3][key]) == pytest.approx(np.std(values, ddof=1), rel=1e-5, abs=1e-9)
    assert (finished / "continual.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_and_figure_redrawn_from_the_workdir_alone(finished, tmp_path):
    copy = tmp_path / "w"
    shutil.copytree(finished, copy)
    (copy / "summary.csv").unlink()
    (copy / "continual.png").unlink()
    ncjax(f"--workdir={copy}", module="ncjax.continual", check=0)
    assert (copy / "summary.csv").read_text() == (finished / "summary.csv").read_text()
    assert (copy / "continual.png").exists()


def _restore(folder, step):
    checkpoints = GroupCheckpoints(folder, read_only=True)
    try:
        return checkpoints.restore_params(step)
    finally:
        checkpoints.close()


def test_checkpoints_hold_what_the_next_task_needs(finished):
    """The buffer joins every later task's rows; ProNC's targets grow with minimal movement and stay a simplex
    ETF of the seen classes; the teacher of a task is the model that ended the previous one; the fixed ETF is
    the seeded random one."""
    ends = {t: _restore(finished / PRONC, STEPS * (t + 1)) for t in range(TASKS)}
    for t, (tree, meta) in ends.items():
        assert meta["task"] == t and meta["step_in_task"] == STEPS
        assert meta["rows_per_task"] == [64, 64 + 12, 64 + 12]  # 2 classes × 32 rows, then + the 12-sample buffer
        for m in range(len(SEEDS)):
            targets = np.asarray(tree["targets"][m], np.float64)
            _gram_is_simplex_etf(targets[: 2 * (t + 1)])
            assert not targets[2 * (t + 1):].any()
            if t:
                old, new = np.asarray(ends[t - 1][0]["targets"][m], np.float64)[: 2 * t], targets[: 2 * t]
                k, k_new = 2 * t, 2 * (t + 1)
                alpha = math.sqrt(k_new * (k - 1) / (k * (k_new - 1)))  # the closed-form minimum 2K(1 − α)
                assert np.sum((new - old) ** 2) == pytest.approx(2 * k * (1 - alpha), rel=1e-5)
    for t in (1, 2):
        np.testing.assert_array_equal(np.asarray(ends[t][0]["teacher"]["head"]["classifier"]["kernel"]),
                                      np.asarray(ends[t - 1][0]["model"]["head"]["classifier"]["kernel"]))
    fixed, _ = _restore(finished / POINTS[1], STEPS * TASKS)
    for m, seed in enumerate(SEEDS):
        np.testing.assert_array_equal(np.asarray(fixed["targets"][m]), random_etf(K, WIDTH, seed).astype(np.float32))


def test_kill_9_at_several_instants_then_the_same_result(finished, tmp_path):
    """kill -9 during start-up, a save, after a checkpoint, a metrics write and a train-log append; the rerun
    finishes with ProNC's metrics and train log equal to those of the uninterrupted run."""
    args = [*QUICK, "--config.continual.methods=('pronc_replay',)"]
    workdir = tmp_path / "killed"
    events = {
        "start-up": lambda snap: lambda: time.time() > snap["t"] + 3.0,
        "save in flight": lambda snap: lambda: bool(_files(workdir, "*/checkpoints/*orbax-checkpoint-tmp*")),
        "new checkpoint": lambda snap: lambda: _files(workdir, "*/checkpoints/[0-9]*") != snap["steps"],
        "metrics write": lambda snap: lambda: _sizes(workdir, "*/seed_*/metrics.jsonl") != snap["metrics"],
        "train-log append": lambda snap: lambda: _sizes(workdir, "*/seed_*/train_log.jsonl") != snap["log"],
    }
    killed = 0
    for kind in events:
        snap = dict(t=time.time(), steps=_files(workdir, "*/checkpoints/[0-9]*"),
                    metrics=_sizes(workdir, "*/seed_*/metrics.jsonl"), log=_sizes(workdir, "*/seed_*/train_log.jsonl"))
        process = _start(workdir, *args)
        _until(process, events[kind](snap))
        if process.poll() is None:
            process.kill()
            killed += 1
        process.communicate(timeout=300)
    assert killed >= 4
    ncjax(*args, f"--workdir={workdir}", check=0)
    for seed in SEEDS:
        run, straight = workdir / PRONC / f"seed_{seed}", finished / PRONC / f"seed_{seed}"
        assert metrics_lines(run) == metrics_lines(straight)
        assert (run / "train_log.jsonl").read_text() == (straight / "train_log.jsonl").read_text()


@pytest.mark.parametrize("override, message", [
    ("--config.continual.methods=('pronk',)", "unknown value 'pronk'"),
    ("--config.continual.num_tasks=4", "do not divide into 4 tasks"),
])
def test_bad_config_through_the_command_is_one_line_exit_2(tmp_path, override, message):
    result = ncjax(*QUICK, override, f"--workdir={tmp_path / 'w'}", check=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("change, error, message", [
    (lambda c: setattr(c.model, "width", 4), ConfigError, "feature width >= 5"),
    (lambda c: setattr(c.continual, "buffer_size", 0) or setattr(c.continual, "methods", ("pronc_replay",)),
     ConfigError, "buffer_size=0"),
    (lambda c: setattr(c.train, "batch_size", 12), ConfigError, "divisible"),
    (lambda c: setattr(c.train, "batch_size", 128), ConfigError, "smallest task"),
    (lambda c: setattr(c.continual, "scenarios", ("domain_incremental",)), ConfigError, "domain_incremental"),
    (lambda c: setattr(c.continual, "align_weight", -1.0), ConfigError, "align_weight"),
    (lambda c: setattr(c.continual, "class_order", (0, 1, 2, 3, 4, 9)), DataError, "class_order"),
])
def test_bad_config_values_fail_before_anything_is_written(tmp_path, change, error, message):
    config = _quick()
    change(config)
    with pytest.raises(error, match=message):
        runner.run(config, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_validation_accepts_every_preset():
    for preset in ("quick", "default", "fashion", "paper"):
        continual_config.validate(_preset(preset))


def test_workdir_of_another_config_is_refused(finished):
    before = tree_digest(finished)
    result = ncjax(*QUICK, "--config.continual.distill_weight=1.0", f"--workdir={finished}", check=2)
    assert "different config" in result.stderr and "continual.distill_weight" in result.stderr
    assert tree_digest(finished) == before
