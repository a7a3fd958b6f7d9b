"""The exceptions every ncjax command can end with, and the exit status each one means.

A scheduler (SLURM requeue, a TPU-VM retry loop, a sweep driver) decides from the
exit status alone whether to retry, so the mapping is a contract:

- ``0``: done, or preempted after a checkpoint was saved (rerun to resume);
- ``1``: anything unexpected (a bug, a full disk, a file-system hiccup): the
  traceback is kept and a retry may succeed;
- ``2``: :class:`UserError`: the command itself must change (a config value, a
  data set, a workdir or checkpoint to move aside); one line says what;
- ``3``: :class:`Diverged`: the loss or the parameters became NaN/Inf; the last
  good checkpoint is kept.

A leaf module: it imports nothing of ncjax, so every other module may raise these,
and every command (``ncjax.main``, the standalone ``python -m ncjax.collapse``) maps them
to exit statuses with :func:`run_guarded`.
"""

from __future__ import annotations

import sys
from typing import Callable

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER = 2
EXIT_DIVERGED = 3


class UserError(ValueError):
    """Something the user can fix by changing the command (exit status 2, one line, no traceback)."""


class ConfigError(UserError):
    """A config value is invalid."""


class DataError(UserError):
    """A data set cannot be loaded as configured."""


class WorkdirError(UserError):
    """The workdir holds something this command must not touch, or lacks what it needs."""


class CheckpointError(UserError):
    """A checkpoint cannot be read (corrupted, or written by another program); it is left untouched."""


class MeshError(UserError):
    """The requested device mesh does not fit the devices."""


class DistributedError(UserError):
    """The multi-host flags are incomplete or contradictory."""


class Diverged(RuntimeError):
    """The loss or the parameters became NaN/Inf (exit status 3); the last good checkpoint is kept."""


class Preempted(Exception):
    """SIGTERM or the cluster's preemption notice arrived and a checkpoint was saved (exit status 0)."""


def fail(message: str, status: int = EXIT_USER) -> int:
    """Print ``error: message`` on stderr; return ``status`` for ``sys.exit``."""
    print(f"error: {message}", file=sys.stderr)
    return status


def run_guarded(fn: Callable[[], object]) -> int:
    """Run ``fn`` and map these exceptions to the exit statuses above; anything else propagates
    (Python prints its traceback and exits 1, so a launcher retries it)."""
    try:
        fn()
    except Preempted as notice:
        print(notice, file=sys.stderr)
        return EXIT_OK
    except Diverged as error:
        return fail(str(error), status=EXIT_DIVERGED)
    except UserError as error:
        return fail(str(error).splitlines()[0] if str(error) else type(error).__name__)
    except KeyboardInterrupt:
        return fail("interrupted; rerun the same command to resume from the last checkpoint", status=130)
    return EXIT_OK
