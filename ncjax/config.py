"""The experiment config: every field of a depth sweep with its default, and its checks.

Config files in ``configs/`` start from :func:`base_config` and change what
their experiment needs; the command line overrides any value. The config is
locked, so a misspelt ``--config.train.lerning_rate`` is an error, not a new key.
"""

from __future__ import annotations

import itertools

import ml_collections
from ml_collections import config_dict

from ncjax import data, models, objective, plan, train
from ncjax.errors import ConfigError


def base_config() -> ml_collections.ConfigDict:
    """The paper's reported setup (width 64, CE, λ = 0.005, lr 0.005; science.md §2), and ncjax's own choices
    where the paper reports none (Adam, batch 128, a cosine schedule), each a config value."""
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

    t = c.train = ml_collections.ConfigDict()
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
    t.l2_schedule = "constant"  # constant | inverse_depth (λ/L)
    t.l2_exclude = ()  # regexes of parameter paths without penalty, e.g. ('bias', 'norm')
    # The L2 convention (unverified: the paper's cannot be read, science.md §2): full = λ‖θ‖²,
    # half = (λ/2)‖θ‖², decoupled = the optimiser decays the weights (AdamW; SGD + decay);
    # which parameters: all, or weights (no biases, no LayerNorm scale/shift).
    t.l2_form = "full"
    t.l2_params = "all"

    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=500, max_to_keep=config_dict.placeholder(int)))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))  # -1: all remaining devices
    c.eval_batch_size = 512
    c.evaluate = ml_collections.ConfigDict(dict(
        every_steps=config_dict.placeholder(int),  # evaluate this often; None = at every checkpoint
        gradient_norm=False,  # also the full-batch gradient norm of the objective (one backward pass per point)
        per_block="all",  # every classifier-free collapse metric of every block's output | nc1 (and ncc_accuracy)
    ))
    c.log_every_steps = 50  # train_log.jsonl and TensorBoard: loss, its parts, gradient norm
    c.steps_per_call = 1000  # most train steps in one compiled call (blocks also end at log/checkpoint steps)
    c.progress = True  # a progress bar per group (steps/s, ETA)
    # Reporting (runtime: `python -m ncjax.sweep --workdir=W` redraws with the values in config.json).
    c.summary = ml_collections.ConfigDict(dict(
        min_train_accuracy=0.99,  # a run whose final training accuracy is lower fails (left out of the fits)
        slope_axis="depth",  # the numeric axis of the log-log fits; the other axes split them into panels
    ))
    return c


def stored_config(stored: dict) -> ml_collections.ConfigDict:
    """A workdir's stored config on today's defaults: a key added to ncjax since the workdir was
    written takes its default, so an older workdir can still be re-evaluated and summarised."""
    config = ml_collections.ConfigDict(base_config().to_dict())
    config.update(stored)  # recursive: nested sections merge, keys the defaults lack are added
    return config


def _fail(message: str):
    raise ConfigError(message)


def validate(c: ml_collections.ConfigDict) -> None:
    """Raise ConfigError with a one-line fix for the first bad value (of the base config or of any sweep point)."""
    plan.validate(c)
    _validate_values(c)
    for values in itertools.product(*(v for _, v in c.sweep)):
        _validate_values(plan.apply(c, zip((k for k, _ in c.sweep), values)))


def positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def validate_seeds(seeds) -> None:
    values = tuple(seeds) if isinstance(seeds, (tuple, list)) else (seeds,)
    if not values or any(not isinstance(s, int) or s < 0 for s in values) or len(set(values)) != len(values):
        _fail(f"seeds={seeds!r}: give distinct integers >= 0, e.g. --config.seeds='(0,1,2)'")


TRAIN_CHOICES = (("loss", ("ce", "mse")), ("optimizer", train.OPTIMIZERS), ("schedule", train.SCHEDULES),
                 ("l2_schedule", train.L2_SCHEDULES), ("l2_form", tuple(objective.L2_FORMS)),
                 ("l2_params", objective.L2_PARAMS))


def validate_training(c: ml_collections.ConfigDict, steps: str = "steps of every run") -> None:
    """The sections every ncjax runner shares (a sweep's, the continual runner's): ``train`` (the
    choices it has of :data:`TRAIN_CHOICES`), ``checkpoint`` and the runtime settings. ``steps``
    says what ``train.steps`` counts for this runner."""
    t = c.train
    for field, allowed in TRAIN_CHOICES:
        if field in t and t[field] not in allowed:
            _fail(f"train.{field}={t[field]!r} is not supported; choose one of: {', '.join(allowed)}")
    if not t.l2 >= 0:
        _fail(f"train.l2={t.l2!r}: the L2 coefficient λ must be >= 0")
    if not t.learning_rate > 0:
        _fail(f"train.learning_rate={t.learning_rate!r} must be > 0")
    for field in ("batch_size", "epochs"):
        if not positive_int(t[field]):
            _fail(f"train.{field}={t[field]!r} must be a positive integer")
    if t.steps is not None and not positive_int(t.steps):
        _fail(f"train.steps={t.steps!r} must be a positive integer ({steps}), or unset to use train.epochs")
    if not positive_int(c.checkpoint.every_steps):
        _fail(f"checkpoint.every_steps={c.checkpoint.every_steps!r} must be a positive integer")
    if c.checkpoint.max_to_keep is not None and not positive_int(c.checkpoint.max_to_keep):
        _fail(f"checkpoint.max_to_keep={c.checkpoint.max_to_keep!r} must be >= 1 (or unset to keep all)")
    for field in ("eval_batch_size", "log_every_steps", "steps_per_call"):
        if not positive_int(c[field]):
            _fail(f"{field}={c[field]!r} must be a positive integer")


def _validate_values(c: ml_collections.ConfigDict) -> None:
    depths = tuple(c.depths) if isinstance(c.depths, (tuple, list)) else (c.depths,)
    if not depths or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in depths):
        _fail(f"depths={c.depths!r}: every depth must be an integer >= 1, e.g. --config.depths='(2,4,8)'")
    validate_seeds(c.seeds)
    validate_training(c)
    if c.max_members is not None and not positive_int(c.max_members):
        _fail(f"max_members={c.max_members!r} must be a positive integer (or unset: every run that can share a "
              "program does)")
    if c.evaluate.per_block not in ("all", "nc1"):
        _fail(f"evaluate.per_block={c.evaluate.per_block!r}: choose all or nc1")
    if c.evaluate.every_steps is not None and not positive_int(c.evaluate.every_steps):
        _fail(f"evaluate.every_steps={c.evaluate.every_steps!r} must be a positive integer (or unset)")
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
    and ``paper`` (the reported settings of science.md §2: depths, 5 seeds, 5,000 epochs; batch 128
    and Adam are ncjax's choices, not reported). ``default`` is each config's own."""
    if size == "quick":
        c.depths = (1, 2, 4)
        c.seeds = (0, 1)
        c.data.n_per_class = 40
        c.train.batch_size = 64
        c.train.steps = 60
        c.checkpoint.every_steps = 30
        c.log_every_steps = 10
    elif size == "paper":
        c.depths = PAPER_DEPTHS
        c.seeds = (0, 1, 2, 3, 4)
        c.train.batch_size = 128
        c.train.epochs = 5000
        c.train.schedule = "constant"  # the paper reports a learning rate, no schedule
        c.checkpoint.every_steps = 50_000
        c.checkpoint.max_to_keep = 3
