"""The training log of a run: metrics as JSON lines, and the loss plot."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

__all__ = ["MetricsLog", "read_metrics", "plot_losses"]


class MetricsLog:
    """Append-only JSON-lines metrics file (one object per line, flushed every write).

    On resume, lines after the resumed step are dropped first so that the log matches the
    state the run continues from.
    """

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.path)
        elif resume_step is None and self.path.exists():
            self.path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: (float(v) if hasattr(v, "item") or isinstance(v, float) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All records of a metrics file (a truncated last line is ignored)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_losses(records: Iterable[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Training (and validation, if logged) loss against step, log scale; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("loss", "-"), ("loss_positions", ":"), ("loss_types", "--")):
        pts = [(r["step"], r[key]) for r in records if r.get("split") == "train" and key in r]
        pts = [(s, v) for s, v in pts if v is not None and math.isfinite(v) and v > 0]
        if pts:
            ax.plot(*zip(*pts), style, label=f"train {key}")
    val = [(r["step"], r["loss"]) for r in records if r.get("split") == "val" and "loss" in r]
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
