"""Repair of the atomic positions of the C2DB CSV split (train.csv / val.csv), and a check.

The CIFs in the CSV files carry, as "fractional" coordinates, the *Cartesian* coordinates
divided by the cell lengths, ``f_i = x_i / |a_i|`` (x in the standard frame: a along x, b in
the xy plane, c along z), instead of ``x · cell⁻¹``. For rectangular cells the two agree;
for the 2,058 of 3,533 training cells that are not rectangular (hexagonal γ = 120°, γ = 60°,
oblique) every atom is displaced. 2H-MoS2 then reads as layer group 4 (p11m) instead of
p-6m2 (78), 1T-MoS2 as 1 (p1) instead of p-3m1 (72): p1 is 31 % of the raw labels but
1.1 % after the repair, and short contacts (d < 0.7 (r_i + r_j)) in the non-rectangular
cells drop from 9.3 % of the structures to 1.4 % (0.3 % in rectangular cells). Evidence:
``python experiments/two_d/c2db_fix.py --check`` (results in ``data_fix.json``).

The repair is ``x = f ⊙ (|a|, |b|, |c|)`` from the CIF's numbers as written (before any
wrapping: ASE's CIF reader and :func:`agedi_jax.data.load_c2db_csv` wrap f into [0, 1),
which for a skewed cell is not a lattice translation of the true positions), then wrapping
in-plane. Cell, composition and metadata are unchanged; labels (layer groups, spglib at
symprec 0.1) are recomputed on the repaired positions.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from agedi_jax.data import load_c2db_csv
from agedi_jax.data.c2db import layer_group_labels
from agedi_jax.data.dataset import Dataset
from agedi_jax.symmetry import DEFAULT_SYMPREC

SHARED = os.environ.get("AGEDI_JAX_DATA", "../shared/data")  # the shared data (run from the repository root)


def cif_fractional(cif: str) -> np.ndarray:
    """``[n, 3]`` the ``_atom_site_fract_{x,y,z}`` columns of a CIF exactly as written
    (no wrapping). Raises ``ValueError`` if the atom-site loop is missing."""
    lines = [ln.strip() for ln in cif.splitlines()]
    out = []
    k = 0
    while k < len(lines):
        if lines[k] == "loop_" and k + 1 < len(lines) and lines[k + 1].startswith("_atom_site_"):
            k += 1
            header = []
            while k < len(lines) and lines[k].startswith("_"):
                header.append(lines[k])
                k += 1
            cols = [header.index(f"_atom_site_fract_{c}") for c in "xyz"]
            while k < len(lines) and lines[k] and not lines[k].startswith(("_", "loop_", "#")):
                tok = lines[k].split()
                out.append([float(tok[c]) for c in cols])
                k += 1
            break
        k += 1
    if not out:
        raise ValueError("no _atom_site_fract_x/y/z loop in the CIF")
    return np.asarray(out, np.float64)


def repaired_positions(cell: np.ndarray, frac_as_written: np.ndarray) -> np.ndarray:
    """Cartesian positions ``[n, 3]`` (Å): ``f ⊙ (|a|, |b|, |c|)``; the cell must be in the
    standard frame (a along x, b in xy, c along z) as ASE builds it from CIF cell
    parameters."""
    cell = np.asarray(cell, np.float64)
    if abs(cell[0, 1]) > 1e-8 or abs(cell[0, 2]) > 1e-8 or abs(cell[1, 2]) > 1e-8:
        raise ValueError(f"cell not in the standard frame (a along x, b in xy): {cell.tolist()}")
    return np.asarray(frac_as_written, np.float64) * np.linalg.norm(cell, axis=1)


def load_c2db_repaired(path: str | Path, symprec: float = DEFAULT_SYMPREC, with_labels: bool = True) -> Dataset:
    """:func:`agedi_jax.data.load_c2db_csv` with the positions repaired (module docstring)
    and the layer groups recomputed; ``info["layer_group_raw"]`` keeps the raw label."""
    raw = load_c2db_csv(path, symprec=symprec, with_labels=with_labels)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if len(rows) != len(raw):
        raise ValueError(f"{path}: {len(rows)} rows but {len(raw)} structures")
    structures = []
    for atoms, row in zip(raw.structures, rows):
        frac = cif_fractional(row["cif"])
        if frac.shape[0] != len(atoms):
            raise ValueError(f"{path}, {row['material_id']}: {frac.shape[0]} sites but {len(atoms)} atoms")
        a = atoms.copy()
        a.positions = repaired_positions(np.asarray(a.cell), frac)
        a.wrap()
        if with_labels:
            a.info["layer_group_raw"] = int(atoms.info["layer_group"])
        structures.append(a)
    labels = None
    if with_labels:
        labels = layer_group_labels(structures, symprec)
        for a, lab in zip(structures, labels):
            a.info["layer_group"] = int(lab)
    source = dict(raw.source, positions="repaired: x = f * |a_i| (experiments/two_d/c2db_fix.py)")
    return Dataset(structures=structures, name=raw.name + ":repaired", labels=labels, source=source)


def _min_contact_ratio(atoms) -> float:
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", atoms, 6.0)
    if len(d) == 0:
        return float("nan")
    return float(np.min(d / (covalent_radii[atoms.numbers[i]] + covalent_radii[atoms.numbers[j]])))


def _same_periodic(a, b, tol: float = 1e-3) -> bool:
    """Equal positions up to in-plane lattice translations."""
    d = a.cell.scaled_positions(a.positions) - a.cell.scaled_positions(b.positions)
    d[:, :2] -= np.round(d[:, :2])
    return bool(np.all(np.abs(d @ np.asarray(a.cell)) < tol))


def check(path: str | Path) -> dict:
    """Raw vs repaired: label distribution and shortest contact / (r_cov,i + r_cov,j)."""
    raw = load_c2db_csv(path)
    rep = load_c2db_repaired(path)
    skew = np.array([abs(a.cell.angles()[2] - 90.0) > 1e-3 for a in raw.structures])
    r_raw = np.array([_min_contact_ratio(a) for a in raw.structures])
    r_rep = np.array([_min_contact_ratio(a) for a in rep.structures])

    def stats(r, m):
        return dict(median=round(float(np.nanmedian(r[m])), 3), p5=round(float(np.nanpercentile(r[m], 5)), 3),
                    frac_below_0_7=round(float(np.mean(r[m] < 0.7)), 4))

    return dict(
        file=str(path), n=len(raw), n_non_rectangular=int(skew.sum()),
        labels_raw=dict(Counter(int(x) for x in raw.labels).most_common()),
        labels_repaired=dict(Counter(int(x) for x in rep.labels).most_common()),
        p1_fraction_raw=round(float(np.mean(raw.labels == 1)), 4),
        p1_fraction_repaired=round(float(np.mean(rep.labels == 1)), 4),
        contact_ratio_raw_non_rectangular=stats(r_raw, skew),
        contact_ratio_repaired_non_rectangular=stats(r_rep, skew),
        contact_ratio_rectangular=stats(r_raw, ~skew),
        rectangular_positions_unchanged=bool(all(_same_periodic(a, b) for a, b, s in
                                                 zip(raw.structures, rep.structures, skew) if not s)),
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", nargs="*", default=[SHARED + "/c2db/train.csv", SHARED + "/c2db/val.csv"])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "data_fix.json")
    args = ap.parse_args(argv)
    res = [check(p) for p in args.check]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    for r in res:
        print(json.dumps({k: v for k, v in r.items() if not k.startswith("labels")}))
        print("  top raw:", list(r["labels_raw"].items())[:8])
        print("  top repaired:", list(r["labels_repaired"].items())[:8])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
