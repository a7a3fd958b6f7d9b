"""A trained run, ready to use: ``ncjax.load_run(workdir, depth=8, seed=1)``.

Everything a user needs to look inside one network of a finished (or running) sweep, without
the training machinery: its resolved config, its model at its own depth (a packed run's
stack sliced to its blocks), its verified parameters, and its data.

    run = ncjax.load_run("runs/vit_depth", depth=8, seed=1)          # latest checkpoint
    features = run.features(run.data.train_x)                         # [N, d]: what enters the classifier
    blocks = run.features(x, blocks=True)                             # [L, N, d]: every block's output
    W, b = run.classifier()
    scores = ncjax.collapse.measure(features, run.data.train_y, run.data.num_classes, weight=W, bias=b)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from etils.epath import Path

from ncjax import checkpoints, config as configs, data, models, plan, records
from ncjax.errors import WorkdirError


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """One run of a workdir at one checkpoint step."""

    config: ml_collections.ConfigDict  # the run's own config (its point set, resolved against its data)
    module: nn.Module  # the model at the run's depth
    params: dict[str, Any]  # numpy arrays
    data: data.Dataset  # the run's own data (a swept SNR: the mixture at its SNR)
    step: int

    def _apply(self, x, blocks: bool):
        return _forward(self.module, blocks)(self.params, x)

    def logits(self, x) -> np.ndarray:
        """[N, K] float32 logits of inputs ``x`` (rows as the data set holds them)."""
        return np.asarray(self._apply(x, blocks=False)[0])

    def features(self, x, blocks: bool = False) -> np.ndarray:
        """[N, d] the features that enter the classifier, or with ``blocks`` every block's output [L, N, d]."""
        _, out = self._apply(x, blocks)
        return np.asarray(out["blocks"] if blocks else out["features"])

    def classifier(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``(W [K, d], b [K] or None)``: what ``collapse.measure(..., weight=W, bias=b)`` takes."""
        weight, bias = models.classifier_weights(self.params)
        return np.asarray(weight), None if bias is None else np.asarray(bias)


def _forward(module: nn.Module, blocks: bool):
    return jax.jit(lambda params, x: module.apply({"params": params}, x, return_blocks=blocks))


def load_run(workdir: Path | str, depth: int, seed: int, step: int | None = None, **point: Any) -> TrainedRun:
    """The run ``(depth, seed, **point)`` of ``workdir`` at ``step`` (None: the latest checkpoint).

    ``point`` names the run's values of the sweep's other axes, e.g. ``**{'train.l2': 5e-4}``. The
    parameters are verified against their checkpoint's digests; nothing is written."""
    workdir = Path(workdir)
    stored = configs.stored_config(records.read_config(workdir))
    wanted = dict(point, depth=depth)
    run = next((r for r in plan.runs(stored) if r.seed == seed and all(r.values.get(k) == v
                                                                       for k, v in wanted.items())), None)
    if run is None:
        axes = ", ".join(f"{key} in {values}" for key, values in plan.axes(stored))
        raise WorkdirError(f"{workdir} has no run depth={depth}, seed={seed}"
                           + (f", {point}" if point else "") + f" (its runs: {axes}; seeds {tuple(stored.seeds)})")
    own = run.config(stored)
    dataset = data.load(own.data, seed=0)
    own = configs.resolve(own, dataset)
    others = {key: value for key, value in run.values.items() if key != plan.DEPTH}
    found, params = checkpoints.find_run(workdir, depth, seed, step, **others)
    if models.BLOCKS in params:  # a packed group's stack holds its deepest member's blocks
        params = dict(params, **{models.BLOCKS: jax.tree.map(lambda a: a[:depth], params[models.BLOCKS])})
    return TrainedRun(config=own, module=models.build(own.model), params=params, data=dataset, step=found)
