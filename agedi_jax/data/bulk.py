"""Bulk (fully periodic) crystals: the CSV files of the CDVAE crystal-generation benchmarks
(``perov_5``, ``carbon_24``, Xie et al., ICLR 2022), and duplicate analysis with
pymatgen's :class:`~pymatgen.analysis.structure_matcher.StructureMatcher`.

* :func:`load_bulk_csv` — one ``ase.Atoms`` (``pbc=True``) per CSV row (a P1 CIF string
  written by pymatgen), the other columns in ``atoms.info``.
* :func:`duplicate_groups` / :func:`cross_duplicates` — which structures of a set are the
  same crystal, and which validation structures already occur in the training set, under
  the benchmark's matcher tolerances (``stol=0.5, angle_tol=10, ltol=0.3``).
* :func:`split_indices` — the random train / validation split of
  :func:`agedi_jax.train.prepare_data`, reproduced index for index, so that duplicate
  statistics refer to the split a training run actually uses.

Nothing here runs inside jit; pymatgen is imported only by the functions that need it.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from agedi_jax.data.dataset import DataError, Dataset, check_file, check_path

__all__ = [
    "MATCHER_DEFAULTS",
    "NON_NUMERIC_COLUMNS",
    "cross_duplicates",
    "duplicate_groups",
    "duplicate_report",
    "is_bulk_csv",
    "load_bulk_csv",
    "split_indices",
    "structure_matcher",
]

MATCHER_DEFAULTS = dict(stol=0.5, angle_tol=10.0, ltol=0.3)
"""StructureMatcher tolerances of the CDVAE / DiffCSP / FlowMM benchmarks: site tolerance
``stol`` (fraction of (V/N)^(1/3)), ``angle_tol`` (degrees), ``ltol`` (fractional length
tolerance). pymatgen's other defaults (``primitive_cell=True``, ``scale=True``,
``attempt_supercell=False``) are kept."""

NON_NUMERIC_COLUMNS = ("material_id", "formula", "cif")
"""Columns stored as strings (``material_id`` is a string even where it looks numeric, as
in perov_5, so that ids of all data sets have one type). ``cif`` is not stored."""

_MIN_CELL_VOLUME = 1e-3  # Å³; below this (or rank < 3) a cell counts as singular


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _cif_site_count(cif: str) -> int | None:
    """Number of rows of the CIF's ``_atom_site_`` loop (``None`` if there is no such
    loop). Used to check that ASE kept every site (it merges coincident ones)."""
    lines = [ln.strip() for ln in cif.splitlines()]
    for k, line in enumerate(lines):
        if line != "loop_" or k + 1 >= len(lines) or not lines[k + 1].startswith("_atom_site_"):
            continue
        j = k + 1
        while j < len(lines) and lines[j].startswith("_"):
            j += 1
        count = 0
        while j < len(lines) and lines[j] and not lines[j].startswith(("_", "loop_", "#", "data_")):
            count += 1
            j += 1
        return count
    return None


def _atoms_from_cif(cif: str) -> Any:
    """Fully periodic ``ase.Atoms`` from a CIF string; ``ValueError`` for anything wrong
    with it (no atoms, sites lost on reading, singular cell)."""
    import ase.io
    from ase import Atoms

    if not cif.strip():
        raise ValueError("empty CIF field")
    try:
        read = ase.io.read(io.StringIO(cif), format="cif")
    except np.linalg.LinAlgError as err:  # ASE inverts the cell while reading
        raise ValueError(f"singular cell (ASE could not invert it: {err})") from err
    if len(read) == 0:
        raise ValueError("the CIF has no atoms")
    sites = _cif_site_count(cif)
    if sites is not None and sites != len(read):
        raise ValueError(f"{sites} atom sites written but ASE read {len(read)} atoms (coincident sites?)")
    cell = np.asarray(read.cell, np.float64)
    volume = abs(float(np.linalg.det(cell)))
    if read.cell.rank < 3 or volume < _MIN_CELL_VOLUME:
        raise ValueError(f"singular cell (volume {volume:.3g} Å³): {np.round(cell, 6).tolist()}")
    atoms = Atoms(numbers=read.numbers, positions=read.positions, cell=cell, pbc=True)
    atoms.wrap()
    return atoms


def _numeric_columns(columns: Sequence[str], rows: Sequence[dict], index_col: str | None) -> list[str]:
    """Columns (other than the index and :data:`NON_NUMERIC_COLUMNS`) whose every value
    parses as a float."""
    out = []
    for col in columns:
        if col == index_col or col in NON_NUMERIC_COLUMNS:
            continue
        try:
            for row in rows:
                float(row[col])
        except (TypeError, ValueError):
            continue
        out.append(col)
    return out


def is_bulk_csv(path: str | Path) -> bool:
    """Whether the CSV file at ``path`` looks like a bulk-crystal file for
    :func:`load_bulk_csv`: its header has a ``cif`` column but not the C2DB columns
    ``band_gap`` and ``workfunction`` (those files go to
    :func:`agedi_jax.data.c2db.load_c2db_csv`). Reads the header line only; ``False`` for
    a file that cannot be read as CSV."""
    try:
        with open(check_path(path), newline="") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return "cif" in header and not {"band_gap", "workfunction"} <= set(header)


def load_bulk_csv(path: str | Path, name: str | None = None, *, dedupe: bool = False) -> Dataset:
    """Load a CSV of bulk crystals (CDVAE benchmark format): one CIF per row.

    The file needs a ``cif`` column (a CIF string, read with
    ``ase.io.read(io.StringIO(cif), format="cif")``). Every structure is fully periodic
    (``pbc=True``), positions wrapped into the cell, and carries in ``atoms.info``:

    * ``csv_index``: the row-index column (the unnamed first column of the benchmark files)
      as int, or the 0-based row number when the file has no index column;
    * ``material_id`` and ``formula`` (strings) where the columns exist;
    * every other column whose values all parse as numbers, as float: perov_5 ``heat_all``,
      ``heat_ref`` (eV, formation-energy related), ``dir_gap``, ``ind_gap`` (eV); carbon_24
      ``energy_per_atom`` (eV, an absolute DFT energy of about −154 eV/atom).
      Other non-numeric columns are ignored.

    Args:
      path: the CSV file.
      name: dataset name (default ``"bulk:<file stem>"``).
      dedupe: drop every structure that duplicates an earlier one under
        :func:`duplicate_groups` (the first of each group is kept, order preserved). This
        runs the structure matcher over the whole file (seconds for perov_5, about a
        minute for carbon_24); ``source["n_duplicates_dropped"]`` records how many went.

    Returns:
      A :class:`Dataset` without labels; ``source`` holds the loader, path and options.

    Raises:
      FileNotFoundError: the path does not exist.
      DataError: naming the file (and the row: index and ``material_id``) for a directory,
        an empty file or a header without rows, a missing ``cif`` column, an unparsable
        CIF, a CIF whose sites ASE merged, a singular cell or a bad row index.
    """
    p = check_file(path, "a bulk-crystal CSV file")
    try:
        with open(p, newline="") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read {str(path)!r} as CSV: {err}") from err
    if "cif" not in columns:
        raise DataError(f"{str(path)!r} is not a bulk-crystal CSV: no 'cif' column (found {columns[:8]})")
    if not rows:
        raise DataError(f"{str(path)!r} contains no structures (header only)")
    index_col = columns[0] if columns[0] in ("", "index", "Unnamed: 0") else None
    numeric = _numeric_columns(columns, rows, index_col)

    structures = []
    for k, row in enumerate(rows):
        where = f"{str(path)!r}, row {k}" + (f" ({row['material_id']})" if row.get("material_id") else "")
        try:
            atoms = _atoms_from_cif(row["cif"] or "")
        except Exception as err:  # ase raises many kinds for corrupt input
            raise DataError(f"{where}: cannot use the CIF: {type(err).__name__}: {err}") from err
        info: dict[str, Any] = {}
        try:
            info["csv_index"] = int(row[index_col]) if index_col is not None else k
        except (TypeError, ValueError) as err:
            raise DataError(f"{where}: bad row index {row[index_col]!r}") from err
        for col in ("material_id", "formula"):
            if col in row and row[col] is not None:
                info[col] = str(row[col])
        for col in numeric:
            info[col] = float(row[col])
        atoms.info.update(info)
        structures.append(atoms)

    source: dict[str, Any] = {"loader": "bulk_csv", "path": str(p), "dedupe": bool(dedupe)}
    if dedupe:
        groups = duplicate_groups(structures)
        drop = {i for g in groups for i in g[1:]}
        structures = [a for i, a in enumerate(structures) if i not in drop]
        source["n_duplicates_dropped"] = len(drop)
    return Dataset(structures=structures, name=name or f"bulk:{p.stem}", source=source)


# --------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, val_idx)``: the random split that :func:`agedi_jax.train.prepare_data`
    makes, reproduced exactly.

    Same convention: ``order = np.random.default_rng(seed).permutation(n)``,
    ``n_val = round(val_fraction · n)`` (0 when ``n <= 1``), validation = the first
    ``n_val`` of ``order``, training = the rest, both sorted ascending (int64). Use it with
    ``config.data.split_seed`` / ``config.data.val_fraction`` to analyse the split a
    training run uses. (:meth:`Dataset.split` draws the same permutation but forces at
    least one validation structure; the two agree whenever ``round(val_fraction · n)`` is
    between 1 and ``n − 1``, as for perov_5 and carbon_24 at 10 %.)
    """
    n = int(n)
    if n < 0:
        raise ValueError(f"split_indices: n must be >= 0, got {n}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"split_indices: val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n)) if n > 1 else 0
    return np.sort(order[n_val:]).astype(np.int64), np.sort(order[:n_val]).astype(np.int64)


# --------------------------------------------------------------------------------------
# Duplicates (pymatgen StructureMatcher)
# --------------------------------------------------------------------------------------


def structure_matcher(tolerances: Mapping[str, float] | None = None):
    """pymatgen's ``StructureMatcher`` with :data:`MATCHER_DEFAULTS` updated by
    ``tolerances`` (any of ``stol``, ``angle_tol``, ``ltol``); an unknown key is a ValueError."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    tol = dict(MATCHER_DEFAULTS)
    unknown = sorted(set(tolerances or {}) - set(tol))
    if unknown:
        raise ValueError(f"unknown matcher tolerance(s) {unknown}; known: {sorted(tol)}")
    tol.update(tolerances or {})
    return StructureMatcher(**tol)


def _reduced(matcher: Any, structure: Any) -> Any:
    """Niggli-reduced primitive cell, exactly as the matcher computes it before fitting
    (pymatgen's ``group_structures`` does the same, then fits with
    ``skip_structure_reduction=True``)."""
    reduce = getattr(type(matcher), "_get_reduced_structure", None)
    if reduce is not None:
        return reduce(structure, True, True)
    return structure.get_reduced_structure("niggli").get_primitive_structure()  # pragma: no cover


def _bucket_key(reduced: Any) -> tuple[str, int]:
    """Reduced formula and site count of the primitive cell: the matcher (no supercells)
    can only match structures that share both."""
    return reduced.composition.reduced_formula, len(reduced)


def _is_structure(obj: Any) -> bool:
    from pymatgen.core import IStructure, Structure

    return isinstance(obj, (Structure, IStructure))


def to_structure(obj: Any) -> Any:
    """pymatgen ``Structure`` of a crystal.

    ``ase.Atoms`` are converted with ``AseAtomsAdaptor.get_structure`` as fully periodic
    (their ``pbc`` flags are ignored; calculator and ``info`` are not carried over); the
    cell must be 3D (``ValueError`` otherwise). A ``Structure`` is returned unchanged.
    """
    if _is_structure(obj):
        return obj
    from pymatgen.io.ase import AseAtomsAdaptor

    if obj.cell.rank < 3:
        raise ValueError(f"{obj.get_chemical_formula()}: cell of rank {obj.cell.rank}, a crystal needs a 3D cell")
    atoms = obj.copy()
    atoms.pbc = True
    atoms.calc = None
    atoms.info = {}
    return AseAtomsAdaptor.get_structure(atoms)


def _prepare(structures: Sequence[Any], matcher: Any) -> list:
    return [_reduced(matcher, to_structure(s)) for s in structures]


def duplicate_groups(
    structures: Sequence[Any],
    *,
    tolerances: Mapping[str, float] | None = None,
    include_singletons: bool = False,
) -> list[list[int]]:
    """Groups of indices of identical crystals (pymatgen ``StructureMatcher``).

    Structures (``ase.Atoms`` or pymatgen ``Structure``) are reduced once to their
    Niggli-reduced primitive cell and bucketed by (reduced formula, primitive site count)
    — the matcher cannot match across buckets — then grouped greedily inside each
    bucket as pymatgen's ``group_structures`` does: the first unassigned structure opens
    a group and takes every remaining structure that ``fit(first, other)`` matches.
    (Matching is not transitive, so a different order can give slightly different groups.)

    Args:
      structures: the crystals (3D cells).
      tolerances: matcher tolerances overriding the benchmark's (:func:`structure_matcher`).
      include_singletons: also return the structures without a duplicate, as 1-lists.

    Returns:
      list of index lists, each sorted ascending, ordered by first index. Without
      singletons, ``sum(len(g) - 1 for g in groups)`` structures are redundant.
    """
    matcher = structure_matcher(tolerances)
    reduced = _prepare(structures, matcher)
    buckets: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, s in enumerate(reduced):
        buckets[_bucket_key(s)].append(i)
    groups = []
    for members in buckets.values():
        unmatched = list(members)
        while unmatched:
            first = unmatched.pop(0)
            group, rest = [first], []
            for j in unmatched:
                if matcher.fit(reduced[first], reduced[j], skip_structure_reduction=True):
                    group.append(j)
                else:
                    rest.append(j)
            unmatched = rest
            if include_singletons or len(group) > 1:
                groups.append(sorted(group))
    return sorted(groups, key=lambda g: g[0])


def cross_duplicates(
    train: Sequence[Any],
    val: Sequence[Any],
    *,
    tolerances: Mapping[str, float] | None = None,
    return_index: bool = False,
) -> np.ndarray:
    """For every structure of ``val``: does some structure of ``train`` match it?

    Same reduction and bucketing as :func:`duplicate_groups`; a validation structure is
    compared, with ``fit(train_structure, val_structure)``, only with training structures
    of the same reduced formula and primitive site count, stopping at the first match.

    Returns:
      bool array ``[len(val)]``; with ``return_index=True`` instead an int64 array
      ``[len(val)]`` of the first matching training index (−1 where none matches).
    """
    matcher = structure_matcher(tolerances)
    red_train = _prepare(train, matcher)
    red_val = _prepare(val, matcher)
    buckets: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, s in enumerate(red_train):
        buckets[_bucket_key(s)].append(i)
    found = np.full(len(red_val), -1, dtype=np.int64)
    for k, s in enumerate(red_val):
        for i in buckets.get(_bucket_key(s), ()):
            if matcher.fit(red_train[i], s, skip_structure_reduction=True):
                found[k] = i
                break
    return found if return_index else found >= 0


def duplicate_report(path: str | Path, val_fraction: float = 0.1, seed: int = 0) -> dict[str, Any]:
    """Duplicate statistics of one bulk CSV: duplicate groups in the whole file, and how
    many validation structures of the :func:`split_indices` split match a training
    structure. Returns a dict of counts (slow for carbon_24: about a minute)."""
    ds = load_bulk_csv(path)
    groups = duplicate_groups(ds.structures)
    train_idx, val_idx = split_indices(len(ds), val_fraction, seed)
    cross = cross_duplicates([ds[i] for i in train_idx], [ds[i] for i in val_idx])
    return {
        "name": ds.name,
        "n": len(ds),
        "n_groups": len(groups),
        "n_in_groups": int(sum(len(g) for g in groups)),
        "n_redundant": int(sum(len(g) - 1 for g in groups)),
        "largest_group": int(max((len(g) for g in groups), default=1)),
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
        "n_val_in_train": int(cross.sum()),
        "frac_val_in_train": float(cross.mean()) if len(cross) else math.nan,
    }
