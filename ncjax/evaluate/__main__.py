"""``python -m ncjax.evaluate --workdir=W``: re-evaluate every checkpoint of a workdir, rewrite metrics.jsonl."""

import sys

from ncjax import cli, sweep

if __name__ == "__main__":
    sys.exit(cli.run_guarded(lambda: sweep.reevaluate(cli.workdir_flag(sys.argv[1:], "ncjax.evaluate"))))
