"""Streaming collapse metrics: ncjax against a straightforward float64 NumPy two-pass reference.

Both stream the same synthetic features (class means plus noise) in batches and
compute every metric of science.md §4 (nc4 included, so both make two passes).
Each measurement runs in its own subprocess so that its peak memory (ru_maxrss,
minus the process's footprint before the first batch) is its own.

    python benchmarks/collapse_speed.py                   # both problem sizes
    python benchmarks/collapse_speed.py --sizes=small --repeats=5

Figures: wall seconds (median over repeats; ncjax's first run, which includes
compilation, is reported separately) and peak extra memory; the N=10,000 runs
show that memory does not grow with N.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

SIZES = {
    "small": dict(n=50_000, d=512, k=100, batch=1_000),
    "large": dict(n=50_000, d=2_048, k=1_000, batch=1_000),
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stream:
    """Deterministic synthetic batches, cheap to regenerate (a pool of noise blocks)."""

    def __init__(self, n, d, k, batch, seed=0):
        rng = np.random.default_rng(seed)
        self.means = (rng.normal(size=(k, d)) * 2.0).astype(np.float32)
        self.noise = rng.normal(size=(7, batch, d)).astype(np.float32)
        self.labels = rng.integers(0, k, size=(11, batch)).astype(np.int32)
        self.weight = (self.means + 0.1 * rng.normal(size=(k, d))).astype(np.float32)
        self.bias = np.zeros(k, np.float32)
        self.n, self.k, self.batch = n, k, batch

    def __call__(self):
        for i in range(self.n // self.batch):
            y = self.labels[i % 11]
            yield self.means[y] + self.noise[i % 7], y


def reference(stream: Stream) -> dict[str, float]:
    """Float64, two passes, the definitions as written: D×D Σ_B and its pseudo-inverse."""
    k = stream.k
    count = np.zeros(k)
    sums = np.zeros((k, stream.means.shape[1]))
    for h, y in stream():
        onehot = np.eye(k)[y]
        count += onehot.sum(0)
        sums += onehot.T @ h.astype(np.float64)
    mu = sums / count[:, None]
    mu_g = sums.sum(0) / count.sum()
    d = mu.shape[1]
    sw = np.zeros((d, d))
    sq = np.zeros(k)
    mismatch = 0
    for h, y in stream():
        h = h.astype(np.float64)
        dev = h - mu[y]
        sw += dev.T @ dev
        sq += np.bincount(y, (dev**2).sum(1), minlength=k)
        pred = np.argmax(h @ stream.weight.T + stream.bias, 1)
        ncc = np.argmin((mu**2).sum(1)[None] - 2 * h @ mu.T, 1)
        mismatch += int(np.sum(pred != ncc))
    n = count.sum()
    sw /= n
    mt = mu - mu_g
    sb = mt.T @ mt / k
    out = {"nc1": np.trace(sw @ np.linalg.pinv(sb, hermitian=True)) / k}
    out["nc1_quotient"] = np.trace(sw) / np.trace(sb)
    var = sq / count
    sq = (mt**2).sum(1)
    dist = sq[:, None] + sq[None] - 2 * mt @ mt.T  # pairwise ‖μ_c − μ_c'‖², without a K×K×D array
    iu = np.triu_indices(k, 1)
    out["cdnv"] = np.mean((var[:, None] + var[None])[iu] / (2 * dist[iu]))
    norms = np.linalg.norm(mt, axis=1)
    out["nc2_equinorm"] = norms.std() / norms.mean()
    cos = mt @ mt.T / np.outer(norms, norms)
    out["nc2_equiangle"] = np.abs(cos + 1 / (k - 1))[~np.eye(k, dtype=bool)].mean()
    etf = (np.eye(k) - 1 / k) / np.sqrt(k - 1)
    g = mt @ mt.T
    out["nc2_etf"] = np.linalg.norm(g / np.linalg.norm(g) - etf)
    w = stream.weight.astype(np.float64)
    gw = w @ w.T
    out["nc2_etf_w"] = np.linalg.norm(gw / np.linalg.norm(gw) - etf)
    out["nc3"] = np.sum((w / np.linalg.norm(w) - mt / np.linalg.norm(mt)) ** 2)
    out["nc4"] = mismatch / n
    return {name: float(v) for name, v in out.items()}


def ncjax_metrics(stream: Stream) -> dict[str, float]:
    from ncjax import collapse

    return collapse.measure_batches(stream, stream.k, weight=stream.weight, bias=stream.bias)


def child(impl: str, size: str, n: int, repeats: int) -> None:
    """One measurement in this process: prints a JSON line."""
    cfg = dict(SIZES[size], n=n)
    stream = Stream(**cfg)
    fn = {"numpy": reference, "ncjax": ncjax_metrics}[impl]
    if impl == "ncjax":
        import jax  # noqa: F401  (import cost is not the metrics' cost)
    base = _rss_mb()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(stream)
        times.append(time.perf_counter() - start)
    print(json.dumps(dict(times=times, peak_mb=_rss_mb() - base, result=result)))


def run_child(impl, size, n, repeats):
    cmd = [sys.executable, __file__, "--child", impl, "--sizes", size, "--n", str(n), "--repeats", str(repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,large")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", default=None)
    parser.add_argument("--n", type=int, default=None)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.sizes, args.n, args.repeats)
        return
    for size in args.sizes.split(","):
        cfg = SIZES[size]
        label = f"N={cfg['n']:,} D={cfg['d']:,} K={cfg['k']:,} batch={cfg['batch']:,}"
        jx = run_child("ncjax", size, cfg["n"], args.repeats + 1)
        ref = run_child("numpy", size, cfg["n"], args.repeats)
        jx_small = run_child("ncjax", size, 10_000, 2)
        ref_small = run_child("numpy", size, 10_000, 1)
        jx_time = statistics.median(jx["times"][1:])
        ref_time = statistics.median(ref["times"])
        worst = max(
            abs(jx["result"][m] - ref["result"][m]) / max(abs(ref["result"][m]), 1e-12) for m in ref["result"]
        )
        print(f"{label}")
        print(f"  ncjax          {jx_time:8.2f} s   (first run incl. compile {jx['times'][0]:.2f} s)   "
              f"peak +{jx['peak_mb']:.0f} MB (N=10,000: +{jx_small['peak_mb']:.0f} MB)")
        print(f"  numpy float64  {ref_time:8.2f} s   peak +{ref['peak_mb']:.0f} MB (N=10,000: +{ref_small['peak_mb']:.0f} MB)")
        print(f"  speed-up {ref_time / jx_time:.1f}x   largest relative difference of any metric {worst:.1e}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
