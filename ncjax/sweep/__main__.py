"""``python -m ncjax.sweep --workdir=W``: the summary table and figures of a workdir, from its metrics alone."""

import sys

from ncjax import cli, summary

if __name__ == "__main__":
    sys.exit(cli.run_guarded(lambda: summary.write(cli.workdir_flag(sys.argv[1:], "ncjax.sweep"))))
