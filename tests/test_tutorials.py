"""Execute every notebook in tutorials/ at a small size; a cell that raises fails the test."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO_ROOT / "tutorials").glob("*.ipynb"))

# Small enough for a 2-core CI runner; the notebooks read these in their first code cell.
SMALL_SETTINGS = {"MVAE_SC_TUTORIAL_CELLS": "800", "MVAE_SC_TUTORIAL_EPOCHS": "5"}
CELL_TIMEOUT_S = 600


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_tutorial_executes(notebook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import nbformat
    from nbclient import NotebookClient

    # The kernel inherits this process's environment, and runs in tmp_path so that
    # anything a notebook writes stays out of the repository.
    for name, value in SMALL_SETTINGS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError (with the cell and traceback) on error

    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, f"{notebook.name}: cells raised {[e['ename'] for e in errors]}"
