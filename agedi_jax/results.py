"""Results files: generated structures and JSON results, always written atomically and
with the resolved config beside them (so every file can be reproduced)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from agedi_jax.config import Config, config_hash

__all__ = ["write_extxyz", "json_default"]


def write_extxyz(path: str | os.PathLike, structures: Sequence[Any], config: Config) -> Path:
    """Write structures as extended XYZ and the resolved config beside it
    (``PATH.config.json``)."""
    from ase.io import write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp, list(structures), format="extxyz")
    os.replace(tmp, path)
    meta = {"config": config.to_dict(), "config_hash": config_hash(config), "num_structures": len(structures)}
    (path.with_name(path.name + ".config.json")).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path


def json_default(x: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays and paths."""
    import numpy as np

    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x)}")
