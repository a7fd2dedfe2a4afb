"""The bookkeeping of a run directory: the lock that keeps one writer per run, checks that
an output location is writable before any work, metrics as JSON lines, and the loss
plot."""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterable

__all__ = ["RunInUseError", "RunLock", "check_writable", "MetricsLog", "read_metrics", "plot_losses"]


class RunInUseError(RuntimeError):
    """Another live process is writing to the same run directory."""


class RunLock:
    """An exclusive lock on a run directory (``RUN/.lock``), held while a training writes
    to it: a second training on the same directory fails at once, naming the process that
    holds it.

    The lock is an ``fcntl`` advisory lock on the file, which the operating system releases
    when the holding process ends however it ends (``kill -9`` included), so a stale lock
    file left by a killed process is taken over safely — the file's content (pid, host,
    start time) is only information. Use as a context manager."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / ".lock"
        self._fh = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunInUseError(
                f"run directory {self.path.parent} is in use by {holder}; wait for it to finish, stop it, "
                "or train into another directory"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"process {os.getpid()} on {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            import fcntl

            try:
                self._fh.seek(0)
                self._fh.truncate()
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            finally:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise ``PermissionError`` naming ``path`` unless a file can be created there: in the
    directory ``path`` if it exists as one, else in its nearest existing parent (nothing is
    created). Called before any work, so that an unwritable output is refused at once."""
    path = Path(path)
    probe = path if path.is_dir() else path.parent
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if path.exists() and not path.is_dir() and not os.access(path, os.W_OK):
        raise PermissionError(f"cannot write the {what} {path}: the file is not writable")
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write the {what} {path}: {probe} is not a writable directory")
    try:
        fd, tmp = __import__("tempfile").mkstemp(prefix=".agedi_write_test.", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise PermissionError(f"cannot write the {what} {path}: {err.strerror} in {probe}") from None
    return path


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
