"""``python -m ncjax.continual --workdir=W``: redraw a continual workdir's summary.csv and continual.png."""
from ncjax import main

main.redraw_main()
