"""Evaluators: what is measured at every checkpoint, on all members of a group at once.

The trainer calls :class:`GroupEvaluator` on every checkpoint it writes; ``python -m
ncjax.evaluate --workdir=W`` re-evaluates a finished workdir with the same code.
Each evaluator is a plug-in that adds keys to every member's metrics line:

- :class:`TrainSet`: loss, accuracy and the collapse statistics of the training set,
  the features that enter the classifier and every block's output (two passes: the
  statistics, then ``nc4`` against the final class means);
- :class:`Penalty`: ‖θ‖² and the full objective;
- :class:`Balancedness` (a model with a linear head): how balanced its linear layers are;
- :class:`AgainstUFM`: distance and objective gap to the unconstrained-features optimum;
- :class:`GradientNorm` (``evaluate.gradient_norm``): the full-batch gradient norm of the objective;
- :class:`TestSet`: test loss and accuracy, when the data has a test split.

A pass over a split is one compiled program: the split is resident on the device and a
``lax.scan`` gathers its batches (or, for data streamed from the host, one batch is
prepared while the previous one computes), every member vmapped. The programs are
compiled in a background thread while the group's first block of steps trains, so the
first checkpoint does not stall. Nothing is held beyond a batch.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import re
import warnings
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding

from ncjax import collapse, data, models, objective, parallel, train, ufm


@dataclasses.dataclass
class Checkpoint:
    """What the evaluators of one checkpoint share: the stacked parameters and the lines they fill."""

    step: int
    params: Any  # every leaf [M, ...], on the device
    lines: list[dict[str, Any]]  # one per member
    train_stats: collapse.ClassStats | None = None  # of the final features, leaves [M, ...] (numpy)


class Split:
    """One evaluation split, resident on the device (replicated) or streamed from the host in batches."""

    def __init__(self, x: np.ndarray, y: np.ndarray, mesh: jax.sharding.Mesh, batch_size: int, resident: bool,
                 device_arrays: tuple[jax.Array, jax.Array] | None = None):
        self.n, self.mesh, self.batch_size, self.resident = len(y), mesh, batch_size, resident
        self.num_batches = -(-self.n // batch_size)
        self.host = (x, y)
        if resident and device_arrays is None:
            rep = parallel.replicated(mesh)
            device_arrays = tuple(jax.make_array_from_callback(a.shape, rep, lambda i, a=a: a[i]) for a in (x, y))
        self.arrays = device_arrays if resident else None

    def batch_sharding(self, ndim: int) -> NamedSharding:
        return parallel.batch_sharding(self.mesh, ndim)


class Pass:
    """A fold of ``body(carry, consts, x, y) → carry`` over every batch of a split, compiled once.

    Padding rows (the ragged last batch) carry the label -1, which every body ignores.
    """

    def __init__(self, body: Callable, split: Split):
        self.split = split
        s = split

        def constrain(x, y):
            return (jax.lax.with_sharding_constraint(x, s.batch_sharding(x.ndim)),
                    jax.lax.with_sharding_constraint(y, s.batch_sharding(1)))

        if s.resident:
            def run(carry, consts, arrays):
                x_all, y_all = arrays

                def step(carry, b):
                    idx = b * s.batch_size + jnp.arange(s.batch_size)
                    valid = idx < s.n
                    idx = jnp.minimum(idx, s.n - 1)
                    x, y = constrain(x_all[idx], jnp.where(valid, y_all[idx], data.PAD_LABEL))
                    return body(carry, consts, x, y), None

                return jax.lax.scan(step, carry, jnp.arange(s.num_batches))[0]
        else:
            def run(carry, consts, batch):
                return body(carry, consts, *constrain(*batch))
        self._jit = jax.jit(run, donate_argnums=0)
        self._compiled = None

    def compile(self, carry, consts) -> None:
        """Compile ahead of the first call (shapes from ``carry`` and ``consts``, which may be abstract)."""
        example = self.split.arrays if self.split.resident else next(self._host_batches(lambda: None))
        self._compiled = self._jit.lower(carry, consts, example).compile()

    def _host_batches(self, pending: Callable[[], Any]):
        """Device batches; waits for ``pending()`` before handing out the next, so that one batch is in
        flight while the next is prepared and memory does not grow with the data."""
        s = self.split
        for xb, yb in data.eval_batches(*s.host, s.batch_size, jax.process_index(), jax.process_count()):
            batch = (jax.make_array_from_process_local_data(s.batch_sharding(xb.ndim), xb),
                     jax.make_array_from_process_local_data(s.batch_sharding(1), yb))
            jax.block_until_ready(pending())
            yield batch

    def __call__(self, carry, consts):
        run = self._compiled or self._jit
        if self.split.resident:
            return run(carry, consts, self.split.arrays)
        state = {"carry": carry}
        for batch in self._host_batches(lambda: state["carry"]):
            state["carry"] = run(state["carry"], consts, batch)
        return state["carry"]


def _loss_sums(logits, y, loss_kind: str, target_scale: float):
    """[Σ loss, Σ correct, count] over the valid (non-padding) rows of one member's batch."""
    valid = (y >= 0).astype(jnp.float32)
    loss = objective.per_example_loss(logits, jnp.maximum(y, 0), loss_kind, target_scale)
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    return jnp.stack([jnp.sum(loss * valid), jnp.sum(correct * valid), jnp.sum(valid)])


class Evaluator:
    """A plug-in: adds keys to every member's line of a :class:`Checkpoint`."""

    def compile(self) -> None:
        """Compile the evaluator's device programs ahead of the first checkpoint (optional)."""

    def __call__(self, checkpoint: Checkpoint) -> None:
        raise NotImplementedError


class Model:
    """The forward pass of every member, for the evaluators: (logits, features, blocks) of a batch.

    ``hyper`` (on the device, every leaf [M]) is what the members differ in; each evaluator's
    program takes it as the per-member constant beside the parameters.
    """

    def __init__(self, module: nn.Module, hyper: train.Hyper, packed: bool, abstract_params: Any,
                 inputs: Callable | None = None):
        self.module, self.depths, self.packed = module, np.asarray(hyper.depth), packed
        self.abstract_params, self.inputs = abstract_params, inputs or (lambda x, value: x)
        self.members = len(self.depths)
        self.hyper = jax.tree.map(jnp.asarray, hyper)

    def forward(self, params, member: train.Hyper, x):
        """One member: logits [B, K], features [B, d], blocks [L, B, d] (float32); ``x``: rows of a split
        (composed into the member's inputs when its data is made per member, ``Dataset.inputs``)."""
        extra = dict(active_depth=member.depth) if self.packed else {}
        logits, features, blocks = self.module.apply({"params": params}, self.inputs(x, member.data_value),
                                                     train=False, return_blocks=True, **extra)
        return logits, features.astype(jnp.float32), blocks.astype(jnp.float32)


class TrainSet(Evaluator):
    """Training loss and accuracy, and the collapse metrics of the final features and of every block.

    ``ncjax.collapse``'s two passes over the training set: pass 1 the class statistics of the
    features and of every block's output (and the loss sums), pass 2 what needs the final class
    means (``nc4``, ``nc3_cos``, the nearest-class-centre accuracy of every block, and ``nc1``
    through K×K projections when K ≤ width). Every metric of the final features goes in the line
    under its name; per block (``<metric>_per_block``, one value per block of the run) the
    classifier-free ones (``evaluate.per_block``: ``all``, or ``nc1`` alone). A metric NaN by
    definition (NC2 on centred means with two classes; nc1 when every class mean coincides) is
    recorded with its reason under ``undefined``.
    """

    def __init__(self, model: Model, split: Split, train_config: ml_collections.ConfigDict, num_classes: int,
                 per_block: str):
        self.model, self.split, self.k, self.per_block = model, split, num_classes, per_block
        c = train_config
        forward = jax.vmap(model.forward, in_axes=(0, 0, None))

        def first(carry, consts, x, y):
            stats, block_stats, sums = carry
            params, members = consts
            logits, features, blocks = forward(params, members, x)
            stats, block_stats = collapse.accumulate(stats, features, y), collapse.accumulate(block_stats, blocks, y)
            sums = sums + jax.vmap(_loss_sums, in_axes=(0, None, None, None))(logits, y, c.loss, c.mse_target_scale)
            return stats, block_stats, sums

        def second(carry, consts, x, y):
            final, blocks_second = carry
            params, members, reference, block_reference = consts
            logits, features, blocks = forward(params, members, x)
            weight, bias = jax.vmap(models.classifier_weights)(params)
            final = collapse.accumulate_second(final, reference, features, y, weight, bias, logits)
            return final, collapse.accumulate_second(blocks_second, block_reference, blocks, y)

        self._first, self._second = Pass(first, split), Pass(second, split)
        self._reference = jax.jit(lambda s, b: (collapse.reference(s), collapse.reference(b)))
        shapes = jax.eval_shape(forward, model.abstract_params, model.hyper,
                                jax.ShapeDtypeStruct((1, *split.host[0].shape[1:]), split.host[0].dtype))
        self._width, self._depth, self._block_width = shapes[1].shape[-1], shapes[2].shape[1], shapes[2].shape[-1]

    def _empty(self):
        m, k = self.model.members, self.k
        # The final features keep their D×D scatter (the effective rank of their covariance needs it);
        # the blocks take the cheaper route (no L×D×D array when K ≤ width).
        return (collapse.empty_stats(k, self._width, (m,), scatter=True),
                collapse.empty_stats(k, self._block_width, (m, self._depth),
                                     scatter=collapse.prefer_scatter(k, self._block_width)),
                jnp.zeros((m, 3), jnp.float32))

    def _empty_second(self, stats, block_stats):
        return collapse.empty_second(stats, classifier=True), collapse.empty_second(block_stats)

    def compile(self) -> None:
        params, members = self.model.abstract_params, self.model.hyper
        carry = self._empty()
        self._first.compile(carry, (params, members))
        references = jax.eval_shape(self._reference, carry[0], carry[1])
        self._second.compile(jax.eval_shape(self._empty_second, carry[0], carry[1]), (params, members) + references)

    def __call__(self, checkpoint: Checkpoint) -> None:
        consts = (checkpoint.params, self.model.hyper)
        stats, block_stats, sums = self._first(self._empty(), consts)
        references = self._reference(stats, block_stats)
        final, blocks = self._second(self._empty_second(stats, block_stats), consts + references)
        weight, bias = _classifiers(checkpoint.params)
        stats, block_stats, sums, final, blocks = jax.device_get((stats, block_stats, sums, final, blocks))
        with warnings.catch_warnings(record=True) as undefined:
            warnings.simplefilter("always", collapse.UndefinedMetricWarning)
            values = collapse.metrics(stats, weight, bias, second=final)
            per_block = collapse.metrics(block_stats, second=blocks)
        reasons = "; ".join(sorted({str(w.message) for w in undefined
                                    if issubclass(w.category, collapse.UndefinedMetricWarning)}))
        names = [n for n in collapse.CLASSIFIER_FREE if n in per_block]
        if self.per_block == "nc1":
            names = [n for n in names if n in ("nc1", "ncc_accuracy")]
        sums = np.asarray(sums, np.float64)
        for m, line in enumerate(checkpoint.lines):
            line.update(train_loss=sums[m, 0] / sums[m, 2], train_accuracy=sums[m, 1] / sums[m, 2])
            line.update({name: float(v[m]) for name, v in values.items()})
            depth = int(self.model.depths[m])
            line.update({f"{name}_per_block": [float(v) for v in per_block[name][m, :depth]] for name in names})
            if reasons:
                line["undefined"] = reasons
        checkpoint.train_stats = stats


class Balancedness(Evaluator):
    """``balancedness_per_layer``: ‖W_{l+1}ᵀW_{l+1} − W_l W_lᵀ‖_F / ‖W_l W_lᵀ‖_F for every consecutive pair
    of the linear layers that end the network (the ``head_depth`` linear head, then the classifier),
    and ``balancedness`` their mean: 0 for a balanced head (Jacot et al., arXiv 2410.04887)."""

    def __init__(self, head_depth: int):
        self.names = [f"linear_head_{i}" for i in range(head_depth)] + ["classifier"]

    def __call__(self, checkpoint: Checkpoint) -> None:
        head = jax.device_get(checkpoint.params["head"])
        for m, line in enumerate(checkpoint.lines):
            kernels = [np.asarray(head[name]["kernel"][m], np.float64).T for name in self.names]  # out × in
            values = np.asarray(collapse.balancedness(kernels), np.float64)
            line.update(balancedness_per_layer=[float(v) for v in values], balancedness=float(values.mean()))


def _penalty(model: Model, c: ml_collections.ConfigDict) -> Callable:
    """``(params, member) → ‖θ‖²`` of one member: its penalised parameters (``train.l2_params``,
    ``train.l2_exclude``) in its own blocks, as its training loss counts them."""
    def penalty(params, member: train.Hyper):
        return objective.l2_penalty(params, c.l2_exclude, which=c.l2_params,
                                    active_depth=member.depth if model.packed else None)
    return penalty


class Penalty(Evaluator):
    """``l2_penalty`` = ‖θ‖² (the penalised parameters) and ``objective`` = mean training loss + c·λ‖θ‖²
    (``c = train.penalty_factor``: 1 for λ‖θ‖², ½ for the half and the decoupled forms)."""

    def __init__(self, model: Model, train_config: ml_collections.ConfigDict, l2s: Sequence[float]):
        self.model = model
        self.l2s = [train.penalty_factor(train_config) * float(v) for v in l2s]
        self._penalty = jax.jit(jax.vmap(_penalty(model, train_config)))

    def __call__(self, checkpoint: Checkpoint) -> None:
        penalties = np.asarray(self._penalty(checkpoint.params, self.model.hyper), np.float64)
        for line, penalty, l2 in zip(checkpoint.lines, penalties, self.l2s):
            line.update(l2_penalty=float(penalty), objective=line["train_loss"] + l2 * float(penalty))


class AgainstUFM(Evaluator):
    """The last layer against the UFM optimum F* (docs/ufm.md): ``ufm_gap`` (its objective minus F*),
    ``ufm_gap_relative`` (gap / F*: F* itself shrinks with λ, so a λ that falls with depth does not
    read as collapse), ``ufm_optimum`` (F*) and ``ufm_distance`` (shape and self-duality).

    The features entering the classifier are a LayerNorm's output unless a linear head
    follows it. NaN where the UFM has no optimum of this width (K > d).
    """

    def __init__(self, train_config: ml_collections.ConfigDict, l2s: Sequence[float], layernorm: bool):
        self.c, self.layernorm = train_config, layernorm
        self.l2s = [train.penalty_factor(train_config) * float(v) for v in l2s]  # the UFM's λ‖W‖² convention

    def __call__(self, checkpoint: Checkpoint) -> None:
        weight, bias = _classifiers(checkpoint.params)
        spared = (self.c.l2_params == "weights"
                  or any(re.search(p, "head/classifier/bias") for p in self.c.l2_exclude))
        for m, line in enumerate(checkpoint.lines):
            stats = jax.tree.map(lambda a: a[m], checkpoint.train_stats)
            b = None if bias is None else bias[m]
            try:
                model = ufm.trained_ufm(stats, loss=self.c.loss, l2=self.l2s[m], bias=b is not None,
                                        l2_bias=0.0 if spared else None, layernorm=self.layernorm,
                                        mse_target_scale=self.c.mse_target_scale)
                gap = ufm.last_layer_gap(line["train_loss"], weight[m], b, model)
                optimum = ufm.optimum(model).value
                line.update(ufm_gap=gap, ufm_optimum=optimum, ufm_gap_relative=gap / optimum,
                            ufm_distance=ufm.optimum_distance(stats.mean, weight[m], model, counts=stats.count))
            except ValueError:
                line.update({key: float("nan") for key in ("ufm_gap", "ufm_optimum", "ufm_gap_relative",
                                                           "ufm_distance")})


class GradientNorm(Evaluator):
    """``gradient_norm``: ‖∇θ (mean training loss + c·λ‖θ‖²)‖ over the whole training set (c as in Penalty).

    The quantity the stationarity bounds of Wu & Mondelli (arXiv 2501.19104) are stated in: points
    of small loss and small full-batch gradient norm are approximately NC1-collapsed. One backward
    pass over the training set per evaluation (``evaluate.gradient_norm``).
    """

    def __init__(self, model: Model, split: Split, train_config: ml_collections.ConfigDict, l2s: Sequence[float]):
        self.model, self.n = model, split.n
        c = train_config

        def summed_loss(params, member, x, y):  # one member: Σ over the batch's valid rows
            logits, _, _ = model.forward(params, member, x)
            loss = objective.per_example_loss(logits, jnp.maximum(y, 0), c.loss, c.mse_target_scale)
            return jnp.sum(jnp.where(y >= 0, loss, 0.0))

        def body(grads, consts, x, y):
            params, members = consts
            batch = jax.vmap(jax.grad(summed_loss), in_axes=(0, 0, None, None))(params, members, x, y)
            return jax.tree.map(jnp.add, grads, batch)

        penalty = _penalty(model, c)

        def norm(grads, params, member, l2):  # one member
            regulariser = jax.grad(lambda p: l2 * penalty(p, member))(params)
            return optax.tree_utils.tree_norm(jax.tree.map(lambda g, r: g / self.n + r, grads, regulariser))

        self._pass = Pass(body, split)
        self._norm = jax.jit(jax.vmap(norm))
        self._l2 = jnp.asarray(np.asarray(l2s, np.float32) * train.penalty_factor(c))

    def compile(self) -> None:
        params = self.model.abstract_params
        self._pass.compile(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), params),
                           (params, self.model.hyper))

    def __call__(self, checkpoint: Checkpoint) -> None:
        zeros = optax.tree_utils.tree_zeros_like(checkpoint.params)
        grads = self._pass(zeros, (checkpoint.params, self.model.hyper))
        norms = self._norm(grads, checkpoint.params, self.model.hyper, self._l2)
        for line, value in zip(checkpoint.lines, np.asarray(norms)):
            line["gradient_norm"] = float(value)


class TestSet(Evaluator):
    """Loss and accuracy on the test split."""

    def __init__(self, model: Model, split: Split, train_config: ml_collections.ConfigDict):
        self.model = model
        c = train_config

        def body(sums, consts, x, y):
            params, members = consts
            logits, _, _ = jax.vmap(model.forward, in_axes=(0, 0, None))(params, members, x)
            return sums + jax.vmap(_loss_sums, in_axes=(0, None, None, None))(logits, y, c.loss, c.mse_target_scale)

        self._pass = Pass(body, split)

    def compile(self) -> None:
        self._pass.compile(jnp.zeros((self.model.members, 3)), (self.model.abstract_params, self.model.hyper))

    def __call__(self, checkpoint: Checkpoint) -> None:
        sums = self._pass(jnp.zeros((self.model.members, 3)), (checkpoint.params, self.model.hyper))
        sums = np.asarray(sums, np.float64)
        for m, line in enumerate(checkpoint.lines):
            line.update(test_loss=sums[m, 0] / sums[m, 2], test_accuracy=sums[m, 1] / sums[m, 2])


class GroupEvaluator:
    """Every evaluator of a group, compiled in the background from construction on."""

    def __init__(self, evaluators: Sequence[Evaluator]):
        self.evaluators = list(evaluators)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._compiled = self._pool.submit(lambda: [e.compile() for e in self.evaluators])

    def __call__(self, step: int, params: Any, identities: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """One metrics line per member at ``step``; ``identities`` start each line (step, depth, seed, ...)."""
        self._compiled.result()
        checkpoint = Checkpoint(step, params, [dict(identity) for identity in identities])
        for evaluator in self.evaluators:
            evaluator(checkpoint)
        return [{k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in line.items()}
                for line in checkpoint.lines]

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _classifiers(params) -> tuple[np.ndarray, np.ndarray | None]:
    """Every member's classifier ``W`` [M, K, d] and ``b`` [M, K] (None without a bias), on the host."""
    return jax.device_get(jax.vmap(models.classifier_weights)(params))


def _features_are_layernorm_outputs(model: ml_collections.ConfigDict) -> bool:
    """Whether the classifier sees a LayerNorm's output (UFM: zero mean, fixed norm) or not (a sphere)."""
    return model.name != "mlp" and model.head_depth == 0


def build(module: nn.Module, dataset: data.Dataset, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
          hyper, packed: bool, abstract_params: Any, train_arrays=None) -> GroupEvaluator:
    """The evaluators of a group: train set, penalty, UFM, and test set when there is one.

    ``train_arrays``: the training set already resident on the device (the feed's), reused.
    """
    resident = train_arrays is not None
    batch = config.eval_batch_size
    model = Model(module, hyper, packed, abstract_params, dataset.inputs)
    train_split = Split(dataset.train_x, dataset.train_y, mesh, batch, resident, train_arrays)
    l2s = np.asarray(hyper.l2)
    evaluators = [TrainSet(model, train_split, config.train, dataset.num_classes, config.evaluate.per_block),
                  Penalty(model, config.train, l2s),
                  AgainstUFM(config.train, l2s, layernorm=_features_are_layernorm_outputs(config.model))]
    if config.model.head_depth:
        evaluators.append(Balancedness(config.model.head_depth))
    if config.evaluate.gradient_norm:
        evaluators.append(GradientNorm(model, train_split, config.train, l2s))
    if dataset.test_x is not None:
        evaluators.append(TestSet(model, Split(dataset.test_x, dataset.test_y, mesh, batch, resident), config.train))
    return GroupEvaluator(evaluators)
