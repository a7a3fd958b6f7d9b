"""An independent float64 NumPy reference of docs/paper.md#metric-definitions, written from the definitions.

Holds all features, loops over classes and pairs, and uses the D×D
pseudo-inverse: deliberately the straightforward way, to check
ncjax.collapse against. No NaN policy here (that is tested separately).
:func:`reference_rhubarbwu` writes out rhubarbwu/neural-collapse's definitions
(neural_collapse/measure.py, accumulate.py, kernels.py) in NumPy, without
importing that library.
"""

import numpy as np


def _etf_dist(g):
    k = g.shape[0]
    etf = (np.eye(k) - np.ones((k, k)) / k) / np.sqrt(k - 1)
    return np.linalg.norm(g / np.linalg.norm(g) - etf)


def _entropy_rank(values):
    values = values[values > 0]
    p = values / values.sum()
    return np.exp(-np.sum(p * np.log(p)))


def reference_metrics(h, y, num_classes, weight=None, bias=None, ood=None):
    h = np.asarray(h, np.float64)
    y = np.asarray(y)
    classes = [c for c in range(num_classes) if np.any(y == c)]
    k = len(classes)
    mu = np.stack([h[y == c].mean(0) for c in classes])
    mu_g = h.mean(0)
    mt = mu - mu_g
    n = h.shape[0]
    sw = np.zeros((h.shape[1], h.shape[1]))
    for i, c in enumerate(classes):
        d = h[y == c] - mu[i]
        sw += d.T @ d
    sw /= n
    sb = mt.T @ mt / k
    out = {
        "nc1": np.trace(sw @ np.linalg.pinv(sb, hermitian=True)) / k,
        "nc1_quotient": np.trace(sw) / np.trace(sb),
    }
    var = np.array([np.mean(np.sum((h[y == c] - mu[i]) ** 2, 1)) for i, c in enumerate(classes)])
    ratios = [
        (var[a] + var[b]) / (2 * np.sum((mu[a] - mu[b]) ** 2)) for a in range(k) for b in range(a + 1, k)
    ]
    out["cdnv"] = np.mean(ratios)
    norms = np.linalg.norm(mt, axis=1)
    out["nc2_equinorm"] = norms.std() / norms.mean()
    cos = [
        abs(mt[a] @ mt[b] / (norms[a] * norms[b]) + 1 / (k - 1)) for a in range(k) for b in range(k) if a != b
    ]
    out["nc2_equiangle"] = np.mean(cos)
    out["nc2_etf"] = _etf_dist(mt @ mt.T)
    g = mu @ mu.T
    out["nc2_ortho"] = np.linalg.norm(g / np.linalg.norm(g) - np.eye(k) / np.sqrt(k))
    u = mt / norms[:, None]
    dists = np.array([np.linalg.norm(u[a] - u[b]) for a in range(k) for b in range(k) if a != b])
    out["gnc2_dist"] = np.var(dists)
    out["gnc2_log"] = np.var(np.log(1.0 / dists))
    out["effective_rank_means"] = _entropy_rank(np.linalg.svd(mt, compute_uv=False))
    centred = h - mu_g
    out["effective_rank_features"] = _entropy_rank(np.linalg.eigvalsh(centred.T @ centred / n))
    nearest = np.asarray(classes)[np.argmin(((h[:, None, :] - mu[None]) ** 2).sum(-1), 1)]
    out["ncc_accuracy"] = np.mean(nearest == y)
    if ood is not None:
        direction = np.asarray(ood, np.float64).mean(0) - mu_g
        out["nc5"] = np.mean([abs(m @ direction) / (np.linalg.norm(m) * np.linalg.norm(direction)) for m in mt])
    if weight is not None:
        w_all = np.asarray(weight, np.float64)
        w = w_all[classes]
        b = np.zeros(num_classes) if bias is None else np.asarray(bias, np.float64)
        out["nc2_etf_w"] = _etf_dist(w @ w.T)
        out["nc3"] = np.sum((w / np.linalg.norm(w) - mt / np.linalg.norm(mt)) ** 2)
        duality = np.array([w[i] @ mt[i] for i in range(k)])
        out["unc3"] = np.var(duality)
        out["unc3_normalised"] = np.var(duality) / np.mean(duality) ** 2
        cosines = [centred[i] @ w_all[y[i]] / (np.linalg.norm(centred[i]) * np.linalg.norm(w_all[y[i]]))
                   for i in range(n)]
        out["nc3_cos"] = 1.0 - np.mean(cosines)
        pred = np.asarray(classes)[np.argmax(h @ w.T + b[classes], 1)]
        out["nc4"] = np.mean(pred != nearest)
    return out


def reference_balancedness(kernels):
    """‖W_{l+1}ᵀW_{l+1} − W_l W_lᵀ‖_F / ‖W_l W_lᵀ‖_F per consecutive pair (kernels out×in)."""
    out = []
    for lower, upper in zip(kernels[:-1], kernels[1:]):
        lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
        outer = lower @ lower.T
        out.append(np.linalg.norm(upper.T @ upper - outer) / np.linalg.norm(outer))
    return np.array(out)


def reference_matrices(means, weight=None, centre=None):
    """The plain-matrix quantities of class means [K, D] (centred by their mean when ``centre`` is None)."""
    means = np.asarray(means, np.float64)
    mt = means - (means.mean(0) if centre is None else np.asarray(centre, np.float64))
    k = means.shape[0]
    norms = np.array([np.sqrt(np.sum(row**2)) for row in mt])
    out = {
        "etf_error": _etf_dist(mt @ mt.T),
        "class_mean_norms": norms,
        "pairwise_cosines": np.array([[mt[a] @ mt[b] / (norms[a] * norms[b]) for b in range(k)] for a in range(k)]),
    }
    if weight is not None:
        w = np.asarray(weight, np.float64)
        out["self_duality"] = np.sum((w / np.linalg.norm(w) - mt / np.linalg.norm(mt)) ** 2)
    return out


def reference_variance_ratio(sigma_w, sigma_b, k):
    """tr(Σ_W Σ_B^†)/K with a pseudo-inverse that drops Σ_B's null space (rank K−1)."""
    return np.trace(np.asarray(sigma_w, np.float64) @ np.linalg.pinv(np.asarray(sigma_b, np.float64), rcond=1e-9)) / k


def reference_details(h, y, num_classes, global_mean="samples"):
    """Per-class counts, ‖μ_c − μ_G‖, σ_c² and the cosine grid (NaN for classes without samples)."""
    h = np.asarray(h, np.float64)
    classes = [c for c in range(num_classes) if np.any(y == c)]
    mu = {c: h[y == c].mean(0) for c in classes}
    mu_g = h.mean(0) if global_mean == "samples" else np.mean([mu[c] for c in classes], 0)
    norms = np.full(num_classes, np.nan)
    variances = np.full(num_classes, np.nan)
    cosines = np.full((num_classes, num_classes), np.nan)
    for c in classes:
        norms[c] = np.linalg.norm(mu[c] - mu_g)
        variances[c] = np.mean(np.sum((h[y == c] - mu[c]) ** 2, 1))
        for e in classes:
            cosines[c, e] = (mu[c] - mu_g) @ (mu[e] - mu_g) / (np.linalg.norm(mu[c] - mu_g) * np.linalg.norm(mu[e] - mu_g))
    counts = np.array([np.sum(y == c) for c in range(num_classes)])
    return {"class_counts": counts, "class_mean_norms": norms, "class_variances": variances,
            "pairwise_cosines": cosines}


def reference_rhubarbwu(h, y, num_classes, weight):
    """What rhubarbwu/neural-collapse's definitions give, keyed by the ncjax names they correspond to.

    Its ``MeanAccumulator.compute()`` returns ``mG`` as the unweighted mean of the class
    means; ``CovarAccumulator`` divides the within-class scatter by N; ``covariance_ratio``
    (pinv and quotient), ``variability_cdnv``, ``simplex_etf_error``, ``kernel_stats`` (the
    variance over pairs i < j of ``‖u_i − u_j‖`` and of ``log ‖u_i − u_j‖^-1``),
    ``mean_norms`` and ``clf_ncc_agreement`` (weighted: over samples; the linear decision
    is ``argmax X Wᵀ``, without a bias) as written there. ``unc3_unbiased`` is
    ``similarities(W, M, mG).var()`` (torch's unbiased variance).
    """
    h, w = np.asarray(h, np.float64), np.asarray(weight, np.float64)
    n, k = h.shape[0], num_classes
    means = np.stack([h[y == c].mean(0) for c in range(k)])
    m_g = means.mean(0)
    mc = means - m_g
    diff = h - means[y]
    v_intra = diff.T @ diff / n
    v_inter = mc.T @ mc / k
    var_norms = np.array([np.sum(diff[y == c] ** 2) / np.sum(y == c) for c in range(k)])
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    struct = mc @ mc.T
    struct = struct / np.linalg.norm(struct) + 1 / k / np.sqrt(k - 1) - np.eye(k) / np.sqrt(k - 1)
    u = mc / np.linalg.norm(mc, axis=1, keepdims=True)
    dist = np.array([np.linalg.norm(u[i] - u[j]) for i, j in pairs])
    log = np.log(dist ** -1.0)
    ncc = np.argmin(np.sum(h**2, 1)[:, None] + np.sum(means**2, 1)[None] - 2 * h @ means.T, 1)
    lin = np.argmax(h @ w.T, 1)
    dual = np.sum(w * mc, 1)
    return {
        "nc1": np.trace(np.linalg.pinv(v_inter, rcond=1e-9) @ v_intra) / k,
        "nc1_quotient": np.trace(v_intra) / np.trace(v_inter),
        "cdnv": np.mean([(var_norms[i] + var_norms[j]) / 2 / np.sum((means[i] - means[j]) ** 2) for i, j in pairs]),
        "nc2_etf": np.linalg.norm(struct),
        "gnc2_dist": np.mean((dist - dist.mean()) ** 2),
        "gnc2_log": np.mean((log - log.mean()) ** 2),
        "nc4": np.mean(lin == ncc),
        "class_mean_norms": np.linalg.norm(mc, axis=1),
        "unc3_unbiased": np.var(dual, ddof=1),
    }
