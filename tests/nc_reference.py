"""An independent float64 NumPy reference of science.md §4, written from the definitions.

Holds all features, loops over classes and pairs, and uses the D×D
pseudo-inverse: deliberately the straightforward way, to check
ncjax.collapse against. No NaN policy here (that is tested separately).
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
