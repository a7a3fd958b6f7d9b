"""The paper's depth panel, packed into one program against one program per depth, end to end.

L-RN1 (``configs/resnet_depth.py:paper`` architecture) at the paper's depths 2, 3, 5, 8, 13, 21,
34 with 5 seeds on all 4,000 embedded training images, trained for a fixed number of epochs
by ``ncjax.main``'s own sweep (logs, and one checkpoint and evaluation per group, at its end: the
evaluations of a long run are ``benchmarks/train_loop.py``'s), once with ``pack=False``
(seven programs of five seeds) and once with ``pack=True`` (one program of 35 runs whose
blocks beyond a run's depth are masked). Each mode runs once untimed (one epoch), then for
E and 2E epochs (``--repeats`` pairs), with no persistent compilation cache: the
difference gives the steady rate (panel steps per second: every run of the panel takes one
step), the rest the fixed cost (compilation, data, set-up), and 5,000 epochs are the fixed cost
plus 5,000 times the per-epoch time.

    python benchmarks/panel.py                 # E = 3 epochs, both ways
    python benchmarks/panel.py --epochs=20 --modes=packed
    python benchmarks/panel.py --before=cc0562a --epochs=10 --modes=separate --repeats=2

``--before=REV`` measures git revision REV's ``ncjax`` package too (its tree extracted with ``git archive``)
through this script, each revision in its own process, alternately, and prints the ratio of the
two steady rates: a change's speed-up measured in one run on the same (noisy) machine.

Packing multiplies the arithmetic by 35·34 / (5·(2+3+5+8+13+21+34)) ≈ 2.8 and divides the
number of programs (and their per-step latencies) by seven: it loses on a compute-bound CPU
and wins on a latency-bound accelerator.
"""

from __future__ import annotations

import argparse
import importlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

import revisions
from ncjax import data
try:
    from ncjax.sweep.runner import run as run_sweep
except ImportError:  # revisions before the sweep's runner module (``--before``, e.g. cc0562a)
    from ncjax.sweep import run as run_sweep

IMAGES = 4000
RATE = re.compile(r"([0-9.]+) panel steps/s")


def panel_config(epochs: int, pack: bool):
    c = importlib.import_module("ncjax.configs.resnet_depth").get_config("rn1,paper")
    c.data.source = "mnist_5k"  # the embedded subset: no download
    c.depths, c.seeds = (2, 3, 5, 8, 13, 21, 34), (0, 1, 2, 3, 4)  # the paper's depths
    c.data.n_per_class, c.train.epochs, c.train.steps = None, epochs, None
    c.checkpoint.every_steps = 10 ** 9  # one checkpoint (and evaluation) at the end of each group
    if "log_points" in c.evaluate:  # and no other: E and 2E epochs would evaluate a different number of times
        c.evaluate.log_points, c.evaluate.final_points = 0, 1
    c.progress, c.pack = False, pack
    return c


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--modes", default="separate,packed")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of lengths per mode (the median is printed)")
    parser.add_argument("--before", default="", help="a git revision whose ncjax is measured too, alternately")
    args = parser.parse_args(argv)
    if args.before:
        return compare(args)
    # No persistent compilation cache: the second length would load what the first compiled, and the
    # difference of the two walls (the per-epoch time) would absorb the compilation it skipped.
    jax.config.update("jax_enable_compilation_cache", False)
    print(f"# {jax.default_backend()} × {jax.device_count()} ({jax.devices()[0].device_kind}), jax {jax.__version__}",
          flush=True)
    steps_per_epoch = data.feed.steps_per_epoch(IMAGES, 128)
    for mode in args.modes.split(","):
        pack = mode == "packed"
        wall(1, pack)  # untimed: a process's first run pays one-off costs (GPU autotuning, kernel loading)
        per_epoch, fixed = [], []
        for _ in range(args.repeats):
            short, long = wall(args.epochs, pack), wall(2 * args.epochs, pack)
            per_epoch.append((long - short) / args.epochs)
            fixed.append(short - args.epochs * per_epoch[-1])  # compilation, data, evaluation set-up
        per, fix = statistics.median(per_epoch), statistics.median(fixed)
        print(f"{mode:8s} panel (7 depths × 5 seeds, L-RN1, {IMAGES} images, batch 128): {args.epochs} and "
              f"{2 * args.epochs} epochs, median of {args.repeats}: {steps_per_epoch / per:.2f} panel steps/s, "
              f"fixed {fix:.0f} s; 5,000 epochs: {(fix + 5000 * per) / 60:.1f} min", flush=True)


def compare(args) -> None:
    """This checkout's panel against revision ``args.before``'s, each run in its own process, alternately."""
    with revisions.checkout(args.before) as before:
        trees = {f"ncjax@{args.before}": before, "ncjax": revisions.REPO}
        for mode in args.modes.split(","):
            rates: dict[str, list[float]] = {name: [] for name in trees}
            for _ in range(args.repeats):
                for name, tree in trees.items():
                    line = one_run(tree, mode, args.epochs)
                    print(f"{name:18s} {line}", flush=True)
                    rates[name].append(float(RATE.search(line)[1]))
            before_rate, after_rate = (statistics.median(r) for r in rates.values())
            print(f"{mode}: {after_rate:.2f} against {before_rate:.2f} panel steps/s at {args.before} (medians of "
                  f"{args.repeats}): {after_rate / before_rate:.2f}x", flush=True)


def one_run(tree: Path, mode: str, epochs: int) -> str:
    """The result line of this script on the ``ncjax`` package under ``tree``, for one mode, in a fresh process."""
    result = subprocess.run([sys.executable, __file__, f"--epochs={epochs}", f"--modes={mode}"],
                            env=revisions.environment(tree), cwd=tree, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"the panel on {tree} failed:\n{result.stderr[-3000:]}")
    return next(line for line in result.stdout.splitlines() if RATE.search(line))


def wall(epochs: int, pack: bool) -> float:
    """Seconds of ``ncjax.main``'s sweep over the panel, from a fresh workdir."""
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        run_sweep(panel_config(epochs, pack), workdir)
        return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
