"""Train state, the regularised loss, and the compiled block of train steps of a group of runs.

A *group* is the set of runs (members) that train in one program: the seeds of one
depth, or, packed, every depth and seed of a sweep. Members differ only in numbers
(:class:`Hyper`: seed, λ, learning rate, active depth, the number that generated their
data), never in shapes, so one
step is ``jax.vmap`` over a leading member axis and five width-64 models keep one
device busy instead of five small programs leaving it idle.

One call of :meth:`Program.run_block` runs a block of steps (``lax.scan``): the
batches come from the feed inside the program (``ncjax.data.feed``), and the call
returns every step's losses and gradient norm. The host acts only between blocks.
A member whose loss or gradient becomes non-finite is frozen at its last finite
parameters and ``diverged_at`` records the step; the others train on.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ncjax import models, objective, parallel
from ncjax.data.feed import Feed
from ncjax.errors import ConfigError
from ncjax.models import execution

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "warmup_cosine")
L2_SCHEDULES = ("constant", "inverse_depth")
STEP_LOGS = ("loss", "data_loss", "l2_penalty", "accuracy", "grad_norm")
CHOICES = (("loss", objective.LOSSES), ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
           ("l2_schedule", L2_SCHEDULES), ("l2_form", tuple(objective.L2_FORMS)), ("l2_params", objective.L2_PARAMS))


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def validate(t: ml_collections.ConfigDict, steps: str = "steps of every run") -> None:
    """Raise ConfigError with a one-line fix for the first bad value of a ``train`` section (the fields it has):
    every choice known, every number finite and in range, every ``l2_exclude`` pattern a valid regex.
    ``steps`` says what ``train.steps`` counts for the runner."""
    def fail(message):
        raise ConfigError(message)

    for field, allowed in CHOICES:
        if field in t and t[field] not in allowed:
            fail(f"train.{field}={t[field]!r} is not supported; choose one of: {', '.join(allowed)}")
    if not (_number(t.learning_rate) and t.learning_rate > 0):
        fail(f"train.learning_rate={t.learning_rate!r} must be a finite number > 0")
    if not (_number(t.l2) and t.l2 >= 0):
        fail(f"train.l2={t.l2!r}: the L2 coefficient λ must be a finite number >= 0")
    if not (_number(t.momentum) and 0 <= t.momentum < 1):
        fail(f"train.momentum={t.momentum!r} must be a finite number in [0, 1)")
    if "mse_target_scale" in t and not (_number(t.mse_target_scale) and t.mse_target_scale > 0):
        fail(f"train.mse_target_scale={t.mse_target_scale!r} must be a finite number > 0")
    if not (isinstance(t.warmup_steps, int) and not isinstance(t.warmup_steps, bool) and t.warmup_steps >= 0):
        fail(f"train.warmup_steps={t.warmup_steps!r} must be an integer >= 0")
    for field in ("batch_size", "epochs"):
        if not _count(t[field]):
            fail(f"train.{field}={t[field]!r} must be a positive integer")
    if t.steps is not None and not _count(t.steps):
        fail(f"train.steps={t.steps!r} must be a positive integer ({steps}), or unset to use train.epochs")
    patterns = t.l2_exclude if isinstance(t.l2_exclude, (tuple, list)) else None
    if patterns is None or not all(isinstance(p, str) for p in patterns):
        fail(f"train.l2_exclude={t.l2_exclude!r}: give a tuple of regular expressions, e.g. \"('bias', 'norm')\"")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            fail(f"train.l2_exclude: {pattern!r} is not a regular expression ({error})")


@struct.dataclass
class Hyper:
    """The numbers in which the members of a group differ, each [M]."""

    seed: jax.Array  # uint32: initialisation and data order
    l2: jax.Array  # float32: λ of this member (after the depth schedule)
    learning_rate: jax.Array  # float32: peak learning rate
    depth: jax.Array  # int32: active depth (blocks beyond it are the identity when packed)
    data_value: jax.Array  # float32: the number that generated this member's data (Dataset.compose), or 0

    @classmethod
    def of(cls, seeds, l2s, learning_rates, depths, data_values=None) -> "Hyper":
        data_values = np.zeros(len(seeds)) if data_values is None else data_values
        return cls(seed=np.asarray(seeds, np.uint32), l2=np.asarray(l2s, np.float32),
                   learning_rate=np.asarray(learning_rates, np.float32), depth=np.asarray(depths, np.int32),
                   data_value=np.asarray(data_values, np.float32))


@struct.dataclass
class TrainState:
    step: jax.Array  # [] int32: steps taken; the members train in lockstep
    params: Any  # every leaf [M, ...]
    opt_state: Any  # every leaf [M, ...]
    diverged_at: jax.Array  # [M] int32: the step whose loss or gradient was first non-finite; 0 = never


def l2_coefficient(train_config: ml_collections.ConfigDict, depth: int) -> float:
    """λ for this depth: constant, or λ/L (the paper's choice for two-layer blocks)."""
    if train_config.l2_schedule == "inverse_depth":
        return train_config.l2 / depth
    return train_config.l2


def make_optimizer(c: ml_collections.ConfigDict, total_steps: int, learning_rate=None,
                   l2=None) -> optax.GradientTransformation:
    """optax optimiser with the configured schedule; ``learning_rate`` and ``l2`` (may be traced) override
    the config's. With ``train.l2_form='decoupled'`` the optimiser decays the penalised parameters itself
    (Adam: AdamW, θ ← θ − η(update + λθ); SGD: the decay added to the gradient)."""
    peak = c.learning_rate if learning_rate is None else learning_rate
    # The schedule's shape with a unit peak, scaled by the (possibly traced, vmapped) peak: optax's own
    # schedules test their peak in Python, which a traced learning rate cannot answer.
    if c.schedule == "constant":
        shape = optax.constant_schedule(1.0)
    elif c.schedule == "cosine":
        shape = optax.cosine_decay_schedule(1.0, max(total_steps, 1))
    else:
        shape = optax.warmup_cosine_decay_schedule(0.0, 1.0, min(c.warmup_steps, max(total_steps - 1, 0)),
                                                   max(total_steps, 1))

    def lr(count):
        return peak * shape(count)

    decay = c.l2 if l2 is None else l2
    mask = functools.partial(objective.penalised, which=c.l2_params, exclude=tuple(c.l2_exclude))
    decoupled = c.l2_form == "decoupled"
    if c.optimizer == "adam":
        return optax.adamw(lr, weight_decay=decay, mask=mask) if decoupled else optax.adam(lr)
    sgd = optax.sgd(lr, momentum=c.momentum or None)
    return optax.chain(optax.add_decayed_weights(decay, mask), sgd) if decoupled else sgd


def penalty_factor(train_config: ml_collections.ConfigDict) -> float:
    """The factor of λ‖θ‖² in the objective a run minimises (for decoupled decay: the ½ that SGD with
    that decay minimises exactly); what the evaluators report and the UFM comparison uses."""
    return 0.5 if train_config.l2_form == "decoupled" else objective.L2_FORMS[train_config.l2_form]


def member_loss(module: nn.Module, c: ml_collections.ConfigDict, packed: bool) -> Callable:
    """``(params, hyper, x, y, extras) → (data loss + c·λ‖θ‖², logs)``: the paper's objective for one member.

    ``c`` is the L2 form's factor (``objective.L2_FORMS``: 1, ½, or 0 when the optimiser decays the
    weights); ‖θ‖² runs over the penalised parameters (``train.l2_params``, ``train.l2_exclude``) of the
    member's own blocks (a packed member's masked blocks belong to no run).
    """
    factor = objective.L2_FORMS[c.l2_form]

    def loss_fn(params, hyper: Hyper, x, y, extras):
        del extras  # the paper's objective needs nothing beyond the batch
        depth = dict(active_depth=hyper.depth) if packed else {}
        logits, _ = module.apply({"params": params}, x, train=True, **depth)
        data = objective.data_loss(logits, y, c.loss, c.mse_target_scale)
        penalty = objective.l2_penalty(params, c.l2_exclude, which=c.l2_params, **depth)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return data + factor * hyper.l2 * penalty, dict(data_loss=data, l2_penalty=penalty, accuracy=accuracy)

    return loss_fn


def _where(ok, new, old):
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


class Program:
    """The compiled pieces of one group: init, and the block of steps; shardings over the mesh."""

    def __init__(self, module: nn.Module, train_config: ml_collections.ConfigDict, feed: Feed,
                 mesh: jax.sharding.Mesh, total_steps: int, sample_input: np.ndarray, hyper: Hyper,
                 packed: bool = False, loss: Callable | None = None, inputs: Callable | None = None):
        """``loss``: ``(params, hyper, x, y, extras) → (scalar, logs)`` for one member, where ``extras`` are
        that member's slice of what :meth:`run_block` is given (e.g. a frozen earlier model); default:
        the paper's objective (:func:`member_loss`). ``inputs``: ``(rows, data_value) → model inputs``
        (``Dataset.inputs``) when the feed's rows are parts that each member composes with its own
        ``hyper.data_value``; ``sample_input`` is such rows."""
        self.module, self.config, self.feed, self.mesh = module, train_config, feed, mesh
        self.total_steps, self.packed, self.seeds = total_steps, packed, np.asarray(hyper.seed)
        num_members = len(self.seeds)
        c = train_config
        loss_fn = loss or member_loss(module, c, packed)
        inputs = inputs or (lambda x, value: x)
        sample = jnp.asarray(inputs(sample_input[:1], hyper.data_value[0]))

        def init_one(seed):
            params = nn.meta.unbox(module.init(jax.random.key(seed), sample))["params"]
            return params, make_optimizer(c, total_steps).init(params)

        def step_one(params, opt_state, diverged_at, hyper: Hyper, x, y, extras, step):
            x = inputs(x, hyper.data_value)
            (loss, logs), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, hyper, x, y, extras)
            updates, new_opt_state = make_optimizer(c, total_steps, hyper.learning_rate, hyper.l2).update(
                grads, opt_state, params)
            if packed:  # blocks beyond the member's depth never move, whatever the optimiser does to them
                updates = jax.tree.map(jnp.multiply, updates, objective.depth_mask(params, hyper.depth))
            grad_norm = optax.tree_utils.tree_norm(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            ok = finite & (diverged_at == 0)
            params = _where(ok, optax.apply_updates(params, updates), params)
            opt_state = _where(ok, new_opt_state, opt_state)
            diverged_at = jnp.where((diverged_at == 0) & ~finite, step + 1, diverged_at)
            return params, opt_state, diverged_at, dict(logs, loss=loss, grad_norm=grad_norm)

        step_members = jax.vmap(step_one, in_axes=(0, 0, 0, 0, 0, 0, 0, None))
        batch_spec = lambda ndim: NamedSharding(mesh, P(None, parallel.BATCH_AXES, *([None] * (ndim - 2))))

        def one_step(state: TrainState, hyper: Hyper, x, y, extras):
            params, opt_state, diverged_at, logs = step_members(
                state.params, state.opt_state, state.diverged_at, hyper, x, y, extras, state.step)
            return TrainState(state.step + 1, params, opt_state, diverged_at), logs

        def block(state: TrainState, carry, hyper: Hyper, arrays, block_inputs, extras, length: int):
            def body(inner, index):
                state, carry = inner
                (x, y), carry = feed.batch(arrays, carry, block_inputs, hyper.seed, state.step, index)
                x = jax.lax.with_sharding_constraint(x, batch_spec(x.ndim))
                y = jax.lax.with_sharding_constraint(y, batch_spec(y.ndim))
                state, logs = one_step(state, hyper, x, y, extras)
                return (state, carry), logs

            (state, carry), logs = jax.lax.scan(body, (state, carry), jnp.arange(length))
            return state, carry, logs

        abstract = jax.eval_shape(jax.vmap(init_one), jax.ShapeDtypeStruct((num_members,), jnp.uint32))
        specs = models.logical_specs(module, sample)["params"]
        param_sharding = parallel.param_shardings(specs, mesh, leading=1)
        rep = parallel.replicated(mesh)
        # Optimiser moments are sharded like the parameters they mirror; counts are replicated.
        opt_sharding = optax.tree_map_params(
            make_optimizer(c, total_steps), lambda _, sharding: sharding, abstract[1], param_sharding,
            transform_non_params=lambda _: rep)
        state_sharding = TrainState(step=rep, params=param_sharding, opt_state=opt_sharding, diverged_at=rep)
        abstract_state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract[0],
                                    opt_state=abstract[1],
                                    diverged_at=jax.ShapeDtypeStruct((num_members,), jnp.int32))
        self.state_sharding = parallel.fit_shardings(state_sharding, abstract_state)
        self.abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                           abstract_state, self.state_sharding)
        self.replicated = rep

        def init(seeds):
            params, opt_state = jax.vmap(init_one)(seeds)
            return TrainState(jnp.zeros((), jnp.int32), params, opt_state, jnp.zeros(seeds.shape, jnp.int32))

        # Init runs once: on CPU, skipping LLVM's optimisations halves its compile time for free.
        init_options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
        self._init = jax.jit(init, out_shardings=self.state_sharding, compiler_options=init_options)
        self.batch_sharding = batch_spec
        options = execution.step_compiler_options(module)
        step_shardings = dict(in_shardings=(self.state_sharding, rep, None, None, None),
                              out_shardings=(self.state_sharding, rep))
        self._step = jax.jit(one_step, donate_argnums=0, compiler_options=options, **step_shardings)
        self._traced_step = jax.jit(one_step, **step_shardings)  # within another trace XLA options are refused
        # Shardings pinned on both sides: a restored, a fresh and a returned state hit the same compiled block.
        self._block = jax.jit(block, static_argnums=6, donate_argnums=(0, 1),
                              in_shardings=(self.state_sharding, rep, rep, None, None, None),
                              out_shardings=(self.state_sharding, rep, rep), compiler_options=options)

        self.hyper = jax.tree.map(
            lambda a: jax.make_array_from_callback(a.shape, rep, lambda index: a[index]), hyper)

    def init(self) -> TrainState:
        return self._init(self.hyper.seed)

    def carry(self, step: int):
        """The feed's carry at ``step`` (e.g. the current epoch's order): recomputed, never checkpointed."""
        return self.feed.carry(self.hyper.seed, step)

    def step(self, state: TrainState, x, y, extras=()):
        """One step on a given batch (x [M, B, ...], y [M, B], sharded as ``batch_sharding``): the bare step the
        benchmarks compare the block loop with. Donates ``state``; traceable (e.g. to count its FLOPs)."""
        step = self._traced_step if isinstance(x, jax.core.Tracer) else self._step  # not a walk of the state's leaves
        return step(state, self.hyper, x, y, extras)

    def run_block(self, state: TrainState, carry, start: int, length: int, extras=()):
        """``length`` steps from ``start`` (= ``state.step``); returns (state, carry, logs {name: [T, M]}).

        ``extras``: a pytree whose leaves have a leading member axis, handed to the loss (member's slice).
        Donates ``state`` and ``carry``. Everything returned stays on the device: fetch the
        logs after dispatching the next block, so the device never waits for the host.
        """
        inputs = self.feed.block_inputs(self.seeds, start, length)
        return self._block(state, carry, self.hyper, self.feed.arrays, inputs, extras, length)
