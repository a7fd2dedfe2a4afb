"""Repair of the C2DB CSV positions (agedi_jax.data.c2db): the standard reading, the
rotated-frame γ = 60° X2Y6 family, and unrepairable cells (issue 15, item 6).

Oracles are built with ASE and written as CIF text here, independently of the package's
reader: a p6/mmm X2Y6 layer in a γ = 60° cell written in the bisector frame (the rotated
family), the same layer and hexagonal MoS2 written the standard (faulty) way, and an
impossible structure."""

from __future__ import annotations

import csv
import re
from collections import Counter

import ase.build
import numpy as np
import pytest
from ase import Atoms
from ase.data import covalent_radii
from ase.geometry import cellpar_to_cell
from ase.neighborlist import neighbor_list

from agedi_jax.data import DataError, load_c2db_csv
from agedi_jax.data.c2db import (
    IMPOSSIBLE_CONTACT_RATIO,
    cif_positions,
    min_contact_ratio,
    repair_cif,
)
from agedi_jax.symmetry import layer_group

pytestmark = pytest.mark.filterwarnings("ignore:.*OLD_ERROR_HANDLING:DeprecationWarning")


def _ratio(atoms) -> float:
    """Shortest d / (r_i + r_j) with a fixed 6 Å search (independent of the package)."""
    i, j, d = neighbor_list("ijd", atoms, 6.0)
    return float(np.min(d / (covalent_radii[atoms.numbers[i]] + covalent_radii[atoms.numbers[j]])))


def _rot(deg: float) -> np.ndarray:
    t = np.radians(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


def _cif(atoms, frame_rotation_deg: float = 0.0) -> str:
    """P1 CIF in the CSV split's faulty form: the 'fractional' fields hold Cartesian
    coordinates / cell lengths, the Cartesian frame being ASE's standard one rotated by
    ``frame_rotation_deg`` about z (0: standard faulty form; -γ/2: the rotated family)."""
    par = atoms.cell.cellpar()
    cell = cellpar_to_cell(par)  # the frame a reader rebuilds from lengths and angles
    x = atoms.cell.scaled_positions(atoms.positions) @ cell  # no wrapping
    f = (x @ _rot(frame_rotation_deg).T) / par[:3]
    out = ["# test oracle", "data_oracle", "_symmetry_space_group_name_H-M   'P 1'"]
    out += [f"_cell_length_{k}   {v:.8f}" for k, v in zip("abc", par[:3])]
    out += [f"_cell_angle_{k}   {v:.8f}" for k, v in zip(("alpha", "beta", "gamma"), par[3:])]
    out += ["_symmetry_Int_Tables_number   1", "loop_", " _symmetry_equiv_pos_site_id",
            " _symmetry_equiv_pos_as_xyz", "  1  'x, y, z'", "loop_", " _atom_site_type_symbol",
            " _atom_site_label", " _atom_site_symmetry_multiplicity", " _atom_site_fract_x",
            " _atom_site_fract_y", " _atom_site_fract_z", " _atom_site_occupancy"]
    out += [f"  {s}  {s}{k}  1  {p[0]:.8f}  {p[1]:.8f}  {p[2]:.8f}  1"
            for k, (s, p) in enumerate(zip(atoms.get_chemical_symbols(), f))]
    return "\n".join(out) + "\n"


def _same_periodic(a, b, tol: float = 1e-4) -> bool:
    """Same species and positions up to in-plane lattice translations."""
    if list(a.numbers) != list(b.numbers):
        return False
    d = a.cell.scaled_positions(a.positions) - a.cell.scaled_positions(b.positions)
    d[:, :2] -= np.round(d[:, :2])
    return bool(np.all(np.linalg.norm(d @ np.asarray(a.cell), axis=1) < tol))


# Planar p6/mmm X2Y6 layers in a γ = 60° cell (fractional in-plane positions), like the
# C2DB family: the kagome-type N2C6 and the Bi2C6 type.
_X2Y6 = {
    "N2C6": (4.858, "N", [(1 / 6, 1 / 6), (1 / 2, 1 / 2)], "C",
             [(0, 0), (0, 1 / 2), (1 / 2, 0), (1 / 6, 2 / 3), (2 / 3, 1 / 6), (2 / 3, 2 / 3)]),
    "Bi2C6": (6.470, "Bi", [(1 / 6, 1 / 6), (1 / 2, 1 / 2)], "C",
              [(0.9572, 0.9572), (0.9572, 0.5856), (0.5856, 0.9572), (0.0812, 0.7094), (0.7094, 0.0812),
               (0.7094, 0.7094)]),
}


def _x2y6(kind: str) -> Atoms:
    a, x, xs, y, ys = _X2Y6[kind]
    cell = cellpar_to_cell([a, a, 15.0, 90, 90, 60])
    frac = [(u, v, 0.5) for u, v in xs + ys]
    return Atoms(symbols=[x] * 2 + [y] * 6, scaled_positions=frac, cell=cell, pbc=(True, True, False))


@pytest.mark.parametrize("kind", sorted(_X2Y6))
def test_rotated_family_oracle(kind):
    truth = _x2y6(kind)
    assert layer_group(truth) == 80 and _ratio(truth) > 0.85  # p6/mmm, normal contacts
    cif = _cif(truth, frame_rotation_deg=-30.0)  # bisector frame: a at -γ/2, b at +γ/2
    # The written y numbers come in ± pairs (mirror line of the layer along the written x).
    f = np.array([[float(t) for t in ln.split()[3:5]] for ln in cif.splitlines() if re.match(r"\s+[A-Z][a-z]?\s", ln)])
    np.testing.assert_allclose(np.sort(f[:, 1]), np.sort(-f[:, 1]), atol=1e-7)
    # The standard reading is the symptom of the issue: impossible contacts, layer group 47.
    std = cif_positions(cif, "standard")
    assert _ratio(std) < 0.5 and layer_group(std) != 80
    back = repair_cif(cif)
    assert back.info["repair"] == "rotated"
    assert _same_periodic(back, truth)
    assert layer_group(back) == 80 and abs(_ratio(back) - _ratio(truth)) < 1e-6
    # The same, correct γ = 60° cell written in the standard frame is not touched.
    plain = repair_cif(_cif(truth))
    assert plain.info["repair"] == "standard" and _same_periodic(plain, truth) and layer_group(plain) == 80


@pytest.mark.parametrize("kind,group", [("2H", 78), ("1T", 72)])
def test_hexagonal_mx2_unchanged(kind, group):
    mos2 = ase.build.mx2("MoS2", kind=kind, a=3.18, vacuum=8.0)
    mos2.pbc = (True, True, False)
    assert abs(mos2.cell.angles()[2] - 120.0) < 1e-6
    back = repair_cif(_cif(mos2))
    assert back.info["repair"] == "standard" and _same_periodic(back, mos2)
    assert layer_group(back) == group
    # Its γ = 60° cell (a, a + b), a correct cell of the family's shape, stays standard too,
    # although its rotated reading would also give physically normal contacts.
    c = np.array(mos2.cell)
    m60 = Atoms(numbers=mos2.numbers, positions=mos2.positions, cell=[c[0], c[0] + c[1], c[2]], pbc=mos2.pbc)
    cif60 = _cif(m60)
    back60 = repair_cif(cif60)
    assert back60.info["repair"] == "standard" and layer_group(back60) == group
    assert _same_periodic(back60, Atoms(numbers=m60.numbers, positions=m60.positions, cell=back60.cell, pbc=m60.pbc))
    # The raw reading (CIF as written) misplaces the atoms of this skewed cell.
    assert not _same_periodic(cif_positions(cif60, "raw"), back60, tol=1e-2)


def _impossible() -> Atoms:
    """A γ = 60° cell (the family's shape) with a 0.5 Å N–C contact: no reading cures it."""
    a = _x2y6("N2C6")
    a += Atoms("C", positions=[a.positions[1] + [0.5, 0.0, 0.0]])
    return a


def _write_csv(path, cifs: dict[str, str]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["", "material_id", "band_gap", "workfunction", "cif"])
        for k, (mid, cif) in enumerate(cifs.items()):
            w.writerow([k, mid, 1.0, 4.5, cif])


def test_unrepairable_flagged_and_excluded(tmp_path):
    bad = _impossible()
    assert _ratio(bad) < IMPOSSIBLE_CONTACT_RATIO
    assert repair_cif(_cif(bad)).info["repair"] == "unrepairable"
    assert repair_cif(_cif(bad, -30.0)).info["repair"] == "unrepairable"
    # Rectangular cells are never candidates for the rotated reading.
    rect = Atoms("C2", positions=[[1, 1, 7.5], [1.4, 1, 7.5]], cell=[4, 5, 15], pbc=(True, True, False))
    assert repair_cif(_cif(rect)).info["repair"] == "unrepairable"

    mos2 = ase.build.mx2("MoS2", kind="2H", a=3.18, vacuum=8.0)
    path = tmp_path / "mixed.csv"
    _write_csv(path, {"MoS2-x": _cif(mos2), "N2C6-x": _cif(_x2y6("N2C6"), -30.0), "bad-x": _cif(bad),
                      "bad-rect": _cif(rect)})
    ds = load_c2db_csv(path)  # default: unrepairable structures excluded
    assert [a.info["material_id"] for a in ds] == ["MoS2-x", "N2C6-x"]
    assert [a.info["repair"] for a in ds] == ["standard", "rotated"]
    assert ds.labels.tolist() == [78, 80] and [a.info["csv_index"] for a in ds] == [0, 1]
    assert ds.source["excluded"] == ["bad-x", "bad-rect"]
    assert ds.source["repair_counts"] == {"standard": 1, "rotated": 1, "unrepairable": 2}
    assert ds.source["keep_unrepairable"] is False
    kept = load_c2db_csv(path, keep_unrepairable=True, with_labels=False)
    assert [a.info["repair"] for a in kept] == ["standard", "rotated", "unrepairable", "unrepairable"]
    assert kept.source["excluded"] == [] and kept.labels is None
    raw = load_c2db_csv(path, repair_positions=False, with_labels=False)
    assert len(raw) == 4 and {a.info["repair"] for a in raw} == {"none"}
    assert raw.source["repair_counts"] == {"none": 4}

    only_bad = tmp_path / "bad.csv"
    _write_csv(only_bad, {"bad-x": _cif(bad)})
    with pytest.raises(DataError, match="unrepairable"):
        load_c2db_csv(only_bad)


def _ase_ratio(atoms, upto: float = 1.5) -> float:
    radii = covalent_radii[atoms.numbers]
    i, j, d = neighbor_list("ijd", atoms, list(upto * radii))
    return float(np.min(d / (radii[i] + radii[j]))) if len(d) else float("inf")


def test_min_contact_ratio_matches_ase_neighbor_list():
    for atoms in (_x2y6("N2C6"), _x2y6("Bi2C6"), _impossible(), ase.build.mx2("MoS2", vacuum=8.0)):
        atoms.pbc = (True, True, False)
        assert abs(min_contact_ratio(atoms) - _ratio(atoms)) < 1e-12
    lone = Atoms("Ar", positions=[[0, 0, 7]], cell=[9, 9, 15], pbc=(True, True, False))
    assert min_contact_ratio(lone) == float("inf")
    # Small, strongly skewed cells (many images), atoms outside the cell, any periodicity.
    rng = np.random.default_rng(0)
    for k in range(60):
        n = int(rng.integers(1, 7))
        par = [rng.uniform(1.5, 6), rng.uniform(1.5, 6), 12.0, 90, 90, rng.uniform(25, 155)]
        pbc = [(True, True, False), (True, True, True), (False, False, False)][k % 3]
        atoms = Atoms(numbers=rng.integers(1, 84, n), cell=cellpar_to_cell(par), pbc=pbc,
                      positions=rng.uniform(-3, 9, (n, 3)))
        for upto in (0.6, 1.5):
            assert min_contact_ratio(atoms, upto) == pytest.approx(_ase_ratio(atoms, upto), abs=1e-12)


# --------------------------------------------------------------------------------------
# Real data: counts found by experiments/two_d/c2db_fix.py --check (results/data_fix.json)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train(shared_data):
    return load_c2db_csv(shared_data / "c2db" / "train.csv", with_labels=False)


def test_real_train_counts(train, shared_data):
    # The default load: the unrepairable cell is excluded, the counts recorded.
    assert train.source["repair_counts"] == {"standard": 3510, "rotated": 22, "unrepairable": 1}
    assert len(train) == 3532 and train.source["excluded"] == ["V4O8-9af1dad2fe67"]
    assert Counter(a.info["repair"] for a in train) == {"standard": 3510, "rotated": 22}
    ratios = np.array([min_contact_ratio(a, upto=0.7) for a in train])  # inf where none < 0.7
    assert ratios.min() >= IMPOSSIBLE_CONTACT_RATIO  # no kept structure is impossible
    assert 0.63 < ratios.min() < 0.64  # the shortest kept: V–V 1.94 Å in p-6m2 VTe (Te2V2-5da53e6996e3)
    rotated = [a for a in train if a.info["repair"] == "rotated"]
    for a in rotated:  # the γ = 60° X2Y6 family: p6/mmm with normal contacts
        assert abs(a.cell.angles()[2] - 60.0) < 0.2
        assert sorted(Counter(a.get_chemical_symbols()).values()) == [2, 6]
        assert 0.9 < min_contact_ratio(a) < 1.03
    assert {layer_group(a) for a in rotated} == {80}
    ids = {a.info["material_id"] for a in rotated}
    assert ids >= {"N2C6-375230208918", "Bi2Ge6-e90876a53a41", "P2Pb6-8cc8faa4becb"}
    # V4O8 (γ = 60.2°): an O–V contact of 1.26 Å in the standard reading, 0.59 rotated.
    with open(shared_data / "c2db" / "train.csv", newline="") as fh:
        (cif,) = [r["cif"] for r in csv.DictReader(fh) if r["material_id"] == "V4O8-9af1dad2fe67"]
    bad = repair_cif(cif)
    assert bad.info["repair"] == "unrepairable" and 0.57 < min_contact_ratio(bad) < 0.58
    assert min_contact_ratio(cif_positions(cif, "rotated")) < IMPOSSIBLE_CONTACT_RATIO


def test_real_val_counts(shared_data):
    val = load_c2db_csv(shared_data / "c2db" / "val.csv", with_labels=False)
    assert len(val) == 250 and val.source["repair_counts"] == {"standard": 250, "rotated": 0, "unrepairable": 0}
    assert min(min_contact_ratio(a) for a in val) > 0.7
