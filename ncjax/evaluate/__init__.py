"""Evaluation: what is measured at every checkpoint, by the trainer and by re-evaluation alike.

- ``passes``:     one compiled pass over a split (resident or streamed);
- ``evaluators``: the plug-ins (declared inputs, their own keys);
- ``group``:      a group's plug-ins in the config's order (``evaluate.evaluators``);
- ``reevaluate``: ``python -m ncjax.evaluate --workdir=W``: every checkpoint of a finished
  workdir measured again with the same code.
"""

from ncjax.evaluate.group import DEFAULT, EVALUATORS, GroupEvaluator, build, validate

__all__ = ["DEFAULT", "EVALUATORS", "GroupEvaluator", "build", "validate"]
