"""The training loop against the bare compiled step: how much the trainer adds to the arithmetic.

For each case, steps/s through the real trainer (``ncjax.sweep.runner`` on a ``ncjax.groups.GroupSetup``: data on the device,
blocks of steps, the logging and checkpoint cadence of the default configs, evaluation of
every checkpoint, Orbax saves) beside the compiled step alone on a batch already on the
device (``Program.step``), and their ratio. Compilation is excluded from both: the trainer's
programs are compiled before the clock starts. Each line gives a second ratio, of the trainer
run again with the evaluator not called (every checkpoint's line holds the run's identity
alone): evaluation is measurement the config asks for (every 500 steps in the default
configs, at about 10 log-spaced steps and at the last 3 log steps), the rest is the loop's own
cost. A third ratio is the trainer's compiled blocks alone, run back to back with no host work
(the loop's floor: how the scanned block compares with the bare step). Saves and evaluations
run in a worker thread beside the next blocks (``ncjax.loop.Background``); the last
evaluation, at the end, is waited for. The whole depth panel, end to end and
extrapolated to 5,000 epochs, is ``benchmarks/panel.py``.

    python benchmarks/train_loop.py                      # every case
    python benchmarks/train_loop.py --cases=latency

Goal (issue 10): ratio ≥ 0.9 in every case.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ncjax import cli, data, groups, loop, parallel
from ncjax.sweep import runner

REPO = Path(__file__).resolve().parents[1]

# name: (config file, preset, overrides, steps through the trainer)
CASES = {
    "rn1_L34": ("resnet_depth.py", "rn1", dict(depth=34, seeds=5, width=64, batch=128), 1000),
    "t11_L8": ("vit_depth.py", None, dict(depth=8, seeds=5, width=64, batch=128), 200),
    "latency": ("resnet_depth.py", "rn1", dict(depth=2, seeds=1, width=32, batch=32), 5000),
}


def load_config(name: str, preset: str | None):
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset) if preset else module.get_config()


def case_config(name: str):
    file, preset, size, steps = CASES[name]
    c = load_config(file, preset)
    c.depths, c.seeds = (size["depth"],), tuple(range(size["seeds"]))
    c.model.width, c.train.batch_size = size["width"], size["batch"]
    c.data.n_per_class = None  # all embedded training images
    c.train.steps, c.progress = steps, False
    c.pack = False  # one depth: nothing to pack
    return c


def bare_steps_per_s(group_run: groups.GroupSetup, dataset: data.Dataset, repeats: int, steps: int,
                     min_seconds: float = 1.0) -> float:
    """The compiled step alone, on one batch already on the device (median over repeats), ``steps`` at a
    time until ``min_seconds`` have passed: 200 steps of the latency case are 40 ms, too short a
    denominator for this machine's noise."""
    program = group_run.program
    idx = np.arange(len(group_run.runs) * program.feed.batch_size).reshape(len(group_run.runs), -1)
    x = jax.device_put(dataset.train_x[idx], program.batch_sharding(dataset.train_x.ndim + 1))
    y = jax.device_put(dataset.train_y[idx], program.batch_sharding(2))
    state, _ = program.step(program.init(), x, y)  # compiles
    jax.block_until_ready(state)
    rates = []
    for _ in range(repeats):
        start, done = time.perf_counter(), 0
        while done == 0 or time.perf_counter() - start < min_seconds:
            for _ in range(steps):
                state, _ = program.step(state, x, y)
            jax.block_until_ready(state)
            done += steps
        rates.append(done / (time.perf_counter() - start))
    return statistics.median(rates)


def trainer_steps_per_s(group_run: groups.GroupSetup, evaluation: bool = True) -> float:
    """Steps/s of the sweep's trainer on a fresh workdir, its programs compiled beforehand. Without
    ``evaluation`` every checkpoint's metrics line holds the run's identity alone (the evaluator is not
    called; the lines, dashboards and saves are written as usual): the loop's own cost."""
    import tensorboardX  # noqa: F401  once per process (seconds where torch is installed): not per step

    program = group_run.program
    c = group_run.config
    first = loop.Cadence(group_run.total_steps, c.log_every_steps, c.checkpoint.every_steps,
                         c.steps_per_call).next_boundary(0)
    state, carry, logs = program.run_block(program.init(), program.carry(0), 0, first)  # compiles the block
    jax.block_until_ready(logs)
    group_run.evaluator(state.params, [{} for _ in group_run.runs])  # compiles the evaluation
    if not evaluation:
        group_run.measure = lambda step, params, diverged=None: [
            group_run._identity(i, step) for i in range(len(group_run.runs))]
    start = time.perf_counter()
    runner._train_group(group_run, loop.StopFlag())
    group_run.checkpoints.wait()
    return group_run.total_steps / (time.perf_counter() - start)


def blocks_steps_per_s(group_run: groups.GroupSetup) -> float:
    """The trainer's compiled blocks alone, at the cadence's block lengths, with no host work between them
    (no logs, saves or evaluations): the floor of the loop, and how the scanned block compares with the
    bare step."""
    program, c = group_run.program, group_run.config
    cadence = loop.Cadence(group_run.total_steps, c.log_every_steps, c.checkpoint.every_steps, c.steps_per_call)
    state, carry = program.init(), program.carry(0)
    jax.block_until_ready(state)
    start, step = time.perf_counter(), 0
    while step < group_run.total_steps:
        length = cadence.next_boundary(step) - step
        state, carry, _ = program.run_block(state, carry, step, length)
        step += length
    jax.block_until_ready(state)
    return group_run.total_steps / (time.perf_counter() - start)


def gathers_seconds(group_run: groups.GroupSetup) -> float | None:
    """Seconds of the trainer's batch gathers alone over its steps (the device feed's ``batch``: each
    step's rows gathered from the resident training set, the epoch's permutation when it changes), in one
    compiled scan; None for a host feed."""
    program, feed = group_run.program, group_run.program.feed
    if not feed.on_device:
        return None
    seeds = program.hyper.seed

    @jax.jit
    def gathers(carry, arrays):
        def body(carry, step):
            (x, y), carry = feed.batch(arrays, carry, (), seeds, step, step)
            return carry, jnp.sum(x) + jnp.sum(y)
        return jax.lax.scan(body, carry, jnp.arange(group_run.total_steps))[1]

    jax.block_until_ready(gathers(program.carry(0), feed.arrays))  # compiles
    start = time.perf_counter()
    jax.block_until_ready(gathers(program.carry(0), feed.arrays))
    return time.perf_counter() - start


def run_case(name: str, repeats: int, bare_steps: int) -> None:
    """The trainer with evaluation, without it, and the bare step, measured alternately ``repeats`` times:
    the ratios (medians of per-repeat ratios) are robust to a machine whose load drifts (a fresh workdir
    and GroupSetup each time; the compilation cache makes that cheap)."""
    config = case_config(name)
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    sweep = groups.SweepGroups(config, mesh)  # as the runner: the group's config carries its depth
    group = sweep.groups[0]
    config, dataset = sweep.prepare(group)
    loops, loops_without_evaluation, bares, blocks, gathered = [], [], [], [], []
    for _ in range(repeats):
        for evaluation, rates in ((True, loops), (False, loops_without_evaluation)):
            with tempfile.TemporaryDirectory() as workdir:
                group_run = sweep.setup(group, Path(workdir))
                try:
                    rates.append(trainer_steps_per_s(group_run, evaluation))
                    if evaluation:
                        bares.append(bare_steps_per_s(group_run, dataset, 1, bare_steps))
                    else:
                        blocks.append(blocks_steps_per_s(group_run))
                        gathered.append(gathers_seconds(group_run))
                finally:
                    group_run.close()
    sweep.close()
    median = lambda values: statistics.median(list(values))  # noqa: E731
    print(f"{name:8s} depth {config.model.depth:3d} seeds {len(config.seeds)} width {config.model.width} "
          f"batch {config.train.batch_size}: trainer {median(loops):8.1f} steps/s  "
          f"bare step {median(bares):8.1f} steps/s  ratio {median(np.divide(loops, bares)):.3f}  "
          f"(without evaluation: {median(loops_without_evaluation):.1f} steps/s, ratio "
          f"{median(np.divide(loops_without_evaluation, bares)):.3f}; the blocks alone: {median(blocks):.1f} "
          f"steps/s, ratio {median(np.divide(blocks, bares)):.3f}; load average {os.getloadavg()[0]:.1f})",
          flush=True)
    if gathered[0] is not None:
        bare_time = config.train.steps / median(bares)
        print(f"{'':8s} its {config.train.steps} steps' batch gathers alone (one scan): {median(gathered):.3f} s, "
              f"{median(gathered) / bare_time:.3f} of the bare steps' time", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bare_steps", type=int, default=200)
    args = parser.parse_args(argv)
    cli.enable_compilation_cache()
    print(f"# {jax.default_backend()} × {jax.device_count()}, jax {jax.__version__}", flush=True)
    for name in filter(None, args.cases.split(",")):
        run_case(name, args.repeats, args.bare_steps)


if __name__ == "__main__":
    sys.exit(main())
