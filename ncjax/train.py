"""Train state, the regularised loss, the sharded train step, and the training loop of one depth.

All seeds of one depth train in one program: the state carries a leading seed
axis and the step is ``jax.vmap``-ped over it, so five width-64 models keep one
device busy instead of five small programs leaving it idle. The step is
``jax.jit`` with ``in_shardings``/``out_shardings`` over the mesh, the state donated.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from ncjax import models, objective, parallel
from ncjax.errors import Diverged

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine")
L2_SCHEDULES = ("constant", "inverse_depth")


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def l2_coefficient(train_config: ml_collections.ConfigDict, depth: int) -> float:
    """λ for this depth: constant, or λ/L (the paper's choice for two-layer blocks)."""
    if train_config.l2_schedule == "inverse_depth":
        return train_config.l2 / depth
    return train_config.l2


def make_optimizer(c: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """optax optimiser with the configured learning-rate schedule."""
    if c.schedule == "constant":
        lr = optax.constant_schedule(c.learning_rate)
    elif c.schedule == "cosine":
        lr = optax.cosine_decay_schedule(c.learning_rate, max(total_steps, 1))
    else:
        lr = optax.warmup_cosine_decay_schedule(
            0.0, c.learning_rate, min(c.warmup_steps, max(total_steps - 1, 0)), max(total_steps, 1)
        )
    if c.optimizer == "sgd":
        return optax.sgd(lr, momentum=c.momentum or None)
    if c.optimizer == "adam":
        return optax.adam(lr)
    return optax.adamw(lr, weight_decay=c.weight_decay)


def regularised_loss(module: nn.Module, c: ml_collections.ConfigDict, l2: float) -> Callable:
    """``(params, x, y) → (data loss + λ‖θ‖², aux)``: the paper's objective on one batch."""

    def loss_fn(params, x, y):
        logits, _ = module.apply({"params": params}, x, train=True)
        data = objective.data_loss(logits, y, c.loss, c.mse_target_scale)
        penalty = objective.l2_penalty(params, c.l2_exclude)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return data + l2 * penalty, dict(data_loss=data, l2_penalty=penalty, accuracy=accuracy)

    return loss_fn


def _finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


@dataclasses.dataclass
class Program:
    """The compiled pieces of one depth: init, step and shardings, all seeds at once."""

    state_sharding: Any
    abstract_state: Any  # ShapeDtypeStructs with shardings, seed axis included
    init: Callable  # seeds [S] uint32 → TrainState
    step: Callable  # (state, x [S, B, ...], y [S, B]) → (state, metrics [S])
    batch_sharding: Callable  # ndim → NamedSharding of a [S, B, ...] batch


def build_program(
    module: nn.Module,
    train_config: ml_collections.ConfigDict,
    depth: int,
    sample_input: np.ndarray,
    num_seeds: int,
    total_steps: int,
    mesh: jax.sharding.Mesh,
) -> Program:
    tx = make_optimizer(train_config, total_steps)
    loss_fn = regularised_loss(module, train_config, l2_coefficient(train_config, depth))
    sample = jnp.asarray(sample_input[:1])

    def init_one(seed):
        params = nn.meta.unbox(module.init(jax.random.key(seed), sample))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    def step_one(state: TrainState, x, y):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, x, y)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        aux = dict(aux, loss=loss, finite=_finite(params) & jnp.isfinite(loss))
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), aux

    abstract = jax.eval_shape(jax.vmap(init_one), jax.ShapeDtypeStruct((num_seeds,), jnp.uint32))
    specs = models.logical_specs(module, sample)["params"]
    param_sharding = parallel.param_shardings(specs, mesh, leading=1)
    rep = parallel.replicated(mesh)

    # Optimiser moments are sharded like the parameters they mirror; counts are replicated.
    opt_sharding = optax.tree_map_params(
        tx, lambda _, sharding: sharding, abstract.opt_state, param_sharding, transform_non_params=lambda _: rep
    )
    state_sharding = TrainState(step=rep, params=param_sharding, opt_state=opt_sharding)
    state_sharding = parallel.fit_shardings(state_sharding, abstract)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding
    )

    def batch_sharding(ndim: int):
        return parallel.batch_sharding(mesh, ndim, leading=1)

    x_sharding = batch_sharding(sample_input.ndim + 1)
    y_sharding = batch_sharding(2)
    # Init runs once: on CPU, skipping LLVM's optimisations halves its compile time for free.
    init_options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    init = jax.jit(jax.vmap(init_one), out_shardings=state_sharding, compiler_options=init_options)
    step = jax.jit(
        jax.vmap(step_one),
        in_shardings=(state_sharding, x_sharding, y_sharding),
        out_shardings=(state_sharding, rep),
        donate_argnums=0,
    )
    return Program(state_sharding, abstract_state, init, step, batch_sharding)
