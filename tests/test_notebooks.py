"""The notebooks run end to end (at toy size)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def _check_quickstart(outputs: str, out: Path) -> None:
    assert "builtin:emt_clusters" in outputs and "wrote" in outputs
    assert (out / "notebook_samples.extxyz").exists()


def _check_forcefield(outputs: str, out: Path) -> None:
    assert "rms force component" in outputs and "energy MAE" in outputs and "force MAE" in outputs
    for name in ("unguided", "EMT, λ=1", "learned, λ=1"):
        assert f"{name}: EMT" in outputs
    assert (out / "guided_samples.extxyz").exists()


CHECKS = {"quickstart.ipynb": _check_quickstart, "forcefield.ipynb": _check_forcefield}


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_notebook_runs(name, tmp_path, monkeypatch):
    monkeypatch.setenv("AGEDI_JAX_NOTEBOOK_TOY", "1")
    monkeypatch.setenv("AGEDI_JAX_NOTEBOOK_OUT", str(tmp_path / "run"))
    monkeypatch.setenv("AGEDI_JAX_CACHE", str(REPO / ".jax_cache"))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    CHECKS[name](outputs, tmp_path / "run")
