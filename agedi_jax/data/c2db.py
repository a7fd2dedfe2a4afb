"""Two-dimensional materials of the Computational 2D Materials Database (C2DB), and ASE
databases in general.

Two formats: the CSV split of the CDVAE benchmarks (columns: row index, ``material_id``,
``band_gap``, ``workfunction``, ``cif``) and the ASE database (``ase.db``) in which C2DB is
distributed. 2D materials are periodic in x and y only: ``pbc = (True, True, False)``, the
third lattice vector spanning the vacuum. Labels are layer groups (1–80) from spglib at
``symprec`` = 0.1 Å, as in the paper (section "2D Material AGeDi Model", Supplementary
"Evaluation of 2D Material Symmetries"); ``0`` marks a structure spglib could not
classify, which is also the "no label" value of classifier-free guidance (Eq. 19).
"""

from __future__ import annotations

import csv
import io
import numbers
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from agedi_jax.data.dataset import DataError, Dataset, check_file
from agedi_jax.symmetry import DEFAULT_SYMPREC, layer_group

PBC_2D = (True, True, False)
CSV_COLUMNS = ("material_id", "band_gap", "workfunction", "cif")
LABEL_KEY = "label"


def layer_group_labels(structures: Sequence[Any], symprec: float = DEFAULT_SYMPREC) -> np.ndarray:
    """int32 [len]: layer group (1–80, 0 if spglib fails) of every 2D structure, aperiodic
    along the third lattice vector, at ``symprec`` (Å)."""
    with warnings.catch_warnings():
        # spglib >= 2.5 warns on every layer-group call about its future error handling;
        # failures still come back as 0 from agedi_jax.symmetry.layer_group.
        warnings.filterwarnings("ignore", message=".*OLD_ERROR_HANDLING", category=DeprecationWarning)
        return np.array([layer_group(a, symprec=symprec) for a in structures], dtype=np.int32)


def cif_fractional_as_written(cif: str) -> np.ndarray:
    """``[n, 3]``: the ``_atom_site_fract_x/y/z`` numbers of a CIF exactly as written (no
    wrapping, no symmetry expansion); ``ValueError`` if the atom-site loop is missing."""
    lines = [ln.strip() for ln in cif.splitlines()]
    for k, line in enumerate(lines):
        if line != "loop_" or k + 1 >= len(lines) or not lines[k + 1].startswith("_atom_site_"):
            continue
        j, header = k + 1, []
        while j < len(lines) and lines[j].startswith("_"):
            header.append(lines[j].split()[0])
            j += 1
        if not all(f"_atom_site_fract_{c}" in header for c in "xyz"):
            continue
        cols = [header.index(f"_atom_site_fract_{c}") for c in "xyz"]
        rows = []
        while j < len(lines) and lines[j] and not lines[j].startswith(("_", "loop_", "#")):
            tok = lines[j].split()
            rows.append([float(tok[c].split("(")[0]) for c in cols])
            j += 1
        return np.asarray(rows, np.float64).reshape(-1, 3)
    raise ValueError("no _atom_site_fract_x/y/z loop in the CIF")


# Contact thresholds of the repair, as fractions of the sum of ASE's covalent radii.
IMPOSSIBLE_CONTACT_RATIO = 0.6
"""Below this, a contact d / (r_cov,i + r_cov,j) is impossible: the reading is wrong (or the
entry broken). In train.csv / val.csv the correct (standard) readings all lie above 0.63
(the shortest: V–V 1.94 Å in p-6m2 VTe, alkali–alkali in KS2 / RbS2, all C2DB's own
geometries, unchanged by any reading), the misread ones all below 0.58."""
NORMAL_CONTACT_RATIO = 0.8
"""An alternative reading is accepted only if all its contacts are at least this (about the
4th percentile of the correctly read cells; the rotated family reads 0.91–1.02)."""
ROTATED_FAMILY_GAMMA = 60.0
ROTATED_FAMILY_GAMMA_TOL = 1.0  # degrees
REPAIR_KINDS = ("standard", "rotated", "unrepairable")


def min_contact_ratio(atoms: Any, upto: float = 1.5) -> float:
    """Shortest interatomic distance over the sum of the two covalent radii (ASE's
    ``covalent_radii``), ``min d_ij / (r_i + r_j)``, periodic images included along the
    periodic axes (an atom and its own image count). ``inf`` if no pair is closer than
    ``upto`` times its radius sum."""
    from ase.data import covalent_radii

    n = len(atoms)
    if n == 0:
        return float("inf")
    radii = covalent_radii[atoms.numbers]
    cutoff = upto * 2.0 * float(radii.max())
    pbc = np.asarray(atoms.pbc, bool)
    cell = np.asarray(atoms.cell, np.float64)
    # Images: every periodic axis k up to n_k + 1 cells, n_k = ceil(cutoff / plane spacing).
    reach = np.zeros(3, int)
    if pbc.any():
        spacing = 1.0 / np.linalg.norm(np.linalg.inv(np.asarray(atoms.cell.complete())), axis=0)
        reach[pbc] = np.ceil(cutoff / spacing[pbc]).astype(int) + 1
    shifts = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), -1).reshape(-1, 3)
    if n * n * len(shifts) > 4_000_000:  # large structures: ASE's neighbour list
        from ase.neighborlist import neighbor_list

        i, j, d = neighbor_list("ijd", atoms, list(upto * radii))
        return float(np.min(d / (radii[i] + radii[j]))) if len(d) else float("inf")
    pos = atoms.get_positions(wrap=True) if pbc.any() else atoms.get_positions()
    d = pos[None, :, None, :] - pos[:, None, None, :] + (shifts @ cell)[None, None, :, :]
    dist = np.linalg.norm(d, axis=-1)  # [n, n, shifts]
    dist[np.arange(n), np.arange(n), np.flatnonzero((shifts == 0).all(1))[0]] = np.inf
    ratio = float((dist / (radii[:, None] + radii[None, :])[:, :, None]).min())
    return ratio if ratio < upto else float("inf")


def _rotation_z(angle_deg: float) -> np.ndarray:
    t = np.radians(angle_deg)
    return np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])


def cif_positions(cif: str, reading: str = "standard") -> Any:
    """The structure of one C2DB-CSV CIF under one reading of its coordinate numbers ``f``
    (as written, see :func:`cif_fractional_as_written`), with ``pbc = (True, True, False)``
    and wrapped in-plane; ``info`` is empty.

    ``reading``:
      - ``"raw"``: true fractional coordinates, as ASE's CIF reader takes them;
      - ``"standard"``: ``x = f ⊙ (|a|, |b|, |c|)``, Cartesian over cell lengths in ASE's
        standard frame (a along x, b in the xy plane): the faulty form of this CSV split;
      - ``"rotated"``: the same numbers in the *bisector* frame, whose x axis bisects a and b
        (a at −γ/2, b at +γ/2), mapped to the standard frame by a rotation of +γ/2 about z:
        ``x = R_z(γ/2) (f ⊙ (|a|, |b|, |c|))``. The γ = 60° X2Y6 family is written so.
    """
    import ase.io
    from ase import Atoms

    if reading not in ("raw", "standard", "rotated"):
        raise ValueError(f"unknown reading {reading!r} (raw, standard, rotated)")
    read = ase.io.read(io.StringIO(cif), format="cif")
    positions = read.positions
    if reading != "raw":
        cell = np.asarray(read.cell, np.float64)
        if abs(cell[0, 1]) > 1e-8 or abs(cell[0, 2]) > 1e-8 or abs(cell[1, 2]) > 1e-8:
            raise ValueError(f"cell not in the standard frame (a along x, b in the xy plane): {cell.tolist()}")
        frac = cif_fractional_as_written(cif)
        if len(frac) != len(read):
            raise ValueError(f"{len(frac)} atom sites written but ASE read {len(read)} atoms")
        positions = frac * np.linalg.norm(cell, axis=1)
        if reading == "rotated":
            positions = positions @ _rotation_z(read.cell.angles()[2] / 2.0).T
    atoms = Atoms(numbers=read.numbers, positions=positions, cell=read.cell, pbc=PBC_2D)
    atoms.wrap()  # in-plane only (pbc), so fractional -0.0 becomes 0.0
    return atoms


def in_rotated_family(cell: Any) -> bool:
    """Whether a cell can belong to the rotated-frame family: in-plane angle γ within
    ``ROTATED_FAMILY_GAMMA_TOL`` of 60°. Necessary, not sufficient: any hexagonal layer can
    be given a γ = 60° cell and written in the standard frame (in train.csv the 23 γ ≈ 60°
    cells are the 22 rotated ones and V4O8; val.csv has none)."""
    from ase.cell import Cell

    gamma = Cell(np.asarray(cell, np.float64)).angles()[2]
    return abs(gamma - ROTATED_FAMILY_GAMMA) <= ROTATED_FAMILY_GAMMA_TOL


def repair_cif(cif: str) -> Any:
    """The repaired structure of one C2DB-CSV CIF, with ``info["repair"]`` saying which
    reading was used (see :func:`load_c2db_csv` for the rule):

    - ``"standard"``: the standard reading has no impossible contact (all but 23 of the
      3,783 cells of train.csv + val.csv);
    - ``"rotated"``: the standard reading has an impossible contact, the cell has γ ≈ 60°
      and the rotated (bisector-frame) reading has only normal contacts;
    - ``"unrepairable"``: neither; the standard reading is returned.
    """
    atoms = cif_positions(cif, "standard")
    kind = "standard"
    # upto=: only whether a contact lies below the threshold matters (a shorter search).
    if min_contact_ratio(atoms, upto=IMPOSSIBLE_CONTACT_RATIO) < IMPOSSIBLE_CONTACT_RATIO:
        kind = "unrepairable"
        if in_rotated_family(atoms.cell):
            rotated = cif_positions(cif, "rotated")
            if min_contact_ratio(rotated, upto=NORMAL_CONTACT_RATIO) >= NORMAL_CONTACT_RATIO:
                atoms, kind = rotated, "rotated"
    atoms.info["repair"] = kind
    return atoms


def _from_cif(cif: str, repair: bool = False) -> Any:
    """``repair_cif(cif)`` if ``repair``, else the CIF read as written (``info["repair"]``
    is ``"none"``)."""
    if repair:
        return repair_cif(cif)
    atoms = cif_positions(cif, "raw")
    atoms.info["repair"] = "none"
    return atoms


def load_c2db_csv(
    path: str | Path,
    symprec: float = DEFAULT_SYMPREC,
    with_labels: bool = True,
    *,
    repair_positions: bool = True,
    keep_unrepairable: bool = False,
    name: str | None = None,
) -> Dataset:
    """Load a C2DB CSV (``train.csv`` / ``val.csv``): one CIF per row.

    **Repair of the positions** (``repair_positions=True``, the default). The CIFs of this
    CSV split write, as "fractional" coordinates, the Cartesian coordinates divided by the
    cell lengths, ``f_i = x_i / |a_i|`` (cell in the standard frame: a along x, b in the xy
    plane), instead of ``x · cell⁻¹``. The two agree for rectangular cells; for the 2,058 of
    3,533 training cells that are not (hexagonal, oblique) every atom is misplaced:
    2H-MoS2 (C2DB MoS2-b3b4685fb6e1) reads with a Mo–S distance of 2.09 Å and layer group
    4 instead of 2.41 Å and p-6m2 (78), 1T-MoS2 as p1 instead of p-3m1 (72). Read as
    ``x = f ⊙ (|a|, |b|, |c|)`` (the *standard* reading), p1 falls from 31 % of the training
    labels to 1.1 %, the hexagonal groups 72 / 78 become the most common, and short
    contacts in non-rectangular cells fall to the level of rectangular ones (evidence:
    ``experiments/two_d/c2db_fix.py --check``).

    One family is written in another frame: γ = 60° X2Y6 cells (22 in train.csv, e.g.
    N2C6, Bi2Ge6, P2Pb6; none in val.csv) whose numbers are Cartesian / |a_i| in the frame
    whose x axis bisects a and b (the written y numbers come in ± pairs: the structure's
    mirror line along a + b is the written x axis). Read the standard way they have atoms
    at 0.13–0.49 × the covalent-radius sum and layer group 47; rotated by +γ/2 into the
    standard frame (:func:`cif_positions`, ``"rotated"``) they are p6/mmm (80) with
    contacts of 0.91–1.02 × the radius sum.

    **The rule** (:func:`repair_cif`), per structure, without reference to any expected
    answer: take the standard reading; only if it has a contact below
    ``IMPOSSIBLE_CONTACT_RATIO`` (0.6) × the covalent-radius sum, and the cell has γ within
    1° of 60°, try the rotated reading, and take it only if all its contacts are at least
    ``NORMAL_CONTACT_RATIO`` (0.8) × the radius sum. A correctly read cell never has an
    impossible contact, so the standard reading is never replaced on one; the alternative
    is never chosen "because it looks better", only because the standard one is
    physically impossible and the alternative is normal. (Contacts alone would not do:
    of 1,911 correct γ = 60° cells made from the hexagonal cells of train.csv and val.csv,
    which the rule all reads back unchanged, 821 would also read with normal contacts in the
    rotated frame, 2 of them with strictly *better* ones.) Every structure gets
    ``info["repair"]`` = ``"standard"``, ``"rotated"`` or ``"unrepairable"`` (neither
    reading possible: in train.csv only V4O8-9af1dad2fe67, γ = 60.2°, an O–V contact of
    1.26 Å = 0.57 × the radius sum, not cured by the rotated reading nor by any other
    in-plane rotation or reflection; none in val.csv).

    ``keep_unrepairable``: unrepairable structures are **excluded by default** (a training
    or reference set must not contain physically impossible structures, and a generative
    model would learn them; the drop is visible, not silent: their ``material_id`` are
    listed in ``dataset.source["excluded"]`` and the per-reading counts in
    ``dataset.source["repair_counts"]``). ``keep_unrepairable=True`` keeps them, flagged
    ``info["repair"] == "unrepairable"``, in their standard reading.

    ``repair_positions=False`` reads the CIFs as written (the label counts quoted in the
    data README), ``info["repair"] = "none"``, nothing excluded.

    Every structure has ``pbc = (True, True, False)`` and ``atoms.info`` with
    ``material_id``, ``band_gap``, ``workfunction`` (eV), ``csv_index`` (the row index
    column), ``repair`` and, with labels, ``layer_group``. Labels (int32 [len]) are layer
    groups 1–80 from spglib at ``symprec`` (Å); ``with_labels=False`` skips them.

    Raises :class:`DataError` naming the file (and the row) for a missing column, an
    unparsable CIF or an empty file.
    """
    p = check_file(path, "a C2DB CSV file")
    try:
        with open(p, newline="") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read {str(path)!r} as CSV: {err}") from err
    missing = [c for c in CSV_COLUMNS if c not in columns]
    if missing:
        raise DataError(
            f"{str(path)!r} is not a C2DB CSV: missing columns {missing} (found {columns[:8]})"
        )
    if not rows:
        raise DataError(f"{str(path)!r} contains no structures (header only)")
    index_col = columns[0] if columns[0] not in CSV_COLUMNS else None

    structures, excluded = [], []
    counts = {k: 0 for k in (REPAIR_KINDS if repair_positions else ("none",))}
    for k, row in enumerate(rows):
        where = f"{str(path)!r}, row {k} ({row.get('material_id')})"
        try:
            atoms = _from_cif(row["cif"] or "", repair=repair_positions)
        except Exception as err:
            raise DataError(f"{where}: cannot parse the CIF: {type(err).__name__}: {err}") from err
        if len(atoms) == 0:
            raise DataError(f"{where}: the CIF has no atoms")
        try:
            atoms.info.update(
                material_id=row["material_id"],
                band_gap=float(row["band_gap"]),
                workfunction=float(row["workfunction"]),
            )
            if index_col is not None:
                atoms.info["csv_index"] = int(row[index_col])
        except (TypeError, ValueError) as err:
            raise DataError(f"{where}: bad number: {err}") from err
        counts[atoms.info["repair"]] += 1
        if atoms.info["repair"] == "unrepairable" and not keep_unrepairable:
            excluded.append(row["material_id"])
            continue
        structures.append(atoms)
    if not structures:
        raise DataError(f"{str(path)!r}: every structure is unrepairable (excluded): {excluded[:8]}")

    labels = None
    if with_labels:
        labels = layer_group_labels(structures, symprec)
        for atoms, lab in zip(structures, labels):
            atoms.info["layer_group"] = int(lab)
    return Dataset(
        structures=structures,
        name=name or f"c2db:{p.stem}",
        labels=labels,
        source={"loader": "c2db_csv", "path": str(p), "symprec": symprec if with_labels else None,
                "repair_positions": repair_positions, "keep_unrepairable": keep_unrepairable,
                "repair_counts": counts, "excluded": excluded},
    )


# --------------------------------------------------------------------------------------
# ASE databases
# --------------------------------------------------------------------------------------


def _as_key_value(key: str, value: Any) -> Any | None:
    """``value`` as an ase.db key-value pair, or ``None`` if ase.db cannot hold it as one
    (reserved or formula-like key, non-scalar or non-finite value, numeric string)."""
    from ase.db.core import check

    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        pass
    elif isinstance(value, numbers.Real):
        if not np.isfinite(value):
            return None
    elif not isinstance(value, str):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check({key: value})
    except (ValueError, UserWarning):
        return None
    return value


def write_ase_db(dataset: Dataset, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``dataset`` to an ASE database (sqlite ``.db`` or ``.json``).

    Every structure is one row (positions, cell, pbc, and a calculator's energy / forces
    if attached). ``atoms.info`` entries that ase.db accepts as key-value pairs become
    key-value pairs; the others (arrays, reserved keys such as ``energy``) go to the row's
    ``data["info"]``. Labels are the key ``"label"``; the dataset name and source go to
    the database metadata. :func:`load_ase_db` reads it back unchanged.
    """
    import ase.db

    p = Path(path)
    if p.exists():
        if not overwrite:
            raise FileExistsError(f"{str(p)!r} exists; pass overwrite=True to replace it")
        p.unlink()
    db = ase.db.connect(str(p), append=False)
    with db:
        for k, atoms in enumerate(dataset.structures):
            kv, extra = {}, {}
            for key, value in atoms.info.items():
                v = _as_key_value(key, value) if key != LABEL_KEY else None
                if v is None:
                    extra[key] = value
                else:
                    kv[key] = v
            if dataset.labels is not None:
                kv[LABEL_KEY] = int(dataset.labels[k])
            db.write(atoms, key_value_pairs=kv, data={"info": extra} if extra else {})
    db.metadata = {
        "writer": "agedi_jax",
        "name": dataset.name,
        "source": dict(dataset.source),
        "label_key": LABEL_KEY if dataset.labels is not None else None,
    }
    return p


def _connect(path: str | Path):
    import ase.db

    p = check_file(path, "an ASE database")
    try:
        db = ase.db.connect(str(p))
        n = db.count()
        metadata = db.metadata
    except Exception as err:  # sqlite3.DatabaseError, json errors, ...
        raise DataError(f"cannot read {str(path)!r} as an ASE database: {type(err).__name__}: {err}") from err
    return p, db, n, metadata


def db_is_2d(path: str | Path) -> bool:
    """Whether every row of the ASE database at ``path`` has ``pbc = (True, True, False)``."""
    p, db, n, _ = _connect(path)
    return n > 0 and all(tuple(bool(x) for x in row.pbc) == PBC_2D for row in db.select())


def load_ase_db(
    path: str | Path,
    *,
    selection: Any = None,
    label_key: str | None = None,
    pbc: Sequence[bool] | None = None,
    name: str | None = None,
) -> Dataset:
    """Load the rows of an ASE database as a :class:`Dataset`.

    Key-value pairs (and, for files from :func:`write_ase_db`, ``data["info"]``) go to
    ``atoms.info``. Labels come from the integer key ``label_key`` (default: the one
    recorded by :func:`write_ase_db`, else no labels). ``selection`` is an ase.db query;
    ``pbc`` overrides every row's periodicity.
    """
    p, db, n, metadata = _connect(path)
    if label_key is None:
        label_key = metadata.get("label_key")
    structures, labels = [], []
    try:
        rows = list(db.select(selection))
    except Exception as err:
        raise DataError(f"cannot read rows of {str(path)!r}: {type(err).__name__}: {err}") from err
    for row in rows:
        atoms = row.toatoms()
        info = dict(row.key_value_pairs)
        data = row.get("data") or {}
        extra = data.get("info") if isinstance(data, dict) else None
        if isinstance(extra, dict):
            info.update(extra)
        if label_key is not None:
            if label_key not in info:
                raise DataError(f"{str(path)!r}: row {row.id} has no label key {label_key!r}")
            labels.append(int(info.pop(label_key)))
        atoms.info = info
        if pbc is not None:
            atoms.pbc = pbc
        structures.append(atoms)
    if not structures:
        raise DataError(
            f"{str(path)!r} contains no structures"
            + (f" matching {selection!r}" if selection is not None else "")
        )
    source = dict(metadata.get("source") or {})
    source.update(loader="ase_db", path=str(p))
    return Dataset(
        structures=structures,
        name=name or metadata.get("name") or p.stem,
        labels=labels if label_key is not None else None,
        source=source,
    )


def load_c2db_db(
    path: str | Path,
    symprec: float = DEFAULT_SYMPREC,
    with_labels: bool = True,
    *,
    selection: Any = None,
    name: str | None = None,
) -> Dataset:
    """Load 2D materials from an ASE database (the format C2DB is distributed in).

    Rows become Atoms with ``pbc = (True, True, False)`` and their key-value pairs in
    ``atoms.info``; labels are recomputed as layer groups (1–80) with spglib at
    ``symprec`` (Å), exactly as :func:`load_c2db_csv`, and stored as
    ``info["layer_group"]``.
    """
    ds = load_ase_db(path, selection=selection, pbc=PBC_2D, name=name)
    labels = None
    if with_labels:
        labels = layer_group_labels(ds.structures, symprec)
        for atoms, lab in zip(ds.structures, labels):
            atoms.info["layer_group"] = int(lab)
    source = dict(ds.source)
    source.update(loader="c2db_db", symprec=symprec if with_labels else None)
    return Dataset(
        structures=ds.structures,
        name=name or ds.name,
        labels=labels,
        source=source,
    )
