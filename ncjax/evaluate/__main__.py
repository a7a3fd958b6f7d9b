"""``python -m ncjax.evaluate --workdir=W``: re-evaluate every checkpoint of a workdir, rewrite metrics.jsonl."""

import sys

from ncjax import cli, records, sweep
from ncjax.errors import WorkdirError


def reevaluate(workdir: str) -> None:
    kind = records.read_config(workdir).get("kind")
    if kind in ("continual", "ufm"):
        raise WorkdirError(f"{workdir} holds a {kind} run, whose metrics its runner writes once; "
                           "`python -m ncjax.evaluate` re-evaluates depth sweeps")
    sweep.reevaluate(workdir)


if __name__ == "__main__":
    sys.exit(cli.run_guarded(lambda: reevaluate(cli.workdir_flag(sys.argv[1:], "ncjax.evaluate"))))
