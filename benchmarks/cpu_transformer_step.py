"""One L-T11 train step on the CPU: ncjax (before and after a change) against PyTorch, interleaved.

The step: L-T11 on 28×28×1 images in 7×7 patches (16 tokens + CLS), width 64, 4 heads,
one-layer ReLU MLP, depth 8, batch 128, one seed, CE + λ‖θ‖² (λ = 0.005), SGD with
momentum 0.9 (lr 0.005): the step of issue 10, item 9. Every variant runs in its own
worker process (so XLA's and PyTorch's thread pools never share a process, and two ncjax
revisions can be compared), compiled and warmed up first; then the parent runs
``--rounds`` rounds, each timing ``--steps`` steps of every worker in turn, so a load
that comes and goes on a shared machine hits all variants alike. It prints one line per
variant: the min and median wall time per step over the rounds, the median process CPU
time per step, and the median's ratio to PyTorch eager.

On a shared machine read the min column first: it is the least disturbed by other jobs.
PyTorch's OpenMP threads lose far more than XLA's pool when the cores are oversubscribed
(its median can be several times its min), so a PyTorch ratio measured under load says
little about a quiet machine; the ncjax-before/after ratios stay comparable.

Variants:
- ``ncjax@REV``: the ``ncjax`` package of git revision REV (``--before``, e.g. the commit
  before a change), extracted with ``git archive`` into a temporary folder;
- ``ncjax``: this checkout, the step as the engine builds it (blocks scanned, one seed vmapped;
  on a CPU the blocks recomputed in the backward pass and YNNPACK given the matmuls alone:
  ``ncjax.models.execution``);
- ``ncjax, activations stored``: the same with every block's activations stored for the
  backward pass (``model.remat_policy='everything_saveable'``) and XLA's default options, the
  engine's step before ``ncjax.models.execution``;
- ``torch eager`` / ``torch compile``: the same network written in PyTorch (``pip install torch``).

    python benchmarks/cpu_transformer_step.py --before=985e948            # pre-LN, affine LN (issue 10)
    python benchmarks/cpu_transformer_step.py --norm=post --free-ln      # the paper preset's L-T11
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import revisions

REPO = revisions.REPO
LR, L2, MOMENTUM, CLASSES = 0.005, 0.005, 0.9, 10


def batch(args):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 28, 28, 1)).astype(np.float32)
    return x, rng.integers(0, CLASSES, args.batch).astype(np.int32)


# ---------------------------------------------------------------------------------------- ncjax

def ncjax_step(args, stored: bool):
    """A run function ``n → None`` doing n steps of the engine's step (one seed, vmapped, state donated), or
    with ``stored`` every block's activations stored and XLA's default options."""
    import jax
    import jax.numpy as jnp
    import optax

    from ncjax import models, objective

    c = models.default_config()
    c.update(name="t11", depth=args.depth, width=args.width, num_heads=args.heads, patch_size=7, pooling="cls",
             input="image", num_classes=CLASSES, norm=args.norm, head_depth=0)
    if stored:
        c.remat_policy = "everything_saveable"
    if "norm_affine" in c:  # revisions before the parameter-free LayerNorm have affine LayerNorms only
        c.norm_affine = not args.free_ln
    elif args.free_ln:
        raise SystemExit("this ncjax revision has no parameter-free LayerNorm; drop --free-ln")
    module = models.build(c)
    x, y = batch(args)
    tx = optax.sgd(LR, momentum=MOMENTUM)

    def init(seed):
        params = module.init(jax.random.key(seed), x[:1])["params"]
        return params, tx.init(params)

    def step(state, x, y):
        params, opt_state = state

        def loss(p):
            logits, _ = module.apply({"params": p}, x, train=True)
            return objective.data_loss(logits, y) + L2 * objective.l2_penalty(p)

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    state = jax.jit(jax.vmap(init))(jnp.arange(1))
    try:  # the engine's options for this model and backend (revisions before ncjax.models.execution: none)
        from ncjax.models import execution
        options = None if stored else execution.step_compiler_options(module)
    except ImportError:
        options = None
    compiled = jax.jit(jax.vmap(step), donate_argnums=0, compiler_options=options).lower(
        state, x[None], y[None]).compile()
    xs, ys = jax.device_put(x[None]), jax.device_put(y[None])
    holder = [state]

    def run(n: int):
        for _ in range(n):
            holder[0] = compiled(holder[0], xs, ys)
        jax.block_until_ready(holder[0])

    return run


# ---------------------------------------------------------------------------------------- torch

def torch_step(args, compile_it: bool):
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)
    d, heads, patch = args.width, args.heads, 7

    def layer_norm():
        return nn.LayerNorm(d, eps=1e-6, elementwise_affine=not args.free_ln)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm_1, self.norm_2 = layer_norm(), layer_norm()
            self.qkv, self.out, self.linear = nn.Linear(d, 3 * d), nn.Linear(d, d), nn.Linear(d, d)

        def attention(self, h):
            b, t, _ = h.shape
            q, k, v = self.qkv(h).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))

        def forward(self, h):
            if args.norm == "pre":
                h = h + self.attention(self.norm_1(h))
                return h + F.relu(self.linear(self.norm_2(h)))
            h = self.norm_1(h + self.attention(h))
            return self.norm_2(h + F.relu(self.linear(h)))

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(patch * patch, d)
            self.positions = nn.Parameter(0.02 * torch.randn(16, d))
            self.cls = nn.Parameter(0.02 * torch.randn(d))
            self.blocks = nn.ModuleList([Block() for _ in range(args.depth)])
            self.final_norm = layer_norm() if args.norm == "pre" else nn.Identity()
            self.classifier = nn.Linear(d, CLASSES)

        def forward(self, x):
            b = x.shape[0]
            tokens = x.view(b, 4, patch, 4, patch).permute(0, 1, 3, 2, 4).reshape(b, 16, patch * patch)
            h = torch.cat([self.cls.expand(b, 1, d), self.embed(tokens) + self.positions], dim=1)
            for block in self.blocks:
                h = block(h)
            return self.classifier(self.final_norm(h[:, 0]))

    model = ViT()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    x, y = (torch.from_numpy(a) for a in batch(args))
    x = x.to(torch.float32).squeeze(-1)
    y = y.to(torch.int64)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y) + L2 * sum((p * p).sum() for p in model.parameters())
        loss.backward()
        opt.step()

    if compile_it:
        step = torch.compile(step)

    def run(n: int):
        for _ in range(n):
            step()

    return run


# ---------------------------------------------------------------------------------------- workers

def worker(args):
    """Build one variant, warm it up, then answer 'N' lines with the wall/CPU seconds of N steps."""
    kind = args.worker
    if kind.startswith("torch"):
        run = torch_step(args, compile_it=kind == "torch_compile")
    else:
        run = ncjax_step(args, stored=kind == "ncjax_stored")
    run(3)
    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line)
        wall, cpu = time.perf_counter(), time.process_time()
        run(n)
        print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}), flush=True)


def start(kind: str, args, pythonpath: Path) -> subprocess.Popen:
    argv = [sys.executable, __file__, f"--worker={kind}", f"--depth={args.depth}", f"--width={args.width}",
            f"--batch={args.batch}", f"--heads={args.heads}", f"--norm={args.norm}"] + (
        ["--free-ln"] if args.free_ln else [])
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=revisions.environment(pythonpath, JAX_PLATFORMS="cpu"))
    line = proc.stdout.readline().strip()
    if line != "ready":
        raise SystemExit(f"worker {kind} failed to start (see its error above)")
    return proc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--norm", default="pre", choices=("pre", "post"))
    p.add_argument("--free-ln", action="store_true", help="parameter-free LayerNorm (default: affine)")
    p.add_argument("--before", default="", help="a git revision whose ncjax is measured too")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=3, help="steps per worker per round")
    p.add_argument("--no-torch-compile", dest="torch_compile", action="store_false")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    variants = {}
    with contextlib.ExitStack() as stack:
        if args.before:
            before = stack.enter_context(revisions.checkout(args.before, "ncjax"))
            variants[f"ncjax@{args.before}"] = ("ncjax_before", before)
        variants["ncjax"] = ("ncjax", REPO)
        variants["ncjax, activations stored"] = ("ncjax_stored", REPO)
        variants["torch eager"] = ("torch_eager", REPO)
        if args.torch_compile:
            variants["torch compile"] = ("torch_compile", REPO)
        workers = {name: start(kind, args, path) for name, (kind, path) in variants.items()}
        times = {name: [] for name in workers}
        for _ in range(args.rounds):
            for name, proc in workers.items():
                proc.stdin.write(f"{args.steps}\n")
                proc.stdin.flush()
                times[name].append(json.loads(proc.stdout.readline()))
        for proc in workers.values():
            proc.stdin.close()
            proc.wait()

    def per_step_ms(name, key):
        return [1e3 * t[key] / args.steps for t in times[name]]

    reference = statistics.median(per_step_ms("torch eager", "wall"))
    print(f"L-T11 step, {args.norm}-LN, {'parameter-free' if args.free_ln else 'affine'} LayerNorm, depth "
          f"{args.depth}, width {args.width}, batch {args.batch}, {args.heads} heads, one seed, SGD; "
          f"{args.rounds} interleaved rounds of {args.steps} steps, {os.cpu_count()} CPUs")
    for name in workers:
        wall = per_step_ms(name, "wall")
        median = statistics.median(wall)
        print(f"{name:32s} step ms: min {min(wall):7.1f}  median {median:7.1f}  "
              f"cpu median {statistics.median(per_step_ms(name, 'cpu')):7.1f}  median / torch eager "
              f"{median / reference:5.2f}")
    best = min(statistics.median(per_step_ms(name, "wall")) for name in ("torch eager", "torch compile")
               if name in times)
    print(f"ncjax / best PyTorch (medians): {statistics.median(per_step_ms('ncjax', 'wall')) / best:.2f}  "
          f"(goal: ≤ 1.0; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
