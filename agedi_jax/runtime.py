"""Process-level settings that make the package faster on the CPU, applied once.

glibc's allocator returns large blocks to the kernel as soon as they are freed (``free``
of a block above the *mmap threshold* unmaps it; the top of the heap is trimmed above the
*trim threshold*). XLA on the CPU allocates and frees its pair-sized temporaries (several
MB each) at every call of a jitted function, so with glibc's defaults every call faults
fresh pages in: on the 64 × Pt13 benchmark about 15 % of a sampling step. Raising both
thresholds to 1 GiB keeps that memory in the process and reuses it.

:func:`tune_malloc` does this with ``mallopt`` at run time; :func:`agedi_jax.model.build_model`
calls it when the first model is built, so every user of the package gets it. Set
``AGEDI_JAX_TUNE_MALLOC=0`` to keep glibc's defaults (the cost: a process's resident
memory no longer shrinks after a peak, e.g. after a large sampling batch). Other C
libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import os

__all__ = ["TUNE_MALLOC_ENV", "MALLOC_THRESHOLD", "tune_malloc", "malloc_settings"]

TUNE_MALLOC_ENV = "AGEDI_JAX_TUNE_MALLOC"
"""Environment variable: ``0`` (or ``false``, ``no``, ``off``) keeps glibc's defaults."""

MALLOC_THRESHOLD = 1 << 30
"""The mmap and trim thresholds set, bytes (1 GiB)."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_STATE: dict = {}


def _enabled() -> bool:
    return os.environ.get(TUNE_MALLOC_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def tune_malloc(force: bool = False) -> dict:
    """Raise glibc's mmap and trim thresholds to :data:`MALLOC_THRESHOLD` (once per
    process; ``force`` applies it again). Returns :func:`malloc_settings`.

    A no-op when ``AGEDI_JAX_TUNE_MALLOC=0``, when the variables ``MALLOC_MMAP_THRESHOLD_``
    / ``MALLOC_TRIM_THRESHOLD_`` are set (the user's choice wins), or without glibc."""
    if _STATE and not force:
        return malloc_settings()
    _STATE.clear()
    if not _enabled():
        _STATE["applied"], _STATE["reason"] = False, f"{TUNE_MALLOC_ENV}=0"
        return malloc_settings()
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        _STATE["applied"], _STATE["reason"] = False, "MALLOC_*_THRESHOLD_ set in the environment"
        return malloc_settings()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_THRESHOLD)
        )
        _STATE["applied"], _STATE["reason"] = ok, "mallopt" if ok else "mallopt refused"
    except (OSError, AttributeError):
        _STATE["applied"], _STATE["reason"] = False, "no glibc"
    return malloc_settings()


def malloc_settings() -> dict:
    """``{"applied": bool, "reason": str}`` of :func:`tune_malloc` (empty before it ran)."""
    return dict(_STATE)
