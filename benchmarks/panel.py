"""The paper's depth panel, packed into one program against one program per depth, end to end.

L-RN1 (``configs/resnet_depth.py:paper`` architecture) at the paper's depths 2, 3, 5, 8, 13, 21,
34 with 5 seeds on all 4,000 embedded training images, trained for a fixed number of epochs
by ``ncjax.main``'s own sweep (checkpoints, evaluation and all), once with ``pack=False``
(seven programs of five seeds) and once with ``pack=True`` (one program of 35 runs whose
blocks beyond a run's depth are masked). Each mode runs twice, for E and 2E epochs: the
difference gives the steady rate (panel steps per second: every run of the panel takes one
step), the rest the fixed cost (compilation, data, set-up), and 5,000 epochs are the fixed cost
plus 5,000 times the per-epoch time.

    python benchmarks/panel.py                 # E = 3 epochs, both ways
    python benchmarks/panel.py --epochs=20 --modes=packed

Packing multiplies the arithmetic by 35·34 / (5·(2+3+5+8+13+21+34)) ≈ 2.8 and divides the
number of programs (and their per-step latencies) by seven: it loses on a compute-bound CPU
and wins on a latency-bound accelerator.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time

import jax

from ncjax import cli, data, experiment, sweep

IMAGES = 4000


def panel_config(epochs: int, pack: bool):
    c = importlib.import_module("ncjax.configs.resnet_depth").get_config("rn1,paper")
    c.data.source = "mnist_5k"  # the embedded subset: no download
    c.depths, c.seeds = experiment.PAPER_DEPTHS, (0, 1, 2, 3, 4)
    c.data.n_per_class, c.train.epochs, c.train.steps = None, epochs, None
    c.checkpoint.every_steps = 10 ** 9  # one checkpoint (and evaluation) at the end of each group
    c.progress, c.pack = False, pack
    return c


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--modes", default="separate,packed")
    args = parser.parse_args(argv)
    cli.enable_compilation_cache()
    print(f"# {jax.default_backend()} × {jax.device_count()} ({jax.devices()[0].device_kind}), jax {jax.__version__}",
          flush=True)
    steps_per_epoch = data.feed.steps_per_epoch(IMAGES, 128)
    for mode in args.modes.split(","):
        walls = []
        for epochs in (args.epochs, 2 * args.epochs):  # two lengths: the per-epoch rate apart from fixed costs
            with tempfile.TemporaryDirectory() as workdir:
                start = time.perf_counter()
                sweep.run(panel_config(epochs, pack=(mode == "packed")), workdir)
                walls.append(time.perf_counter() - start)
        per_epoch = (walls[1] - walls[0]) / args.epochs
        fixed = walls[0] - args.epochs * per_epoch  # compilation, data, evaluation set-up
        print(f"{mode:8s} panel (7 depths × 5 seeds, L-RN1, {IMAGES} images, batch 128): {args.epochs} epochs "
              f"{walls[0]:.1f} s, {2 * args.epochs} epochs {walls[1]:.1f} s -> {steps_per_epoch / per_epoch:.2f} "
              f"panel steps/s, fixed {fixed:.0f} s; 5,000 epochs: {(fixed + 5000 * per_epoch) / 60:.1f} min",
              flush=True)

if __name__ == "__main__":
    sys.exit(main())
