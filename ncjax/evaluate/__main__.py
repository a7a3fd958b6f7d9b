"""``python -m ncjax.evaluate --workdir=W``: re-evaluate every checkpoint of a workdir."""
from ncjax import main

main.evaluate_main()
