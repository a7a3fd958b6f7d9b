"""The one front door: every ncjax command, dispatched on the kind of run from one table.

    ncjax --config=configs/vit_depth.py [--workdir=runs/vit_depth]        # python -m ncjax.main ...
    ncjax --config vit_depth.py:quick --config.depths='(2,4,8)'           # a packaged config, a preset
    ncjax-evaluate --workdir runs/vit_depth                               # python -m ncjax.evaluate ...
    ncjax-redraw --workdir runs/vit_depth                                 # python -m ncjax.sweep ...

``--help`` lists the installed configs and their presets. Rerunning the same command on
the same workdir resumes from the latest checkpoints; the default workdir is
``runs/<config.name>``. One process holds a workdir at a time (``ncjax.lock``).

Multi-host (one process per host, or per GPU): every process runs the same command;
``jax.distributed`` starts from ``--coordinator_address/--num_processes/--process_id``
or from the cluster's environment (see ``--distributed`` and ``launch/``).
"""

from __future__ import annotations

import dataclasses
import importlib
import signal
import sys
from typing import Callable

from absl import app, flags, logging

from ncjax import cli, errors


@dataclasses.dataclass(frozen=True)
class Kind:
    """What each command does for one kind of run: ``module:function`` names, imported on use (a redraw
    loads no training code). None: the command does not apply to this kind."""

    run: str
    reevaluate: str | None
    redraw: str | None


KINDS = {
    "depth_sweep": Kind(run="ncjax.sweep.runner:run", reevaluate="ncjax.evaluate.reevaluate:reevaluate",
                        redraw="ncjax.summary:write"),
    "continual": Kind(run="ncjax.continual.runner:run", reevaluate=None, redraw="ncjax.continual.report:write"),
    "ufm": Kind(run="ncjax.ufm_sweep:run", reevaluate=None, redraw=None),
}


def _function(name: str) -> Callable:
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def kind_of(config_or_stored) -> tuple[str, Kind]:
    name = config_or_stored.get("kind") or "depth_sweep"
    if name not in KINDS:
        raise errors.ConfigError(f"kind={name!r} is not a kind of run ncjax knows; known: {', '.join(KINDS)}")
    return name, KINDS[name]


def _report(workdir) -> None:
    """The end-of-run summary of a depth sweep (runs ok / failed, slopes, files)."""
    from ncjax import records, summary

    if records.is_writer() and records.run_folders(workdir):
        print(summary.report(workdir), file=sys.stderr)


# ---------------------------------------------------------------------- commands


def _run(argv: list[str]) -> None:
    if len(argv) > 1:
        sys.exit(errors.fail(f"unexpected arguments {argv[1:]}; give options as --name=value"))
    if flags.FLAGS.config is None:
        sys.exit(errors.fail("--config is required, e.g. --config=configs/vit_depth.py (--help lists them)"))
    logging.set_verbosity(logging.ERROR)  # TFDS/Orbax chatter would bury the one-line errors
    # Until the loop's own handler takes over (it saves at the next block), a SIGTERM ends the command with
    # a line saying so (nothing of a step in progress is lost: a rerun resumes from the last checkpoint).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(errors.fail(
        "terminated (SIGTERM) outside a training block; rerun the same command to resume", status=143)))
    config = flags.FLAGS.config
    workdir = flags.FLAGS.workdir or f"runs/{config.name}"

    def job():
        import jax

        from ncjax import lock, parallel

        name, kind = kind_of(config)
        parallel.maybe_initialize_distributed(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes,
                                              flags.FLAGS.process_id, mode=flags.FLAGS.distributed)
        with lock.WorkdirLock(workdir, purpose="training"):
            _function(kind.run)(config, workdir)
        if name == "depth_sweep":
            _report(workdir)
        if jax.process_index() == 0:  # one report per run, not one per host
            print(f"done: results in {workdir}", file=sys.stderr)

    sys.exit(cli.run_guarded(job))


def _workdir_command(action: str) -> Callable[[list[str]], None]:
    """A command on an existing workdir: ``reevaluate`` or ``redraw`` by the kind its config.json names."""
    def command(argv: list[str]) -> None:
        if len(argv) > 1:
            sys.exit(errors.fail(f"unexpected arguments {argv[1:]}; the command takes --workdir PATH only"))
        logging.set_verbosity(logging.ERROR)
        workdir = flags.FLAGS.workdir

        def job():
            import contextlib

            from ncjax import lock, records

            # Re-evaluation rewrites metrics: it takes the workdir first, so a running trainer is named as such.
            held = lock.WorkdirLock(workdir, purpose="re-evaluation") if action == "reevaluate" \
                else contextlib.nullcontext()
            with held:
                name, kind = kind_of(records.read_config(workdir))
                function = getattr(kind, action)
                if function is None:
                    raise errors.WorkdirError(
                        f"{workdir} holds a {name} run, whose results its runner writes once; nothing to {action} "
                        "(depth sweeps and continual runs can be redrawn, depth sweeps re-evaluated)")
                _function(function)(workdir)
            if name == "depth_sweep":
                _report(workdir)

        sys.exit(cli.run_guarded(job))

    return command


# ---------------------------------------------------------------------- entry points


def _workdir_flag(required: bool) -> None:
    flags.DEFINE_string("workdir", None, "The run folder (local or gs://)." + (
        "" if required else " Default: runs/<config.name>."))
    if required:
        flags.mark_flag_as_required("workdir")


def main() -> None:
    """``ncjax`` / ``python -m ncjax.main``: train (or resume) the run a config describes."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, cli.config_help(), lock_config=True)
    _workdir_flag(required=False)
    flags.DEFINE_string("coordinator_address", None, "Multi-host: coordinator host:port.")
    flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
    flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
    flags.DEFINE_enum(
        "distributed", "auto", ["auto", "on", "off"],
        "Multi-host start-up: auto = when flags or a multi-process cluster environment (SLURM step, "
        "mpirun, JAX_COORDINATOR_ADDRESS, TPU pod) ask for it; on = always call jax.distributed.initialize() "
        "(Cloud TPU VM pod workers); off = never.")
    app.run(_run, flags_parser=cli.parse_flags)


def evaluate_main() -> None:
    """``ncjax-evaluate`` / ``python -m ncjax.evaluate``: re-evaluate every checkpoint of a workdir."""
    _workdir_flag(required=True)
    app.run(_workdir_command("reevaluate"), flags_parser=cli.parse_flags)


def redraw_main() -> None:
    """``ncjax-redraw`` / ``python -m ncjax.sweep``: a workdir's tables and figures from its files alone."""
    _workdir_flag(required=True)
    app.run(_workdir_command("redraw"), flags_parser=cli.parse_flags)


if __name__ == "__main__":
    main()
