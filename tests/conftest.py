"""Shared test set-up: JAX's persistent compilation cache and the shared-data path."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
import pytest
from ase import Atoms

from agedi_jax.config import Config, preset, replace
from agedi_jax.data import Dataset
from agedi_jax.train import fit

REPO = Path(__file__).resolve().parents[1]
_cache = os.environ.get("AGEDI_JAX_TEST_CACHE", str(REPO / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", _cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

def _find_shared_data() -> Path | None:
    """The shared data directory as the package finds it ($AGEDI_JAX_DATA, else
    ../shared/data), if it holds the QCD files."""
    from agedi_jax.data import data_root

    root = data_root()
    if root is None:
        os.environ.setdefault("AGEDI_JAX_DATA", str(REPO.parent / "shared" / "data"))
        root = data_root()
    return root if root is not None and (root / "qcd_gap_relaxed").is_dir() else None


SHARED_DATA = _find_shared_data()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the real data (``../shared/data`` beside the checkout, or $AGEDI_JAX_DATA).

    Tests on the real data are skipped, with the reason printed, only where the data set
    itself is absent (it is never committed to the repository)."""
    if SHARED_DATA is None:
        pytest.skip("real data (../shared/data) not present on this machine; set AGEDI_JAX_DATA")
    return SHARED_DATA


# --------------------------------------------------------------------------------------
# A tiny trained model shared by the end-to-end tests
# --------------------------------------------------------------------------------------


def cluster(symbol: str, n: int, d: float, seed: int) -> Atoms:
    """A compact n-atom cluster with nearest-neighbour distance about d (Å)."""
    rng = np.random.default_rng(seed)
    base = np.array(
        [[0, 0, 0], [1, 0, 0], [0.5, 0.866, 0], [0.5, 0.289, 0.816], [0.5, 0.289, -0.816], [1.5, 0.866, 0]]
    )
    pos = base[:n] * d + rng.normal(0, 0.03, (n, 3))
    return Atoms(symbol * n, positions=pos - pos.mean(0))


@pytest.fixture(scope="session")
def toy_data() -> Dataset:
    """Nine small mono-metallic clusters (Cu, Pt, Ag; 4–6 atoms)."""
    structures = []
    for k, (sym, d) in enumerate([("Cu", 2.5), ("Pt", 2.75), ("Ag", 2.85)]):
        for n in (4, 5, 6):
            structures.append(cluster(sym, n, d, seed=10 * k + n))
    return Dataset(structures, name="toy")


TINY = {
    "data": {"val_fraction": 0.2, "max_atoms": 8},
    "model": {"network": "painn", "features": 8, "num_layers": 1, "num_basis": 4, "cutoff": 4.0},
    "process": {"sigma_max": 3.0},
    "train": {"steps": 6, "batch_size": 4, "warmup_steps": 2, "log_every": 2, "val_every": 3,
              "checkpoint_every": 3, "val_batches": 1},
    "sample": {"steps": 6, "batch_size": 8},
}


@pytest.fixture(scope="session")
def tiny_config() -> Config:
    """The quick-start preset shrunk to a tiny PaiNN that compiles and trains in seconds."""
    return replace(preset("quickstart"), **TINY)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, toy_data, tiny_config):
    """A finished 6-step training run of :func:`tiny_config` on :func:`toy_data`."""
    run = tmp_path_factory.mktemp("run") / "full"
    return fit(tiny_config, run, progress=False, dataset=toy_data)


def pytest_sessionfinish(session, exitstatus):
    """At the end of a (worker's) session, collect garbage once and drop JAX's garbage-
    collection callback: pytest-xdist stops its workers by interrupting their main thread,
    and an interrupt that lands inside that callback is printed as an "Exception ignored …
    KeyboardInterrupt" traceback although every test passed."""
    import gc

    gc.collect()
    gc.callbacks[:] = [cb for cb in gc.callbacks if getattr(cb, "__name__", "") != "_xla_gc_callback"]
