"""Repair of the atomic positions of the C2DB CSV split (train.csv / val.csv), and a check.

The CIFs in the CSV files carry, as "fractional" coordinates, the *Cartesian* coordinates
divided by the cell lengths, ``f_i = x_i / |a_i|`` (x in the standard frame: a along x, b in
the xy plane, c along z), instead of ``x · cell⁻¹``. For rectangular cells the two agree;
for the 2,058 of 3,533 training cells that are not rectangular (hexagonal γ = 120°, γ = 60°,
oblique) every atom is displaced. 2H-MoS2 then reads as layer group 4 (p11m) instead of
p-6m2 (78), 1T-MoS2 as 1 (p1) instead of p-3m1 (72): p1 is 31 % of the raw labels but
1.1 % after the repair, and short contacts (d < 0.7 (r_i + r_j)) in the non-rectangular
cells drop from 9.3 % of the structures to 1.4 % (0.3 % in rectangular cells). Evidence:
``python -m experiments.two_d.c2db_fix --check`` (results in ``data_fix.json``).

The repair is ``x = f ⊙ (|a|, |b|, |c|)`` from the CIF's numbers as written (before any
wrapping: ASE's CIF reader wraps f into [0, 1), which for a skewed cell is not a lattice
translation of the true positions), then wrapping in-plane; cell, composition and metadata
are unchanged, labels (layer groups, spglib at symprec 0.1) come from the repaired
positions. The package applies it on load (:func:`agedi_jax.data.load_c2db_csv`,
``repair_positions=True``, the default); this script compares the raw and the repaired
reading.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from agedi_jax.data import load_c2db_csv
from experiments.common import data_path


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
    raw = load_c2db_csv(path, repair_positions=False)
    rep = load_c2db_csv(path)
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
    ap.add_argument("--check", nargs="*", default=[data_path("c2db/train.csv"), data_path("c2db/val.csv")])
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
