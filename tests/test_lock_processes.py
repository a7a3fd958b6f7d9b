"""Two real processes on one workdir: the second is refused at once, naming the first, which finishes untouched.

The first process is paused (SIGSTOP) as soon as its lock file (and config.json) exists and resumed (SIGCONT) after the second
was refused, so the second always meets a live holder however loaded the machine is: the test synchronises on
the lock file and on the processes' ends, never on sleeps.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from ncjax.lock import LOCK_NAME

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--config=configs/shallow_snr.py:quick", "--config.progress=False"]


def _until(process, event, timeout=300):
    """Poll the file system until ``event()`` holds or the process ends."""
    start = time.time()
    while process.poll() is None and not event():
        assert time.time() - start < timeout, "the event never came"
        time.sleep(0.002)


def _second(*args, module="ncjax.main"):
    start = time.time()
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    return result, time.time() - start


def test_a_second_process_on_a_workdir_is_refused_and_the_first_finishes(tmp_path):
    workdir = tmp_path / "w"
    lock = workdir / LOCK_NAME
    first = subprocess.Popen([sys.executable, "-m", "ncjax.main", *QUICK, f"--workdir={workdir}"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _until(first, lambda: lock.exists() and (workdir / "config.json").exists())  # a workdir to re-evaluate
        assert first.poll() is None, "the first process ended without taking the lock: " + first.stderr.read()[-2000:]
        first.send_signal(signal.SIGSTOP)  # a live holder, for as long as the second needs
        try:
            holder = json.loads(lock.read_text())
            assert holder["pid"] == first.pid and holder["purpose"] == "training"
            for args, module in (([*QUICK, f"--workdir={workdir}"], "ncjax.main"),
                                 ([f"--workdir={workdir}"], "ncjax.evaluate")):
                result, seconds = _second(*args, module=module)
                lines = result.stderr.strip().splitlines()
                assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
                assert f"pid {first.pid}" in lines[0] and "in use by training" in lines[0], lines
                assert seconds < 120, seconds  # refused as soon as it starts (most of it: importing jax)
        finally:
            first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-3000:]
    assert not lock.exists()
    for run in ("depth_001-snr_0.3/seed_0", "depth_001-snr_3/seed_1"):
        lines = [json.loads(line) for line in (workdir / run / "metrics.jsonl").read_text().splitlines()]
        steps = [line["step"] for line in lines]
        assert steps == sorted(set(steps)) and steps[-1] == 60, steps  # every evaluation once, to the end
    assert (workdir / "summary.csv").exists()
