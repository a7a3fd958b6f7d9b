"""The Colab notebook runs top to bottom with the quick preset, and is stored with its outputs."""

import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "depth_sweep.ipynb"


def _outputs(notebook):
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def _text(outputs) -> str:
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")


def test_depth_sweep_notebook_executes(tmp_path, monkeypatch):
    """From any folder, with ncjax installed: the configs come from the package, not a checkout."""
    monkeypatch.setenv("NCJAX_WORKDIR", str(tmp_path / "w"))
    monkeypatch.setenv("NCJAX_NO_TENSORBOARD", "1")  # no TensorBoard server from a test
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = _outputs(notebook)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3
    assert any("text/markdown" in o.get("data", {}) for o in outputs)
    assert (tmp_path / "w" / "summary.csv").exists()
    text = _text(outputs)
    assert "step/s" in text  # the progress bar
    assert re.search(r"\b(\d+) runs: \1 ok, 0 failed", text), text[-3000:]  # the end-of-run report: every run ok
    assert "%tensorboard --logdir" in text


def test_the_stored_notebook_holds_the_outputs_of_one_run_top_to_bottom():
    """A reader sees the figures, tables and the report without running it: every code cell was run once, in
    order, in one kernel, and none failed."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    outputs = _outputs(notebook)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3
    assert sum("text/markdown" in o.get("data", {}) for o in outputs) == 2  # summary.csv and slopes.csv
    assert re.search(r"\b(\d+) runs: \1 ok, 0 failed", _text(outputs))  # the stored run: every run ok
    assert "step/s" in _text(outputs)  # its progress bar
