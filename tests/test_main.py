"""The main job end to end: the workdir contract, resume, re-evaluation, bad input."""

import csv
import hashlib
import json
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ncjax import records
from ncjax.checkpoints import load_params

REPO = Path(__file__).resolve().parents[1]
# L-RN1's quick preset as it is (60 steps, checkpoints every 30, logs every 10): every run of this file, and
# the notebook's, compile the same programs and share them through the session's compilation cache.
QUICK = ["--config=configs/resnet_depth.py:quick", "--config.progress=False"]
VIT = ["--config=configs/vit_depth.py:quick", "--config.progress=False"]  # transformer-only checks
METRIC_KEYS = {"step", "epoch", "depth", "seed", "train_loss", "l2_penalty", "train_accuracy", "test_accuracy",
               "nc1", "nc1_quotient", "cdnv", "nc2_equinorm", "nc2_equiangle", "nc2_etf", "nc2_etf_w", "nc3",
               "nc4", "nc1_per_block", "ufm_gap", "ufm_distance"}


def ncjax(*args, module="ncjax.main", check=None):
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    if check is not None:
        assert result.returncode == check, result.stderr[-3000:]
    return result


def metrics_lines(run: Path):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tree_digest(root: Path):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep") / "w"
    ncjax(*QUICK, "--config.depths=(1,2)", f"--workdir={workdir}", check=0)
    return workdir


def test_workdir_contract(finished):
    config = json.loads((finished / "config.json").read_text())
    assert config["depths"] == [1, 2] and config["model"]["num_classes"] == 10
    for depth in (1, 2):
        for seed in (0, 1):
            run = finished / f"depth_{depth:03d}" / f"seed_{seed}"
            lines = metrics_lines(run)
            # every checkpoint (30, 60) and log-spaced steps on the log cadence (evaluate.log_points)
            assert [line["step"] for line in lines] == [10, 20, 30, 40, 50, 60]  # and the last 3 log steps
            for line in lines:
                assert METRIC_KEYS <= set(line)
                assert line["depth"] == depth and line["seed"] == seed
                assert len(line["nc1_per_block"]) == depth
                # the last block's output is the feature that enters the classifier only after the final
                # LayerNorm, so the per-block value is its own number; it must be finite
                assert all(np.isfinite(line["nc1_per_block"]))
                assert 0 <= line["nc4"] <= 1 and 0 <= line["train_accuracy"] <= 1
            assert any((run / "tensorboard" / "train").iterdir()) and any((run / "tensorboard" / "eval").iterdir())
            log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
            assert [r["step"] for r in log] == [10, 20, 30, 40, 50, 60]
            assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in log)
        # all seeds of a depth in one atomic checkpoint step
        checkpoints = finished / f"depth_{depth:03d}" / "checkpoints"
        assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["30", "60"]
        params = load_params(finished, depth=depth, seed=1)
        assert params["blocks"]["linear"]["kernel"].shape[0] == depth  # one run's blocks, no seed axis
        assert not np.array_equal(params["embed"]["kernel"], load_params(finished, depth=depth, seed=0)["embed"]["kernel"])
    rows = list(csv.DictReader((finished / "summary.csv").open()))
    assert [(int(r["depth"]), int(r["seed"])) for r in rows] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert [r["status"] for r in rows] == ["ok"] * 4  # the quick preset shows a result
    assert all(r["status"] in ("ok", "failed") and (r["status"] == "failed") == bool(r["reason"]) for r in rows)
    slopes = list(csv.DictReader((finished / "slopes.csv").open()))
    nc1 = [s for s in slopes if s["metric"] == "nc1_quotient"]
    assert [s["seed"] for s in nc1] == ["0", "1", "mean", "std"]
    for figure in ("nc_vs_depth.png", "collapse_vs_steps.png", "nc1_vs_block.png"):
        assert (finished / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_run_reproduces_the_runs_metrics(finished, capfd):
    """``ncjax.load_run``: the model at the run's depth, its verified parameters, its data; measured with
    ``ncjax.collapse`` they give the run's last metrics line; reading prints no warnings."""
    import ncjax
    from ncjax import collapse

    run = ncjax.load_run(finished, depth=2, seed=1)
    assert run.step == 60 and run.params["blocks"]["linear"]["kernel"].shape[0] == 2
    x, y = run.data.train_x, run.data.train_y
    weight, bias = run.classifier()
    scores = collapse.measure(run.features(x), y, run.data.num_classes, weight=weight, bias=bias)
    line = metrics_lines(finished / "depth_002" / "seed_1")[-1]
    for key in ("nc1_quotient", "nc2_etf_w", "nc3_cos", "ncc_accuracy"):
        assert scores[key] == pytest.approx(line[key], rel=1e-3, abs=1e-6), key
    assert np.mean(run.logits(x).argmax(1) == y) == pytest.approx(line["train_accuracy"])
    assert run.features(x[:5], blocks=True).shape == (2, 5, run.config.model.width)
    assert "WARNING" not in capfd.readouterr().err


def test_evaluate_reproduces_metrics(finished, tmp_path):
    copy = tmp_path / "w"
    shutil.copytree(finished, copy)
    run = next(copy.glob("depth_*/seed_*"))  # an evaluation between checkpoints (evaluate.every_steps)
    between = dict(metrics_lines(run)[0], step=15, nc1=123.0)
    records.write_metrics(run, metrics_lines(run) + [between])
    before = {run: metrics_lines(run) for run in copy.glob("depth_*/seed_*")}
    ncjax(f"--workdir={copy}", module="ncjax.evaluate", check=0)
    ncjax(f"--workdir={copy}", module="ncjax.evaluate", check=0)  # idempotent
    assert between in metrics_lines(run)  # no checkpoint to recompute it from: kept, never dropped
    for run, lines in before.items():
        again = metrics_lines(run)
        assert [line["step"] for line in again] == [line["step"] for line in lines]
        for old, new in zip(lines, again):
            for key, value in old.items():
                np.testing.assert_allclose(new[key], value, rtol=1e-6, err_msg=key)
    (copy / "summary.csv").unlink()
    ncjax(f"--workdir={copy}", module="ncjax.sweep", check=0)
    assert (copy / "summary.csv").exists()
    # The dashboard agrees with metrics.jsonl after re-evaluation: every scalar, per block, with HParams.
    board = tensorboard_scalars(run / "tensorboard" / "eval")
    for line in metrics_lines(run):
        assert board["eval/nc1_quotient"][line["step"]] == pytest.approx(line["nc1_quotient"], rel=1e-6)
        assert board["blocks/nc1/block_001"][line["step"]] == pytest.approx(line["nc1_per_block"][0], rel=1e-6)
    assert any(tag.startswith("_hparams_") for tag in board)


def tensorboard_scalars(folder: Path) -> dict:
    """{tag: {step: value}} of every event file under ``folder`` (TFRecord framing, tensorboardX's protos)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
            i += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def _start(workdir, *args):
    return subprocess.Popen([sys.executable, "-m", "ncjax.main", *args, f"--workdir={workdir}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _until(process, event, timeout=300):
    """Poll the file system until ``event()`` holds or the process ends (synchronises on files, not time)."""
    start = time.time()
    while process.poll() is None and not event():
        assert time.time() - start < timeout, "the event never came"
        time.sleep(0.005)


def test_sigterm_saves_and_the_resumed_run_matches(finished, tmp_path):
    workdir = tmp_path / "w"
    process = _start(workdir, *QUICK, "--config.depths=(2,)")
    # Once training has logged (saves and evaluations run beside the next blocks, so a checkpoint's folder
    # can appear only after the last step has trained: too late for a signal to land in the loop).
    _until(process, lambda: (workdir / "depth_002" / "seed_0" / "train_log.jsonl").exists())
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0 and "preempted" in err, err[-2000:]
    ncjax(*QUICK, "--config.depths=(2,)", f"--workdir={workdir}", check=0)
    for seed in (0, 1):
        resumed = metrics_lines(workdir / "depth_002" / f"seed_{seed}")
        straight = metrics_lines(finished / "depth_002" / f"seed_{seed}")
        # a SIGTERM checkpoint lands between the regular ones and is evaluated like them
        steps = {r["step"] for r in straight}
        assert [r for r in resumed if r["step"] in steps] == straight  # bit-identical, data order included


# Checkpoints (and evaluations) every block of 10 steps, so that kills land in every phase of a run; the same
# compiled programs as QUICK (checkpoint cadence is a runtime setting).
KILLED = [*QUICK, "--config.depths=(1,2)", "--config.checkpoint.every_steps=10"]


def _files(workdir, pattern):
    return sorted(str(p) for p in workdir.glob(pattern))


def _sizes(workdir, pattern):
    return [p.stat().st_size for p in sorted(workdir.glob(pattern)) if p.is_file()]


def test_kill_9_at_many_instants_then_the_same_result(tmp_path):
    """kill -9 at ten instants (during saves, evaluations, log writes, start-up); a final rerun finishes and
    every metrics line, train-log line and the summary equal those of a run never interrupted."""
    straight = tmp_path / "straight"
    ncjax(*KILLED, f"--workdir={straight}", check=0)
    workdir = tmp_path / "killed"
    rng = np.random.default_rng(0)
    events = {
        "start-up": lambda snap: lambda: time.time() > snap["t"] + rng.uniform(0.5, 4.0),
        "save in flight": lambda snap: lambda: bool(_files(workdir, "*/checkpoints/*orbax-checkpoint-tmp*")),
        "new checkpoint": lambda snap: lambda: _files(workdir, "*/checkpoints/[0-9]*") != snap["steps"],
        "metrics write": lambda snap: lambda: _sizes(workdir, "*/seed_*/metrics.jsonl") != snap["metrics"],
        "train-log append": lambda snap: lambda: _sizes(workdir, "*/seed_*/train_log.jsonl") != snap["log"],
    }
    kinds = list(events)
    killed = 0
    for attempt in range(10):
        snap = dict(t=time.time(), steps=_files(workdir, "*/checkpoints/[0-9]*"),
                    metrics=_sizes(workdir, "*/seed_*/metrics.jsonl"), log=_sizes(workdir, "*/seed_*/train_log.jsonl"))
        process = _start(workdir, *KILLED)
        _until(process, events[kinds[attempt % len(kinds)]](snap))
        if process.poll() is None:
            process.kill()
            killed += 1
        process.communicate(timeout=300)
    assert killed >= 8  # the run outlived (nearly) every kill
    ncjax(*KILLED, f"--workdir={workdir}", check=0)
    for run in straight.glob("depth_*/seed_*"):
        other = workdir / run.relative_to(straight)
        assert metrics_lines(other) == metrics_lines(run)
        assert (other / "train_log.jsonl").read_text() == (run / "train_log.jsonl").read_text()
    assert (workdir / "summary.csv").read_text() == (straight / "summary.csv").read_text()


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.train.lerning_rate=0.1", "unknown config key 'train.lerning_rate'; valid keys of train:"),
        ("--config.depths=(0,2)", "depth"),
        ("--config.model.width=30", "divisible"),
        ("--config.train.l2=-1", "l2"),
        ("--config.data.source=imagenet_on_floppy", "data.source"),
        ("--config.train.optimizer=lbfgs", "optimizer"),
        ("--config.mesh.data=3", "mesh"),
        ("--config.model.patch_size=5", "patch_size"),
        ("--config.train.batch_size=100", "divisible"),
        ("--config.data.n_per_class=5000", "n_per_class"),
        ("--config.seeds=(0,0)", "seeds"),
        # Non-finite or impossible numbers and bad patterns are refused before they claim the workdir.
        ("--config.train.learning_rate=inf", "train.learning_rate=inf must be a finite number > 0"),
        ("--config.train.l2=inf", "train.l2=inf"),
        ("--config.train.mse_target_scale=nan", "train.mse_target_scale=nan"),
        ("--config.train.momentum=nan", "train.momentum=nan"),
        ("--config.train.warmup_steps=-5", "train.warmup_steps=-5 must be an integer >= 0"),
        ("--config.train.l2_exclude=('[',)", "is not a regular expression"),
        ("--config.model.init_scale=inf", "model.init_scale=inf"),
        ("--config.evaluate.evaluators=('penalty',)", "needs train_loss"),
    ],
)
def test_bad_config_values_are_one_line_errors(tmp_path, override, message):
    result = ncjax(*VIT, override, f"--workdir={tmp_path / 'w'}", check=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()


def test_workdir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("precious")
    result = ncjax(*QUICK, f"--workdir={path}", check=2)
    assert "is a file" in result.stderr and path.read_text() == "precious"


def test_unknown_preset_and_missing_config_file(tmp_path):
    for config in ("configs/vit_depth.py:quik", "configs/no_such_config.py"):
        result = ncjax(f"--config={config}", f"--workdir={tmp_path}", check=2)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "quik" in ncjax("--config=configs/vit_depth.py:quik", check=2).stderr


def test_workdir_of_another_config_is_refused(finished):
    before = tree_digest(finished)
    result = ncjax(*QUICK, "--config.depths=(1,2)", "--config.train.l2=0.01", f"--workdir={finished}", check=2)
    assert "different config" in result.stderr and "train.l2" in result.stderr
    assert tree_digest(finished) == before


def _flip_a_bit(step_folder: Path) -> None:
    """One flipped bit in the largest parameter file of a checkpoint step (what a faulty disk does)."""
    files = [p for p in (step_folder / "params").rglob("*") if p.is_file() and "metadata" not in p.name]
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x10
    target.write_bytes(bytes(data))


def test_a_corrupted_checkpoint_is_detected_and_never_overwrites_results(finished, tmp_path):
    """Training resumes from the newest intact step (with a warning) to the same metrics; re-evaluation skips
    the damaged step and keeps its lines; the damaged files are left as they were."""
    workdir = tmp_path / "w"
    shutil.copytree(finished, workdir)
    step = workdir / "depth_001" / "checkpoints" / "60"
    _flip_a_bit(step)
    damaged = tree_digest(step)
    before = {run: metrics_lines(run) for run in workdir.glob("depth_*/seed_*")}
    result = ncjax(f"--workdir={workdir}", module="ncjax.evaluate", check=0)
    assert "failed its integrity check" in result.stderr and "60" in result.stderr
    assert {run: metrics_lines(run) for run in workdir.glob("depth_*/seed_*")} == before
    result = ncjax(*QUICK, "--config.depths=(1,2)", f"--workdir={workdir}", check=0)
    assert "failed its integrity check" in result.stderr and "resuming from step 30" in result.stderr
    for run, lines in before.items():
        again = metrics_lines(run)
        assert [line["step"] for line in again] == [line["step"] for line in lines]
        for old, new in zip(lines, again):
            np.testing.assert_allclose(new["nc1_quotient"], old["nc1_quotient"], rtol=1e-5)
    assert tree_digest(step) == damaged


def test_missing_metrics_lines_are_restored_by_a_rerun(finished, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(finished, workdir)
    run = workdir / "depth_002" / "seed_1"
    before = metrics_lines(run)
    (run / "metrics.jsonl").write_text("")
    ncjax(*QUICK, "--config.depths=(1,2)", f"--workdir={workdir}", check=0)
    steps = [line["step"] for line in metrics_lines(run)]
    assert {30, 60} <= set(steps)  # every checkpointed step measured again (steps between have no checkpoint)
    for line in metrics_lines(run):
        old = next(b for b in before if b["step"] == line["step"])
        np.testing.assert_allclose(line["nc1_quotient"], old["nc1_quotient"], rtol=1e-5)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"foreign": true}\n')
    result = ncjax(*QUICK, "--config.depths=(1,2)", f"--workdir={workdir}", check=2)
    assert "is not an ncjax record" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_workdir_under_a_file_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("precious")
    result = ncjax(*QUICK, f"--workdir={tmp_path / 'a_file' / 'sub'}", check=2)
    assert "is a file" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_nan_loss_stops_with_nonzero_status_and_keeps_good_checkpoints(tmp_path):
    workdir = tmp_path / "w"
    result = ncjax(*QUICK, "--config.depths=(1,)", "--config.train.learning_rate=1e30",
                   "--config.train.optimizer=sgd", "--config.train.loss=mse", f"--workdir={workdir}")
    assert result.returncode not in (0, 2) and "NaN" in result.stderr
    assert "Traceback" not in result.stderr
    steps = [p.name for p in (workdir / "depth_001" / "checkpoints").glob("[0-9]*")]
    assert steps == []  # it diverged before the first checkpoint: nothing NaN was saved


def test_rerun_with_other_runtime_settings_resumes(finished, tmp_path):
    """Mesh shape, evaluation batch, logging and checkpoint cadence do not define the experiment."""
    workdir = tmp_path / "w"
    shutil.copytree(finished, workdir)
    before = {run: metrics_lines(run) for run in workdir.glob("depth_*/seed_*")}
    ncjax(*QUICK, "--config.depths=(1,2)", "--config.train.steps=90", f"--workdir={workdir}", check=2)  # experiment
    ncjax(*QUICK, "--config.depths=(1,2)", "--config.eval_batch_size=64", "--config.mesh.data=2",
          "--config.mesh.fsdp=4", "--config.log_every_steps=5", "--config.steps_per_call=3",
          f"--workdir={workdir}", check=0)
    assert {run: metrics_lines(run) for run in workdir.glob("depth_*/seed_*")} == before
    assert json.loads((workdir / "config.json").read_text())["eval_batch_size"] == 64


def test_an_internal_error_exits_1_with_its_traceback_and_loses_nothing(finished, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(finished, workdir)
    (workdir / "summary.csv").unlink()
    (workdir / "summary.csv").mkdir()  # an I/O failure the user did not cause through the command
    before = tree_digest(workdir)
    result = ncjax(*QUICK, "--config.depths=(1,2)", f"--workdir={workdir}", check=1)
    assert "Traceback" in result.stderr and "summary.csv" in result.stderr
    assert tree_digest(workdir) == before
