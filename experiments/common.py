"""Shared helpers of the experiment scripts: where the repository and the shared data
are, timing, figures and results files.

Scripts are modules of the ``experiments`` package, run from the repository root::

    python -m experiments.clusters.train --budget cpu --subset gm
    python -m experiments.two_d.evaluate_cfg experiments/two_d/runs/cpu_geo

The real data live outside the repository: ``$AGEDI_JAX_DATA`` if set, else
``../shared/data`` beside the checkout (:func:`data_root`).

This module imports only the standard library and numpy at module level (the package is
imported inside the functions that need it): the PyTorch sides of
``benchmarks/original_agedi.py`` and ``benchmarks/torch_reference.py`` run under another
interpreter that has neither agedi_jax nor this repository on its path, and load this file by
path (``runpy.run_path``) for :func:`timed`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
"""The repository root."""

__all__ = ["REPO", "data_root", "data_path", "timed", "pyplot", "save_figure", "write_json"]


def data_root() -> Path:
    """The shared data directory: ``$AGEDI_JAX_DATA``, else ``../shared/data`` beside the
    repository (:func:`agedi_jax.data.data_root`)."""
    from agedi_jax.data import data_root as package_root

    return package_root() or REPO.parent / "shared" / "data"


def data_path(relative: str) -> str:
    """A path inside the shared data directory in its portable form, e.g.
    ``data_path("c2db/val.csv") == "$AGEDI_JAX_DATA/c2db/val.csv"``: every loader of the
    package expands it, and results files that record it stay valid on another machine."""
    from agedi_jax.data import DATA_PREFIX

    return f"{DATA_PREFIX}/{relative}"


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict:
    """Time ``fn()`` (which must block until its work is done, e.g. end in
    ``jax.block_until_ready``): ``warmup`` calls first (the first one's time, with any
    compilation, is ``first_ms``), then ``repeats`` timed calls. Returns milliseconds:
    median, quartiles, min, the median process CPU time (all threads), and the load
    average before and after."""
    first = None
    for i in range(max(warmup, 0)):
        t0 = time.perf_counter()
        fn()
        if i == 0:
            first = 1e3 * (time.perf_counter() - t0)
    l0 = _load()
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(1e3 * (time.perf_counter() - t0))
        cpu.append(1e3 * (time.process_time() - c0))
    q = np.percentile(wall, [25, 50, 75])
    return {"median": float(q[1]), "p25": float(q[0]), "p75": float(q[2]), "min": float(min(wall)),
            "cpu_median": float(np.median(cpu)), "repeats": repeats, "first_ms": first, "load": [l0, _load()]}


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out ``fig``, save it to ``path`` and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (temporary file, then rename)."""
    from agedi_jax.results import json_default

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=json_default))
    os.replace(tmp, path)
    return path
