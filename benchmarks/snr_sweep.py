"""An SNR sweep with every SNR in one program, against one program per SNR, end to end.

``configs/shallow_snr.py``'s sweep at one of its points (3-layer ReLU network, width 256,
d = 64, 100 samples per class, K = 4), over its four SNRs × 2 seeds, trained by
``ncjax.main``'s own sweep (checkpoints, evaluation every 200 steps and all) for a fixed
number of epochs. ``together``: the SNR is a member of the group, as ncjax trains it (the
mixture's parts composed per member on the device, one program of 8 runs); ``apart``: one
sweep per SNR (four programs of 2 seeds, what ncjax did before the SNR was vmapped). No
persistent compilation cache: both pay their compilations, as a user's first run does.

    python benchmarks/snr_sweep.py                 # 100 epochs, median of 3
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time

import jax

from ncjax.sweep import runner as sweep

SNR = "data.gaussian_mixture.snr"


def point_config(epochs: int):
    c = importlib.import_module("ncjax.configs.shallow_snr").get_config()
    c.depths, c.model.width = (2,), 256
    c.data.gaussian_mixture.update(n_per_class_train=100, dim=64)
    c.train.epochs, c.progress = epochs, False
    return c


def wall_together(epochs: int, snrs) -> float:
    config = point_config(epochs)
    config.sweep = ((SNR, snrs),)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        sweep.run(config, workdir)
        return time.perf_counter() - start


def wall_apart(epochs: int, snrs) -> float:
    start = time.perf_counter()
    for snr in snrs:
        config = point_config(epochs)
        config.sweep = ()
        config.data.gaussian_mixture.snr = snr
        with tempfile.TemporaryDirectory() as workdir:
            sweep.run(config, workdir)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_compilation_cache", False)
    snrs = dict(importlib.import_module("ncjax.configs.shallow_snr").get_config().sweep)[SNR]
    print(f"# {jax.default_backend()} × {jax.device_count()} ({jax.devices()[0].device_kind}), jax {jax.__version__}; "
          f"SNRs {snrs} × 2 seeds, depth 2, width 256, d 64, 400 examples, {args.epochs} epochs", flush=True)
    wall_together(1, snrs)  # untimed: a process's first run pays one-off costs
    together, apart = [], []
    for _ in range(args.repeats):  # interleaved, so that a load on the machine hits both alike
        together.append(wall_together(args.epochs, snrs))
        apart.append(wall_apart(args.epochs, snrs))
    t, a = statistics.median(together), statistics.median(apart)
    print(f"together (one program, 8 runs): {t:.1f} s   apart (4 programs of 2 runs): {a:.1f} s   "
          f"median of {args.repeats}: together is {a / t:.2f}x faster", flush=True)


if __name__ == "__main__":
    sys.exit(main())
