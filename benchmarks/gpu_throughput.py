"""Train-step throughput and MFU of the real sharded train step (``ncjax.train.Program.step``).

For each depth: build the L-T11/L-T12 (or L-RN) program exactly as the sweep does (all seeds
vmapped, jit over the full device mesh), compile it, time ``--steps`` steps after
``--warmup`` steps, and report steps/s, examples/s, the step's FLOPs and the model FLOP
utilisation (MFU = FLOPs per step × steps/s ÷ (peak FLOP/s per device × devices)).

FLOPs are the matmul FLOPs of the traced step (``benchmarks/flops.py``: every dot_general of
the jaxpr, scan bodies times their length), not XLA's cost analysis of the compiled step,
which counts a while loop's body once and misses the cuBLAS calls on GPUs. They are counted
on the same step built without remat (the usual model-FLOPs convention: recomputation is
not counted). Peak FLOP/s: ``--peak_tflops`` (e.g. 989 for an H100 SXM in bfloat16 dense,
197 for a TPU v5e chip); 0 prints no MFU.

    # the figures of docs/performance.md (one GPU):
    python benchmarks/gpu_throughput.py --width=768 --heads=12 --depths=12,48,96 --dtype=bfloat16 \\
        --batch=256 --seeds=1 --peak_tflops=989
    # a smoke run on CPU:
    python benchmarks/gpu_throughput.py --width=32 --heads=2 --depths=1,2 --batch=16 --steps=3 --warmup=1
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

import flops
from ncjax import config, data, models, parallel, train
from ncjax.data import feed as feeds


def model_config(args, depth: int, scan: bool):
    c = config.base_config()
    m = c.model
    m.name, m.depth, m.width, m.num_classes = args.model, depth, args.width, 10
    m.dtype, m.scan, m.precision = args.dtype, scan, args.precision
    if args.model in ("t11", "t12"):
        m.num_heads, m.patch_size, m.pooling, m.input = args.heads, args.patch, "cls", "image"
    else:
        m.input = "vector"
    if args.remat:
        m.remat_policy = args.remat
    t = c.train
    t.loss, t.optimizer, t.learning_rate, t.l2, t.batch_size = "ce", args.optimizer, 1e-3, 5e-3, args.batch
    return m, t


def sample(args):
    shape = (args.batch, args.image, args.image, 1) if args.model in ("t11", "t12") else (args.batch, args.image ** 2)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 10, args.batch).astype(np.int32)
    return x, y


def build(args, depth: int, scan: bool, mesh):
    m, t = model_config(args, depth, scan)
    module = models.build(m)
    x, y = sample(args)
    feed = feeds.DeviceFeed(data.Dataset(x, y, None, None, 10, "image" if x.ndim == 4 else "vector", "noise"),
                            args.batch, mesh)
    hyper = train.Hyper.of(range(args.seeds), [t.l2] * args.seeds, [t.learning_rate] * args.seeds,
                           [depth] * args.seeds)
    program = train.Program(module, t, feed, mesh, 1000, x[:1], hyper)
    xs = np.broadcast_to(x, (args.seeds, *x.shape)).copy()
    ys = np.broadcast_to(y, (args.seeds, *y.shape)).copy()
    xs = jax.device_put(xs, program.batch_sharding(xs.ndim))
    ys = jax.device_put(ys, program.batch_sharding(ys.ndim))
    return program, xs, ys


def step_flops(args, depth: int, mesh) -> int:
    """Matmul FLOPs of one step (all seeds, all devices together), counted from its jaxpr without remat."""
    program, xs, ys = build(argparse.Namespace(**{**vars(args), "remat": "everything_saveable"}), depth, args.scan,
                            mesh)
    return flops.count_flops(program.step, program.abstract_state, xs, ys)


def measure(args, depth: int, mesh) -> dict:
    program, xs, ys = build(args, depth, args.scan, mesh)
    t0 = time.perf_counter()
    state = program.init()
    state, aux = program.step(state, xs, ys)  # compiles
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        state, aux = program.step(state, xs, ys)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        state, aux = program.step(state, xs, ys)
    jax.block_until_ready((state, aux))
    seconds = (time.perf_counter() - t0) / args.steps
    flops = step_flops(args, depth, mesh)
    row = dict(model=args.model, depth=depth, width=args.width, dtype=args.dtype, precision=args.precision,
               batch=args.batch,
               seeds=args.seeds, devices=mesh.size, backend=jax.default_backend(),
               device_kind=jax.devices()[0].device_kind, compile_s=round(compile_s, 2),
               step_ms=round(seconds * 1e3, 3), steps_per_s=round(1 / seconds, 3),
               examples_per_s=round(args.batch * args.seeds / seconds, 1), flops_per_step=flops,
               gflop_per_step=round(flops / 1e9, 3),
               achieved_tflops=round(flops / seconds / 1e12, 4))
    if args.peak_tflops > 0:
        row["mfu"] = round(flops / seconds / (args.peak_tflops * 1e12 * mesh.size), 4)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="t11", choices=("t11", "t12", "rn1", "rn2"))
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--patch", type=int, default=7)
    p.add_argument("--image", type=int, default=28, help="side of the square input image")
    p.add_argument("--depths", default="12,48,96")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--precision", default="highest", choices=("highest", "high", "default"),
                   help="model.precision of every matmul (default: highest, exact float32; default: e.g. TF32)")
    p.add_argument("--batch", type=int, default=256, help="global batch per seed")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--optimizer", default="adam", choices=train.OPTIMIZERS)
    p.add_argument("--remat", default="", help="a jax.checkpoint_policies name; empty: the backend's choice "
                   "(none on accelerators, ncjax.models.execution)")
    p.add_argument("--no-scan", dest="scan", action="store_false")
    p.add_argument("--mesh_data", type=int, default=-1)
    p.add_argument("--mesh_fsdp", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak_tflops", type=float, default=0.0, help="peak TFLOP/s of ONE device in --dtype")
    args = p.parse_args(argv)
    mesh = parallel.make_mesh(args.mesh_data, args.mesh_fsdp)
    rows = []
    for depth in (int(d) for d in args.depths.split(",")):
        row = measure(args, depth, mesh)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
