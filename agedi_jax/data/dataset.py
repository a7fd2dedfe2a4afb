"""The :class:`Dataset` container, deterministic splits, one-line summaries, validation
and the generic ASE-file loader (spec strings are turned into datasets by
:mod:`agedi_jax.data.specs`).

A dataset is a list of host-side ``ase.Atoms`` plus optional per-structure integer labels
(the condition of classifier-free guidance, Eq. 19 of the paper: ``0`` means "no label",
as in :class:`agedi_jax.batch.AtomsBatch`). Batches are built from it with
:func:`agedi_jax.convert.batch_from_atoms`; nothing here runs inside jit.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np


class DataError(ValueError):
    """A data file or directory cannot be turned into a dataset; the message names it."""


DATA_ENV = "AGEDI_JAX_DATA"
"""Environment variable naming the shared data directory."""

DATA_PREFIX = "$" + DATA_ENV
"""Portable prefix of paths inside the shared data directory, e.g.
``$AGEDI_JAX_DATA/c2db/train.csv`` (how configs and results files store them)."""


def data_root() -> Path | None:
    """The shared data directory: ``$AGEDI_JAX_DATA`` if set, else ``../shared/data``
    relative to the working directory (the project's convention: run from the repository
    root), else ``shared/data`` beside a source checkout of the package; None if none
    exists."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    for cand in (Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"):
        if cand.is_dir():
            return cand
    return None


def expand_data_path(path: str | Path) -> Path:
    """Expand the portable prefix ``$AGEDI_JAX_DATA`` (:func:`data_root`). Older specs that
    name a ``.../shared/data/...`` path that does not exist here are mapped into the data
    root too (configs written on another machine)."""
    text = str(path)
    for prefix in (DATA_PREFIX, "${" + DATA_ENV + "}"):
        if text == prefix or text.startswith(prefix + "/"):
            root = data_root()
            if root is None:
                raise FileNotFoundError(
                    f"data path {text!r}: {DATA_ENV} is not set and no ../shared/data directory was found; "
                    f"set {DATA_ENV} to the directory of the shared data"
                )
            return root / text[len(prefix) + 1:] if text != prefix else root
    p = Path(text).expanduser()
    marker = "shared/data/"
    if not p.exists() and marker in text:
        root = data_root()
        if root is not None:
            return root / text.split(marker, 1)[1]
    return p


def portable_data_path(path: str | Path) -> str:
    """``path`` with the shared data directory written as ``$AGEDI_JAX_DATA`` (how configs
    and results store data locations, so a clone elsewhere resolves them); other paths
    unchanged."""
    text = str(path)
    if text.startswith(DATA_PREFIX):
        return text
    root = data_root()
    if root is not None:
        try:
            rel = Path(text).expanduser().resolve().relative_to(root.resolve())
            return f"{DATA_PREFIX}/{rel.as_posix()}" if rel.parts else DATA_PREFIX
        except (ValueError, OSError):
            pass
    return text


def check_path(path: str | Path) -> Path:
    """The path (``$AGEDI_JAX_DATA`` expanded, :func:`expand_data_path`), or
    ``FileNotFoundError("data path X does not exist")``."""
    p = expand_data_path(path)
    if not p.exists():
        raise FileNotFoundError(f"data path {str(path)!r} does not exist" + (f" ({p})" if str(p) != str(path) else ""))
    return p


def check_file(path: str | Path, kind: str) -> Path:
    """:func:`check_path` for a data file: ``DataError`` naming the path when it is a
    directory (``"X is a directory, not a <kind>"``) or empty (0 bytes)."""
    p = check_path(path)
    if p.is_dir():
        raise DataError(f"{str(path)!r} is a directory, not {kind}")
    if p.stat().st_size == 0:
        raise DataError(f"{str(path)!r} is empty (0 bytes): no structures")
    return p


def pbc_kind(pbc: Sequence[bool]) -> str:
    """Short name of a periodicity: ``'none'`` (cluster), ``'xy'`` (slab / 2D), ``'xyz'``."""
    kind = "".join(axis for axis, p in zip("xyz", np.asarray(pbc, bool)) if p)
    return kind or "none"


def _fmt_size(x: float) -> str:
    return f"{int(x)}" if float(x).is_integer() else f"{x:.1f}"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A named list of structures with optional integer labels.

    Attributes:
      structures: the ``ase.Atoms`` (positions in Å). Subsets and splits share these
        objects; copy a structure before mutating it.
      name: short name used in summaries (e.g. ``"qcd:gm"``).
      labels: ``None`` or int32 array ``[len(structures)]`` of per-structure condition
        labels (e.g. layer groups 1–80); ``0`` means "no label".
      source: free-form metadata about where the data came from (loader, path, options).
    """

    structures: list
    name: str = "dataset"
    labels: np.ndarray | None = None
    source: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        from ase import Atoms

        structures = list(self.structures)
        for k, atoms in enumerate(structures):
            if not isinstance(atoms, Atoms):
                raise TypeError(
                    f"dataset {self.name!r}: structure {k} is a {type(atoms).__name__}, not ase.Atoms"
                )
        object.__setattr__(self, "structures", structures)
        object.__setattr__(self, "source", dict(self.source))
        if self.labels is not None:
            raw = np.asarray(self.labels)
            if raw.shape != (len(structures),):
                raise ValueError(
                    f"dataset {self.name!r}: labels of shape {raw.shape} for "
                    f"{len(structures)} structures (expected ({len(structures)},))"
                )
            if raw.size and not np.issubdtype(raw.dtype, np.integer):
                raise ValueError(f"dataset {self.name!r}: labels must be integers, got {raw.dtype}")
            if raw.size and raw.min() < 0:
                raise ValueError(f"dataset {self.name!r}: negative label {int(raw.min())}")
            labels = raw.astype(np.int32)
            labels.setflags(write=False)
            object.__setattr__(self, "labels", labels)

    # -- sequence protocol -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.structures)

    def __iter__(self) -> Iterator:
        return iter(self.structures)

    def __getitem__(self, index):
        """``dataset[k]`` -> ``ase.Atoms``; a slice, index array or boolean mask -> Dataset."""
        if isinstance(index, (int, np.integer)):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"structure {index} out of range for dataset {self.name!r} of {n}")
            return self.structures[index]
        if isinstance(index, slice):
            return self.subset(np.arange(len(self))[index])
        return self.subset(index)

    def __repr__(self) -> str:
        return f"Dataset({self.summary()})"

    # -- views -------------------------------------------------------------------------

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> "Dataset":
        """The structures (and labels) at ``indices`` (ints, or a boolean mask [len])."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(
                    f"boolean mask of shape {idx.shape} for dataset {self.name!r} of {len(self)}"
                )
            idx = np.flatnonzero(idx)
        idx = idx.reshape(-1)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise IndexError(f"subset indices must be integers or a boolean mask, got {idx.dtype}")
        idx = idx.astype(np.int64)
        n = len(self)
        bad = idx[(idx < -n) | (idx >= n)]
        if bad.size:
            raise IndexError(f"indices {bad[:5].tolist()} out of range for dataset {self.name!r} of {n}")
        return Dataset(
            structures=[self.structures[i] for i in idx],
            name=self.name if name is None else name,
            labels=None if self.labels is None else self.labels[idx],
            source=self.source,
        )

    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple["Dataset", "Dataset"]:
        """Random disjoint (train, validation) split, deterministic by ``seed``.

        ``round(val_fraction · len)`` structures go to validation (at least one when
        ``val_fraction > 0`` and the dataset has two or more); both parts keep the
        original order. Names get the suffixes ``:train`` / ``:val``.
        """
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        n = len(self)
        n_val = int(round(val_fraction * n))
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        perm = np.random.default_rng(seed).permutation(n)
        val = np.sort(perm[:n_val])
        train = np.sort(perm[n_val:])
        return (
            self.subset(train, name=f"{self.name}:train"),
            self.subset(val, name=f"{self.name}:val"),
        )

    # -- statistics --------------------------------------------------------------------

    @property
    def sizes(self) -> np.ndarray:
        """int array [len]: number of atoms of every structure."""
        return np.array([len(a) for a in self.structures], dtype=np.int64)

    @property
    def elements(self) -> tuple[str, ...]:
        """Chemical symbols present, ordered by atomic number."""
        from ase.data import atomic_numbers

        found: set[str] = set()
        for atoms in self.structures:
            found.update(atoms.get_chemical_symbols())
        return tuple(sorted(found, key=lambda s: atomic_numbers.get(s, 0)))

    @property
    def energies(self) -> np.ndarray:
        """float array [len]: ``atoms.info["energy"]`` (eV, total) or NaN where absent."""
        return np.array(
            [float(a.info.get("energy", np.nan)) for a in self.structures], dtype=np.float64
        )

    def vocab(self):
        """The :class:`agedi_jax.vocab.TypeVocab` of this dataset's elements."""
        from agedi_jax.vocab import TypeVocab

        if not len(self):
            raise DataError(f"dataset {self.name!r} is empty: no type vocabulary")
        return TypeVocab(self.elements)

    def info_array(self, key: str) -> np.ndarray:
        """``atoms.info[key]`` of every structure as an array; KeyError names the first
        structure without it."""
        values = []
        for k, atoms in enumerate(self.structures):
            if key not in atoms.info:
                raise KeyError(f"dataset {self.name!r}: structure {k} has no info[{key!r}]")
            values.append(atoms.info[key])
        return np.asarray(values)

    def summary(self, max_elements: int = 12, top_labels: int = 6) -> str:
        """One line: structure count, elements, atoms per structure (min/median/max),
        periodicity kinds and the most common labels."""
        n = len(self)
        if n == 0:
            return f"{self.name}: 0 structures"
        els = self.elements
        shown = " ".join(els[:max_elements]) + (f" (+{len(els) - max_elements} more)" if len(els) > max_elements else "")
        sizes = self.sizes
        kinds = Counter(pbc_kind(a.pbc) for a in self.structures)
        pbc = ", ".join(f"{k} {c:,}" for k, c in kinds.most_common())
        parts = [
            f"{self.name}: {n:,} structures",
            f"{len(els)} elements: {shown}",
            f"atoms min/median/max {sizes.min()}/{_fmt_size(np.median(sizes))}/{sizes.max()} ({sizes.sum():,} in all)",
            f"pbc {pbc}",
        ]
        if self.labels is None:
            parts.append("no labels")
        else:
            counts = Counter(self.labels.tolist())
            top = " ".join(f"{lab}:{c:,}" for lab, c in counts.most_common(top_labels))
            parts.append(f"labels {len(counts)} distinct, top {top}")
        return " | ".join(parts)


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def validate_dataset(dataset: Dataset, vocab=None, max_atoms: int | None = None) -> None:
    """Check that every structure can be batched (:func:`agedi_jax.convert.validate_atoms`),
    that its elements are in ``vocab`` (if given) and that it has at most ``max_atoms``
    atoms. Raises :class:`agedi_jax.batch.StructureError` naming the dataset and the
    structure (index and formula)."""
    from agedi_jax.batch import StructureError
    from agedi_jax.convert import describe_structure, validate_atoms

    if len(dataset) == 0:
        raise DataError(f"dataset {dataset.name!r} is empty (no structures)")
    for k, atoms in enumerate(dataset.structures):
        try:
            validate_atoms(atoms, k, vocab)
        except StructureError as err:
            raise StructureError(f"dataset {dataset.name!r}: {err}") from None
        if max_atoms is not None and len(atoms) > max_atoms:
            raise StructureError(
                f"dataset {dataset.name!r}: {describe_structure(k, atoms)} has {len(atoms)} atoms, "
                f"more than max_atoms={max_atoms}"
            )


# --------------------------------------------------------------------------------------
# Generic ASE-readable files
# --------------------------------------------------------------------------------------


def read_frames(path: Path, **kwargs) -> list:
    """``ase.io.read(path, ":")`` with read failures turned into :class:`DataError`
    naming the file."""
    import ase.io

    try:
        frames = ase.io.read(str(path), index=":", **kwargs)
    except Exception as err:  # ase raises many kinds for corrupt input
        raise DataError(f"cannot read {str(path)!r} as structures: {type(err).__name__}: {err}") from err
    if not isinstance(frames, list):
        frames = [frames]
    return frames


def load_ase_file(
    path: str | Path,
    *,
    format: str | None = None,
    name: str | None = None,
    label_key: str | None = None,
    pbc: Sequence[bool] | None = None,
) -> Dataset:
    """Every frame of an ASE-readable file (extended XYZ, traj, cif, ...; gzip is fine).

    Args:
      path: the file.
      format: ASE format name; guessed from the file name when ``None``.
      name: dataset name (default: the file name).
      label_key: if given, labels are ``int(atoms.info[label_key])`` (every frame must
        have it).
      pbc: if given, overrides the periodicity of every frame.
    """
    p = check_file(path, "a structure file")
    frames = read_frames(p, format=format)
    if not frames:
        raise DataError(f"{str(path)!r} contains no structures")
    labels = None
    if label_key is not None:
        labels = []
        for k, atoms in enumerate(frames):
            if label_key not in atoms.info:
                raise DataError(f"{str(path)!r}: structure {k} has no info[{label_key!r}]")
            labels.append(int(atoms.info[label_key]))
    if pbc is not None:
        for atoms in frames:
            atoms.pbc = pbc
    return Dataset(
        structures=frames,
        name=name or p.name,
        labels=labels,
        source={"loader": "ase", "path": str(p)},
    )
