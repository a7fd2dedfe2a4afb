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

XLA on the CPU keeps the machine code of every compiled executable mapped in many small
memory sections (about 1,000–1,500 mappings for a training step of the package's networks;
the count grows with the number of fused kernels). A long-lived process that compiles or
loads from the compile cache one executable per batch shape — a long training run meeting a
new padding bucket or dense layout now and then, a notebook session — eventually reaches
Linux's per-process limit ``vm.max_map_count`` (65,530 by default) and dies inside LLVM
with ``LLVM ERROR: Unable to allocate section memory``, however much memory is free.
:func:`release_compiled` drops JAX's compiled executables before that happens (their code is
unmapped; the next call of each jitted function compiles again, or loads it from the
persistent compilation cache); the training loop (:func:`agedi_jax.train.fit`) calls it
every ``train.log_every`` steps, and so can a notebook.

XLA on the CPU (jaxlib 0.10) hands some fusions to YNNPACK by default, among them
multiply-and-reduce patterns over a short axis, as in the backward pass of PaiNN's vector
messages (a sum over the 3 Cartesian components of pair-sized arrays). For the package's
networks that default is slow: on the 64 × Pt13 benchmark (2026-12-08, Intel Xeon, 1 thread)
the training step takes 523 ms with it and 65 ms without (nine such fusions take 25–33 ms
each), with 2 threads 230–344 ms against 42–46 ms; a C2DB training step is 1.26× faster
without. :func:`tune_xla` switches the YNNPACK fusions off (an empty
``--xla_cpu_experimental_ynn_fusion_type=``: XLA's own code for every op). Not ``=dot``, which
the benchmark scripts used before: YNNPACK's dot fusions are as fast here but gave a wrong
(infinite) parameter gradient for a small force-field model (16 features, one layer, forces
by differentiation), where XLA's own code and the other settings agree
(``tests/test_forcefield.py::test_joint_training_reduces_energy_and_force_errors`` turns NaN
with ``=dot``). ``import agedi_jax`` calls :func:`tune_xla`, since XLA reads the flags once,
when JAX starts its first backend (an ``XLA_FLAGS`` that already names the option wins;
``AGEDI_JAX_TUNE_XLA=0`` leaves the flags alone). It is added only when the installed jaxlib
knows the option (older releases have neither the option nor YNNPACK fusions, and XLA stops
the process on an unknown flag), and has no effect when a JAX computation ran before the
package was imported.
"""

from __future__ import annotations

import gc
import os
import sys

__all__ = [
    "MALLOC_THRESHOLD",
    "MAP_FRACTION",
    "TUNE_MALLOC_ENV",
    "TUNE_XLA_ENV",
    "XLA_CPU_FLAG",
    "malloc_settings",
    "memory_maps",
    "release_compiled",
    "tune_malloc",
    "tune_xla",
    "xla_settings",
]

TUNE_MALLOC_ENV = "AGEDI_JAX_TUNE_MALLOC"
"""Environment variable: ``0`` (or ``false``, ``no``, ``off``) keeps glibc's defaults."""

MALLOC_THRESHOLD = 1 << 30
"""The mmap and trim thresholds set, bytes (1 GiB)."""

TUNE_XLA_ENV = "AGEDI_JAX_TUNE_XLA"
"""Environment variable: ``0`` (or ``false``, ``no``, ``off``) leaves ``XLA_FLAGS`` alone."""

XLA_CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type="
"""The XLA:CPU option :func:`tune_xla` sets: no YNNPACK fusion (the list of fusion types empty)."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_STATE: dict = {}
_XLA_STATE: dict = {}


def _enabled(env: str = TUNE_MALLOC_ENV) -> bool:
    return os.environ.get(env, "1").strip().lower() not in ("0", "false", "no", "off")


def _jaxlib_knows(option: str) -> bool:
    """Whether the installed jaxlib's native libraries contain the flag name ``option`` (XLA
    registers its flags by name; a release without the option would abort on it). Reads
    the shared libraries through ``mmap`` without importing jaxlib (~0.1 s)."""
    import importlib.util
    import mmap

    try:
        spec = importlib.util.find_spec("jaxlib")
    except (ImportError, ValueError):
        return False
    roots = list(spec.submodule_search_locations or []) if spec else []
    needle = option.encode()
    for root in roots:
        try:
            names = sorted(os.listdir(root))
        except OSError:
            continue
        for name in names:
            path = os.path.join(root, name)
            if ".so" not in name and not name.endswith((".dylib", ".pyd")):
                continue
            try:
                if os.path.getsize(path) < (1 << 20):
                    continue
                with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                    if m.find(needle) >= 0:
                        return True
            except (OSError, ValueError):
                continue
    return False


def _backends_started() -> bool:
    xb = sys.modules.get("jax._src.xla_bridge")
    started = getattr(xb, "backends_are_initialized", None)
    return bool(started()) if callable(started) else False


def tune_xla(force: bool = False) -> dict:
    """Add :data:`XLA_CPU_FLAG` to ``XLA_FLAGS`` (once per process; ``force`` decides
    again). Returns :func:`xla_settings`. Left alone when ``AGEDI_JAX_TUNE_XLA=0``, when
    ``XLA_FLAGS`` already sets ``xla_cpu_experimental_ynn_fusion_type``, when the installed
    jaxlib does not know the option, or when JAX's backends have already started (the
    flags were read then; the reason says so)."""
    if _XLA_STATE and not force:
        return xla_settings()
    _XLA_STATE.clear()
    name = XLA_CPU_FLAG.split("=")[0].lstrip("-")
    flags = os.environ.get("XLA_FLAGS", "")
    if not _enabled(TUNE_XLA_ENV):
        applied, reason = False, f"{TUNE_XLA_ENV}=0"
    elif name in flags:
        applied, reason = False, f"XLA_FLAGS already sets {name}"
    elif _backends_started():
        applied, reason = False, "JAX's backends had started before agedi_jax was imported"
    elif not _jaxlib_knows(name):
        applied, reason = False, f"this jaxlib has no {name} option"
    else:
        os.environ["XLA_FLAGS"] = f"{flags} {XLA_CPU_FLAG}".strip()
        applied, reason = True, "XLA_FLAGS"
    _XLA_STATE.update(applied=applied, reason=reason, flag=XLA_CPU_FLAG)
    return xla_settings()


def xla_settings() -> dict:
    """``{"applied": bool, "reason": str, "flag": str}`` of :func:`tune_xla` (empty before it ran)."""
    return dict(_XLA_STATE)


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


MAP_FRACTION = 0.6
"""Share of ``vm.max_map_count`` above which :func:`release_compiled` drops the compiled
executables (leaves room for the executables a training step compiles between two checks:
one per new batch shape, ~1,500 mappings each)."""


def memory_maps() -> tuple[int, int] | None:
    """``(mappings held by this process, the kernel's per-process limit vm.max_map_count)``
    read from ``/proc`` (Linux), or None where ``/proc`` does not have them."""
    try:
        with open("/proc/self/maps", "rb") as f:
            count = sum(1 for _ in f)
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return count, limit


def release_compiled(fraction: float = MAP_FRACTION, *, force: bool = False, quiet: bool = False) -> bool:
    """Clear JAX's caches of compiled executables (``jax.clear_caches()``) when this process
    holds more than ``fraction`` of its memory-map limit (``force``: in any case), so that
    XLA:CPU's code mappings cannot reach ``vm.max_map_count`` (see the module docstring).
    Results do not change: the next call of a jitted function compiles it again (or loads it
    from the persistent cache). Returns whether it cleared; says so on stderr unless ``quiet``.
    A no-op returning False where the mappings cannot be counted (not Linux), unless ``force``.
    """
    maps = memory_maps()
    if not force and (maps is None or maps[0] <= fraction * maps[1]):
        return False
    import jax

    jax.clear_caches()
    gc.collect()
    if not quiet:
        after = memory_maps()
        what = "" if maps is None or after is None else (
            f": {maps[0]:,} of the {maps[1]:,} memory mappings the kernel allows (vm.max_map_count) were in use, "
            f"{after[0]:,} after")
        print(f"agedi_jax: cleared JAX's compiled executables{what} (XLA:CPU keeps each executable's machine code "
              "in many mappings; the functions compile again or load from the compilation cache)",
              file=sys.stderr, flush=True)
    return True
