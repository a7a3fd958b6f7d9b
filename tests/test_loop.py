"""The block loop's worker thread and groups trained at once: when they may run, in what order, what they
raise, and that they change no result."""

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import jax
import pytest

from ncjax import loop

REPO = Path(__file__).resolve().parents[1]


def test_background_only_on_a_one_device_mesh():
    """Several devices mean collectives, which two threads would launch in different orders."""
    assert loop.background_safe(jax.make_mesh((1, 1), ("data", "fsdp"), devices=jax.devices()[:1]))
    assert not loop.background_safe(jax.make_mesh((8, 1), ("data", "fsdp")))


def test_background_runs_jobs_in_order_and_bounds_those_in_flight():
    background = loop.Background(limit=2)
    done, release = [], threading.Event()
    background.submit(lambda: (release.wait(timeout=60), done.append(0)))
    background.submit(lambda: done.append(1))
    assert done == []  # the first job holds the worker
    release.set()
    background.submit(lambda: done.append(2))  # waits for the oldest beyond the limit first
    assert done[:1] == [0]
    background.close()
    assert done == [0, 1, 2]


def test_a_failed_job_is_raised_at_the_next_check_and_close_waits_for_the_rest():
    background = loop.Background()
    failed = threading.Event()

    def fail():
        failed.set()
        raise OSError("disk full")

    background.submit(fail)
    assert failed.wait(timeout=60)
    later = []
    with pytest.raises(OSError, match="disk full"):
        background.wait()
    background.submit(lambda: later.append(1))
    background.close()
    assert later == [1]


_BOTH_WAYS = """
import json, sys, threading
from ncjax import loop
from ncjax.configs import resnet_depth
from ncjax.sweep import runner

def sweep(workdir):
    config = resnet_depth.get_config("quick")
    config.progress = False
    config.depths = (1, 2)
    runner.run(config, workdir)

jobs, submit = [], loop.Background.submit
loop.Background.submit = lambda self, work: (jobs.append(work), submit(self, work))[1]
threads, train_one = set(), runner._train_one
runner._train_one = lambda *args: (threads.add(threading.current_thread().name), train_one(*args))[1]
sweep(sys.argv[1])  # one device: two groups at once, saves and evaluations in worker threads
print(f"worker jobs: {len(jobs)}; group threads: {len(threads)}")
loop.background_safe = lambda mesh: False
sweep(sys.argv[2])  # the same, one group after the other, all on the main thread
"""


def test_a_one_device_sweep_with_groups_at_once_and_worker_threads_writes_what_one_thread_writes(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    beside, inline = tmp_path / "beside", tmp_path / "inline"
    result = subprocess.run([sys.executable, "-c", _BOTH_WAYS, str(beside), str(inline)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    files = [sorted(p.relative_to(root) for p in root.rglob("metrics.jsonl")) for root in (beside, inline)]
    assert len(files[0]) == 4 and files[0] == files[1]
    counts = re.search(r"worker jobs: (\d+); group threads: (\d+)", result.stdout)
    assert int(counts[1]) >= 4 and int(counts[2]) == 2  # two saves and evaluations per group; two groups at once
    for name in files[0]:
        lines = [[json.loads(line) for line in (root / name).read_text().splitlines()] for root in (beside, inline)]
        assert [line["step"] for line in lines[0]] == [line["step"] for line in lines[1]]
        assert len(lines[0]) >= 2
        for a, b in zip(*lines):
            assert a.keys() == b.keys()
            for key in a:
                if isinstance(a[key], float):
                    assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (name, a["step"], key)
    steps = [sorted(str(p.relative_to(root)) for p in root.glob("*/checkpoints/*")) for root in (beside, inline)]
    assert steps[0] == steps[1] and steps[0]


_ONE_FAILS = """
import pathlib, sys, time
from ncjax.configs import resnet_depth
from ncjax.sweep import runner

config = resnet_depth.get_config("quick")
config.progress, config.depths, config.train.steps = False, (1, 2), 1500
train_group = runner._train_group

def failing(setup, stop):
    if setup.group.name == "depth_001":  # the cheaper group, started second: fails once the other has saved
        first = pathlib.Path(sys.argv[1], "depth_002", "checkpoints", "30")
        deadline = time.monotonic() + 600
        while not first.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        raise OSError("disk full")
    return train_group(setup, stop)

if sys.argv[2] == "fail":
    runner._train_group = failing
runner.run(config, sys.argv[1])
"""


def test_a_group_that_fails_stops_the_other_saved_and_a_rerun_finishes_both(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    run = lambda how: subprocess.run([sys.executable, "-c", _ONE_FAILS, str(tmp_path), how], cwd=REPO, env=env,  # noqa: E731
                                     capture_output=True, text=True, timeout=900)
    failed = run("fail")
    assert failed.returncode == 1 and "OSError: disk full" in failed.stderr, failed.stderr[-3000:]
    saved = sorted(int(p.name) for p in (tmp_path / "depth_002" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] < 1500  # stopped early, its state saved
    finished = run("resume")
    assert finished.returncode == 0, finished.stderr[-3000:]
    for group in ("depth_001", "depth_002"):
        for seed in (0, 1):
            steps = [json.loads(line)["step"] for line in (tmp_path / group / f"seed_{seed}" / "metrics.jsonl").open()]
            assert steps[-1] == 1500 and steps == sorted(set(steps))
