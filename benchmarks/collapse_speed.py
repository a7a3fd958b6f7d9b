"""Streaming collapse metrics: ncjax against the GEMM floor, a float64 reference and rhubarbwu/neural-collapse.

Every implementation streams the same synthetic features (class means plus
noise; per block, block-dependent gains) in batches and computes every metric
it has, nc4 included:

- ``readme``: ncjax as its README streams (``update`` per batch, on the route
  ``update(None, ...)`` picks: the K×K projections when K ≤ D, the D×D scatter
  when K > D; ``update_second`` per batch; ``metrics``), the comparison the goal is about;
- ``ncjax``: ``collapse.measure_batches`` (the cheaper nc1 route, K×K when K ≤ D);
- ``gemm``: the unavoidable arithmetic, ``Σ hᵀh`` over the batches (N·D²
  multiply-adds, the within-class covariance's GEMM) as one XLA product per batch;
  "GEMM fraction" is its time over an implementation's;
- ``numpy``: the definitions in float64 (two passes, D×D pseudo-inverse, pairs
  tiled), run once for the accuracy columns;
- ``rhubarbwu`` / ``rhubarbwu1``: rhubarbwu/neural-collapse as its README drives
  it (four accumulator passes, then its measures; torch on the CPU with its own
  thread count, and with one thread).

Each implementation runs in its own process (its peak memory, ru_maxrss over
the footprint before the first call, is its own; its thread pools are its own),
is called once to compile, then the parent runs ``repeats`` rounds that call
every implementation once in a rotating order, so all see the same machine load;
ratios are medians of per-round ratios. Streams up to 512 MB are generated once
and held in memory; larger ones are generated as they stream, and generating them,
measured alone ("stream") in every round, is subtracted.

    python benchmarks/collapse_speed.py --cases=common --rhubarbwu=/path/to/neural-collapse
    python benchmarks/collapse_speed.py --cases=vocab,blocks34,blocks256

Cases: ``common`` N=50,000 D=512 K=100; ``wide`` N=50,000 D=2,048 K=1,000;
``vocab`` N=200,000 D=1,024 K=16,384 (``vocab32k``: K=32,768, the accelerator size); ``blocks34`` L=34 D=64 N=5,000 K=10;
``blocks256`` L=256 D=768 N=10,000 K=100 (a case with one repeat is one call, compilation included).
``--rhubarbwu`` is a directory that holds rhubarbwu's ``neural_collapse`` package
(never part of this repository); torch must be importable (``PYTHONPATH`` may
point at a ``pip install --target`` folder). Under CPU contention torch's
threads spin and rhubarbwu slows down far more than ncjax (on the 2-core CI
machine: 0.46 s quiet, 6 to 21 s at a load average of 3 to 7): hence the
one-thread run beside it, and the load average printed with every case.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # measure this checkout's ncjax
CASES = {
    "common": dict(n=50_000, d=512, k=100, batch=1_000, layers=0, repeats=5),
    "wide": dict(n=50_000, d=2_048, k=1_000, batch=1_000, layers=0, repeats=3),
    "vocab": dict(n=200_000, d=1_024, k=16_384, batch=1_000, layers=0, repeats=1),
    "vocab32k": dict(n=200_000, d=1_024, k=32_768, batch=1_000, layers=0, repeats=1),
    "blocks34": dict(n=5_000, d=64, k=10, batch=1_000, layers=34, repeats=3),
    "blocks256": dict(n=10_000, d=768, k=100, batch=250, layers=256, repeats=2),
}


CACHE_BYTES = 1 << 29  # streams up to this size are generated once and held (so generating costs no time)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stream:
    """Deterministic synthetic batches, cheap to regenerate: a pool of noise blocks, balanced labels.

    Batch i holds labels ``(order + i·B) mod K``: every class gets ⌊N/K⌋ or ⌈N/K⌉ samples.

    With ``layers`` > 0 every batch is [L, B, D]: block l scales the means by
    ``a_l`` and the noise by ``s_l`` (so nc1 changes through the depth).
    """

    def __init__(self, n, d, k, batch, layers=0, seed=0, **_):
        rng = np.random.default_rng(seed)
        self.means = (rng.normal(size=(k, d)) * 2.0).astype(np.float32)
        self.noise = rng.normal(size=(7, batch, d)).astype(np.float32)
        self.order = rng.permutation(batch)
        self.weight = (self.means + 0.1 * rng.normal(size=(k, d))).astype(np.float32)
        self.bias = np.zeros(k, np.float32)
        self.ood_noise = (rng.normal(size=(3, batch, d)) + 0.5).astype(np.float32)
        self.gain = np.linspace(0.5, 2.0, max(layers, 1)).astype(np.float32)[:, None, None]
        self.spread = np.geomspace(2.0, 0.2, max(layers, 1)).astype(np.float32)[:, None, None]
        self.n, self.k, self.d, self.batch, self.layers = n, k, d, batch, layers
        self.cached = None
        if n * d * max(layers, 1) * 4 <= CACHE_BYTES:  # made once, before any measurement's memory baseline
            self.cached = list(self._make())

    def __call__(self):
        return iter(self.cached) if self.cached is not None else self._make()

    def _make(self):
        for i in range(self.n // self.batch):
            y = ((self.order + i * self.batch) % self.k).astype(np.int32)
            if self.layers:
                yield self.gain * self.means[y] + self.spread * self.noise[i % 7], y
            else:
                yield self.means[y] + self.noise[i % 7], y

    def ood(self):
        for i in range(max(1, self.n // 5 // self.batch)):
            h = self.ood_noise[i % 3]
            yield np.broadcast_to(self.gain * h, (self.layers,) + h.shape) if self.layers else h


# ----------------------------------------------------------------- implementations


def stream_only(stream: Stream) -> dict:
    """Only generate the batches, as often as the others do (two passes and one OOD pass)."""
    for _ in range(2):
        for h, _ in stream():
            pass
    for _ in stream.ood():
        pass
    return {}


def reference(stream: Stream) -> dict:
    """Float64, two passes, the definitions as written: D×D Σ_B pseudo-inverse, pairs tiled."""
    k, d, layers = stream.k, stream.d, max(stream.layers, 1)
    count = np.zeros(k)
    sums = np.zeros((layers, k, d))
    for h, y in stream():
        h = h.reshape(layers, -1, d).astype(np.float64)
        count += np.bincount(y, minlength=k)
        for layer in range(layers):
            np.add.at(sums[layer], y, h[layer])
    mu = sums / count[:, None]
    mu_g = sums.sum(1) / count.sum()
    ood_sum, ood_n = np.zeros((layers, d)), 0
    for h in stream.ood():
        ood_sum += h.reshape(layers, -1, d).astype(np.float64).sum(1)
        ood_n += h.shape[-2]
    sw = np.zeros((layers, d, d))
    sq = np.zeros((layers, k))
    correct = np.zeros(layers)
    mismatch = cos_sum = 0.0
    w = stream.weight.astype(np.float64)
    for h, y in stream():
        h = h.reshape(layers, -1, d).astype(np.float64)
        for layer in range(layers):
            dev = h[layer] - mu[layer][y]
            sw[layer] += dev.T @ dev
            sq[layer] += np.bincount(y, (dev**2).sum(1), minlength=k)
            ncc = np.argmin((mu[layer] ** 2).sum(1)[None] - 2 * h[layer] @ mu[layer].T, 1)
            correct[layer] += np.sum(ncc == y)
        centred = h[-1] - mu_g[-1]
        mismatch += np.sum(np.argmax(h[-1] @ w.T + stream.bias, 1) != ncc)
        cos_sum += np.sum(np.sum(centred * w[y], 1) / (np.linalg.norm(centred, axis=1) * np.linalg.norm(w[y], axis=1)))
    n = count.sum()
    out = {name: [] for name in ("nc1", "nc1_quotient", "cdnv", "nc2_equinorm", "nc2_equiangle", "nc2_etf",
                                 "nc2_ortho", "gnc2_dist", "gnc2_log", "ncc_accuracy", "nc5",
                                 "effective_rank_features", "effective_rank_means")}
    etf = lambda g: np.linalg.norm(g / np.linalg.norm(g) - (np.eye(k) - 1 / k) / np.sqrt(k - 1))  # noqa: E731
    for layer in range(layers):
        mt = mu[layer] - mu_g[layer]
        within = sw[layer] / n
        between = mt.T @ mt / k
        out["nc1"].append(np.trace(within @ np.linalg.pinv(between, hermitian=True)) / k)
        out["nc1_quotient"].append(np.trace(within) / np.trace(between))
        pair = _pairs(mt, sq[layer] / count)
        for name in ("cdnv", "nc2_equiangle", "gnc2_dist", "gnc2_log"):
            out[name].append(pair[name])
        norms = np.linalg.norm(mt, axis=1)
        out["nc2_equinorm"].append(norms.std() / norms.mean())
        out["nc2_etf"].append(_frame_distance(mt, k, etf))
        m = mu[layer]
        gram = m.T @ m if k > d else m @ m.T
        out["nc2_ortho"].append(np.sqrt(max(2 - 2 * np.sum(m * m) / (np.sqrt(k) * np.linalg.norm(gram)), 0.0)))
        out["ncc_accuracy"].append(correct[layer] / n)
        direction = ood_sum[layer] / ood_n - mu_g[layer]
        out["nc5"].append(np.mean(np.abs(mt @ direction) / (norms * np.linalg.norm(direction))))
        covariance = within + (mt * count[:, None]).T @ mt / n
        out["effective_rank_features"].append(_entropy_rank(np.linalg.eigvalsh(covariance)))
        out["effective_rank_means"].append(_entropy_rank(np.linalg.svd(mt, compute_uv=False)))
    mt = mu[-1] - mu_g[-1]
    gram_w = w.T @ w if k > d else w @ w.T
    out["nc2_etf_w"] = [_frame_distance(w, k, etf, gram_w)]
    out["nc3"] = [np.sum((w / np.linalg.norm(w) - mt / np.linalg.norm(mt)) ** 2)]
    duality = np.sum(w * mt, 1)
    out["unc3"] = [duality.var()]
    out["unc3_normalised"] = [duality.var() / duality.mean() ** 2]
    out["nc3_cos"] = [1 - cos_sum / n]
    out["nc4"] = [mismatch / n]
    return {name: [float(v) for v in values] for name, values in out.items()}


def _frame_distance(rows, k, etf, gram=None):
    """nc2_etf of rows [K, D]: the definition with the K×K Gram when small, else its expansion."""
    if k <= 4096:
        return etf(rows @ rows.T)
    gram = rows.T @ rows if gram is None else gram
    s = rows.sum(0)
    inner = (np.sum(rows * rows) - s @ s / k) / (np.sqrt(k - 1) * np.linalg.norm(gram))
    return np.sqrt(max(2 - 2 * inner, 0.0))


def _entropy_rank(values):
    values = np.clip(values, 0, None)
    values = values[values > values.max() * values.size * 1e-7]
    p = values / values.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def _pairs(mt, var, rows=512):
    """cdnv, nc2_equiangle, gnc2_dist, gnc2_log over all pairs c ≠ c' (tiled; two-pass variances)."""
    k = mt.shape[0]
    norms = np.linalg.norm(mt, axis=1)
    u = mt / norms[:, None]
    sq = norms**2
    totals = dict(cdnv=0.0, equi=0.0, dist=0.0, log=0.0)
    np.seterr(divide="ignore", invalid="ignore")  # the diagonal (c = c) is masked out below
    tiles = []
    for start in range(0, k, rows):
        idx = np.arange(start, min(start + rows, k))
        g = mt[idx] @ mt.T
        off = idx[:, None] != np.arange(k)[None]
        d2 = sq[idx, None] + sq[None] - 2 * g
        totals["cdnv"] += np.sum(((var[idx, None] + var[None]) / (2 * d2))[off])
        cos = (u[idx] @ u.T)[off]
        totals["equi"] += np.sum(np.abs(cos + 1 / (k - 1)))
        dist = np.sqrt(np.clip(2 - 2 * cos, 0, None))
        totals["dist"] += dist.sum()
        totals["log"] += np.sum(-np.log(dist))
        tiles.append(idx)
    pairs = k * (k - 1)
    mean_dist, mean_log = totals["dist"] / pairs, totals["log"] / pairs
    var_dist = var_log = 0.0
    for idx in tiles:  # second sweep: variances about the exact means
        off = idx[:, None] != np.arange(k)[None]
        dist = np.sqrt(np.clip(2 - 2 * (u[idx] @ u.T)[off], 0, None))
        var_dist += np.sum((dist - mean_dist) ** 2)
        var_log += np.sum((-np.log(dist) - mean_log) ** 2)
    return dict(cdnv=totals["cdnv"] / pairs, nc2_equiangle=totals["equi"] / pairs,
                gnc2_dist=var_dist / pairs, gnc2_log=var_log / pairs)


def ncjax_metrics(stream: Stream) -> dict:
    """ncjax's one call for a stream: ``measure_batches`` (the cheaper nc1 route, K×K when K ≤ D)."""
    from ncjax import collapse

    values = collapse.measure_batches(stream, stream.k, weight=stream.weight, bias=stream.bias,
                                      make_ood_batches=stream.ood)
    return {name: (v if isinstance(v, list) else [v]) for name, v in values.items()}


def readme_metrics(stream: Stream) -> dict:
    """ncjax as its README streams: ``update`` per batch (on the route it picks), ``update_second`` per
    batch, the out-of-distribution mean by ``update``, then ``metrics`` (every metric, on the host)."""
    from ncjax import collapse

    stats = None
    for h, y in stream():
        stats = collapse.update(stats, h, y, stream.k)
    second = None
    for h, y in stream():
        second = collapse.update_second(second, stats, h, y, weight=stream.weight, bias=stream.bias)
    ood = collapse.empty_stats(1, stream.d, scatter=False)  # nc5 needs the mean alone (collapse's docstring)
    for h in stream.ood():
        ood = collapse.update(ood, h, np.zeros(h.shape[-2], np.int32))
    values = collapse.as_json(collapse.metrics(stats, stream.weight, stream.bias, second=second, ood=ood))
    return {name: (v if isinstance(v, list) else [v]) for name, v in values.items()}


_GEMM = {}


def gemm_floor(stream: Stream) -> dict:
    """The unavoidable arithmetic: ``Σ_batches hᵀh`` (N·D² multiply-adds, the within-class covariance's
    GEMM, as one full XLA product per batch), over the same stream."""
    import jax
    import jax.numpy as jnp

    if "step" not in _GEMM:
        _GEMM["step"] = jax.jit(lambda acc, h: acc + jnp.einsum("...bd,...be->...de", h, h), donate_argnums=0)
    lead = (stream.layers,) if stream.layers else ()
    acc = jnp.zeros(lead + (stream.d, stream.d), jnp.float32)
    for h, _ in stream():
        acc = _GEMM["step"](acc, h)
    jax.block_until_ready(acc)
    return {}


def rhubarbwu_metrics(stream: Stream) -> dict:
    """rhubarbwu/neural-collapse as its README drives it: four accumulator passes, then its measures."""
    import torch as pt
    from neural_collapse import accumulate as acc
    from neural_collapse import kernels, measure

    k, d = stream.k, stream.d
    as_t = pt.from_numpy
    means_acc = acc.MeanAccumulator(k, d, "cpu")
    for h, y in stream():
        means_acc.accumulate(as_t(h), as_t(y.astype(np.int64)))
    means, m_g = means_acc.compute()
    var_acc = acc.VarNormAccumulator(k, d, "cpu", M=means)
    cov_acc = acc.CovarAccumulator(k, d, "cpu", M=means)
    for h, y in stream():
        x, t = as_t(h), as_t(y.astype(np.int64))
        var_acc.accumulate(x, t, means)
        cov_acc.accumulate(x, t, means)
    var_norms, _ = var_acc.compute()
    covar_within = cov_acc.compute()
    weights = as_t(stream.weight)
    dec_acc = acc.DecAccumulator(k, d, "cpu", M=means, W=weights)
    for h, y in stream():
        dec_acc.accumulate(as_t(h), as_t(y.astype(np.int64)), weights, means)
    ood_acc = acc.MeanAccumulator(k, d, "cpu")
    for h in stream.ood():
        ood_acc.accumulate(as_t(np.ascontiguousarray(h)), pt.zeros(h.shape[0], dtype=pt.int64))
    _, m_g_ood = ood_acc.compute()
    results = {
        "nc1": measure.covariance_ratio(covar_within, means, m_g),
        "nc1_quotient": measure.covariance_ratio(covar_within, means, m_g, "quotient"),
        "cdnv": measure.variability_cdnv(var_norms, means),
        "nc2_etf": measure.simplex_etf_error(means, m_g),
        "gnc2_dist": kernels.kernel_stats(means, m_g)[1],
        "gnc2_log": kernels.kernel_stats(means, m_g, kernel=kernels.log_kernel)[1],
        "nc3_frame": measure.self_duality_error(weights, means, m_g),
        "unc3": measure.similarities(weights, means, m_g).var().item(),
        "nc4_agreement": measure.clf_ncc_agreement(dec_acc),
        "nc5": measure.orthogonality_deviation(means, m_g_ood),
    }
    return {name: [float(v)] for name, v in results.items()}


IMPLEMENTATIONS = {"stream": stream_only, "numpy": reference, "ncjax": ncjax_metrics, "readme": readme_metrics,
                   "gemm": gemm_floor, "rhubarbwu": rhubarbwu_metrics, "rhubarbwu1": rhubarbwu_metrics}
LABELS = {"gemm": "GEMM floor (N·D²)", "readme": "ncjax README API", "ncjax": "ncjax measure_batches",
          "rhubarbwu": "rhubarbwu (torch threads)", "rhubarbwu1": "rhubarbwu (1 thread)", "stream": "batches alone"}


# ----------------------------------------------------------------- driver


def serve(impl: str, case: str, rhubarbwu: str | None) -> None:
    """One implementation in this process, measured on request: the parent interleaves the processes
    round by round, so every implementation sees the same machine load (other jobs share the CPU).

    Reads ``run`` (one timed call: prints its wall and CPU seconds), ``result`` (the last call's
    metrics), ``memory`` (peak RSS over the footprint before the first call), ``quit``.
    """
    stream = Stream(**CASES[case])
    if impl in ("ncjax", "readme", "gemm"):
        import jax  # noqa: F401  (import cost is not the metrics' cost)
    if impl.startswith("rhubarbwu"):
        sys.path.insert(0, rhubarbwu)
        import torch

        import neural_collapse.measure  # noqa: F401
        if impl == "rhubarbwu1":
            torch.set_num_threads(1)
    base, result = _rss_mb(), {}
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            start, start_cpu = time.perf_counter(), time.process_time()
            result = IMPLEMENTATIONS[impl](stream)
            reply = dict(time=time.perf_counter() - start, cpu=time.process_time() - start_cpu)
        elif command == "result":
            reply = result
        elif command == "memory":
            reply = dict(peak_mb=_rss_mb() - base)
        else:
            return
        print(json.dumps(reply), flush=True)


class Server:
    """A child process serving one implementation (see :func:`serve`)."""

    def __init__(self, impl, case, rhubarbwu=None):
        cmd = [sys.executable, __file__, "--serve", impl, "--cases", case]
        if rhubarbwu:
            cmd += ["--rhubarbwu", rhubarbwu]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
        self.impl = impl
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env)

    def ask(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.impl} failed:\n{self.process.stderr.read()[-3000:]}")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
        self.process.wait()


def child(impl: str, case: str, repeats: int, rhubarbwu: str | None) -> None:
    """One measurement in this process: prints a JSON line."""
    stream = Stream(**CASES[case])
    base = _rss_mb()
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = IMPLEMENTATIONS[impl](stream)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    print(json.dumps(dict(times=times, cpu=cpu, peak_mb=_rss_mb() - base, result=result)))


def run_child(impl, case, repeats, rhubarbwu=None):
    cmd = [sys.executable, __file__, "--child", impl, "--cases", case, "--repeats", str(repeats)]
    if rhubarbwu:
        cmd += ["--rhubarbwu", rhubarbwu]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{impl} on {case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def largest_difference(got: dict, want: dict) -> tuple[float, str]:
    worst, where = 0.0, ""
    for name, values in want.items():
        if name not in got:
            continue
        for a, b in zip(got[name], values):
            if math.isnan(a) and math.isnan(b):
                continue
            diff = abs(a - b) / max(abs(b), 1e-12)
            if not diff <= worst:
                worst, where = diff, name
    return worst, where


def measure_case(case: str, repeats: int, rhubarbwu: str | None, reference_result: dict | None) -> None:
    """Every implementation in its own process, warmed up by one call (compilation), then ``repeats``
    rounds, each running every implementation once in a rotating order; times are medians over rounds
    minus generating the batches, ratios medians of the per-round ratios."""
    cfg = CASES[case]
    impls = ["stream", "gemm"] + (["readme"] if not cfg["layers"] and cfg["k"] <= 1_000 else []) + ["ncjax"]
    if rhubarbwu and not cfg["layers"]:
        impls += ["rhubarbwu", "rhubarbwu1"]
    servers = {impl: Server(impl, case, rhubarbwu) for impl in impls}
    try:
        first = {impl: server.ask("run") for impl, server in servers.items()}
        rounds = [first] if repeats == 1 else []  # one call: compilation included (seconds against minutes)
        for r in range(repeats if repeats > 1 else 0):
            order = impls[r % len(impls):] + impls[:r % len(impls)]
            rounds.append({impl: servers[impl].ask("run") for impl in order})
        results = {impl: server.ask("result") for impl, server in servers.items()}
        memory = {impl: server.ask("memory")["peak_mb"] for impl, server in servers.items()}
    finally:
        for server in servers.values():
            server.close()

    def net(impl, r, key="time"):
        return r[impl][key] - (r["stream"]["time"] if key == "time" else r["stream"]["cpu"])

    median = lambda values: statistics.median(list(values))  # noqa: E731
    floor = median(net("gemm", r) for r in rounds)
    flops = 2 * cfg["n"] * cfg["d"] ** 2 * max(cfg["layers"], 1)
    print(f"  {LABELS['gemm']:27s} {floor:7.3f} s   ({flops / 2e9:.1f} G multiply-adds, {flops / floor / 1e9:.0f} "
          f"GFLOP/s: the within-class covariance's GEMM, one full hᵀh per batch)")
    for impl in impls[2:]:
        wall, cpu = median(net(impl, r) for r in rounds), median(net(impl, r, "cpu") for r in rounds)
        line = (f"  {LABELS[impl]:27s} {wall:7.3f} s ({cpu:.2f} s CPU)   peak +{memory[impl]:.0f} MB")
        if impl in ("readme", "ncjax") and repeats > 1:
            compile_s = first[impl]["time"] - statistics.median(r[impl]["time"] for r in rounds)
            line += (f"   first call +{compile_s:.2f} s   GEMM fraction "
                     f"{median(net('gemm', r) / net(impl, r) for r in rounds):.2f}")
        else:
            line += "   ncjax faster by: " + ", ".join(
                f"{name} {median(net(impl, r) / net(j, r) for r in rounds):.2f}x "
                f"(CPU time {median(net(impl, r, 'cpu') / net(j, r, 'cpu') for r in rounds):.2f}x)"
                for j, name in (("readme", "README API"), ("ncjax", "measure_batches")) if j in impls)
        if reference_result is not None and results[impl]:
            worst, where = largest_difference(results[impl], reference_result)
            if impl in ("readme", "ncjax"):
                line += f"   largest relative difference from float64 {worst:.1e} ({where})"
        print(line)
    print(f"  (generating the batches: {median(r['stream']['time'] for r in rounds):.2f} s; "
          f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="common,blocks34")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default per case)")
    parser.add_argument("--rhubarbwu", default=None, help="directory holding rhubarbwu's neural_collapse package")
    parser.add_argument("--no-reference", action="store_true", help="skip the float64 reference (slow at vocab size)")
    parser.add_argument("--cache", default=None,
                        help="directory to keep the reference's results in and reuse them (the streams are deterministic)")
    parser.add_argument("--child", default=None)
    parser.add_argument("--serve", default=None)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.cases, args.rhubarbwu)
        return
    if args.child:
        child(args.child, args.cases, args.repeats, args.rhubarbwu)
        return
    for case in args.cases.split(","):
        cfg = CASES[case]
        repeats = args.repeats or cfg["repeats"]
        shape = (f"L={cfg['layers']} " if cfg["layers"] else "") + f"N={cfg['n']:,} D={cfg['d']:,} K={cfg['k']:,}"
        ref = None
        if not args.no_reference:
            cached = os.path.join(args.cache, f"reference_{case}.json") if args.cache else None
            if cached and os.path.exists(cached):
                with open(cached) as f:
                    ref = json.load(f)
            else:
                ref = run_child("numpy", case, 1)
                if cached:
                    os.makedirs(args.cache, exist_ok=True)
                    with open(cached, "w") as f:
                        json.dump(ref, f)
        print(f"{case}: {shape} batch={cfg['batch']:,}; every implementation in its own process, warmed up "
              f"(compiled), then {repeats if repeats > 1 else 'no'} interleaved rounds (times: medians, minus generating the batches; "
              f"ratios: medians of per-round ratios)")
        if ref is not None:
            print(f"  numpy float64 reference     {ref['times'][0]:7.2f} s   peak +{ref['peak_mb']:.0f} MB")
        measure_case(case, repeats, args.rhubarbwu, None if ref is None else ref["result"])
        sys.stdout.flush()


if __name__ == "__main__":
    main()
