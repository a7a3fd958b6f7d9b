"""The optional Weights & Biases writer (``--config.dashboard.wandb=True``), in W&B's offline mode.

A quick sweep trains with the writer on; what W&B recorded (read back from its offline run files,
``run-<id>.wandb``: a LevelDB-style log of ``wandb_internal_pb2.Record`` protos) must be what the run's
own files hold: every train_log.jsonl line under ``train/*`` at ``train/step``, every scalar and
per-block value of every metrics.jsonl line under ``eval/*`` / ``blocks/*`` at ``eval/step``, the run's
HParams as its W&B config, the final paper metrics in its summary.
"""

from __future__ import annotations

import importlib
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ncjax import config as configs
from ncjax.errors import ConfigError


def _records(path: Path) -> list:
    """The records of a W&B transaction log: a 7-byte header (``:W&B``, magic, version), then LevelDB log
    blocks of 32 KiB holding chunks (CRC-32C, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    out, pending, i = [], b"", 7
    while i + 7 <= len(data):
        if block - i % block < 7:  # a block's tail too short for a chunk header is padding
            i += block - i % block
            continue
        length, kind = struct.unpack("<HB", data[i + 4:i + 7])
        pending += data[i + 7:i + 7 + length]
        i += 7 + length
        if kind in (1, 4):
            out.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return out


def _wandb_runs(folder: Path) -> dict[str, dict]:
    """{job type: {display name: {group, config, history rows, summary}}} of every offline W&B run under
    ``folder``."""
    runs = {}
    for log in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        run = dict(config={}, history=[], summary={})
        for record in _records(log):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run["name"] = record.run.display_name
                run["group"], run["job_type"] = record.run.run_group, record.run.job_type
                run["config"].update({item.key: json.loads(item.value_json) for item in record.run.config.update})
            elif kind == "config":
                run["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
            elif kind == "history":
                run["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                       for item in record.history.item})
            elif kind == "summary":
                run["summary"].update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                       for item in record.summary.update})
        runs.setdefault(run["job_type"], {})[run["name"]] = run
    return runs


def _rows(history: list[dict], axis: str) -> dict[int, dict]:
    """History rows on one step axis, merged by step: {step: {key: value}}."""
    rows: dict[int, dict] = {}
    for row in history:
        if axis in row:
            rows.setdefault(int(row[axis]), {}).update(row)
    return rows


def test_wandb_logs_the_scalars_and_hparams_of_every_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    from ncjax.sweep import runner

    config = importlib.import_module("ncjax.configs.resnet_depth").get_config("quick")
    config.depths, config.train.steps, config.checkpoint.every_steps, config.log_every_steps = (2,), 20, 10, 5
    config.progress, config.dashboard.wandb = False, True
    workdir = tmp_path / "w"
    runner.run(config, workdir)

    stored = json.loads((workdir / "config.json").read_text())
    assert stored["dashboard"]["wandb"] is True
    logged = _wandb_runs(tmp_path)["training"]
    assert sorted(logged) == ["depth_002/seed_0", "depth_002/seed_1"]
    for name, run in logged.items():
        assert run["group"] == "w"  # the workdir's name
        folder = workdir / name
        metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        train_log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
        # HParams: the run's values, as config.json and its metrics lines state them.
        assert run["config"]["depth"] == metrics[-1]["depth"] == 2
        assert run["config"]["seed"] == metrics[-1]["seed"] == int(name[-1])
        assert run["config"]["l2"] == pytest.approx(stored["train"]["l2"])
        assert run["config"]["learning_rate"] == pytest.approx(stored["train"]["learning_rate"])
        assert run["config"]["width"] == stored["model"]["width"]
        assert run["config"]["data"] == stored["data"]["source"]
        # The train log, line by line.
        train = _rows(run["history"], "train/step")
        assert sorted(train) == [line["step"] for line in train_log] == [5, 10, 15, 20]
        for line in train_log:
            for key in ("loss", "data_loss", "l2_penalty", "accuracy", "grad_norm"):
                assert train[line["step"]][f"train/{key}"] == pytest.approx(line[key], rel=1e-12), key
        # Every evaluation: each finite scalar and each per-block value.
        evaluations = _rows(run["history"], "eval/step")
        assert sorted(evaluations) == [line["step"] for line in metrics]
        for line in metrics:
            row = evaluations[line["step"]]
            assert row["eval/nc1_quotient"] == pytest.approx(line["nc1_quotient"], rel=1e-12)
            for key, value in line.items():
                if key in ("step", "seed", "depth"):
                    continue
                if isinstance(value, float) and math.isfinite(value):
                    assert row[f"eval/{key}"] == pytest.approx(value, rel=1e-12), key
                elif key.endswith("_per_block"):
                    for block, v in enumerate(value, 1):
                        assert row[f"blocks/{key[:-10]}/block_{block:03d}"] == pytest.approx(v, rel=1e-12), key
        assert run["summary"]["final/nc1_quotient"] == pytest.approx(metrics[-1]["nc1_quotient"], rel=1e-12)
        assert run["summary"]["final/train_accuracy"] == pytest.approx(metrics[-1]["train_accuracy"], rel=1e-12)

    # Re-evaluation (here its dashboard step alone, from the metrics.jsonl files): a new W&B run per run, of job
    # type re-evaluation, with every evaluation again.
    from ncjax import dashboard

    folders = [workdir / name for name in sorted(logged)]
    hparams = [{k: v for k, v in logged[f"{f.parent.name}/{f.name}"]["config"].items() if not k.startswith("_")}
               for f in folders]
    dashboard.Evaluations(folders, hparams).rewrite()
    again = _wandb_runs(tmp_path)
    assert sorted(again["re-evaluation"]) == sorted(logged)
    for name, run in again["re-evaluation"].items():
        metrics = [json.loads(line) for line in (workdir / name / "metrics.jsonl").read_text().splitlines()]
        evaluations = _rows(run["history"], "eval/step")
        assert sorted(evaluations) == [line["step"] for line in metrics]
        assert [evaluations[line["step"]]["eval/nc1_quotient"] for line in metrics] == \
            pytest.approx([line["nc1_quotient"] for line in metrics], rel=1e-12)
        assert run["config"]["depth"] == 2 and run["config"]["seed"] == int(name[-1])


def test_wandb_flag_without_wandb_is_a_one_line_config_error(monkeypatch):
    config = importlib.import_module("ncjax.configs.resnet_depth").get_config("quick")
    configs.validate(config)  # off by default: W&B is neither needed nor imported
    config.dashboard.wandb = True
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'ncjax\[wandb\]'") as error:
        configs.validate(config)
    assert "\n" not in str(error.value)


def test_wandb_flag_without_wandb_exits_2_before_writing(tmp_path):
    """The command refuses at once, in one line, and writes nothing."""
    code = ("import sys; sys.modules['wandb'] = None; from ncjax import main; "
            f"sys.argv = ['ncjax', '--config=resnet_depth.py:quick', '--config.dashboard.wandb=True', "
            f"'--workdir={tmp_path / 'w'}']; main.main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().count("\n") == 0 and "pip install 'ncjax[wandb]'" in result.stderr
    assert not (tmp_path / "w").exists()
