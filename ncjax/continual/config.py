"""The config of a continual run: every field with its default, and the checks that reject bad values early.

``configs/continual.py`` starts from :func:`base_config`; ``python -m ncjax.main``
runs it (``config.kind == 'continual'``). The points of a run are ``continual.methods``
× ``continual.scenarios``; every point trains all ``seeds`` together (vmapped members).
"""

from __future__ import annotations

import math

import ml_collections
from ml_collections import config_dict

from ncjax import config as configs, data, models
from ncjax.continual import methods
from ncjax.continual.splits import SCENARIOS
from ncjax.errors import ConfigError

KIND = "continual"


def base_config() -> ml_collections.ConfigDict:
    """The paper's optimisation (SGD, lr 0.03, batch 32, weights 1/18/170, buffer 200) on a small model."""
    c = ml_collections.ConfigDict()
    c.kind = KIND  # python -m ncjax.main dispatches on it
    c.name = "continual"  # default workdir: runs/<name>
    c.seeds = (0, 1, 2)
    c.model = models.default_config()
    c.model.name = "rn1"
    c.model.depth = 2
    c.model.norm = "final"  # one LayerNorm before the head: the features ProNC aligns
    c.data = data.default_config()

    k = c.continual = ml_collections.ConfigDict()
    k.methods = ("pronc", "fixed_etf", "finetune")  # see ncjax.continual.methods.METHODS
    k.scenarios = ("class_incremental", "task_incremental")
    k.num_tasks = 5
    k.classes_per_task = config_dict.placeholder(int)  # None: all classes of the order, num_tasks equal tasks
    k.class_order = config_dict.placeholder(tuple)  # data-set class ids in arrival order; None = 0, 1, ...
    k.order_seed = config_dict.placeholder(int)  # or a seeded permutation of the classes
    k.ce_weight = 1.0  # the paper's --ce_weight
    k.align_weight = 18.0  # --main_weight (Seq-CIFAR-100 command of the official README)
    k.distill_weight = 170.0  # --distill_weight
    k.buffer_size = 200  # samples kept by the *_replay methods (--buffer_size)
    k.replay_seed = 0  # which samples the buffer keeps: shared by the seeds (they share one data feed)

    t = c.train = configs.train_section(objective=False)  # the loss is the methods' (continual.methods)
    t.optimizer = "sgd"
    t.learning_rate = 0.03
    t.momentum = 0.0  # sgd only (--optim_mom 0)
    t.schedule = "constant"  # restarted on every task
    t.batch_size = 32
    t.epochs = 5  # per task (train.steps: per task too)
    t.l2 = 0.0  # λ in loss + λ‖θ‖² (--optim_wd 0)

    c.checkpoint = configs.checkpoint_section()
    configs.add_runtime(c)
    return c


def _fail(message: str):
    raise ConfigError(message)


def _distinct(name: str, values, allowed, example: str) -> None:
    if not isinstance(values, (tuple, list)) or not values or len(set(values)) != len(values):
        _fail(f"{name}={values!r}: give a tuple of distinct names, e.g. --config.{name}=\"{example}\"")
    for value in values:
        if value not in allowed:
            _fail(f"{name}: unknown value {value!r}; choose from: {', '.join(allowed)} "
                  f"(quote each name on the command line: --config.{name}=\"{example}\")")


def validate(c: ml_collections.ConfigDict) -> None:
    """Raise ConfigError with a one-line fix for the first bad value (before any data is loaded)."""
    configs.validate_seeds(c.seeds)
    k = c.continual
    _distinct("continual.methods", k.methods, tuple(methods.METHODS), "('pronc', 'finetune')")
    _distinct("continual.scenarios", k.scenarios, SCENARIOS, "('class_incremental',)")
    if not configs.positive_int(k.num_tasks) or k.num_tasks < 2:
        _fail(f"continual.num_tasks={k.num_tasks!r} must be an integer >= 2")
    if k.classes_per_task is not None and not configs.positive_int(k.classes_per_task):
        _fail(f"continual.classes_per_task={k.classes_per_task!r} must be a positive integer (or unset)")
    for field in ("ce_weight", "align_weight", "distill_weight"):
        if not (isinstance(k[field], (int, float)) and math.isfinite(k[field]) and k[field] >= 0):
            _fail(f"continual.{field}={k[field]!r} must be a finite number >= 0")
    if not isinstance(k.buffer_size, int) or isinstance(k.buffer_size, bool) or k.buffer_size < 0:
        _fail(f"continual.buffer_size={k.buffer_size!r} must be an integer >= 0")
    replaying = [m for m in k.methods if methods.get(m).replay]
    if replaying and k.buffer_size == 0:
        _fail(f"continual.buffer_size=0 but {replaying[0]!r} replays a buffer: give a size > 0 or drop the method")
    configs.validate_runtime(c, steps="steps per task")
    try:
        models.validate(c.model)
    except ValueError as error:
        _fail(str(error))
