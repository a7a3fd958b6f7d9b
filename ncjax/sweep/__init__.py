"""A depth sweep: every group of runs trained through the block loop, every checkpoint evaluated.

``ncjax.sweep.runner.run(config, workdir)`` is what ``python -m ncjax.main`` does for a
depth sweep; ``python -m ncjax.sweep --workdir=W`` redraws a workdir's tables and figures
from its files alone (it loads no training code).
"""
