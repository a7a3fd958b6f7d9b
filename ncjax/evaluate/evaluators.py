"""The evaluator plug-ins: what is measured at every checkpoint, on all members of a group at once.

Each plug-in declares what it reads of the evaluators before it (``needs``) and returns its
own results, ``{key: one value per member}``; the keys it lists in ``shares`` are handed
on to later plug-ins but are not written to the metrics lines (e.g. the training set's
class statistics). :mod:`ncjax.evaluate.group` runs them in the config's order and checks
that every need is met by an earlier plug-in.

- :class:`TrainSet` (``train_set``): loss, accuracy and the collapse statistics of the
  training set, of the features that enter the classifier and of every block's output;
- :class:`TestSet` (``test_set``): loss, accuracy, and collapse on held-out data (NC1,
  and NCC accuracy and NC4 against the training class means);
- :class:`Penalty` (``penalty``): ‖θ‖², the full objective and every block's ‖θ_l‖²;
- :class:`AgainstUFM` (``ufm``): the gap and distance to the unconstrained-features optimum;
- :class:`Balancedness` (``balancedness``, a model with a linear head);
- :class:`GradientNorm` (``gradient_norm``): the full-batch gradient norm of the objective.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ncjax import collapse, data, models, objective, train, ufm
from ncjax.evaluate.passes import Pass, Split

Results = dict[str, Any]  # key → one value per member (or a shared object, for the keys in ``shares``)


class Evaluator:
    """A plug-in; ``needs``: keys of earlier plug-ins' results it reads; ``provides``: the keys of its
    results that later plug-ins may need (it may return more); ``shares``: its results that are
    inputs of later plug-ins rather than metrics."""

    needs: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    shares: tuple[str, ...] = ()

    def compile(self) -> None:
        """Compile the evaluator's device programs ahead of the first checkpoint (optional)."""

    def __call__(self, params: Any, inputs: Results) -> Results:
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
        self._classifier_weights = jax.jit(jax.vmap(models.classifier_weights))
        self._classifiers: tuple[Any, Any] | None = None  # (params, their classifiers): one fetch per evaluation

    def forward(self, params, member: train.Hyper, x):
        """One member: logits [B, K], features [B, d], blocks [L, B, d] (float32); ``x``: rows of a split
        (composed into the member's inputs when its data is made per member, ``Dataset.inputs``)."""
        extra = dict(active_depth=member.depth) if self.packed else {}
        logits, out = self.module.apply({"params": params}, self.inputs(x, member.data_value),
                                        train=False, return_blocks=True, **extra)
        return logits, out["features"].astype(jnp.float32), out["blocks"].astype(jnp.float32)

    def classifiers(self, params) -> tuple[np.ndarray, np.ndarray | None]:
        """Every member's classifier ``W`` [M, K, d] and ``b`` [M, K] (None without a bias), on the host
        (fetched once for the parameters of an evaluation, however many plug-ins ask)."""
        if self._classifiers is None or self._classifiers[0] is not params:
            self._classifiers = (params, jax.device_get(self._classifier_weights(params)))
        return self._classifiers[1]


def _loss_sums(logits, y, loss_kind: str, target_scale: float):
    """[Σ loss, Σ correct, count] over the valid (non-padding) rows of one member's batch."""
    valid = (y >= 0).astype(jnp.float32)
    loss = objective.per_example_loss(logits, jnp.maximum(y, 0), loss_kind, target_scale)
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    return jnp.stack([jnp.sum(loss * valid), jnp.sum(correct * valid), jnp.sum(valid)])


def _rates(sums) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss and accuracy of every member from [M, 3] loss sums."""
    sums = np.asarray(sums, np.float64)
    return sums[:, 0] / sums[:, 2], sums[:, 1] / sums[:, 2]


KEEP_OUTPUTS_BYTES = 1 << 28  # a resident training set's outputs up to this size are kept between the passes
WHOLE_SPLIT_BYTES = 1 << 23  # ... and up to this size computed in one piece (a few MB: within the caches)


def split_batch(split: Split, arrays, b):
    """Batch ``b`` of a resident split (the ragged tail padded with label −1), sharded over the batch."""
    x_all, y_all = arrays
    idx = b * split.batch_size + jnp.arange(split.batch_size)
    valid = idx < split.n
    idx = jnp.minimum(idx, split.n - 1)
    x, y = x_all[idx], jnp.where(valid, y_all[idx], data.PAD_LABEL)
    return (jax.lax.with_sharding_constraint(x, split.batch_sharding(x.ndim)),
            jax.lax.with_sharding_constraint(y, split.batch_sharding(1)))


class TrainSet(Evaluator):
    """Training loss and accuracy, and the collapse metrics of the final features and of every block.

    ``ncjax.collapse``'s two passes over the training set: pass 1 the class statistics of the
    features and of every block's output (and the loss sums), pass 2 what needs the final class
    means (``nc4``, ``nc3_cos``, the nearest-class-centre accuracy of every block, and ``nc1``
    through K×K projections when K ≤ width). Every metric of the final features goes in the line
    under its name; per block (``<metric>_per_block``, one value per block of the run) the
    classifier-free ones (``evaluate.per_block``: ``all``, or ``nc1`` alone). A metric NaN by
    definition (NC2 on centred means with two classes; nc1 when every class mean coincides) is
    recorded with its reason under ``undefined``. Shares the final features' class statistics
    (``train_stats``) and their pass-2 reference (``train_reference``).

    A resident training set whose outputs (logits, features, every block's) fit in
    :data:`KEEP_OUTPUTS_BYTES` is measured by one program that runs the forward pass once: pass 1
    keeps every batch's outputs and pass 2 reads them back (half the arithmetic of two forward passes,
    one dispatch instead of five).
    """

    provides = ("train_loss", "train_accuracy")
    shares = ("train_stats", "train_reference")

    def __init__(self, model: Model, split: Split, train_config: ml_collections.ConfigDict, num_classes: int,
                 per_block: str):
        self.model, self.split, self.k, self.per_block = model, split, num_classes, per_block
        c = train_config
        forward = jax.vmap(model.forward, in_axes=(0, 0, None))

        def fold_first(carry, outputs, y):
            stats, block_stats, sums = carry
            logits, features, blocks = outputs
            stats, block_stats = collapse.accumulate(stats, features, y), collapse.accumulate(block_stats, blocks, y)
            sums = sums + jax.vmap(_loss_sums, in_axes=(0, None, None, None))(logits, y, c.loss, c.mse_target_scale)
            return stats, block_stats, sums

        def fold_second(carry, references, classifier, outputs, y):
            final, blocks_second = carry
            logits, features, blocks = outputs
            final = collapse.accumulate_second(final, references[0], features, y, *classifier, logits)
            return final, collapse.accumulate_second(blocks_second, references[1], blocks, y)

        def first(carry, consts, x, y):
            params, members = consts
            return fold_first(carry, forward(params, members, x), y)

        def second(carry, consts, x, y):
            params, members, reference, block_reference = consts
            classifier = jax.vmap(models.classifier_weights)(params)
            return fold_second(carry, (reference, block_reference), classifier, forward(params, members, x), y)

        self._first, self._second = Pass(first, split), Pass(second, split)
        self._reference = jax.jit(lambda s, b: (collapse.reference(s), collapse.reference(b)))
        # Zeros made by one compiled call each, not one dispatch per array.
        self._new, self._new_second = jax.jit(self._empty), jax.jit(self._empty_second)
        shapes = jax.eval_shape(forward, model.abstract_params, model.hyper,
                                jax.ShapeDtypeStruct((1, *split.host[0].shape[1:]), split.host[0].dtype))
        self._width, self._depth, self._block_width = shapes[1].shape[-1], shapes[2].shape[1], shapes[2].shape[-1]
        kept = 4 * model.members * split.batch_size * split.num_batches * (
            shapes[0].shape[-1] + self._width + self._depth * self._block_width)
        self._both = None
        if split.resident and kept <= KEEP_OUTPUTS_BYTES:
            whole = kept <= WHOLE_SPLIT_BYTES

            def both(params, members, arrays):
                """Both passes in one program: pass 1 keeps every batch's outputs, pass 2 reads them back;
                outputs of a few MB in all come from one forward pass over the whole split, with no loops
                (a scan's iterations cost more than such arithmetic)."""
                if whole:
                    x, y = (jax.lax.with_sharding_constraint(a, split.batch_sharding(a.ndim)) for a in arrays)
                    kept = forward(params, members, x), y
                    stats, block_stats, sums = fold_first(self._empty(), *kept)
                else:
                    def step(carry, b):
                        x, y = split_batch(split, arrays, b)
                        outputs = forward(params, members, x)
                        return fold_first(carry, outputs, y), (outputs, y)

                    (stats, block_stats, sums), kept = jax.lax.scan(step, self._empty(),
                                                                    jnp.arange(split.num_batches))
                references = (collapse.reference(stats), collapse.reference(block_stats))
                classifier = jax.vmap(models.classifier_weights)(params)
                second = self._empty_second(stats, block_stats)
                if whole:
                    final, blocks = fold_second(second, references, classifier, *kept)
                else:
                    final, blocks = jax.lax.scan(
                        lambda carry, out: (fold_second(carry, references, classifier, *out), None), second, kept)[0]
                return (stats, block_stats, sums), references, (final, blocks)

            self._both = jax.jit(both)

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
        if self._both is not None:
            self._both = self._both.lower(params, members, self.split.arrays).compile()
            return
        carry = self._empty()
        self._first.compile(carry, (params, members))
        references = jax.eval_shape(self._reference, carry[0], carry[1])
        self._second.compile(jax.eval_shape(self._empty_second, carry[0], carry[1]), (params, members) + references)

    def __call__(self, params, inputs: Results) -> Results:
        consts = (params, self.model.hyper)
        if self._both is not None:
            (stats, block_stats, sums), references, (final, blocks) = self._both(*consts, self.split.arrays)
        else:
            stats, block_stats, sums = self._first(self._new(), consts)
            references = self._reference(stats, block_stats)
            final, blocks = self._second(self._new_second(stats, block_stats), consts + references)
        weight, bias = self.model.classifiers(params)
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
        loss, accuracy = _rates(sums)
        depths = [int(d) for d in self.model.depths]
        out = dict(train_loss=loss, train_accuracy=accuracy, train_stats=stats, train_reference=references[0])
        out.update(values)
        out.update({f"{name}_per_block": [[float(v) for v in per_block[name][m, :d]] for m, d in enumerate(depths)]
                    for name in names})
        if reasons:
            out["undefined"] = [reasons] * len(depths)
        return out


class TestSet(Evaluator):
    """Loss and accuracy on the test split, and collapse on it: ``test_nc1_quotient`` (tr Σ_W / tr Σ_B of the
    test features around their own class means), ``test_ncc_accuracy`` and ``test_nc4`` (the nearest
    *training* class mean against the label and against the classifier's decision: what generalises)."""

    needs = ("train_reference",)

    def __init__(self, model: Model, split: Split, train_config: ml_collections.ConfigDict, num_classes: int):
        self.model, self.k = model, num_classes
        c = train_config
        forward = jax.vmap(model.forward, in_axes=(0, 0, None))

        def body(carry, consts, x, y):
            sums, stats, second = carry
            params, members, reference = consts
            logits, features, _ = forward(params, members, x)
            weight, bias = jax.vmap(models.classifier_weights)(params)
            sums = sums + jax.vmap(_loss_sums, in_axes=(0, None, None, None))(logits, y, c.loss, c.mse_target_scale)
            return (sums, collapse.accumulate(stats, features, y),
                    collapse.accumulate_second(second, reference, features, y, weight, bias, logits))

        self._pass = Pass(body, split)
        shapes = jax.eval_shape(forward, model.abstract_params, model.hyper,
                                jax.ShapeDtypeStruct((1, *split.host[0].shape[1:]), split.host[0].dtype))
        self._width = shapes[1].shape[-1]
        self._new = jax.jit(self._empty)

    def _empty(self):
        stats = collapse.empty_stats(self.k, self._width, (self.model.members,), scatter=False)
        # Against the training means: their reference has no K×K gram (the training stats keep a scatter).
        reference_like = collapse.empty_stats(self.k, self._width, (self.model.members,), scatter=True)
        return jnp.zeros((self.model.members, 3), jnp.float32), stats, collapse.empty_second(reference_like,
                                                                                              classifier=True)

    def compile(self) -> None:
        carry = self._empty()
        reference = jax.eval_shape(collapse.reference,
                                   collapse.empty_stats(self.k, self._width, (self.model.members,), scatter=True))
        self._pass.compile(carry, (self.model.abstract_params, self.model.hyper, reference))

    def __call__(self, params, inputs: Results) -> Results:
        sums, stats, second = jax.device_get(
            self._pass(self._new(), (params, self.model.hyper, inputs["train_reference"])))
        loss, accuracy = _rates(sums)
        count = np.maximum(np.asarray(second.count, np.float64), 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NaN reasons are the train line's; the K×K forms need no test pass
            nc1 = collapse.metrics(stats)["nc1_quotient"]
        return dict(test_loss=loss, test_accuracy=accuracy, test_nc1_quotient=nc1,
                    test_ncc_accuracy=np.asarray(second.ncc_correct, np.float64) / count,
                    test_nc4=np.asarray(second.nc4_mismatch, np.float64) / count)


def _penalty(model: Model, c: ml_collections.ConfigDict) -> Callable:
    """``(params, member) → ‖θ‖²`` of one member: its penalised parameters (``train.l2_params``,
    ``train.l2_exclude``) in its own blocks, as its training loss counts them."""
    def penalty(params, member: train.Hyper):
        return objective.l2_penalty(params, c.l2_exclude, which=c.l2_params,
                                    active_depth=member.depth if model.packed else None)
    return penalty


class Penalty(Evaluator):
    """``l2_penalty`` = ‖θ‖² (the penalised parameters), ``objective`` = mean training loss + c·λ‖θ‖²
    (``c = train.penalty_factor``: 1 for λ‖θ‖², ½ for the half and the decoupled forms), and
    ``block_l2_per_block``, every block's own ‖θ_l‖² (with ``blocks_l2``, their sum): how the
    penalty is spread over depth."""

    needs = ("train_loss",)
    provides = ("l2_penalty", "objective")

    def __init__(self, model: Model, train_config: ml_collections.ConfigDict, l2s: Sequence[float]):
        self.model = model
        self.l2s = np.asarray([train.penalty_factor(train_config) * float(v) for v in l2s], np.float64)
        c = train_config
        penalty = jax.vmap(_penalty(model, train_config))
        per_block = jax.vmap(lambda params: objective.block_penalties(params, c.l2_exclude, which=c.l2_params))
        self._penalties = jax.jit(lambda params, members: (penalty(params, members), per_block(params)))

    def __call__(self, params, inputs: Results) -> Results:
        penalties, blocks = jax.device_get(self._penalties(params, self.model.hyper))  # one program, one fetch
        penalties, blocks = np.asarray(penalties, np.float64), np.asarray(blocks, np.float64)  # [M], [M, L]
        depths = [int(d) for d in self.model.depths]
        return dict(l2_penalty=penalties, objective=np.asarray(inputs["train_loss"]) + self.l2s * penalties,
                    block_l2_per_block=[[float(v) for v in blocks[m, :d]] for m, d in enumerate(depths)],
                    blocks_l2=[float(blocks[m, :d].sum()) for m, d in enumerate(depths)])


class AgainstUFM(Evaluator):
    """The last layer against the UFM optimum F* (docs/ufm.md): ``ufm_gap`` (the last layer's objective
    minus F*), ``ufm_gap_relative`` (that gap / F*: F* itself shrinks with λ, so a λ that falls with depth
    does not read as collapse), ``ufm_gap_full_relative`` ((the whole network's objective − F*) / F*),
    ``ufm_optimum`` (F*) and ``ufm_distance`` (shape and self-duality).

    The features entering the classifier are a LayerNorm's output unless a linear head
    follows it. NaN where the UFM has no optimum of this width (K > d).
    """

    needs = ("train_loss", "objective", "train_stats")
    KEYS = ("ufm_gap", "ufm_optimum", "ufm_gap_relative", "ufm_gap_full_relative", "ufm_distance")

    def __init__(self, model: Model, train_config: ml_collections.ConfigDict, l2s: Sequence[float], layernorm: bool):
        self.model, self.c, self.layernorm = model, train_config, layernorm
        self.l2s = [train.penalty_factor(train_config) * float(v) for v in l2s]  # the UFM's λ‖W‖² convention
        c = train_config
        self._bias_penalised = lambda params: objective.classifier_bias_penalised(params, c.l2_params, c.l2_exclude)

    def __call__(self, params, inputs: Results) -> Results:
        weight, bias = self.model.classifiers(params)
        spared = not self._bias_penalised(params)
        out = {key: [] for key in self.KEYS}
        for m in range(self.model.members):
            stats = jax.tree.map(lambda a: a[m], inputs["train_stats"])
            b = None if bias is None else bias[m]
            try:
                model = ufm.trained_ufm(stats, loss=self.c.loss, l2=self.l2s[m], bias=b is not None,
                                        l2_bias=0.0 if spared else None, layernorm=self.layernorm,
                                        mse_target_scale=self.c.mse_target_scale)
                gap = ufm.last_layer_gap(float(inputs["train_loss"][m]), weight[m], b, model)
                optimum = ufm.optimum(model).value
                values = (gap, optimum, gap / optimum, (float(inputs["objective"][m]) - optimum) / optimum,
                          ufm.optimum_distance(stats.mean, weight[m], model, counts=stats.count))
            except ValueError:
                values = (float("nan"),) * len(self.KEYS)
            for key, value in zip(self.KEYS, values):
                out[key].append(value)
        return out


class ClassifierGeometry(Evaluator):
    """The classifier's own geometry, to read ``nc2_etf_w`` by: ``w_norm_spread`` (std / mean of the row
    norms ‖w_c‖), ``w_angle_spread`` (std of the pairwise cosines of the rows, c ≠ c') and
    ``w_row_mean`` (‖1ᵀW‖ / ‖W‖_F: 0 when the rows sum to zero, as a simplex ETF's do), all taken on the
    rows as they are (uncentred), as ``nc2_etf_w`` takes them, and ``nc2_etf_w_centred``: ``nc2_etf_w`` of
    the rows less their mean. Cross-entropy cannot see a common row (it adds the same logit to every class),
    so only λ shrinks it; the centred form is the part of NC2 on W that the data loss shapes. All 0 for a
    simplex-ETF classifier."""

    def __init__(self, model: Model):
        self.model = model

    def __call__(self, params, inputs: Results) -> Results:
        weight, _ = self.model.classifiers(params)
        weight = np.asarray(weight, np.float64)  # [M, K, d]
        norms = collapse.class_mean_norms(weight, centre=0)  # [M, K]
        cosines = collapse.pairwise_cosines(weight, centre=0)  # [M, K, K]
        k = weight.shape[1]
        off = cosines[:, ~np.eye(k, dtype=bool)]  # [M, K(K−1)]
        return dict(w_norm_spread=norms.std(-1) / norms.mean(-1), w_angle_spread=off.std(-1),
                    w_row_mean=np.linalg.norm(weight.sum(1), axis=-1) / np.linalg.norm(weight, axis=(1, 2)),
                    nc2_etf_w_centred=collapse.etf_error(weight))


class Balancedness(Evaluator):
    """``balancedness_per_layer``: ‖W_{l+1}ᵀW_{l+1} − W_l W_lᵀ‖_F / ‖W_l W_lᵀ‖_F for every consecutive pair
    of the linear layers that end the network (the ``head_depth`` linear head, then the classifier),
    and ``balancedness`` their mean: 0 for a balanced head (Jacot et al., arXiv 2410.04887)."""

    def __init__(self, head_depth: int):
        self.names = [f"linear_head_{i}" for i in range(head_depth)] + ["classifier"]

    def __call__(self, params, inputs: Results) -> Results:
        head = jax.device_get(params["head"])
        per_layer = []
        for m in range(len(head["classifier"]["kernel"])):
            kernels = [np.asarray(head[name]["kernel"][m], np.float64).T for name in self.names]  # out × in
            per_layer.append(np.asarray(collapse.balancedness(kernels), np.float64))
        return dict(balancedness_per_layer=[[float(v) for v in values] for values in per_layer],
                    balancedness=[float(values.mean()) for values in per_layer])


class GradientNorm(Evaluator):
    """``gradient_norm``: ‖∇θ (mean training loss + c·λ‖θ‖²)‖ over the whole training set (c as in Penalty).

    The quantity the stationarity bounds of Wu & Mondelli (arXiv 2501.19104) are stated in: points
    of small loss and small full-batch gradient norm are approximately NC1-collapsed. One backward
    pass over the training set per evaluation.
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

    def __call__(self, params, inputs: Results) -> Results:
        zeros = optax.tree_utils.tree_zeros_like(params)
        grads = self._pass(zeros, (params, self.model.hyper))
        return dict(gradient_norm=np.asarray(self._norm(grads, params, self.model.hyper, self._l2), np.float64))
