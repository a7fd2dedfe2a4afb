"""Shared test set-up: JAX's persistent compilation cache and the shared-data path."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

REPO = Path(__file__).resolve().parents[1]
_cache = os.environ.get("AGEDI_JAX_TEST_CACHE", str(REPO / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", _cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

def _find_shared_data() -> Path | None:
    candidates = [os.environ.get("AGEDI_JAX_DATA"), REPO.parent / "shared" / "data",
                  REPO.parent.parent / "shared" / "data", Path("/work/shared/data")]
    for c in candidates:
        if c and (Path(c) / "qcd_gap_relaxed").is_dir():
            return Path(c)
    return None


SHARED_DATA = _find_shared_data()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the real data (``../shared/data`` beside the checkout, or $AGEDI_JAX_DATA).

    Tests on the real data are skipped, with the reason printed, only where the data set
    itself is absent (it is never committed to the repository)."""
    if SHARED_DATA is None:
        pytest.skip("real data (../shared/data) not present on this machine; set AGEDI_JAX_DATA")
    return SHARED_DATA
