"""Neural-collapse statistics and metrics: streaming, mergeable, per block, at any K.

Every metric of docs/paper.md#metric-definitions (same names; formulas, ranges and
references in ``docs/metrics.md``) from a few sufficient statistics, gathered in
at most two passes over the data on the device and finished in float64 on the
host. Statistics from batches, devices and hosts merge exactly, so the numbers
do not depend on how the data was split.

**The two-pass protocol** (pure functions: no jit, no donation, no host sync, no
branching on values; call them inside your own ``jax.jit`` + ``lax.scan`` over
fixed-shape batches and ``jax.vmap`` over members, or pass leading axes)::

    stats  = empty_stats(K, D, leading, scatter=prefer_scatter(K, D))
    stats  = accumulate(stats, features, labels)           # pass 1, every batch
    ref    = reference(stats)                               # once, between the passes
    second = empty_second(stats, classifier=True)
    second = accumulate_second(second, ref, features, labels, W, b, logits)   # pass 2
    values = metrics(stats, W, b, second=second, ood=ood_stats)               # host

``features`` are ``[*leading, B, D]`` (``[M, B, D]`` members; ``[M, L, B, D]``
members × blocks), ``labels`` ``[B]`` int32 shared by every leading slice; a
negative label marks padding, a label ≥ K is counted and refused by
:func:`metrics`. ``W`` ``[K, D]`` or ``[*leading, K, D]`` (rows are classes).
Out-of-distribution features for ``nc5`` are one-class statistics:
``accumulate(empty_stats(1, D, leading, scatter=False), ood, where(valid, 0, -1))``.

**Routes.** ``nc1 = tr(Σ_W Σ_B^†)/K`` needs the within-class scatter seen
through the class means. Pass 1 either keeps the D×D scatter (N·D² work, D²
memory per slice) or not; without it, pass 2 accumulates the K×K projections
``Σ_i z_i z_iᵀ``, ``z_i = M̃(h_i − μ_{y_i})`` (N·D·K + N·K² work, K² memory), the
same matmul that gives the nearest class centre, so the K×K route adds only
N·K². :func:`prefer_scatter` picks the cheaper: the K×K route when K ≤ D (per
block no L×D×D array is then formed), the scatter when K > D. On the host, the between-class eigen-problem is solved on the smaller
of M̃M̃ᵀ (K×K) and M̃ᵀM̃ (D×D), so K = 16,384 in D = 1,024 costs a 1,024² one.
Pairwise quantities (``cdnv``, ``nc2_equiangle``, ``gnc2_*``) are tiled over rows
of the K×K grid; ``nc2_etf``/``nc2_etf_w``/``nc2_ortho`` need only traces and
Frobenius norms, computed through the smaller Gram matrix.

**What each metric needs**: pass 1 alone gives ``nc1_quotient``, ``cdnv``,
``nc2_*`` on means, ``gnc2_*``, ``effective_rank_means`` (and ``nc1`` and
``effective_rank_features`` when the scatter is kept); pass 2 adds
``ncc_accuracy`` (and ``nc1`` on the K×K route); ``W`` adds ``nc2_etf_w``, ``nc3``,
``unc3``, ``unc3_normalised``, and with classifier sums in pass 2 ``nc3_cos`` and
``nc4``; one-class statistics of out-of-distribution features add ``nc5``.

**NaN with a reason.** With K = 2 classes NC2 on centred means is NaN (two
centred means are always antipodal); when all class means coincide
(tr Σ_B ≈ 0) every metric dividing by the between-class spread is NaN, never 0.
Each time, :func:`metrics` emits an :class:`UndefinedMetricWarning` naming the
metrics and the reason (record it with ``warnings.catch_warnings(record=True)``).
All values are JSON-ready through :func:`as_json`.

Without a second pass, :func:`metrics` leaves out what needs it and says so
in a :class:`SecondPassWarning`.

**Host convenience**: :func:`update` and :func:`update_second` (the two passes,
batch by batch), :func:`class_stats`, :func:`stream_stats`, :func:`measure`,
:func:`measure_batches` check inputs (chex; labels ≥ K, non-finite features,
weights or biases are errors) and run jitted pieces of fixed shape (one
compilation for every batch and chunk size)::

    stats = None
    for h, y in batches():                              # pass 1 (the cheaper nc1 route; covariance=True: D×D)
        stats = update(stats, h, y, num_classes)
    second = None
    for h, y in batches():                              # pass 2: the same data again
        second = update_second(second, stats, h, y, weight=W, bias=b)
    values = metrics(stats, W, b, second=second)

``python -m ncjax.collapse features.npz`` (or ``.safetensors``) measures
features from files. Per class and pair: :func:`class_details`. Plain matrices:
:func:`etf_error`, :func:`self_duality`, :func:`class_mean_norms`,
:func:`pairwise_cosines`, :func:`variance_ratio`, :func:`balancedness`,
:func:`effective_rank`, :func:`nc5`. ``conventions="rhubarbwu"`` (in
:func:`metrics`, :func:`measure`, :func:`class_details`) reproduces
rhubarbwu/neural-collapse's global mean and NC4 (:mod:`ncjax.collapse.conventions`).
"""

from ncjax.collapse.conventions import CONVENTIONS
from ncjax.collapse.details import class_details
from ncjax.collapse.finalise import (
    CLASSIFIER,
    CLASSIFIER_FREE,
    METRIC_NAMES,
    SecondPassWarning,
    UndefinedMetricWarning,
    as_json,
    metrics,
)
from ncjax.collapse.matrices import (
    balancedness,
    class_mean_norms,
    effective_rank,
    etf_error,
    nc5,
    pairwise_cosines,
    self_duality,
    variance_ratio,
)
from ncjax.collapse.second_pass import (
    Reference,
    SecondPassStats,
    accumulate_second,
    empty_second,
    reference,
)
from ncjax.collapse.statistics import (
    ClassStats,
    accumulate,
    empty_stats,
    merge,
    prefer_scatter,
    present_classes,
)
from ncjax.collapse.streaming import (
    class_stats,
    measure,
    measure_batches,
    nc1_per_block,
    nc4_counts,
    stream_stats,
    update,
    update_second,
)

__all__ = [
    "CLASSIFIER", "CLASSIFIER_FREE", "CONVENTIONS", "METRIC_NAMES", "ClassStats", "Reference", "SecondPassStats",
    "SecondPassWarning", "UndefinedMetricWarning", "accumulate", "accumulate_second", "as_json", "balancedness",
    "class_details", "class_mean_norms", "class_stats", "effective_rank", "empty_second", "empty_stats",
    "etf_error", "measure", "measure_batches", "merge", "metrics", "nc1_per_block", "nc4_counts", "nc5",
    "pairwise_cosines", "prefer_scatter", "present_classes", "reference", "self_duality", "stream_stats", "update",
    "update_second", "variance_ratio",
]
