"""Collapse metrics of checkpoints: a jitted forward streamed into ``ncjax.collapse``.

The trainer calls :class:`Evaluator` on every checkpoint it writes; the command
line re-evaluates every checkpoint of a finished workdir with the same code::

    python -m ncjax.evaluate --workdir=runs/vit_depth

Two passes over the training set (statistics of the last-layer features and of
every block's output, then ``nc4`` against the final class means), one over the
test split (loss and accuracy). Nothing is held beyond a batch.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ncjax import collapse, data, models, objective, parallel, ufm


class Evaluator:
    """Metrics of one model's parameters on one data set (one seed at a time)."""

    def __init__(self, module: nn.Module, dataset: data.Dataset, train_config: ml_collections.ConfigDict,
                 l2: float, mesh: jax.sharding.Mesh, batch_size: int, layernorm_features: bool = True):
        self.module, self.dataset, self.c, self.l2, self.mesh = module, dataset, train_config, l2, mesh
        self.layernorm = layernorm_features
        self.batch_size = batch_size
        k = dataset.num_classes

        def forward(params, x):
            return module.apply({"params": params}, x, train=False, return_blocks=True)

        def loss_sums(logits, y):
            """[Σ loss, Σ correct, count] over the valid (non-padding) rows."""
            valid = (y >= 0).astype(jnp.float32)
            loss = objective.per_example_loss(logits, jnp.maximum(y, 0), train_config.loss,
                                              train_config.mse_target_scale)
            correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
            return jnp.stack([jnp.sum(loss * valid), jnp.sum(correct * valid), jnp.sum(valid)])

        def stats_step(params, stats, block_stats, sums, x, y):
            logits, features, blocks = forward(params, x)
            stats = collapse.update(stats, features.astype(jnp.float32), y)
            block_stats = collapse.update(block_stats, blocks.astype(jnp.float32), y)
            return stats, block_stats, sums + loss_sums(logits, y)

        def nc4_step(params, stats, counts, x, y):
            _, features, _ = forward(params, x)
            weight, bias = models.classifier_weights(params)
            return counts + collapse.nc4_counts(features.astype(jnp.float32), y, stats, weight, bias)

        def loss_step(params, sums, x, y):
            logits, _, _ = forward(params, x)
            return sums + loss_sums(logits, y)

        self._stats_step = jax.jit(stats_step, donate_argnums=(1, 2, 3))
        self._nc4_step = jax.jit(nc4_step, donate_argnums=2)
        self._loss_step = jax.jit(loss_step, donate_argnums=1)
        self._num_classes = k

    def _against_ufm(self, stats, train_loss, weight, bias) -> dict[str, float]:
        """Distance and objective gap of the last layer to the UFM optimum (docs/ufm.md).

        The features entering the classifier are a LayerNorm's output unless a
        linear head follows it. NaN where the UFM has no optimum of this width (K > d).
        """
        spared = any(re.search(p, "head/classifier/bias") for p in self.c.l2_exclude)
        try:
            model = ufm.trained_ufm(stats, loss=self.c.loss, l2=self.l2, bias=bias is not None,
                                    l2_bias=0.0 if spared else None, layernorm=self.layernorm,
                                    mse_target_scale=self.c.mse_target_scale)
            return dict(ufm_gap=ufm.last_layer_gap(train_loss, weight, bias, model),
                        ufm_distance=ufm.optimum_distance(stats.mean, weight, model, counts=stats.count))
        except ValueError:
            return dict(ufm_gap=float("nan"), ufm_distance=float("nan"))

    def _batches(self, x, y, pending):
        """Device batches; waits for ``pending()`` (the previous step's output) before handing out the
        next, so at most one batch is in flight and memory does not grow with the data."""
        for xb, yb in data.eval_batches(x, y, self.batch_size, jax.process_index(), jax.process_count()):
            jax.block_until_ready(pending())
            yield (jax.make_array_from_process_local_data(parallel.batch_sharding(self.mesh, xb.ndim), xb),
                   jax.make_array_from_process_local_data(parallel.batch_sharding(self.mesh, 1), yb))

    def __call__(self, params: Any) -> dict[str, Any]:
        ds, k = self.dataset, self._num_classes
        sample = jnp.asarray(ds.train_x[:1])
        _, feat_shape, block_shape = jax.eval_shape(
            lambda p, x: self.module.apply({"params": p}, x, return_blocks=True), params, sample)
        width, depth = feat_shape.shape[-1], block_shape.shape[0]
        stats = collapse.empty_stats(k, width)
        block_stats = collapse.empty_stats(k, block_shape.shape[-1], (depth,))
        sums = jnp.zeros(3, jnp.float32)
        for x, y in self._batches(ds.train_x, ds.train_y, lambda: sums):
            stats, block_stats, sums = self._stats_step(params, stats, block_stats, sums, x, y)
        counts = jnp.zeros(2, jnp.int32)
        for x, y in self._batches(ds.train_x, ds.train_y, lambda: counts):
            counts = self._nc4_step(params, stats, counts, x, y)

        weight, bias = models.classifier_weights(params)
        sums, counts = np.asarray(sums, np.float64), np.asarray(counts)
        penalty = float(objective.l2_penalty(params, self.c.l2_exclude))
        out = dict(
            train_loss=sums[0] / sums[2],
            l2_penalty=penalty,
            objective=sums[0] / sums[2] + self.l2 * penalty,
            train_accuracy=sums[1] / sums[2],
        )
        out.update({name: float(v) for name, v in collapse.metrics(stats, weight, bias).items()})
        out["nc4"] = counts[0] / counts[1]
        out.update(self._against_ufm(stats, out["train_loss"], weight, bias))
        out["nc1_per_block"] = [float(v) for v in collapse.metrics(block_stats)["nc1"]]
        if ds.test_x is not None:
            test = jnp.zeros(3, jnp.float32)
            for x, y in self._batches(ds.test_x, ds.test_y, lambda: test):
                test = self._loss_step(params, test, x, y)
            test = np.asarray(test, np.float64)
            out.update(test_loss=test[0] / test[2], test_accuracy=test[1] / test[2])
        return {key: (float(v) if isinstance(v, (float, np.floating)) else v) for key, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    """``python -m ncjax.evaluate --workdir=W``: re-evaluate every checkpoint, rewrite metrics.jsonl."""
    from ncjax import cli, sweep

    return cli.run_guarded(lambda: sweep.reevaluate(cli.workdir_flag(argv, "ncjax.evaluate")))


if __name__ == "__main__":
    sys.exit(main())
