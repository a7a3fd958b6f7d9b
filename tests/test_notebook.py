"""The Colab notebook runs top to bottom with the quick preset."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


def test_depth_sweep_notebook_executes(tmp_path, monkeypatch):
    """From any folder, with ncjax installed: the configs come from the package, not a checkout."""
    monkeypatch.setenv("NCJAX_WORKDIR", str(tmp_path / "w"))
    notebook = nbformat.read(REPO / "notebooks" / "depth_sweep.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3
    assert any("text/markdown" in o.get("data", {}) for o in outputs)
    assert (tmp_path / "w" / "summary.csv").exists()
