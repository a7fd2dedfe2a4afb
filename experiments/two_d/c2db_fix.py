"""Repair of the atomic positions of the C2DB CSV split (train.csv / val.csv), and a check.

The CIFs in the CSV files carry, as "fractional" coordinates, the *Cartesian* coordinates
divided by the cell lengths, ``f_i = x_i / |a_i|`` (x in the standard frame: a along x, b in
the xy plane, c along z), instead of ``x · cell⁻¹``. For rectangular cells the two agree;
for the 2,058 of 3,533 training cells that are not rectangular (hexagonal γ = 120°, γ = 60°,
oblique) every atom is displaced. 2H-MoS2 then reads as layer group 4 (p11m) instead of
p-6m2 (78), 1T-MoS2 as 1 (p1) instead of p-3m1 (72): p1 is 31 % of the raw labels but
1.1 % after the repair, and short contacts (d < 0.7 (r_i + r_j)) in the non-rectangular
cells drop from 9.3 % of the structures to 1.4 % (0.3 % in rectangular cells).

The *standard* repair is ``x = f ⊙ (|a|, |b|, |c|)`` from the CIF's numbers as written
(before any wrapping: ASE's CIF reader wraps f into [0, 1), which for a skewed cell is not a
lattice translation of the true positions), then wrapping in-plane; cell, composition and
metadata are unchanged.

One family needs more: 22 γ = 60° X2Y6 training cells (none in val.csv) are written in the
frame whose x axis bisects a and b. Read the standard way their contacts are 0.13–0.49 ×
the covalent-radius sum (layer group 47); rotated by +γ/2 into the standard frame they are
p6/mmm (80) with contacts 0.91–1.02. The package (:func:`agedi_jax.data.c2db.repair_cif`)
uses the rotated reading only when the standard one has an impossible contact
(< 0.6 × radius sum), the cell has γ ≈ 60° and the rotated reading is normal (≥ 0.8); what
neither reading cures (train.csv: V4O8-9af1dad2fe67) is flagged "unrepairable" and
excluded by default (:func:`agedi_jax.data.load_c2db_csv`, ``keep_unrepairable``).

``python -m experiments.two_d.c2db_fix --check`` compares the raw, the standard-only and the
package's reading of every cell (label counts, contacts, the rotated family, the
unrepairable cells, the short-but-kept cells, and how ambiguous contacts alone would be on
the γ ≈ 60° cells) and writes ``results/data_fix.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

from agedi_jax.data import load_c2db_csv
from agedi_jax.data.c2db import (
    IMPOSSIBLE_CONTACT_RATIO,
    NORMAL_CONTACT_RATIO,
    cif_fractional_as_written,
    cif_positions,
    in_rotated_family,
    layer_group_labels,
    min_contact_ratio,
)
from agedi_jax.data.dataset import check_path
from experiments.common import data_path, write_json

SHORT = 0.7  # the "short contact" level of the earlier check


def _same_periodic(a, b, tol: float = 1e-3) -> bool:
    """Equal positions up to in-plane lattice translations."""
    d = a.cell.scaled_positions(a.positions) - a.cell.scaled_positions(b.positions)
    d[:, :2] -= np.round(d[:, :2])
    return bool(np.all(np.abs(d @ np.asarray(a.cell)) < tol))


def _shortest_pair(atoms) -> str:
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    radii = covalent_radii[atoms.numbers]
    i, j, d = neighbor_list("ijd", atoms, list(1.5 * radii))
    if len(d) == 0:
        return ""
    m = int(np.argmin(d / (radii[i] + radii[j])))
    s = atoms.get_chemical_symbols()
    return f"{s[i[m]]}-{s[j[m]]} {d[m]:.2f} A"


def _best_inplane_rotation(cif: str, step: float = 1.0) -> dict:
    """Largest shortest-contact ratio over every in-plane rotation (and reflection y -> -y)
    of the written frame: whether *any* rigid in-plane frame error could explain a cell."""
    from ase import Atoms

    base = cif_positions(cif, "standard")
    x0 = base.positions.copy()
    best = (-1.0, 0.0, False)
    for mirror in (False, True):
        x = x0 * np.array([1.0, -1.0, 1.0]) if mirror else x0
        for th in np.arange(0.0, 360.0, step):
            t = np.radians(th)
            rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
            a = Atoms(numbers=base.numbers, positions=x @ rot.T, cell=base.cell, pbc=base.pbc)
            a.wrap()
            r = min_contact_ratio(a)
            if r > best[0]:
                best = (r, float(th), mirror)
    return dict(ratio=round(best[0], 3), angle_deg=best[1], mirrored=best[2])


def faulty_cif(atoms) -> str:
    """A P1 CIF of ``atoms`` in the CSV split's faulty form: ``_atom_site_fract_*`` =
    Cartesian (standard frame of the written cell) / cell lengths."""
    from ase.geometry import cellpar_to_cell

    par = atoms.cell.cellpar()
    cell = cellpar_to_cell(par)  # the frame a reader rebuilds from the written numbers
    x = atoms.cell.scaled_positions(atoms.positions) @ cell
    f = x / np.linalg.norm(cell, axis=1)
    lines = ["data_control", "_symmetry_space_group_name_H-M   'P 1'"]
    lines += [f"_cell_length_{k}   {v:.8f}" for k, v in zip("abc", par[:3])]
    lines += [f"_cell_angle_{k}   {v:.8f}" for k, v in zip(("alpha", "beta", "gamma"), par[3:])]
    lines += ["loop_", " _atom_site_type_symbol", " _atom_site_label", " _atom_site_fract_x",
              " _atom_site_fract_y", " _atom_site_fract_z", " _atom_site_occupancy"]
    lines += [f"  {s}  {s}{k}  {p[0]:.8f}  {p[1]:.8f}  {p[2]:.8f}  1"
              for k, (s, p) in enumerate(zip(atoms.get_chemical_symbols(), f))]
    return "\n".join(lines) + "\n"


def gamma_60_controls(structures) -> dict:
    """Correct γ = 60° cells, made from the correctly read hexagonal γ = 120° cells with |a| = |b|
    (same atoms, cell (a, a + b)) and written in the faulty standard form: the rule must read
    them back unchanged ("standard"). Also: how often the rotated reading of such a correct cell
    is itself physically normal, i.e. how often "take the reading with the better contacts"
    would be ambiguous."""
    from ase import Atoms

    from agedi_jax.data.c2db import repair_cif

    n = kept = same = rot_normal = rot_better = 0
    for a in structures:
        la, lb = a.cell.lengths()[:2]
        if a.info.get("repair") != "standard" or abs(a.cell.angles()[2] - 120.0) > 0.5 or abs(la - lb) > 1e-3 * la:
            continue
        cell = np.array(a.cell)
        c60 = Atoms(numbers=a.numbers, positions=a.positions, cell=[cell[0], cell[0] + cell[1], cell[2]], pbc=a.pbc)
        cif = faulty_cif(c60)
        back = repair_cif(cif)
        ref = cif_positions(cif, "standard")
        r_std, r_rot = min_contact_ratio(ref), min_contact_ratio(cif_positions(cif, "rotated"))
        n += 1
        kept += back.info["repair"] == "standard"
        same += _same_periodic(back, ref) and _same_periodic(ref, Atoms(numbers=a.numbers, positions=a.positions,
                                                                         cell=ref.cell, pbc=a.pbc), tol=1e-2)
        rot_normal += r_rot >= NORMAL_CONTACT_RATIO
        rot_better += r_rot > r_std + 1e-6  # strictly better, not a rounding tie
    return dict(n=n, read_back_standard=int(kept), positions_unchanged=int(same),
                rotated_reading_also_normal=int(rot_normal), rotated_reading_better_contacts=int(rot_better))


def check(path: str | Path) -> dict:
    """Raw vs standard-only vs the package's repair (rotated family, unrepairable cells)."""
    with open(check_path(path), newline="") as fh:  # $AGEDI_JAX_DATA expanded
        rows = list(csv.DictReader(fh))
    ids = [r["material_id"] for r in rows]
    raw = [cif_positions(r["cif"], "raw") for r in rows]
    std = [cif_positions(r["cif"], "standard") for r in rows]
    pkg = load_c2db_csv(path, keep_unrepairable=True)  # every row, flagged
    default = load_c2db_csv(path)  # the default: unrepairable ones excluded
    assert [a.info["material_id"] for a in pkg] == ids
    kind = np.array([a.info["repair"] for a in pkg])
    gamma = np.array([a.cell.angles()[2] for a in std])
    skew = np.abs(gamma - 90.0) > 1e-3
    r_raw = np.array([min_contact_ratio(a) for a in raw])
    r_std = np.array([min_contact_ratio(a) for a in std])
    r_pkg = np.array([min_contact_ratio(a) for a in pkg])
    lab_raw = layer_group_labels(raw)
    lab_std = layer_group_labels(std)
    lab_pkg = pkg.labels

    def stats(r, m):
        return dict(n=int(m.sum()), median=round(float(np.median(r[m])), 3),
                    p5=round(float(np.percentile(r[m], 5)), 3),
                    frac_below_0_7=round(float(np.mean(r[m] < SHORT)), 4),
                    n_below_0_6=int(np.sum(r[m] < IMPOSSIBLE_CONTACT_RATIO)))

    def cell_row(k):
        f = cif_fractional_as_written(rows[k]["cif"])
        return dict(material_id=ids[k], formula=std[k].get_chemical_formula(), gamma=round(float(gamma[k]), 2),
                    a_b=[round(float(x), 3) for x in std[k].cell.lengths()[:2]],
                    written_y_in_pm_pairs=bool(np.allclose(np.sort(f[:, 1]), np.sort(-f[:, 1]), atol=1e-6)),
                    ratio_raw=round(float(r_raw[k]), 3), ratio_standard=round(float(r_std[k]), 3),
                    ratio_rotated=round(min_contact_ratio(cif_positions(rows[k]["cif"], "rotated")), 3),
                    ratio_kept=round(float(r_pkg[k]), 3), shortest_standard=_shortest_pair(std[k]),
                    lg_raw=int(lab_raw[k]), lg_standard=int(lab_std[k]), lg_kept=int(lab_pkg[k]))

    rotated = [cell_row(k) for k in np.where(kind == "rotated")[0]]
    unrepairable = []
    for k in np.where(kind == "unrepairable")[0]:
        row = cell_row(k)
        row["best_any_inplane_rotation_or_reflection"] = _best_inplane_rotation(rows[k]["cif"])
        unrepairable.append(row)
    short_kept = [dict(material_id=ids[k], formula=std[k].get_chemical_formula(), gamma=round(float(gamma[k]), 2),
                       ratio=round(float(r_pkg[k]), 3), shortest=_shortest_pair(pkg[k]), lg=int(lab_pkg[k]),
                       standard_equals_raw=_same_periodic(raw[k], std[k]))
                  for k in np.where((r_pkg < SHORT) & (kind != "unrepairable"))[0]]

    # Why "only when the standard reading is impossible": on correctly read γ ≈ 60° cells the
    # rotated reading is often *also* physically normal, so contacts alone do not pick the frame.
    fam = np.array([in_rotated_family(a.cell) for a in std])
    ok60 = np.where(fam & (kind == "standard"))[0]
    r_rot60 = np.array([min_contact_ratio(cif_positions(rows[k]["cif"], "rotated")) for k in ok60])
    lab_rot60 = layer_group_labels([cif_positions(rows[k]["cif"], "rotated") for k in ok60])
    ambiguity = dict(
        n_gamma_60_cells=int(fam.sum()), n_gamma_60_standard=int(len(ok60)),
        n_standard_also_normal_when_rotated=int(np.sum(r_rot60 >= NORMAL_CONTACT_RATIO)),
        n_rotated_better_contacts_than_standard=int(np.sum(r_rot60 > r_std[ok60])),
        n_same_layer_group_when_rotated=int(np.sum(lab_rot60 == lab_std[ok60])),
    )

    c_std, c_pkg, c_def = (Counter(int(x) for x in lab) for lab in (lab_std, lab_pkg, default.labels))
    groups = sorted(set(c_std) | set(c_def))
    label_change = {str(g): [c_std[g], c_def[g]] for g in groups if c_std[g] != c_def[g]}
    return dict(
        file=str(path), n=len(rows), n_non_rectangular=int(skew.sum()),
        thresholds=dict(impossible=IMPOSSIBLE_CONTACT_RATIO, normal=NORMAL_CONTACT_RATIO, short=SHORT),
        repair_counts=dict(Counter(kind.tolist())),
        n_changed_by_standard_vs_raw=int(sum(not _same_periodic(a, b) for a, b in zip(raw, std))),
        n_changed_by_rotated_vs_standard=len(rotated),
        n_loaded_default=len(default), excluded_default=list(default.source["excluded"]),
        rotated_family=rotated, unrepairable=unrepairable, short_but_kept=short_kept,
        gamma_60_ambiguity=ambiguity, gamma_60_controls_from_hexagonal=gamma_60_controls(pkg.structures),
        labels_raw=dict(Counter(int(x) for x in lab_raw).most_common()),
        labels_standard_only=dict(c_std.most_common()),
        labels_repaired=dict(c_def.most_common()),
        labels_repaired_keep_unrepairable=dict(c_pkg.most_common()),
        label_change_standard_only_to_repaired=label_change,
        p1_fraction_raw=round(float(np.mean(lab_raw == 1)), 4),
        p1_fraction_repaired=round(float(np.mean(default.labels == 1)), 4),
        contact_ratio_raw_non_rectangular=stats(r_raw, skew),
        contact_ratio_standard_non_rectangular=stats(r_std, skew),
        contact_ratio_repaired_non_rectangular=stats(r_pkg, skew & (kind != "unrepairable")),
        contact_ratio_rectangular=stats(r_raw, ~skew),
        rectangular_positions_unchanged=bool(all(_same_periodic(a, b) for a, b, s in zip(raw, pkg, skew) if not s)),
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", nargs="*", default=None, metavar="CSV",
                    help="C2DB CSV files (default, also for a bare --check: train.csv and val.csv)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "data_fix.json")
    args = ap.parse_args(argv)
    paths = args.check or [data_path("c2db/train.csv"), data_path("c2db/val.csv")]
    res = [check(p) for p in paths]
    write_json(args.out, res)
    for r in res:
        print(f"{r['file']}: {r['n']} cells, {r['n_non_rectangular']} non-rectangular; readings "
              f"{r['repair_counts']}; standard changes {r['n_changed_by_standard_vs_raw']} cells, rotated "
              f"{r['n_changed_by_rotated_vs_standard']}; loaded by default {r['n_loaded_default']} "
              f"(excluded {r['excluded_default']})")
        for name in ("rotated_family", "unrepairable"):
            print(f"  {name}: {len(r[name])}")
            for c in r[name]:
                extra = c.get("best_any_inplane_rotation_or_reflection", "")
                print(f"    {c['material_id']:28s} {c['formula']:10s} gamma {c['gamma']:6.2f} ratio std "
                      f"{c['ratio_standard']:.3f} -> rot {c['ratio_rotated']:.3f} (kept {c['ratio_kept']:.3f}) "
                      f"lg {c['lg_standard']} -> {c['lg_kept']}  y+-pairs {c['written_y_in_pm_pairs']} {extra}")
        print(f"  short (< {SHORT}) but kept: " + ", ".join(f"{c['material_id']} {c['ratio']:.3f} ({c['shortest']}, lg "
                                                          f"{c['lg']})" for c in r["short_but_kept"]))
        print("  gamma~60 ambiguity:", json.dumps(r["gamma_60_ambiguity"]))
        print("  gamma=60 controls (correct cells):", json.dumps(r["gamma_60_controls_from_hexagonal"]))
        print("  label change (standard-only -> repaired):", r["label_change_standard_only_to_repaired"])
        print("  p1 raw / repaired:", r["p1_fraction_raw"], r["p1_fraction_repaired"])
        for k in ("contact_ratio_raw_non_rectangular", "contact_ratio_standard_non_rectangular",
                  "contact_ratio_repaired_non_rectangular", "contact_ratio_rectangular"):
            print(f"  {k}: {r[k]}")
        print("  top raw:", list(r["labels_raw"].items())[:8])
        print("  top repaired:", list(r["labels_repaired"].items())[:8])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
