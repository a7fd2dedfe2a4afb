"""Bulk crystals: the CSV loader and duplicate analysis (agedi_jax.data.bulk) and the
crystal-generation metrics (agedi_jax.evaluation.crystals)."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from agedi_jax.data.bulk import (
    cross_duplicates,
    duplicate_groups,
    duplicate_report,
    is_bulk_csv,
    load_bulk_csv,
    split_indices,
)
from agedi_jax.data.dataset import DataError, Dataset
from agedi_jax.evaluation.crystals import (
    best_of_k,
    composition_fingerprints,
    coverage,
    coverage_cutoffs,
    crystal_coverage,
    crystal_validity,
    crystal_validity_batch,
    de_novo_metrics,
    densities,
    match_rate,
    nearest_distances,
    num_elements,
    standardize,
    structure_fingerprints,
    to_atoms,
    to_structure,
    valid_structures,
    wasserstein_density,
    wasserstein_num_elements,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


# --------------------------------------------------------------------------------------
# Structures with known answers
# --------------------------------------------------------------------------------------


def fcc_cu(cubic: bool = False) -> Atoms:
    return bulk("Cu", "fcc", cubic=cubic)  # ASE's a = 3.61 Å


def random_p1(seed: int = 1) -> Atoms:
    """A triclinic 8-atom cell with random positions: no symmetry, no smaller primitive
    cell, so the matcher compares it site for site."""
    rng = np.random.default_rng(seed)
    while True:
        cell = np.array([[4.1, 0.0, 0.0], [0.7, 4.6, 0.0], [-0.5, 0.9, 5.3]])
        atoms = Atoms("Si4O4", scaled_positions=rng.random((8, 3)), cell=cell, pbc=True)
        if crystal_validity(atoms, min_distance=1.2)["valid"]:
            return atoms


def rotated_permuted_supercell(atoms: Atoms) -> Atoms:
    """The same crystal as a 2×1×1 supercell, rotated rigidly and with shuffled atoms."""
    sup = atoms.repeat((2, 1, 1))
    sup.rotate(37.0, "z", rotate_cell=True)
    sup.rotate(21.0, "x", rotate_cell=True)
    order = np.random.default_rng(0).permutation(len(sup))
    return sup[order]


# --------------------------------------------------------------------------------------
# Conversions, density, element counts
# --------------------------------------------------------------------------------------


def test_ase_pymatgen_round_trip():
    atoms = random_p1()
    s = to_structure(atoms)
    assert len(s) == len(atoms)
    back = to_atoms(s)
    assert back.pbc.all()
    np.testing.assert_allclose(back.cell[:], atoms.cell[:], atol=1e-10)
    np.testing.assert_allclose(back.positions, atoms.positions, atol=1e-10)
    assert to_structure(s) is s and to_atoms(atoms) is atoms
    with pytest.raises(ValueError, match="3D cell"):
        to_structure(Atoms("Cu2", positions=[[0, 0, 0], [2, 0, 0]]))


def test_density_of_fcc_copper():
    cu = fcc_cu(cubic=True)
    rho = densities([cu, fcc_cu()])
    # 4 · 63.546 amu / 3.61³ Å³ = 8.9717 g/cm³, primitive cell the same
    np.testing.assert_allclose(rho, 4 * 63.546 / 3.61**3 * 1.66053906660, rtol=1e-4)
    assert 8.96 < rho[0] < 8.98
    assert rho[0] == pytest.approx(float(to_structure(cu).density), rel=1e-4)
    assert densities([to_structure(cu)])[0] == pytest.approx(rho[0])


def test_num_elements_and_wasserstein():
    cu, nacl = fcc_cu(), bulk("NaCl", "rocksalt", a=5.64)
    assert num_elements([cu, nacl, random_p1()]).tolist() == [1, 2, 2]
    sets = [cu, nacl, random_p1()]
    assert wasserstein_density(sets, list(reversed(sets))) == 0.0
    assert wasserstein_num_elements(sets, sets) == 0.0
    assert wasserstein_num_elements([cu], [nacl]) == pytest.approx(1.0)
    rho = densities([cu, nacl])
    assert wasserstein_density([cu], [nacl]) == pytest.approx(abs(rho[0] - rho[1]))
    with pytest.raises(ValueError, match="None"):
        wasserstein_density([cu, None], [cu])


# --------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------


def test_structure_matches_itself_and_equivalent_cells():
    crystals = [fcc_cu(), bulk("NaCl", "rocksalt", a=5.64), random_p1()]
    out = match_rate(crystals, crystals)
    assert out["match_rate"] == 1.0 and out["rmse"] == pytest.approx(0.0, abs=1e-8)
    assert out["n"] == out["n_matched"] == out["n_valid"] == 3 and out["n_missing"] == 0
    copies = [rotated_permuted_supercell(a) for a in crystals] + [fcc_cu(cubic=True)]
    out = match_rate(copies, crystals + [fcc_cu()])
    assert out["matched"].all()
    np.testing.assert_allclose(out["rms"], 0.0, atol=1e-6)


def test_random_displacement_rms_is_pymatgens_normalised_rms():
    ref = random_p1()
    rng = np.random.default_rng(3)
    d = rng.normal(0.0, 0.03, (len(ref), 3))
    gen = ref.copy()
    gen.positions += d
    centred = d - d.mean(axis=0)  # the matcher removes the best rigid translation
    expected = np.sqrt((centred**2).sum(axis=1).mean()) / (ref.get_volume() / len(ref)) ** (1 / 3)
    out = match_rate([gen], [ref])
    assert out["match_rate"] == 1.0
    assert out["rmse"] == pytest.approx(expected, rel=1e-6)
    assert 0.01 < expected < 0.05


def test_non_matches_failed_and_invalid_samples():
    cu = fcc_cu()
    bcc = bulk("Cu", "bcc", a=2.87)
    overlap = random_p1()
    overlap.positions[1] = overlap.positions[0] + [0.1, 0.0, 0.0]
    out = match_rate([bcc, None, overlap, cu], [cu, cu, overlap, cu])
    assert out["matched"].tolist() == [False, False, False, True]
    assert out["match_rate"] == 0.25 and out["n_missing"] == 1 and out["n_valid"] == 2
    assert np.isnan(out["rms"][:3]).all() and out["rmse"] == pytest.approx(0.0, abs=1e-8)
    # without the validity gate the overlapping structure matches itself
    assert match_rate([overlap], [overlap], require_valid=False)["match_rate"] == 1.0
    empty = match_rate([None], [cu])
    assert empty["match_rate"] == 0.0 and np.isnan(empty["rmse"])
    with pytest.raises(ValueError, match="2 generated structures for 1"):
        match_rate([cu, cu], [cu])


def test_best_of_k():
    ref = random_p1()
    rng = np.random.default_rng(5)
    small, large = ref.copy(), ref.copy()
    small.positions += rng.normal(0, 0.01, small.positions.shape)
    large.positions += rng.normal(0, 0.04, large.positions.shape)
    cu = fcc_cu()
    out = best_of_k([[None, large, small, fcc_cu(cubic=True)], [None, None], [bulk("Cu", "bcc", a=2.87), cu]],
                    [ref, ref, cu])
    assert out["matched"].tolist() == [True, False, True]
    assert out["best"].tolist() == [2, -1, 1]
    assert out["k"] == 4 and out["n_missing"] == 3
    one = match_rate([small], [ref])["rms"][0]
    assert out["rms"][0] == pytest.approx(one) and out["rms"][0] < match_rate([large], [ref])["rms"][0]
    assert out["match_rate"] == pytest.approx(2 / 3)
    assert out["rmse"] == pytest.approx((one + 0.0) / 2, abs=1e-8)


# --------------------------------------------------------------------------------------
# Validity
# --------------------------------------------------------------------------------------


def test_valid_crystals():
    for atoms in (fcc_cu(), fcc_cu(cubic=True), bulk("NaCl", "rocksalt", a=5.64), random_p1()):
        r = crystal_validity(atoms)
        assert r["valid"] and r["reason"] is None and r["reasons"] == [], r
    assert crystal_validity(to_structure(random_p1()))["valid"]


def test_coincident_atoms_are_invalid_with_reason():
    atoms = random_p1()
    atoms.positions[3] = atoms.positions[5]
    r = crystal_validity(atoms)
    assert not r["valid"] and r["reason"] == "close_atoms"
    assert r["closest"] == pytest.approx(0.0, abs=1e-9)
    assert "atoms 3 and 5" in r["detail"][0] or "atoms 5 and 3" in r["detail"][0]


def test_close_atoms_across_the_periodic_boundary():
    # 0.3 Å apart only through the boundary of a skewed cell
    cell = np.array([[6.0, 0.0, 0.0], [3.0, 5.0, 0.0], [1.0, 1.0, 6.0]])
    atoms = Atoms("C2", cell=cell, pbc=True)
    atoms.set_scaled_positions([[0.01, 0.5, 0.5], [0.99, 0.5, 0.5]])
    assert np.linalg.norm(atoms.positions[0] - atoms.positions[1]) > 5
    r = crystal_validity(atoms)
    assert r["reason"] == "close_atoms" and r["closest"] == pytest.approx(0.12, abs=1e-6)
    assert crystal_validity(atoms, min_distance=0.1)["valid"]


def test_cell_failures():
    thin = Atoms("C", positions=[[0, 0, 0]], cell=[0.3, 5.0, 5.0], pbc=True)
    r = crystal_validity(thin)
    assert r["reasons"] == ["self_image"]
    assert crystal_validity(thin, self_images=False)["valid"]  # CDVAE's own check
    flat = Atoms("C2", positions=[[0, 0, 0], [1, 1, 0]], cell=[[3, 0, 0], [0, 3, 0], [1, 1, 0]], pbc=True)
    assert crystal_validity(flat)["reasons"] == ["singular_cell"]
    small = Atoms("C", positions=[[0, 0, 0]], cell=[0.6, 0.6, 0.2], pbc=True)
    r = crystal_validity(small, self_images=False)
    assert r["reason"] == "small_volume" and r["volume_per_atom"] == pytest.approx(0.072)
    big = Atoms("C", positions=[[0, 0, 0]], cell=[0.6, 0.6, 1.0], pbc=True)
    assert crystal_validity(big, self_images=False)["valid"]
    two = Atoms("C2", positions=[[0, 0, 0], [0.3, 0.3, 0.25]], cell=[0.6, 0.6, 0.5], pbc=True)
    r = crystal_validity(two, self_images=False, min_distance=0.1)
    assert r["reasons"] == ["small_volume"] and r["volume_per_atom"] == pytest.approx(0.09)
    # CDVAE applies the 0.1 Å³ floor to the whole cell (0.18 Å³ here)
    assert crystal_validity(two, self_images=False, min_distance=0.1, min_volume=0.1, volume_per_atom=False)["valid"]
    nan = random_p1()
    nan.positions[0, 0] = np.nan
    assert crystal_validity(nan)["reason"] == "non_finite"
    assert crystal_validity(Atoms(cell=np.eye(3), pbc=True))["reason"] == "no_atoms"


def test_validity_batch_and_filter():
    bad = random_p1()
    bad.positions[1] = bad.positions[0]
    good = random_p1(2)
    out = crystal_validity_batch([good, None, bad])
    assert out["valid"].tolist() == [True, False, False]
    assert out["rate"] == pytest.approx(1 / 3)
    assert out["reasons"] == [[], ["missing"], ["close_atoms"]]
    assert out["reason_counts"] == {"missing": 1, "close_atoms": 1}
    assert valid_structures([good, None, bad]) == [good]


# --------------------------------------------------------------------------------------
# Coverage
# --------------------------------------------------------------------------------------


def test_coverage_oracle():
    gen = np.array([[0.0], [10.0]])
    ref = np.array([[0.05], [5.0], [5.02]])
    out = coverage(gen, ref, struct_cutoff=0.1)
    assert out == {"cov_recall": pytest.approx(1 / 3), "cov_precision": pytest.approx(0.5)}
    assert coverage(ref, ref, struct_cutoff=0.0) == {"cov_recall": 1.0, "cov_precision": 1.0}
    np.testing.assert_allclose(nearest_distances(gen, ref), [0.05, 4.98])
    # independent minima (CDVAE) vs one structure within both cutoffs
    gs, gc = np.array([[0.0], [1.0]]), np.array([[1.0], [0.0]])
    rs, rc = np.array([[0.0]]), np.array([[0.0]])
    kw = dict(struct_cutoff=0.1, generated_comp=gc, reference_comp=rc, comp_cutoff=0.1)
    assert coverage(gs, rs, **kw)["cov_recall"] == 1.0
    assert coverage(gs, rs, joint=True, **kw)["cov_recall"] == 0.0
    with pytest.raises(ValueError, match="together"):
        coverage(gs, rs, struct_cutoff=0.1, generated_comp=gc)


def test_fingerprints_and_crystal_coverage():
    cu, nacl, p1 = fcc_cu(), bulk("NaCl", "rocksalt", a=5.64), random_p1()
    fp = structure_fingerprints([cu, rotated_permuted_supercell(cu), nacl, p1], r_cut=4.0, n_max=3, l_max=2)
    np.testing.assert_allclose(np.linalg.norm(fp, axis=1), 1.0)
    assert np.linalg.norm(fp[0] - fp[1]) < 1e-6  # same crystal, other cell
    assert np.linalg.norm(fp[0] - fp[3]) > 0.01
    comp = composition_fingerprints([cu, nacl, p1])
    np.testing.assert_allclose(comp[0, :5], 1.0)  # one element: every p-norm of (1,) is 1
    np.testing.assert_allclose(comp[1, :5], [0.5 ** (1 - 1 / p) for p in (2, 3, 5, 7, 10)])
    z = standardize(comp, comp)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    soap = dict(r_cut=4.0, n_max=3, l_max=2)
    same = crystal_coverage([cu, nacl], [nacl, cu], struct_cutoff=1e-6, comp_cutoff=1e-6, **soap)
    assert same == {"cov_recall": 1.0, "cov_precision": 1.0}
    half = crystal_coverage([cu, p1], [cu], struct_cutoff=1e-3, comp_cutoff=1e-3, **soap)
    assert half == {"cov_recall": 1.0, "cov_precision": 0.5}
    out = de_novo_metrics([cu, None, nacl], [cu, nacl], struct_cutoff=1e-3, comp_cutoff=1e-3)
    assert out["validity"] == pytest.approx(2 / 3) and out["n_valid"] == 2
    assert out["wdist_density"] == 0.0 and out["wdist_num_elements"] == 0.0
    assert out["cov_recall"] == 1.0 and out["cov_precision"] == 1.0
    # calibrated cutoffs: the median distance of a held-out structure to the training split
    cu2 = cu.copy()
    cu2.set_cell(cu.cell[:] * 1.04, scale_atoms=True)
    cut = coverage_cutoffs([cu, cu2], [rotated_permuted_supercell(cu), nacl], quantile=0.5, **soap)
    d = np.linalg.norm(np.subtract(*structure_fingerprints([cu2, cu], **soap)))
    assert cut["struct_cutoff"] == pytest.approx(0.5 * d, abs=1e-6) and cut["comp_cutoff"] == pytest.approx(0.0)
    cut1 = coverage_cutoffs([cu, cu2], [cu, nacl], quantile=1.0, **soap)
    assert cut1["struct_cutoff"] == pytest.approx(d, abs=1e-6)
    with pytest.raises(ValueError, match="quantile"):
        coverage_cutoffs([cu], [nacl], quantile=0.0)


# --------------------------------------------------------------------------------------
# Loader (synthetic files)
# --------------------------------------------------------------------------------------


def _cif(atoms: Atoms) -> str:
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(to_structure(atoms)))


def _write_csv(path, rows, columns=("", "material_id", "cif", "formula", "energy_per_atom")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        w.writerows(rows)
    return path


def test_load_synthetic_csv(tmp_path):
    crystals = [fcc_cu(), bulk("NaCl", "rocksalt", a=5.64), rotated_permuted_supercell(fcc_cu())]
    rows = [[10 + k, f"id-{k}", _cif(a), a.get_chemical_formula(), -1.5 * k] for k, a in enumerate(crystals)]
    path = _write_csv(tmp_path / "x.csv", rows)
    ds = load_bulk_csv(path)
    assert isinstance(ds, Dataset) and len(ds) == 3 and ds.name == "bulk:x"
    assert ds.sizes.tolist() == [1, 2, 2]
    assert all(a.pbc.all() for a in ds)
    assert ds[1].info == {"csv_index": 11, "material_id": "id-1", "formula": "ClNa", "energy_per_atom": -1.5}
    assert match_rate(ds.structures, crystals)["match_rate"] == 1.0
    for a in ds:
        f = a.get_scaled_positions(wrap=False)
        assert (f >= 0).all() and (f < 1).all()
    deduped = load_bulk_csv(path, "mine", dedupe=True)
    assert len(deduped) == 2 and deduped.name == "mine"
    assert deduped.source["n_duplicates_dropped"] == 1
    assert [a.info["material_id"] for a in deduped] == ["id-0", "id-1"]
    assert is_bulk_csv(path)
    report = duplicate_report(path, val_fraction=0.34, seed=0)
    assert (report["n"], report["n_groups"], report["n_redundant"], report["n_val"]) == (3, 1, 1, 1)
    c2db_like = _write_csv(tmp_path / "c.csv", [], columns=("", "material_id", "band_gap", "workfunction", "cif"))
    assert not is_bulk_csv(c2db_like)
    # no index column: csv_index is the row number
    p2 = _write_csv(tmp_path / "y.csv", [[_cif(a)] for a in crystals], columns=("cif",))
    assert load_bulk_csv(p2).info_array("csv_index").tolist() == [0, 1, 2]


def test_loader_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_bulk_csv(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="directory"):
        load_bulk_csv(tmp_path)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.csv.*empty"):
        load_bulk_csv(empty)
    header = _write_csv(tmp_path / "header.csv", [])
    with pytest.raises(DataError, match="header.csv.*no structures"):
        load_bulk_csv(header)
    nocif = _write_csv(tmp_path / "nocif.csv", [[0, "a", "x"]], columns=("", "material_id", "structure"))
    with pytest.raises(DataError, match="nocif.csv.*no 'cif' column"):
        load_bulk_csv(nocif)
    good = _cif(fcc_cu())
    bad = _write_csv(tmp_path / "bad.csv", [[0, "ok", good, "Cu", 1.0], [1, "broken", "data_x\nnot a cif", "Cu", 1.0]])
    with pytest.raises(DataError, match=r"bad.csv.*row 1 \(broken\).*CIF"):
        load_bulk_csv(bad)
    blank = _write_csv(tmp_path / "blank.csv", [[0, "b", "", "Cu", 1.0]])
    with pytest.raises(DataError, match=r"blank.csv.*row 0.*empty CIF"):
        load_bulk_csv(blank)
    flat = good.replace("_cell_angle_gamma   60.00000000", "_cell_angle_gamma   120.00000000")
    assert flat != good  # fcc primitive: α = β = γ = 60° -> 120° makes the cell coplanar
    sing = _write_csv(tmp_path / "sing.csv", [[0, "ok", good, "Cu", 1.0], [7, "flat", flat, "Cu", 1.0]])
    with pytest.raises(DataError, match=r"sing.csv.*row 1 \(flat\).*singular cell"):
        load_bulk_csv(sing)


# --------------------------------------------------------------------------------------
# Splits and duplicates
# --------------------------------------------------------------------------------------


def test_split_indices_reproduces_prepare_data():
    for n, frac, seed in [(3787, 0.1, 0), (2032, 0.1, 0), (10, 0.25, 3), (1, 0.5, 0)]:
        train, val = split_indices(n, frac, seed)
        order = np.random.default_rng(seed).permutation(n)
        n_val = int(round(frac * n)) if n > 1 else 0
        assert val.tolist() == sorted(order[:n_val].tolist())
        assert train.tolist() == sorted(order[n_val:].tolist())
    ds = Dataset([fcc_cu() for _ in range(30)])
    tr, va = ds.split(0.1, seed=4)
    train, val = split_indices(30, 0.1, 4)
    assert [id(a) for a in va] == [id(ds[i]) for i in val]
    assert len(tr) == len(train)


def test_duplicate_groups_and_cross_duplicates():
    cu, p1 = fcc_cu(), random_p1()
    items = [cu, bulk("Cu", "bcc", a=2.87), rotated_permuted_supercell(p1), fcc_cu(cubic=True),
             bulk("NaCl", "rocksalt", a=5.64), p1, random_p1(7)]
    assert duplicate_groups(items) == [[0, 3], [2, 5]]
    groups = duplicate_groups(items, include_singletons=True)
    assert sorted(i for g in groups for i in g) == list(range(len(items)))
    assert cross_duplicates(items[:3], items[3:]).tolist() == [True, False, True, False]
    assert cross_duplicates(items[:3], items[3:], return_index=True).tolist() == [0, -1, 2, -1]


# --------------------------------------------------------------------------------------
# Real data (../shared/data/bulk)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def perov(shared_data):
    return load_bulk_csv(shared_data / "bulk" / "perov_5.csv")


@pytest.fixture(scope="module")
def carbon(shared_data):
    return load_bulk_csv(shared_data / "bulk" / "carbon_24.csv")


def test_real_files_are_detected_as_bulk(shared_data):
    assert is_bulk_csv(shared_data / "bulk" / "perov_5.csv")
    assert is_bulk_csv(shared_data / "bulk" / "carbon_24.csv")
    if (shared_data / "c2db" / "val.csv").exists():
        assert not is_bulk_csv(shared_data / "c2db" / "val.csv")


def test_real_perov_5(perov):
    assert len(perov) == 3787 and perov.name == "bulk:perov_5"
    assert (perov.sizes == 5).all()
    assert all(a.pbc.all() for a in perov)
    assert len(perov.elements) == 56
    info = perov[0].info
    assert set(info) == {"csv_index", "material_id", "formula", "heat_all", "heat_ref", "dir_gap", "ind_gap"}
    assert isinstance(info["formula"], str) and isinstance(info["material_id"], str)
    assert np.isfinite(perov.info_array("heat_ref")).all()
    assert len(set(perov.info_array("csv_index").tolist())) == 3787
    valid = crystal_validity_batch(perov.structures[:200])
    assert valid["rate"] == 1.0


def test_real_carbon_24(carbon):
    assert len(carbon) == 2032 and carbon.elements == ("C",)
    sizes = carbon.sizes
    assert sizes.min() == 6 and sizes.max() == 24
    assert all(a.pbc.all() for a in carbon)
    assert set(carbon[0].info) == {"csv_index", "material_id", "energy_per_atom"}
    e = carbon.info_array("energy_per_atom")
    assert -156 < e.min() and e.max() < -153  # absolute DFT energies, eV/atom
    rho = densities(carbon.structures)
    assert 1.3 < rho.min() and rho.max() < 3.7  # diamond at 10 GPa ≈ 3.6 g/cm³
    assert crystal_validity_batch(carbon.structures[:200])["rate"] == 1.0


def test_real_carbon_24_has_duplicates(carbon):
    """The file repeats the same AIRSS minima many times (1,618 of 2,032 structures
    duplicate an earlier one under the benchmark tolerances); the first 60 rows already
    hold some."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        groups = duplicate_groups(carbon.structures[:60])
    assert len(groups) >= 1
    a, b = groups[0][:2]
    assert match_rate([carbon[b]], [carbon[a]])["match_rate"] == 1.0
