"""``python -m ncjax.sweep --workdir=W``: the summary tables and figures of a workdir, from its files alone."""

import sys

from ncjax import cli, records, summary
from ncjax.continual import report


def redraw(workdir: str) -> None:
    """The tables and figures of whatever kind of workdir ``workdir`` holds."""
    if records.read_config(workdir).get("kind") == "continual":
        report.write(workdir)
    else:
        summary.write(workdir)


if __name__ == "__main__":
    sys.exit(cli.run_guarded(lambda: redraw(cli.workdir_flag(sys.argv[1:], "ncjax.sweep"))))
