"""``python -m ncjax.continual --workdir=W``: redraw a continual workdir's summary.csv and continual.png."""

import sys

from ncjax import cli
from ncjax.continual import report


def main(argv=None) -> int:
    return cli.run_guarded(lambda: report.write(cli.workdir_flag(argv, "ncjax.continual")))


if __name__ == "__main__":
    sys.exit(main())
