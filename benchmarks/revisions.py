"""Another git revision's ``ncjax`` beside this checkout's: for benchmarks that measure a change's speed-up
in one run on the same (noisy) machine, each revision in processes of its own."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def checkout(revision: str, *paths: str) -> Iterator[Path]:
    """``revision``'s tree (or only ``paths`` of it), extracted with ``git archive`` into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="ncjax_before_") as folder:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, *paths], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        yield Path(folder)


def environment(tree: Path, **overrides: str) -> dict[str, str]:
    """This process's environment with ``tree`` first on PYTHONPATH (so its ``ncjax`` is imported) and the
    caller's PYTHONPATH kept after it (e.g. torch installed with ``pip install --target``)."""
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **overrides)
