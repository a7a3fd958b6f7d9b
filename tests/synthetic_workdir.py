"""A depth sweep's workdir written without training: config.json and metrics lines with known trends.

Shapes the summary and figure tests rely on, at seeds 0, 1, 2 and depths 2, 4, 8, 16, evaluated
at steps 10 … 1000 (log-spaced):

- ``nc1_quotient`` follows 0.5·L^SLOPE (a straight log-log line, R² ≈ 1); its test form is twice it;
- ``nc2_etf_w`` is V-shaped in depth (lowest at L = 4: no straight line describes it);
- ``nc4`` is exactly 0 (a log axis cannot show it);
- depth 16, seed 2 fails at every evaluation (training accuracy 0.5, chance-level collapse);
- depth 8, seed 1 dips at its last evaluation only (0.98 after 1.0, 1.0): it fails on the last
  evaluation and passes on the mean of the last three (0.993).
"""

from __future__ import annotations

import json

import numpy as np

DEPTHS = (2, 4, 8, 16)
SEEDS = (0, 1, 2)
STEPS = (10, 30, 100, 300, 1000)
SLOPE = -0.33
CONFIG = {  # a stored config as an older workdir has it: no `summary` section (defaults apply)
    "name": "synthetic", "depths": list(DEPTHS), "seeds": list(SEEDS), "sweep": [],
    "model": {"name": "rn1", "norm": "post", "norm_affine": False, "width": 64, "depth": 8, "num_classes": 10,
              "head_depth": 0},
    "data": {"source": "mnist_5k", "n_per_class": 100},
    "train": {"loss": "ce", "optimizer": "adam", "learning_rate": 0.005, "schedule": "warmup_cosine",
              "warmup_steps": 100, "batch_size": 128, "epochs": 128, "steps": None, "l2": 0.005,
              "l2_schedule": "constant", "l2_form": "full", "l2_params": "all"},
}
FAILED = (16, 2)
DIPPED = (8, 1)


def line(depth: int, seed: int, step: int, last: bool) -> dict:
    """One metrics line of the run (depth, seed) at ``step``."""
    noise = 1.0 + 0.02 * np.sin(7 * seed + depth + step)
    late = (1000 / step) ** 0.1  # collapse deepens along training
    accuracy = 0.5 if (depth, seed) == FAILED else 0.98 if (depth, seed) == DIPPED and last else 1.0
    nc1 = 0.5 * depth ** SLOPE * noise * late * (20.0 if (depth, seed) == FAILED else 1.0)
    blocks = [0.5 * (l + 1) ** SLOPE * noise for l in range(depth)]
    return {"depth": depth, "seed": seed, "step": step, "epoch": step / 8,
            "train_loss": 0.01 * late, "gradient_norm": 0.1 * late, "train_accuracy": accuracy,
            "test_loss": 0.5, "test_accuracy": 0.8 + 0.01 * seed,
            "l2_penalty": 10.0, "objective": 0.06,
            "nc1_quotient": nc1, "test_nc1_quotient": 2 * nc1, "nc1": 1.5 * nc1,
            "nc2_etf_w": 0.1 * (1 + abs(np.log2(depth / 4))) * noise, "nc3_cos": 0.2 * noise, "nc3": 0.3 * noise,
            "unc3": 40.0 * noise, "nc4": 0.0, "test_nc4": 0.02, "ncc_accuracy": 1.0, "test_ncc_accuracy": 0.8,
            "nc1_per_block": blocks, "cdnv_per_block": [b / 3 for b in blocks], "ncc_accuracy_per_block": [0.9] * depth}


def write(workdir, config: dict | None = None) -> None:
    """config.json and every run's metrics.jsonl under ``workdir`` (a pathlib.Path)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(config or CONFIG))
    for depth in DEPTHS:
        for seed in SEEDS:
            run = workdir / f"depth_{depth:03d}" / f"seed_{seed}"
            run.mkdir(parents=True)
            lines = [line(depth, seed, step, step == STEPS[-1]) for step in STEPS]
            (run / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
