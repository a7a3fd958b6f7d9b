"""The experiment config: every field of a depth sweep with its default, the sections every
kind of run shares, and the checks that run once, before anything is written.

Config files in ``configs/`` start from :func:`base_config` (a depth sweep) or from a kind's
own base built on the same sections (:func:`train_section`, :func:`checkpoint_section`,
:func:`add_runtime`); the command line overrides any value. The config is locked, so a
misspelt ``--config.train.lerning_rate`` is an error, not a new key.
"""

from __future__ import annotations

import importlib.util
import itertools
import json

import ml_collections
from ml_collections import config_dict

from ncjax import data, models, plan, train
from ncjax.evaluate import group as evaluation
from ncjax.errors import ConfigError


def train_section(objective: bool = True) -> ml_collections.ConfigDict:
    """The ``train`` section: the optimiser, its schedule, the batch, the length and the L2 penalty.

    ``objective``: also the data loss and λ's depth schedule (a depth sweep's; the continual
    runner's loss is its methods')."""
    t = ml_collections.ConfigDict()
    if objective:
        t.loss = "ce"  # ce | mse
        t.mse_target_scale = 1.0
    t.optimizer = "adam"  # sgd | adam (ncjax's choice: the paper's optimiser is not reported)
    t.learning_rate = 0.005
    t.momentum = 0.9  # sgd only
    t.schedule = "cosine"  # constant | cosine | warmup_cosine; cosine ends runs near a minimum
    t.warmup_steps = 0
    t.batch_size = 128  # global, over all devices and hosts
    t.epochs = 10
    t.steps = config_dict.placeholder(int)  # if set, overrides epochs
    t.l2 = 0.005  # λ in data loss + λ‖θ‖²
    if objective:
        t.l2_schedule = "constant"  # constant | inverse_depth (λ/L)
    t.l2_exclude = ()  # regexes of parameter paths without penalty, e.g. ('bias', 'norm')
    # The L2 convention (unverified: the paper's cannot be read, docs/paper.md#what-is-not-known):
    # full = λ‖θ‖², half = (λ/2)‖θ‖², decoupled = the optimiser decays the weights (AdamW; SGD + decay);
    # which parameters: all, or weights (no biases, no LayerNorm scale/shift).
    t.l2_form = "full"
    t.l2_params = "all"
    return t


def checkpoint_section() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(every_steps=500, max_to_keep=config_dict.placeholder(int)))


def add_runtime(c: ml_collections.ConfigDict) -> None:
    """The settings of how a run executes (``records.RUNTIME_KEYS``: they may change between reruns)."""
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))  # -1: all remaining devices
    c.eval_batch_size = 512
    c.log_every_steps = 50  # train_log.jsonl and TensorBoard: loss, its parts, gradient norm
    c.steps_per_call = 1000  # most train steps in one compiled call (blocks also end at log/checkpoint steps)
    c.progress = True  # a progress bar per group (steps/s, ETA)


def base_config() -> ml_collections.ConfigDict:
    """The paper's reported setup (width 64, CE, λ = 0.005, lr 0.005; docs/paper.md#reported-settings), and
    ncjax's own choices where the paper reports none (Adam, batch 128, a cosine schedule), each a config value."""
    c = ml_collections.ConfigDict()
    c.name = "experiment"  # default workdir: runs/<name>
    c.depths = (2, 4, 8)
    c.seeds = (0, 1)
    # More axes: (config key, values) pairs, a grid with depths and seeds, e.g. (('train.l2', (5e-3, 5e-4)),).
    # λ, the learning rate and the number that generates the data (a Gaussian mixture's SNR) train vmapped
    # in one program with the seeds; other keys get a program each.
    c.sweep = ()
    # Most runs in one program (memory); None = all that can share one. It names the groups: fixed for a workdir.
    c.max_members = config_dict.placeholder(int)
    # Every depth of a group in one program (blocks beyond a run's depth masked): True | False | None = auto
    # (auto: a resumed workdir keeps its packing, a new one packs on accelerators, not on CPUs).
    c.pack = config_dict.placeholder(bool)
    c.model = models.default_config()
    c.data = data.default_config()
    c.train = train_section()
    c.checkpoint = checkpoint_section()
    add_runtime(c)
    c.evaluate = ml_collections.ConfigDict(dict(
        every_steps=config_dict.placeholder(int),  # evaluate this often; None = at every checkpoint
        log_points=10,  # and at about this many log-spaced steps (on the log cadence): curves on a log time axis
        final_points=3,  # and at the last this many log steps: the summary's mean of the last 3 evaluations
        # The plug-ins measured at every evaluation, in order (ncjax.evaluate.evaluators); those that do not
        # apply (no test split, no linear head) are skipped. 'gradient_norm' adds one backward pass per point.
        evaluators=evaluation.DEFAULT,
        per_block="all",  # every classifier-free collapse metric of every block's output | nc1 (and ncc_accuracy)
    ))
    # Reporting (runtime: `python -m ncjax.sweep --workdir=W` redraws with the values in config.json).
    c.summary = ml_collections.ConfigDict(dict(
        min_train_accuracy=0.99,  # a run whose final training accuracy is lower fails (left out of the fits)
        slope_axis="depth",  # the numeric axis of the log-log fits; the other axes split them into panels
    ))
    # Dashboards besides TensorBoard (runtime). wandb: one Weights & Biases run per ncjax run, the same scalars
    # and HParams (pip install 'ncjax[wandb]'; WANDB_MODE=offline logs to disk only); entity None: W&B's default.
    c.dashboard = ml_collections.ConfigDict(dict(wandb=False, wandb_project="ncjax",
                                                 wandb_entity=config_dict.placeholder(str)))
    return c


def stored_config(stored: dict) -> ml_collections.ConfigDict:
    """A workdir's stored config on today's defaults: a key added to ncjax since the workdir was
    written takes its default, so an older workdir can still be re-evaluated and summarised."""
    stored = json.loads(json.dumps(stored))
    evaluate = stored.get("evaluate", {})
    if "gradient_norm" in evaluate:  # before evaluate.evaluators, a flag asked for the gradient norm
        flag = evaluate.pop("gradient_norm")
        evaluate.setdefault("evaluators", list(evaluation.DEFAULT) + (["gradient_norm"] if flag else []))
    config = ml_collections.ConfigDict(base_config().to_dict())
    config.update(stored)  # recursive: nested sections merge, keys the defaults lack are added
    return config


def _fail(message: str):
    raise ConfigError(message)


def validate(c: ml_collections.ConfigDict) -> None:
    """Raise ConfigError with a one-line fix for the first bad value (of the base config or of any sweep point).

    The one full check of a depth sweep's config: it runs once per command, before any file is written."""
    plan.validate(c)
    _validate_values(c)
    for values in itertools.product(*(v for _, v in c.sweep)):
        _validate_values(plan.apply(c, zip((k for k, _ in c.sweep), values)))


def positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def validate_seeds(seeds) -> None:
    values = tuple(seeds) if isinstance(seeds, (tuple, list)) else (seeds,)
    if not values or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in values) \
            or len(set(values)) != len(values):
        _fail(f"seeds={seeds!r}: give distinct integers >= 0, e.g. --config.seeds='(0,1,2)'")


def validate_runtime(c: ml_collections.ConfigDict, steps: str = "steps of every run") -> None:
    """The sections every runner shares: ``train`` (:func:`ncjax.train.validate`), ``checkpoint`` and the
    runtime settings. ``steps`` says what ``train.steps`` counts for this runner."""
    try:
        train.validate(c.train, steps)
    except ValueError as error:
        _fail(str(error))
    if not positive_int(c.checkpoint.every_steps):
        _fail(f"checkpoint.every_steps={c.checkpoint.every_steps!r} must be a positive integer")
    if c.checkpoint.max_to_keep is not None and not positive_int(c.checkpoint.max_to_keep):
        _fail(f"checkpoint.max_to_keep={c.checkpoint.max_to_keep!r} must be >= 1 (or unset to keep all)")
    for field in ("eval_batch_size", "log_every_steps", "steps_per_call"):
        if not positive_int(c[field]):
            _fail(f"{field}={c[field]!r} must be a positive integer")


def validate_dashboard(d: ml_collections.ConfigDict) -> None:
    if not isinstance(d.wandb, bool):
        _fail(f"dashboard.wandb={d.wandb!r} must be True or False")
    if not (isinstance(d.wandb_project, str) and d.wandb_project):
        _fail(f"dashboard.wandb_project={d.wandb_project!r} must be a non-empty name")
    if d.wandb and importlib.util.find_spec("wandb") is None:
        _fail("dashboard.wandb=True needs Weights & Biases: pip install 'ncjax[wandb]' "
              "(or --config.dashboard.wandb=False)")


def _validate_values(c: ml_collections.ConfigDict) -> None:
    depths = tuple(c.depths) if isinstance(c.depths, (tuple, list)) else (c.depths,)
    if not depths or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in depths):
        _fail(f"depths={c.depths!r}: every depth must be an integer >= 1, e.g. --config.depths='(2,4,8)'")
    validate_seeds(c.seeds)
    validate_runtime(c)
    if c.max_members is not None and not positive_int(c.max_members):
        _fail(f"max_members={c.max_members!r} must be a positive integer (or unset: every run that can share a "
              "program does)")
    try:
        evaluation.validate(c.evaluate.evaluators)
    except ValueError as error:
        _fail(str(error))
    if c.evaluate.per_block not in ("all", "nc1"):
        _fail(f"evaluate.per_block={c.evaluate.per_block!r}: choose all or nc1")
    for field in ("log_points", "final_points"):
        value = c.evaluate[field]
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            _fail(f"evaluate.{field}={value!r} must be an integer >= 0 (0: none)")
    if c.evaluate.every_steps is not None and not positive_int(c.evaluate.every_steps):
        _fail(f"evaluate.every_steps={c.evaluate.every_steps!r} must be a positive integer (or unset)")
    validate_dashboard(c.dashboard)
    if not (isinstance(c.summary.min_train_accuracy, (int, float)) and 0 <= c.summary.min_train_accuracy <= 1):
        _fail(f"summary.min_train_accuracy={c.summary.min_train_accuracy!r} must be a number in [0, 1]")
    try:
        data.validate(c.data)
    except ValueError as error:
        _fail(str(error))
    probe = ml_collections.ConfigDict(c.model.to_dict())
    probe.depth = depths[0]
    try:
        models.validate(probe)
    except ValueError as error:
        _fail(str(error))


def fit_model_to_data(model: ml_collections.ConfigDict, dataset: data.Dataset,
                      num_classes: int | None = None) -> None:
    """Set what the data decides in a model config: classes, input kind, vocabulary and length (in place)."""
    model.num_classes = dataset.num_classes if num_classes is None else num_classes
    if dataset.kind == "tokens":
        model.input = "tokens"
        model.vocab_size = dataset.vocab_size
        model.max_len = max(model.max_len, dataset.train_x.shape[1] + 1)
    else:
        model.input = "vector" if dataset.kind == "vector" else "image"


def resolve(config: ml_collections.ConfigDict, dataset: data.Dataset,
            num_classes: int | None = None) -> ml_collections.ConfigDict:
    """A copy of a validated config with what the data decides filled in (:func:`fit_model_to_data`), its
    model checked again (the data may make it invalid: a vocabulary, a patch size). Every runner's one
    resolution step; the whole config is not validated again."""
    config = ml_collections.ConfigDict(config.to_dict())
    fit_model_to_data(config.model, dataset, num_classes)
    try:
        models.validate(config.model)
    except ValueError as error:
        _fail(str(error))
    return config


def parse_presets(arg: str | None, groups: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Split a config argument like ``'quick,t12,pre'`` into one word per group.

    ``groups`` maps a group name to its words, the first being the default.
    An unknown word is an error listing the valid ones.
    """
    chosen = {group: words[0] for group, words in groups.items()}
    for word in filter(None, (arg or "").split(",")):
        group = next((g for g, words in groups.items() if word in words), None)
        if group is None:
            valid = ", ".join(w for words in groups.values() for w in words)
            raise ConfigError(f"unknown preset {word!r} in {arg!r}; valid presets: {valid}")
        chosen[group] = word
    return chosen


PAPER_DEPTHS = (2, 3, 5, 8, 13, 21, 34)


def apply_size(c: ml_collections.ConfigDict, size: str) -> None:
    """The sizes every depth config shares: ``quick`` (≤ 2 min on a CPU, for tests and Colab)
    and ``paper`` (the reported settings of docs/paper.md#reported-settings: depths, 5 seeds, 5,000 epochs;
    batch 128, Adam and the warm-up + cosine decay to zero are ncjax's choices, not reported). ``default``
    is each config's own."""
    if size == "quick":
        c.depths = (1, 2, 4)
        c.seeds = (0, 1)
        c.data.n_per_class = 20  # 200 images: every run fits (≥ 99%) well before its 60 steps end
        c.train.batch_size = 64
        c.train.steps = 60
        c.checkpoint.every_steps = 30
        c.log_every_steps = 10
    elif size == "paper":
        c.depths = PAPER_DEPTHS
        c.seeds = (0, 1, 2, 3, 4)
        c.train.batch_size = 128
        c.train.epochs = 5000
        # The paper reports a learning rate and no schedule; Adam at a constant rate over 5,000 epochs stays at
        # a noise floor (runs end in dips below 99%: docs/reproduction.md), so the protocol warms up and decays
        # to zero over the whole run (an inference: docs/paper.md#what-is-not-known). Coupled λ‖θ‖² with Adam.
        c.train.schedule = "warmup_cosine"
        c.train.warmup_steps = 500
        c.checkpoint.every_steps = 5_000
        c.checkpoint.max_to_keep = 3
