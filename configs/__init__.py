"""The experiment configs, installed with the package as ``ncjax.configs``.

``python -m ncjax.main --config=configs/vit_depth.py`` reads them from a checkout;
:func:`path` finds them in an installed package (Colab, a wheel), so that
``--config=vit_depth.py`` works from any folder.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def path(name: str) -> Path:
    """The file of config ``name`` (e.g. ``'vit_depth.py'``) inside the installed package."""
    return Path(str(importlib.resources.files(__name__) / name))
