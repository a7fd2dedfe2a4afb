"""The notebooks run end to end (at toy size)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("AGEDI_JAX_NOTEBOOK_TOY", "1")
    monkeypatch.setenv("AGEDI_JAX_NOTEBOOK_OUT", str(tmp_path / "run"))
    monkeypatch.setenv("AGEDI_JAX_CACHE", str(Path(__file__).resolve().parents[1] / ".jax_cache"))
    nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "builtin:emt_clusters" in outputs and "wrote" in outputs
    assert (tmp_path / "run" / "notebook_samples.extxyz").exists()
