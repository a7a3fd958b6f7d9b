"""The main job: a depth sweep from a config file.

    python -m ncjax.main --config=configs/vit_depth.py [--workdir=runs/vit_depth]
    python -m ncjax.main --config=configs/vit_depth.py:quick --config.depths='(2,4,8)'
    python -m ncjax.main --config=configs/continual.py:quick       # continual learning (ncjax.continual)

Rerunning the same command on the same workdir resumes from the latest
checkpoints. The default workdir is ``runs/<config.name>``.

Multi-host (one process per host, or per GPU): every process runs the same command;
``jax.distributed`` starts from ``--coordinator_address/--num_processes/--process_id``
or from the cluster's environment (see ``--distributed`` and ``launch/``).
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from ncjax import cli, parallel, sweep, ufm_sweep
from ncjax.continual import runner as continual_runner

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:preset]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default runs/<config.name>.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: coordinator host:port.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Multi-host start-up: auto = when flags or a multi-process cluster environment (SLURM step, "
    "mpirun, JAX_COORDINATOR_ADDRESS, TPU pod) ask for it; on = always call jax.distributed.initialize() "
    "(Cloud TPU VM pod workers); off = never.")


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        sys.exit(cli.fail(f"unexpected arguments {argv[1:]}; give options as --name=value"))
    if _CONFIG.value is None:
        sys.exit(cli.fail("--config is required, e.g. --config=configs/vit_depth.py"))
    logging.set_verbosity(logging.ERROR)  # TFDS/Orbax chatter would bury the one-line errors
    config = _CONFIG.value
    workdir = _WORKDIR.value or f"runs/{config.name}"

    def job():
        parallel.maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                              mode=_DISTRIBUTED.value)
        if config.get("kind") == "ufm":
            ufm_sweep.run(config, workdir)
        elif config.get("kind") == "continual":
            continual_runner.run(config, workdir)
        else:
            sweep.run(config, workdir)
        if jax.process_index() == 0:
            print(f"done: results in {workdir} (summary.csv and the plot)", file=sys.stderr)

    sys.exit(cli.run_guarded(job))


def main() -> None:
    app.run(_main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    main()
