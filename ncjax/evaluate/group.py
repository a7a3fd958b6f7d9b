"""A group's evaluators, in the config's order (``evaluate.evaluators``), compiled in the background.

The programs compile in a background thread while the group's first block of steps
trains, so the first checkpoint does not stall. Each plug-in's needs are checked when
the list is built: a plug-in reads only what an earlier one returned.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from ncjax import data
from ncjax.errors import ConfigError
from ncjax.evaluate import evaluators as plugins
from ncjax.evaluate.passes import Split

CLASSES = {"train_set": plugins.TrainSet, "test_set": plugins.TestSet, "penalty": plugins.Penalty,
           "ufm": plugins.AgainstUFM, "classifier": plugins.ClassifierGeometry, "balancedness": plugins.Balancedness,
           "gradient_norm": plugins.GradientNorm}
EVALUATORS = tuple(CLASSES)
DEFAULT = ("train_set", "test_set", "penalty", "ufm", "classifier", "balancedness")


class GroupEvaluator:
    """Every evaluator of a group; one metrics line per member and checkpoint."""

    def __init__(self, evaluators: Sequence[plugins.Evaluator]):
        self.evaluators = list(evaluators)
        _check_needs([type(e) for e in self.evaluators])
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._compiled = self._pool.submit(lambda: [e.compile() for e in self.evaluators])

    def __call__(self, params: Any, identities: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """One metrics line per member; ``identities`` start each line (step, depth, seed, ...)."""
        self._compiled.result()
        results: dict[str, Any] = {}
        lines = [dict(identity) for identity in identities]
        for evaluator in self.evaluators:
            out = evaluator(params, {key: results[key] for key in evaluator.needs})
            results.update(out)
            for key, values in out.items():
                if key in evaluator.shares:
                    continue
                for line, value in zip(lines, values):
                    line[key] = float(value) if isinstance(value, (float, np.floating)) else value
        return lines

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _features_are_layernorm_outputs(model: ml_collections.ConfigDict) -> bool:
    """Whether the classifier sees a LayerNorm's output (UFM: zero mean, fixed norm) or not (a sphere)."""
    return model.name != "mlp" and model.head_depth == 0


def build(module: nn.Module, dataset: data.Dataset, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
          hyper, packed: bool, abstract_params: Any, train_arrays=None) -> GroupEvaluator:
    """The evaluators ``config.evaluate.evaluators`` names, those that apply to this group (a test split,
    a linear head). ``train_arrays``: the training set already resident on the device (the feed's), reused."""
    resident = train_arrays is not None
    batch = config.eval_batch_size
    model = plugins.Model(module, hyper, packed, abstract_params, dataset.inputs)
    train_split = Split(dataset.train_x, dataset.train_y, mesh, batch, resident, train_arrays)
    l2s = np.asarray(hyper.l2)
    t = config.train
    factories: dict[str, Callable[[], plugins.Evaluator | None]] = {
        "train_set": lambda: plugins.TrainSet(model, train_split, t, dataset.num_classes, config.evaluate.per_block),
        "test_set": lambda: None if dataset.test_x is None else plugins.TestSet(
            model, Split(dataset.test_x, dataset.test_y, mesh, batch, resident), t, dataset.num_classes),
        "penalty": lambda: plugins.Penalty(model, t, l2s),
        "ufm": lambda: plugins.AgainstUFM(model, t, l2s, layernorm=_features_are_layernorm_outputs(config.model)),
        "classifier": lambda: plugins.ClassifierGeometry(model),
        "balancedness": lambda: plugins.Balancedness(config.model.head_depth) if config.model.head_depth else None,
        "gradient_norm": lambda: plugins.GradientNorm(model, train_split, t, l2s),
    }
    chosen = [factories[name]() for name in config.evaluate.evaluators]
    return GroupEvaluator([e for e in chosen if e is not None])


def _check_needs(classes) -> None:
    """Every plug-in's needs met by one listed before it."""
    available: set[str] = set()
    for cls in classes:
        missing = [n for n in cls.needs if n not in available]
        if missing:
            raise ConfigError(f"evaluate.evaluators: {cls.__name__} needs {', '.join(missing)} from an evaluator "
                              "listed before it (e.g. train_set first)")
        available |= set(cls.provides) | set(cls.shares)


def validate(names) -> None:
    """Raise ConfigError unless ``names`` is a tuple of distinct known evaluators, each after what it needs."""
    if not isinstance(names, (tuple, list)) or len(set(names)) != len(names) or not set(names) <= set(EVALUATORS):
        raise ConfigError(f"evaluate.evaluators={names!r}: give distinct names among {', '.join(EVALUATORS)}, "
                          "e.g. --config.evaluate.evaluators=\"('train_set', 'penalty')\"")
    _check_needs([CLASSES[name] for name in names])
