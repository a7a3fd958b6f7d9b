"""What every ncjax command shares: user errors as one line and exit status 2, never a traceback.

A user error is anything the user can fix by changing the command (a config
value, a workdir, a data set, a checkpoint to move aside). A diverged run exits
with status 3, a preempted one with 0 after saving.
"""

from __future__ import annotations

import sys
from typing import Callable

from absl import flags

from ncjax import checkpoints, data, experiment, parallel, records, sweep, train

USER_ERRORS = (
    experiment.ConfigError,
    data.DataError,
    records.WorkdirError,
    checkpoints.CheckpointError,
    parallel.MeshError,
    ValueError,
)


def fail(message: str, status: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def run_guarded(fn: Callable[[], object]) -> int:
    """Run ``fn``; map the project's exceptions to one line and an exit status."""
    try:
        fn()
    except sweep.Preempted as notice:
        print(notice, file=sys.stderr)
        return 0
    except train.Diverged as error:
        return fail(str(error), status=3)
    except USER_ERRORS as error:
        return fail(str(error).splitlines()[0] if str(error) else type(error).__name__)
    except KeyboardInterrupt:
        return fail("interrupted; rerun the same command to resume from the last checkpoint", status=130)
    return 0


def workdir_flag(argv: list[str] | None, program: str) -> str:
    """The --workdir of a command that takes nothing else."""
    argv = sys.argv[1:] if argv is None else argv
    values = [a.split("=", 1)[1] for a in argv if a.startswith("--workdir=")]
    others = [a for a in argv if not a.startswith("--workdir=")]
    if len(values) != 1 or others:
        raise records.WorkdirError(f"usage: python -m {program} --workdir=PATH (got: {' '.join(argv) or 'nothing'})")
    return values[0]


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with errors as one line and status 2 (absl's own exits 1 with usage)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        sys.exit(fail(_flag_message(error)))
    except Exception as error:  # config files raise anything while loading; keep it to one line
        sys.exit(fail(_flag_message(error)))


def _flag_message(error: Exception) -> str:
    message = " ".join(str(error).split())
    return message or type(error).__name__
