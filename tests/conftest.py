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

SHARED_DATA = Path(os.environ.get("AGEDI_JAX_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the real data (``../shared/data``); tests that need it fail loudly if absent."""
    if not SHARED_DATA.exists():
        raise FileNotFoundError(
            f"real data not found at {SHARED_DATA}; set AGEDI_JAX_DATA to its location"
        )
    return SHARED_DATA
