"""``python -m ncjax.sweep --workdir=W``: the tables and figures of a workdir, from its files alone."""
from ncjax import main

main.redraw_main()
