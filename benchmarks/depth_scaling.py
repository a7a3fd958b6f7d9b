"""Depth scaling of the train step: compile time, step time, FLOP rate and memory.

For L in --depths, each of {scanned, unrolled (L <= --max-unrolled)} × {remat off,
remat on} jit-compiles one CE + λ‖θ‖² train step (batch 128, width 64, optax
sgd/adam) and reports:

- compile: lower + compile wall time (median of --compiles fresh traces),
- step: median wall time of one step over interleaved rounds (every config is
  timed in every round, so background load hits all of them alike),
- GFLOP/s: the model's matmul FLOPs per step (counted from the traced gradient,
  benchmarks/flops.py; recomputation by remat is not counted, the usual model-FLOPs
  convention) over the step time, and ``mm`` that rate over the rate of one jitted
  square matmul of the same FLOPs on this machine,
- remat ``on/k``: blocks rematerialised (--remat-policy) and groups of k blocks too
  (model.remat_group, two-level: about L/k + k saved carries instead of L),
- temp: XLA's temporary buffer bytes (compiled.memory_analysis()), i.e. the
  activations kept for the backward pass plus workspace.

Run: python benchmarks/depth_scaling.py [--model rn1] [--optimizer sgd] [--depths 2,8,32,128,512]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import flops
from ncjax import models
from ncjax.objective import data_loss, l2_penalty

BATCH, WIDTH, LAMBDA, LR = 128, 64, 0.005, 0.005


def sample_batch(model: str):
    """Flattened 28×28 images for ResNets, 28×28×1 images (7×7 patches) for transformers."""
    x = jax.random.normal(jax.random.key(1), (BATCH, 784) if model.startswith("rn") else (BATCH, 28, 28, 1))
    return x, jax.random.randint(jax.random.key(2), (BATCH,), 0, 10)


def remat_group(args, depth: int, scan: bool, remat: bool) -> int | None:
    """Two-level remat for scanned steps: the largest divisor of L not above √L (None when that is 1)."""
    if not (scan and remat and args.two_level):
        return None
    group = max(k for k in range(1, math.isqrt(depth) + 1) if depth % k == 0)
    return group if group > 1 else None


def train_step(args, depth: int, scan: bool, remat: bool):
    """The compiled step, its initial (params, opt_state), and compile seconds (median)."""
    c = models.default_config()
    c.update(name=args.model, depth=depth, width=WIDTH, scan=scan, unroll=args.unroll,
             remat_policy=args.remat_policy if remat else "everything_saveable",  # off: stored, on every backend
             remat_group=remat_group(args, depth, scan, remat),
             input="vector" if args.model.startswith("rn") else "image")
    x, y = sample_batch(args.model)
    opt = optax.sgd(LR) if args.optimizer == "sgd" else optax.adam(LR)
    seconds, compiled = [], None
    for _ in range(args.compiles):
        module = models.build(c)  # a fresh module and function: nothing is served from a trace cache

        def step(params, opt_state, x, y, module=module):
            def loss(p):
                logits, _ = module.apply({"params": p}, x)
                return data_loss(logits, y, "ce") + LAMBDA * l2_penalty(p)

            value, grads = jax.value_and_grad(loss)(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        params = models.init(module, jax.random.key(0), x)["params"]
        state = (params, opt.init(params))
        start = time.perf_counter()
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*state, x, y).compile()
        seconds.append(time.perf_counter() - start)
    return compiled, state, (x, y), statistics.median(seconds)


def model_flops(args, depth: int) -> int:
    """Matmul FLOPs of one step at this depth (benchmarks/flops.py), counted on the step without remat."""
    c = models.default_config()
    c.update(name=args.model, depth=depth, width=WIDTH, input="vector" if args.model.startswith("rn") else "image",
             remat_policy="everything_saveable")
    module = models.build(c)
    x, y = sample_batch(args.model)
    params = jax.eval_shape(lambda: models.init(module, jax.random.key(0), x)["params"])

    def gradient(p):
        return jax.grad(lambda p: data_loss(module.apply({"params": p}, x)[0], y, "ce") + LAMBDA * l2_penalty(p))(p)

    return flops.count_flops(gradient, params)


def matmul_rate(count: float, rounds: int) -> float:
    """FLOP/s of one jitted square matmul with ``count`` FLOPs."""
    n = max(8, round((count / 2) ** (1 / 3)))
    a = jnp.ones((n, n), jnp.float32)
    mm = jax.jit(jnp.matmul).lower(a, a).compile()
    mm(a, a).block_until_ready()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        mm(a, a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="rn1", choices=("rn1", "rn2", "t11", "t12"))
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    parser.add_argument("--depths", default="2,8,32,128,512")
    parser.add_argument("--max-unrolled", type=int, default=32)
    parser.add_argument("--remat-policy", default="nothing_saveable")
    parser.add_argument("--no-two-level", dest="two_level", action="store_false",
                        help="remat each block only (no remat_group)")
    parser.add_argument("--unroll", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15, help="timing rounds (one step per config per round)")
    parser.add_argument("--compiles", type=int, default=3, help="compilations per config for the compile time")
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]

    print(f"# {args.model}, batch {BATCH}, width {WIDTH}, {args.optimizer}, CE + {LAMBDA}·L2, "
          f"{jax.devices()[0].platform} × {jax.device_count()}, jax {jax.__version__}")
    configs = {}
    for depth in depths:
        for scan in (True, False):
            if not scan and depth > args.max_unrolled:
                continue
            for remat in (False, True):
                configs[depth, scan, remat] = train_step(args, depth, scan, remat)

    times = {key: [] for key in configs}
    states = {key: cfg[1] for key, cfg in configs.items()}
    for key, (compiled, _, batch, _) in configs.items():  # warm-up
        params, opt_state, loss = compiled(*states[key], *batch)
        states[key] = (params, opt_state)
    for _ in range(args.rounds):
        for key, (compiled, _, batch, _) in configs.items():
            start = time.perf_counter()
            params, opt_state, loss = compiled(*states[key], *batch)
            loss.block_until_ready()
            times[key].append(time.perf_counter() - start)
            states[key] = (params, opt_state)

    print(f"{'L':>4} {'impl':8} {'remat':5} {'compile_s':>9} {'step_ms':>8} {'GFLOP/s':>8} {'mm':>5} {'temp_MB':>8}")
    rows = {}
    for key, (compiled, _, _, compile_s) in configs.items():
        depth, scan, remat = key
        step_s = statistics.median(times[key])
        step_flops = model_flops(args, depth)
        rate = step_flops / step_s
        mm = rate / matmul_rate(step_flops, args.rounds)
        temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
        rows[key] = dict(compile=compile_s, step=step_s, mm=mm, temp=temp)
        group = remat_group(args, depth, scan, remat)
        mode = ("on" if remat else "off") + (f"/{group}" if group else "")
        print(f"{depth:4d} {'scan' if scan else 'unrolled':8} {mode:5} {compile_s:9.2f} "
              f"{step_s * 1e3:8.2f} {rate / 1e9:8.2f} {mm:5.2f} {temp:8.2f}")

    lo, hi = min(depths), max(depths)
    mid = max((d for d in depths if d <= args.max_unrolled), default=None)  # None: no unrolled step measured

    def goal(text, value, limit, ok):
        print(f"goal {text}: {value:.3f} (target {limit}) {'PASS' if ok else 'FAIL'}")

    r = rows[hi, True, False]["compile"] / rows[lo, True, False]["compile"]
    goal(f"compile(L={hi}) / compile(L={lo}), scanned", r, "<= 1.5", r <= 1.5)
    if mid is not None:
        r = rows[mid, True, False]["step"] / rows[mid, False, False]["step"]
        goal(f"step scanned / unrolled at L={mid}", r, "<= 1.1", r <= 1.1)
        r = rows[mid, True, False]["mm"]
        goal(f"FLOP rate / matmul FLOP rate, scanned L={mid}", r, ">= 0.5", r >= 0.5)
    r = rows[hi, True, True]["temp"] / rows[hi, True, False]["temp"]
    goal(f"temp memory remat / no remat at L={hi}", r, "<= 0.25", r <= 0.25)


if __name__ == "__main__":
    main()
