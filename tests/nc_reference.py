"""An independent float64 NumPy reference of science.md §4, written from the definitions.

Holds all features and uses the D×D pseudo-inverse: deliberately the
straightforward way, to check ncjax.collapse against.
"""

import numpy as np


def reference_metrics(h, y, num_classes, weight=None, bias=None):
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
    etf = (np.eye(k) - np.ones((k, k)) / k) / np.sqrt(k - 1)

    def etf_dist(g):
        return np.linalg.norm(g / np.linalg.norm(g) - etf)

    out["nc2_etf"] = etf_dist(mt @ mt.T)
    if weight is not None:
        w = np.asarray(weight, np.float64)[classes]
        b = np.zeros(num_classes) if bias is None else np.asarray(bias, np.float64)
        out["nc2_etf_w"] = etf_dist(w @ w.T)
        out["nc3"] = np.sum((w / np.linalg.norm(w) - mt / np.linalg.norm(mt)) ** 2)
        pred = np.asarray(classes)[np.argmax(h @ w.T + b[classes], 1)]
        dist = ((h[:, None, :] - mu[None]) ** 2).sum(-1)
        ncc = np.asarray(classes)[np.argmin(dist, 1)]
        out["nc4"] = np.mean(pred != ncc)
    return out
