"""notebooks/analysis.ipynb executes top to bottom on a results directory."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from _analysis_fixtures import sweep, write_results
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "analysis.ipynb"


def test_notebook_executes_on_a_results_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_results(tmp_path / "demo", sweep())
    monkeypatch.setenv("KD_RAY_RESULTS", str(root))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "demo: 16 trials, 16 ok" in text
    assert "fig_e7_vit: not shown" in text
    figures = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(figures) >= 9
