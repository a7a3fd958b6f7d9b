"""The unconstrained features model (UFM) that deep regularised nets reduce to, and distances to it.

The paper's theorem says a deep regularised ResNet/transformer behaves, as its
depth grows, like a UFM on the features that enter the classifier. This module
makes that measurable: the UFM objective, a jitted solver, its global optimum in
closed form, and two numbers for a trained net (its last-layer objective minus
the UFM optimum, and the distance of its class means and classifier to the
optimal configuration). Derivations and conventions: ``docs/ufm.md``.

Conventions (features are rows, as in ``ncjax.collapse``): N samples with
weights π_i (1/N unless classes are weighted), ``logits_i = W h_i + b``,

    F(W, b, H) = Σ_i π_i ℓ(W h_i + b, y_i) + λ_W‖W‖² + λ_b‖b‖²  [+ λ_H Σ_i π_i ‖h_i‖²]

with ℓ from ``ncjax.objective`` (CE, or ½‖z − s·onehot‖²). The data loss is a
mean, as in training, so the trained net's objective restricted to its last
layer is F with its own features. Feature constraints:

- ``free``: the λ_H term (mean squared feature norm), the classical UFM.
- ``sphere``: ‖h_i‖ = r, no λ_H term.
- ``layernorm``: 1ᵀh_i = 0 and ‖h_i‖ = r, no λ_H term. The default r = √d is the radius
  convention of ``ncjax.models.layers``: a parameter-free LayerNorm (``model.norm_affine=False``)
  outputs exactly such features (up to its ε), so a post-LN net's classifier and this UFM
  are compared on one scale (a radius r with λ is the same problem as radius 1 with λ/r²).
  ``trained_ufm`` takes r from the trained features' RMS norm, which is √d for such a net.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ncjax import collapse, objective

FEATURES = ("free", "sphere", "layernorm")


@dataclasses.dataclass(frozen=True)
class UFM:
    """One UFM problem. ``l2_b=None`` means λ_b = λ_W (training penalises every parameter);
    ``radius=None`` means √width; ``class_weights=None`` means balanced classes."""

    num_classes: int
    width: int
    loss: str = "ce"
    features: str = "layernorm"
    l2_w: float = 0.005
    l2_h: float = 0.0
    bias: bool = True
    l2_b: float | None = None
    radius: float | None = None
    mse_target_scale: float = 1.0
    class_weights: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.num_classes < 2 or self.width < 1:
            raise ValueError(f"need num_classes >= 2 and width >= 1; got {self.num_classes}, {self.width}")
        if self.loss not in objective.LOSSES:
            raise ValueError(f"loss={self.loss!r}; allowed: {', '.join(objective.LOSSES)}")
        if self.features not in FEATURES:
            raise ValueError(f"features={self.features!r}; allowed: {', '.join(FEATURES)}")
        if not self.l2_w > 0:
            raise ValueError(f"l2_w={self.l2_w}: the UFM needs λ_W > 0 to have a minimum")
        if (self.features == "free") != (self.l2_h > 0):
            raise ValueError(f"l2_h={self.l2_h}: λ_H > 0 is needed for free features and meaningless otherwise")
        if self.l2_b is not None and self.l2_b < 0:
            raise ValueError(f"l2_b={self.l2_b} must be >= 0")
        if self.class_weights is not None and len(self.class_weights) != self.num_classes:
            raise ValueError(f"class_weights needs {self.num_classes} entries; got {len(self.class_weights)}")

    @property
    def lam_b(self) -> float:
        return self.l2_w if self.l2_b is None else self.l2_b

    @property
    def r(self) -> float:
        return math.sqrt(self.width) if self.radius is None else self.radius

    @property
    def balanced(self) -> bool:
        return self.class_weights is None or np.ptp(self.class_weights) <= 1e-12 * max(self.class_weights)

    def pi(self) -> np.ndarray:
        """Class weights π_k summing to one."""
        w = np.ones(self.num_classes) if self.class_weights is None else np.asarray(self.class_weights, float)
        return w / w.sum()


class Solution(NamedTuple):
    """A UFM configuration: features [N, d] with labels [N], classifier [K, d], bias [K] or None."""

    value: float
    features: np.ndarray
    labels: np.ndarray
    weight: np.ndarray
    bias: np.ndarray | None


# ----------------------------------------------------------------- objective


def _kind(ufm: UFM) -> tuple[str, str, bool]:
    """What fixes the objective's code (static under jit); the rest are traced numbers."""
    return ufm.loss, ufm.features, ufm.bias


def _numbers(ufm: UFM) -> dict[str, float]:
    return {"l2_w": ufm.l2_w, "l2_h": ufm.l2_h, "l2_b": ufm.lam_b, "r": ufm.r, "s": ufm.mse_target_scale}


def _project(features_kind: str, r, raw: jax.Array) -> jax.Array:
    if features_kind == "free":
        return raw
    if features_kind == "layernorm":
        raw = raw - raw.mean(-1, keepdims=True)
    return r * raw / jnp.linalg.norm(raw, axis=-1, keepdims=True)


def _value(kind, num, features, labels, weight, bias, pi) -> jax.Array:
    loss, features_kind, has_bias = kind
    logits = jnp.dot(features, weight.T, precision=jax.lax.Precision.HIGHEST)
    total = num["l2_w"] * jnp.sum(weight**2)
    if has_bias:
        logits = logits + bias
        total = total + num["l2_b"] * jnp.sum(bias**2)
    total = total + jnp.sum(pi * objective.per_example_loss(logits, labels, loss, num["s"]))
    if features_kind == "free":
        total = total + num["l2_h"] * jnp.sum(pi * jnp.sum(features**2, -1))
    return total


def project(ufm: UFM, raw) -> jax.Array:
    """Map free rows onto the feature set of ``ufm`` (the solver's parametrisation)."""
    return _project(ufm.features, ufm.r, jnp.asarray(raw, jnp.float32))


def value(ufm: UFM, features, labels, weight, bias=None, sample_weights=None) -> float:
    """F(W, b, H) of the module docstring; ``features`` must already satisfy the constraint.

    ``sample_weights`` (summing to one) default to 1/N.
    """
    n = np.shape(features)[0]
    pi = np.full(n, 1.0 / n) if sample_weights is None else sample_weights
    f32 = lambda x: None if x is None else jnp.asarray(x, jnp.float32)
    return float(_value(_kind(ufm), _numbers(ufm), f32(features), jnp.asarray(labels), f32(weight),
                        f32(bias) if ufm.bias else None, f32(pi)))


# ----------------------------------------------------------------- solver


@functools.partial(jax.jit, static_argnames=("kind", "steps"))
def _minimise(kind, num, labels, pi, starts, steps: int):
    """Adam (cosine-decayed) from each start (vmapped over the leading axis); full batch, fixed steps.

    λ, r and s are traced, so a sweep over them compiles once per shape.
    """

    def loss(params):
        h = _project(kind[1], num["r"], params["h"])
        return _value(kind, num, h, labels, params["w"], params.get("b"), pi)

    opt = optax.adam(optax.cosine_decay_schedule(0.05, steps, 1e-4))

    def run(params):
        def step(carry, _):
            params, state = carry
            updates, state = opt.update(jax.grad(loss)(params), state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
        return loss(params), params

    return jax.vmap(run)(starts)


def solve(ufm: UFM, samples_per_class: int = 2, seed: int = 0, restarts: int = 4, steps: int = 20000,
          start: Solution | None = None) -> Solution:
    """The best of ``restarts`` starts: a numerical UFM minimum with N = K·samples_per_class.

    ``start`` (one sample per class, e.g. a closed form) replaces the first random start:
    polishing a good guess needs far fewer steps than a search from scratch.

    Features are free rows mapped through :func:`project`, so constrained
    variants hold their constraint exactly. Class weights (if any) are spread
    evenly over each class's samples. Starts are drawn on the host (numpy):
    random-number kernels would dominate the compile time. Convergence slows
    as λ_W/r² shrinks (MSE with constrained features most): see docs/ufm.md.
    """
    k, d = ufm.num_classes, ufm.width
    labels = np.repeat(np.arange(k), samples_per_class).astype(np.int32)
    rng = np.random.default_rng(seed)
    starts = {"w": rng.normal(size=(restarts, k, d)) / math.sqrt(d), "h": rng.normal(size=(restarts, len(labels), d))}
    if ufm.bias:
        starts["b"] = np.zeros((restarts, k))
    if start is not None:
        starts["w"][0], starts["h"][0] = start.weight, np.repeat(start.features, samples_per_class, axis=0)
        if ufm.bias:
            starts["b"][0] = start.bias
    with jax.enable_x64(True):  # float64 where ncjax.objective allows it: tiny optimal losses need it
        starts = {name: jnp.asarray(x) for name, x in starts.items()}
        num = {name: jnp.float64(x) for name, x in _numbers(ufm).items()}
        pi = jnp.asarray(ufm.pi()[labels] / samples_per_class)
        values, params = _minimise(_kind(ufm), num, jnp.asarray(labels), pi, starts, steps)
        features = np.asarray(_project(ufm.features, ufm.r, params["h"]), np.float64)
    values = np.asarray(values, np.float64)
    best = int(np.nanargmin(values))
    pick = lambda name: np.asarray(params[name][best], np.float64)
    return Solution(float(values[best]), features[best], labels, pick("w"), pick("b") if ufm.bias else None)


# ----------------------------------------------------------------- closed form


def _embed(gram: np.ndarray, width: int, centred: bool) -> np.ndarray:
    """Rows M [K, width] with M Mᵀ = gram, inside 1^⊥ when ``centred`` (LayerNorm)."""
    eigval, eigvec = np.linalg.eigh(gram)
    keep = eigval > 1e-12 * max(eigval.max(), 1e-300)
    rank = int(keep.sum())
    room = width - int(centred)
    if rank > room:
        raise ValueError(
            f"the optimum has rank {rank} but the features only have {room} free dimensions "
            f"(width={width}{', minus one for the LayerNorm mean' if centred else ''}): increase the width")
    factor = eigvec[:, keep] * np.sqrt(eigval[keep])  # [K, rank]
    if centred:
        basis, _ = np.linalg.qr(np.concatenate([np.ones((width, 1)), np.eye(width)[:, :rank]], 1))
        basis = basis[:, 1 : rank + 1]
    else:
        basis = np.eye(width)[:, :rank]
    return factor @ basis.T


def _ce_term(t, k):
    """ψ(t) = log(1 + (K−1)e^{−t}): the CE when the target logit exceeds each other one by t."""
    return np.logaddexp(0.0, math.log(k - 1) - t)


def _ridge(ufm: UFM, means: np.ndarray):
    """Optimal (W, b) for fixed class means under MSE: a ridge regression with penalised intercept."""
    k, d = means.shape
    x = np.concatenate([means, np.ones((k, 1))], 1) if ufm.bias else means
    penalty = np.full(x.shape[1], ufm.l2_w)
    if ufm.bias:
        penalty[-1] = ufm.lam_b
    theta = np.linalg.solve(x.T @ x + 2 * k * np.diag(penalty), ufm.mse_target_scale * x.T)  # [d(+1), K]
    return theta[:d].T, (theta[d] if ufm.bias else None)


def closed_form(ufm: UFM) -> Solution:
    """The global UFM minimum (balanced classes): value and one optimal configuration.

    Features are the K class means (labels 0..K−1); any rotation of features
    and classifier together is optimal too. Requires enough width for the
    optimum's rank (K−1 or K, plus one for LayerNorm); raises otherwise.
    """
    if not ufm.balanced:
        raise ValueError("closed forms need balanced classes; use optimum() for weighted classes")
    k, s = ufm.num_classes, ufm.mse_target_scale
    centring = np.eye(k) - np.ones((k, k)) / k
    ones = np.ones((k, k)) / k  # uuᵀ, u = 1/√K
    constrained = ufm.features != "free"
    centred = ufm.features == "layernorm"
    beta = k / (k - 1)
    if ufm.loss == "ce":
        if constrained:  # minimise ψ(β r a) + λ_W K a² over the classifier scale a (convex): bisect ψ' = 0
            r = ufm.r

            def slope(a):
                return -beta * r * np.exp(-np.logaddexp(0.0, beta * r * a - math.log(k - 1))) + 2 * ufm.l2_w * k * a

            lo, hi = 0.0, beta * r / (2 * ufm.l2_w * k)
            for _ in range(200):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
            a = 0.5 * (lo + hi)
            val = _ce_term(beta * r * a, k) + ufm.l2_w * k * a * a
            feature_scale, weight_scale = r, a
        else:  # margin p = a·c: minimise ψ(βp) + γp, γ = 2√(Kλ_Wλ_H), in closed form
            gamma = 2 * math.sqrt(k * ufm.l2_w * ufm.l2_h)
            p = max(0.0, math.log((k - 1) * (beta - gamma) / gamma) / beta) if gamma < 1 else 0.0
            val = _ce_term(beta * p, k) + gamma * p
            weight_scale = math.sqrt(p * math.sqrt(ufm.l2_h / (k * ufm.l2_w)))
            feature_scale = p / weight_scale if p > 0 else 0.0
        unit = _embed(beta * centring, ufm.width, centred)  # unit-norm simplex ETF rows
        weight = weight_scale * unit
        bias = np.zeros(k) if ufm.bias else None
        return Solution(float(val), feature_scale * unit, np.arange(k), weight, bias)

    # MSE: the bias is eliminated in closed form; κ weighs the residual along 1 (κ=1: no bias).
    kappa = 2 * ufm.lam_b / (1 + 2 * ufm.lam_b) if ufm.bias else 1.0
    if constrained:  # class-mean Gram g1·P + g0·uuᵀ with trace K r², ridge-optimal W
        r2, mu = ufm.r**2, 2 * k * ufm.l2_w
        g1 = r2 + mu * (1 / kappa - 1) / k if kappa > 0 else math.inf
        g1 = min(g1, k * r2 / (k - 1))
        g0 = k * r2 - (k - 1) * g1
        val = s * s * mu / (2 * k) * ((k - 1) / (g1 + mu) + kappa / (kappa * g0 + mu))
        means = _embed(g1 * centring + g0 * ones, ufm.width, centred)
        weight, bias = _ridge(ufm, means)
        return Solution(float(val), means, np.arange(k), weight, bias)
    # free: nuclear-norm prox of logits Z = W Mᵀ = a·P + c·uuᵀ, τ = 2√(Kλ_Wλ_H)
    tau = 2 * math.sqrt(k * ufm.l2_w * ufm.l2_h)
    a = max(s - tau, 0.0)
    c = max(s - tau / kappa, 0.0) if kappa > 0 else 0.0
    val = (0.5 * (k - 1) * (a - s) ** 2 + 0.5 * kappa * (c - s) ** 2 + tau * ((k - 1) * a + c)) / k
    rho2 = math.sqrt(k * ufm.l2_w / ufm.l2_h)  # M Mᵀ = ρ² Z and W = M/ρ² balance the two penalties
    means = _embed(rho2 * (a * centring + c * ones), ufm.width, False)
    bias = np.full(k, (s - c) / (k * (1 + 2 * ufm.lam_b))) if ufm.bias else None
    return Solution(float(val), means, np.arange(k), means / rho2, bias)


@functools.lru_cache(maxsize=64)
def optimum(ufm: UFM, seed: int = 0) -> Solution:
    """The UFM minimum: closed form for balanced classes, else the best of the balanced optimum
    evaluated under the class weights and the solver started from it (numerical, no optimality
    guarantee). The warm start makes it cheap enough for every checkpoint: 3,000 steps from the
    guess and one random start matched 20,000 steps from eight random starts to a relative 3e-6
    on MNIST's class counts (CE and MSE, with and without bias)."""
    if ufm.balanced:
        return closed_form(ufm)
    guess = closed_form(dataclasses.replace(ufm, class_weights=None))
    guess_value = value(ufm, guess.features, guess.labels, guess.weight, guess.bias, ufm.pi())
    found = solve(ufm, samples_per_class=1, seed=seed, restarts=2, steps=3000, start=guess)
    return found if found.value < guess_value else guess._replace(value=guess_value)


# ----------------------------------------------------------------- trained nets


def trained_ufm(stats: collapse.ClassStats, *, loss: str, l2: float, bias: bool, l2_bias: float | None = None,
                layernorm: bool = True, mse_target_scale: float = 1.0) -> UFM:
    """The UFM a trained net's last layer is compared with: same K, width, loss, λ and bias, features
    of the trained features' RMS norm (LayerNorm: also zero mean, else on a sphere), class weights
    from the counts. ``l2_bias`` is the bias's λ (None: ``l2``; 0 if ``l2_exclude`` spares it)."""
    count = np.asarray(stats.count, np.float64)
    mean = np.asarray(stats.mean, np.float64)
    total = count.sum()
    mean_sq_norm = (np.sum(count * np.sum(mean**2, -1)) + np.sum(np.asarray(stats.sq_dev, np.float64))) / total
    k, d = mean.shape
    weights = None if np.ptp(count) == 0 else tuple(float(c) for c in count / total)
    return UFM(k, d, loss=loss, features="layernorm" if layernorm else "sphere", l2_w=l2, bias=bias,
               l2_b=l2_bias, radius=math.sqrt(mean_sq_norm), mse_target_scale=mse_target_scale,
               class_weights=weights)


def last_layer_gap(mean_data_loss: float, weight, bias, ufm: UFM) -> float:
    """Trained last-layer objective (mean data loss + λ_W‖W‖² + λ_b‖b‖²) minus the UFM optimum.

    ≥ 0 for balanced classes whenever ``ufm`` comes from :func:`trained_ufm`
    (docs/ufm.md proves it), and → 0 as the net approaches the UFM optimum.
    """
    weight = np.asarray(weight, np.float64)
    penalty = ufm.l2_w * np.sum(weight**2)
    if ufm.bias:
        penalty += ufm.lam_b * np.sum(np.asarray(bias, np.float64) ** 2)
    return float(mean_data_loss + penalty - optimum(ufm).value)


def _class_means(sol: Solution) -> np.ndarray:
    k = sol.weight.shape[0]
    return np.stack([sol.features[sol.labels == c].mean(0) for c in range(k)])


def optimum_distance(class_means, weight, ufm: UFM, counts=None) -> float:
    """½ min over rotations Q of ‖M̂ − M̂*Q‖² + ‖Ŵ − Ŵ*Q‖², in [0, 2]; 0 iff optimal up to rotation and scale.

    ``class_means`` [K, d] are raw (uncentred) class means; hats are
    Frobenius-normalised, so the number ignores the scales of M and W (set by
    λ and the feature norm) and measures shape and self-duality. The means are
    centred (weighted by ``counts``) whenever a bias absorbs their common
    offset, i.e. for CE and for MSE with a bias; MSE without bias compares
    the raw means (its optimum is an orthogonal frame, not centred).
    """
    target = optimum(ufm)
    means, weight = np.asarray(class_means, np.float64), np.asarray(weight, np.float64)
    target_means = _class_means(target)
    if ufm.loss == "ce" or ufm.bias:
        pi = np.ones(len(means)) if counts is None else np.asarray(counts, np.float64)
        means = means - (pi / pi.sum()) @ means
        target_means = target_means - ufm.pi() @ target_means
    unit = lambda x: x / np.linalg.norm(x)
    mine = np.concatenate([unit(means), unit(weight)])
    theirs = np.concatenate([unit(target_means), unit(target.weight)])
    nuclear = np.linalg.svd(theirs.T @ mine, compute_uv=False).sum()
    return float(max(2.0 - nuclear, 0.0))


# ----------------------------------------------------------------- sweeps


def sweep(config) -> list[dict]:
    """One record per (K, d, λ, seed): solver and closed-form objectives and the collapse metrics.

    ``config`` is ``configs/ufm.py``'s; λ_W = λ_b = λ (``bias_l2`` overrides λ_b),
    λ_H = ``config.l2_h`` for free features.
    """
    records = []
    for k in config.num_classes:
        for d in config.widths:
            for lam in config.l2s:
                ufm = UFM(k, d, loss=config.loss, features=config.features, l2_w=lam,
                          l2_h=config.l2_h if config.features == "free" else 0.0, bias=config.bias,
                          l2_b=config.bias_l2, radius=config.radius, mse_target_scale=config.mse_target_scale)
                exact = closed_form(ufm)
                for seed in config.seeds:
                    found = solve(ufm, config.samples_per_class, seed, config.restarts, config.steps)
                    metrics = collapse.measure(found.features, found.labels, k, found.weight, found.bias)
                    records.append(dict(
                        num_classes=k, width=d, l2=lam, seed=seed, loss=ufm.loss, features=ufm.features,
                        bias=ufm.bias, solver_objective=found.value, closed_form_objective=exact.value,
                        relative_error=(found.value - exact.value) / abs(exact.value),
                        optimum_distance=optimum_distance(_class_means(found), found.weight, ufm), **metrics))
    return records
