"""Tests of agedi_jax.evaluation: PRD oracles and properties, baselines on real QCD clusters,
SOAP against dscribe, symmetry of ASE prototypes, validity, EMT energetics, the report."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import mx2
from ase.cluster import Icosahedron

from agedi_jax.evaluation import (
    add_evaluate_arguments,
    baseline_family,
    composition_stats,
    compute_prd,
    compute_prd_from_embedding,
    evaluate,
    f_beta,
    formation_energy,
    layer_group_accuracy,
    layer_groups,
    max_f_beta_pair,
    noised_baseline,
    prd_auc,
    random_structure_search,
    reference_energies,
    relax,
    run_evaluate,
    soap_features,
    structure_validity,
    tsne_map,
    validity,
)

# --------------------------------------------------------------------------------------
# PRD on histograms
# --------------------------------------------------------------------------------------


def _random_hist(rng, k=12, zeros=0):
    h = rng.random(k)
    if zeros:
        h[rng.choice(k, zeros, replace=False)] = 0.0
    return h / h.sum()


def test_prd_identical_histograms_pass_through_one_one():
    h = _random_hist(np.random.default_rng(0))
    p, r = compute_prd(h, h)
    assert p.shape == r.shape == (1001,)
    assert np.any((p > 1 - 1e-9) & (r > 1 - 1e-9))  # θ = π/4 lies on the 1001-angle grid
    assert prd_auc(p, r) == pytest.approx(1.0, abs=1e-6)
    assert max_f_beta_pair(p, r) == pytest.approx((1.0, 1.0), abs=1e-6)


def test_prd_disjoint_supports_are_zero_everywhere():
    a = np.array([0.5, 0.5, 0.0, 0.0])
    b = np.array([0.0, 0.0, 0.25, 0.75])
    p, r = compute_prd(a, b, num_angles=101)
    assert np.all(p == 0) and np.all(r == 0)
    assert prd_auc(p, r) == 0.0


def test_prd_matches_closed_form_and_bounds():
    rng = np.random.default_rng(1)
    q, ref = _random_hist(rng, zeros=3), _random_hist(rng, zeros=2)
    p, r = compute_prd(q, ref, num_angles=51, epsilon=1e-6)
    assert np.all((p >= 0) & (p <= 1) & (r >= 0) & (r <= 1))
    # independent loop oracle at every angle
    for theta, pi, ri in zip(np.linspace(1e-6, np.pi / 2 - 1e-6, 51), p, r):
        lam = np.tan(theta)
        expect = sum(min(lam * b, a) for a, b in zip(q, ref))
        assert pi == pytest.approx(min(expect, 1.0), rel=1e-12, abs=1e-15)
        assert ri == pytest.approx(min(expect / lam, 1.0), rel=1e-12, abs=1e-15)
    assert np.all(np.diff(p) >= -1e-15) and np.all(np.diff(r) <= 1e-15)
    # limits: recall → mass of ref on supp(q), precision → mass of q on supp(ref)
    assert r[0] == pytest.approx(ref[q > 0].sum(), abs=1e-5)
    assert p[-1] == pytest.approx(q[ref > 0].sum(), abs=1e-5)


def test_prd_swapping_distributions_swaps_precision_and_recall():
    rng = np.random.default_rng(2)
    q, ref = _random_hist(rng), _random_hist(rng)
    p1, r1 = compute_prd(q, ref)
    p2, r2 = compute_prd(ref, q)
    np.testing.assert_allclose(p2, r1[::-1], atol=1e-9)
    np.testing.assert_allclose(r2, p1[::-1], atol=1e-9)
    assert prd_auc(p1, r1) == pytest.approx(prd_auc(p2, r2), abs=1e-6)


def test_prd_auc_matches_sklearn_and_f_beta_definition():
    from sklearn.metrics import auc

    rng = np.random.default_rng(3)
    p, r = compute_prd(_random_hist(rng), _random_hist(rng))
    r_mono = np.minimum.accumulate(r)  # recall is monotone up to rounding, which sklearn rejects
    assert np.abs(r - r_mono).max() < 1e-12
    assert prd_auc(p, r) == pytest.approx(auc(r_mono, p), rel=1e-9)
    assert 0.3 < prd_auc(p, r) < 1.0
    f8 = f_beta(p, r, 8.0)
    np.testing.assert_allclose(f8, 65 * p * r / (64 * p + r + 1e-10))
    # F_{1/β}(P, R) = F_β(R, P)
    assert max_f_beta_pair(p, r)[1] == pytest.approx(np.max(f_beta(r, p, 8.0)), rel=1e-9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_angles=2), "num_angles"),
        (dict(num_angles=2_000_000), "num_angles"),
        (dict(num_angles=10.5), "num_angles"),
        (dict(epsilon=0.0), "epsilon"),
        (dict(epsilon=0.2), "epsilon"),
        (dict(eval_dist=[0.5, 0.5, 0.0]), "same number of bins"),
        (dict(eval_dist=[1.5, -0.5]), "negative"),
        (dict(eval_dist=[0.5, 0.6]), "sum to 1"),
        (dict(eval_dist=[[0.5, 0.5]]), "1D"),
        (dict(eval_dist=[np.nan, 1.0]), "non-finite"),
    ],
)
def test_prd_invalid_arguments_raise(kwargs, match):
    args = dict(eval_dist=[0.5, 0.5], ref_dist=[0.25, 0.75])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        compute_prd(**args)


def test_prd_auc_and_f_beta_reject_bad_curves():
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        prd_auc([0.5, 1.2], [1.0, 0.5])
    with pytest.raises(ValueError, match="monotone"):
        prd_auc([0.1, 0.5, 0.9], [0.5, 1.0, 0.2])
    with pytest.raises(ValueError, match="beta"):
        f_beta([0.5], [0.5], beta=0.0)


# --------------------------------------------------------------------------------------
# PRD on embeddings (k-means histograms)
# --------------------------------------------------------------------------------------


def _blobs(rng, centres, n_per):
    return np.concatenate([c + 0.05 * rng.normal(size=(n_per, 2)) for c in centres])


CENTRES = np.array([[0, 0], [5, 0], [0, 5], [5, 5], [10, 0], [10, 5]], float)


def test_prd_embedding_detects_mode_collapse_and_disjoint_sets():
    rng = np.random.default_rng(4)
    ref = _blobs(rng, CENTRES, 30)
    same = _blobs(rng, CENTRES, 30)
    half = _blobs(rng, CENTRES[:3], 60)  # covers half the modes, same size
    far = _blobs(rng, CENTRES + 100.0, 30)
    kw = dict(num_clusters=6, num_runs=2, seed=0)
    p, r = compute_prd_from_embedding(same, ref, **kw)
    assert prd_auc(p, r) > 0.95
    p, r = compute_prd_from_embedding(half, ref, **kw)
    f8, f1_8 = max_f_beta_pair(p, r)
    assert r.max() == pytest.approx(0.5, abs=0.02)  # recall capped at the covered share
    assert f1_8 > 0.95 and f8 < 0.55  # precise but not diverse
    p, r = compute_prd_from_embedding(far, ref, **kw)
    assert prd_auc(p, r) < 0.02


def test_prd_embedding_balance_determinism_and_sparse_input():
    import scipy.sparse

    rng = np.random.default_rng(5)
    ref = _blobs(rng, CENTRES, 10)
    ev = _blobs(rng, CENTRES, 10) + 0.5
    with pytest.raises(ValueError, match="enforce_balance"):
        compute_prd_from_embedding(ev[:30], ref, num_clusters=6, num_runs=1)
    kw = dict(num_clusters=6, num_runs=2, seed=3)
    a = compute_prd_from_embedding(ev, ref, **kw)
    b = compute_prd_from_embedding(ev, ref, **kw)
    c = compute_prd_from_embedding(scipy.sparse.csr_matrix(ev), scipy.sparse.csr_matrix(ref), **kw)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[0], c[0], atol=1e-12)
    with pytest.raises(ValueError, match="features"):
        compute_prd_from_embedding(ev[:, :1], ref, num_clusters=6)


# --------------------------------------------------------------------------------------
# Real QCD clusters: the baselines order by noise level
# --------------------------------------------------------------------------------------


def _qcd_gm(root, elements, max_atoms=30):
    import ase.io

    out = []
    for el in elements:
        best = {}
        for a in ase.io.read(root / "qcd_gap_relaxed" / f"{el}_gap_QCD_relaxed.xyz", ":"):
            n, e = len(a), a.info["relaxed_gap_energy"]
            if n < max_atoms and (n not in best or e < best[n].info["relaxed_gap_energy"]):
                best[n] = a
        for n in sorted(best):
            a = best[n].copy()
            a.pbc = False
            a.cell = np.zeros((3, 3))
            a.positions -= a.positions.mean(axis=0)
            out.append(a)
    return out


@pytest.fixture(scope="module")
def qcd_gm(shared_data):
    return _qcd_gm(shared_data, ["Cu", "Ag", "Pt", "Au"])


def test_baseline_auc_falls_with_noise_on_qcd(qcd_gm):
    assert len(qcd_gm) > 100
    species = ["Cu", "Ag", "Pt", "Au"]
    f_ref = soap_features(qcd_gm, species=species)
    family = baseline_family(qcd_gm, fractions=(1.0, 0.5), sigmas=(0.0, 0.1, 0.2, 0.3), seed=0, include_identity=True)
    auc = {}
    for label, structures in family.items():
        p, r = compute_prd_from_embedding(
            soap_features(structures, species=species), f_ref, num_runs=10, enforce_balance=False, seed=0
        )
        auc[label] = prd_auc(p, r)
    full = [auc[f"100% σ={s:.2f} Å"] for s in (0.0, 0.1, 0.2, 0.3)]
    half = [auc[f"50% σ={s:.2f} Å"] for s in (0.0, 0.2, 0.3)]
    assert full[0] == pytest.approx(1.0, abs=1e-6)  # the reference itself
    assert all(a > b for a, b in zip(full, full[1:])), full
    assert all(a > b for a, b in zip(half, half[1:])), half
    assert full[0] > half[0]  # the unnoised subsample loses coverage only
    assert full[-1] < 0.9  # σ = 0.3 Å is clearly visible


# --------------------------------------------------------------------------------------
# Baselines, descriptors
# --------------------------------------------------------------------------------------


def _cu_clusters():
    ico = Icosahedron("Cu", 2)
    ico.positions -= ico.positions.mean(0)
    out = []
    rng = np.random.default_rng(0)
    for k in range(8):
        a = ico.copy()
        a.rattle(0.05 * (k + 1), seed=k)
        a.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COP")
        out.append(a)
    return out


def test_noised_baseline_subsample_and_noise():
    ref = _cu_clusters()
    for i, a in enumerate(ref):
        a.info["index"] = i
    b = noised_baseline(ref, fraction=0.5, sigma=0.2, seed=1)
    assert len(b) == 4
    idx = [x.info["index"] for x in b]
    assert len(set(idx)) == 4 and idx == sorted(idx)
    disp = np.concatenate([(x.positions - ref[i].positions).ravel() for x, i in zip(b, idx)])
    assert np.std(disp) == pytest.approx(0.2, rel=0.15) and abs(np.mean(disp)) < 0.05
    assert all(not x.pbc.any() and x.get_chemical_formula() == "Cu13" for x in b)
    # same seed: same subsample for every σ, and exact copies at σ = 0
    b0 = noised_baseline(ref, fraction=0.5, sigma=0.0, seed=1)
    assert [x.info["index"] for x in b0] == idx
    assert all(np.array_equal(x.positions, ref[i].positions) for x, i in zip(b0, idx))
    assert [x.info["index"] for x in noised_baseline(ref, fraction=0.5, sigma=0.2, seed=2)] != idx
    with pytest.raises(ValueError, match="fraction"):
        noised_baseline(ref, fraction=0.0)
    with pytest.raises(ValueError, match="sigma"):
        noised_baseline(ref, sigma=-1.0)


def test_noised_baseline_keeps_2d_cell_and_wraps():
    a = mx2("MoS2", "2H", vacuum=10)
    a.pbc = (True, True, False)
    (b,) = noised_baseline([a], sigma=0.3, seed=0)
    np.testing.assert_array_equal(b.cell.array, a.cell.array)
    assert tuple(b.pbc) == (True, True, False)
    frac = b.cell.scaled_positions(b.positions)
    assert np.all((frac[:, :2] >= 0) & (frac[:, :2] < 1))


def test_soap_features_equal_dscribe_and_are_invariant():
    from dscribe.descriptors import SOAP

    clusters = _cu_clusters()[:3]
    mixed = clusters[0].copy()
    mixed.symbols[:4] = "Au"
    structures = clusters + [mixed]
    species = ["Au", "Cu", "Pt"]
    ref = SOAP(species=species, r_cut=5.0, n_max=6, l_max=4, sigma=0.5, average="inner").create(structures)
    ours = soap_features(structures, species=species)
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    sp = soap_features(structures, species=species, sparse=True)
    np.testing.assert_allclose(sp.toarray(), ours, atol=0)
    # rotation, translation and permutation invariance
    moved = mixed.copy()
    moved.rotate(37, (1, 2, 3), center="COP")
    moved.translate((1.0, -2.0, 0.5))
    moved = moved[np.random.default_rng(0).permutation(len(moved))]
    np.testing.assert_allclose(soap_features([moved], species=species)[0], ours[3], rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="not in species"):
        soap_features(structures, species=["Cu"])
    # geometry-only features: same geometry, other element -> same vector
    gold = clusters[1].copy()
    gold.symbols[:] = "Au"
    agn = soap_features([clusters[1], gold], element_agnostic=True)
    np.testing.assert_allclose(agn[0], agn[1], atol=1e-12)
    assert not np.allclose(soap_features([clusters[1], gold])[0], soap_features([clusters[1], gold])[1])


def test_soap_periodic_2d_matches_dscribe():
    from dscribe.descriptors import SOAP

    a = mx2("MoS2", "2H", vacuum=10)
    b = mx2("WSe2", "1T", vacuum=10)
    for x in (a, b):
        x.pbc = (True, True, False)
    ref = SOAP(species=["S", "Se", "Mo", "W"], r_cut=5.0, n_max=6, l_max=4, sigma=0.5, average="inner",
               periodic=True).create([a, b])
    np.testing.assert_allclose(soap_features([a, b]), ref, atol=1e-12)


def test_tsne_map_shapes_and_determinism():
    rng = np.random.default_rng(0)
    fa, fb = rng.normal(size=(15, 6)), rng.normal(size=(12, 6)) + 3
    ea, eb = tsne_map(fa, fb, perplexity=5, seed=1)
    assert ea.shape == (15, 2) and eb.shape == (12, 2)
    ea2, _ = tsne_map(fa, fb, perplexity=5, seed=1)
    np.testing.assert_allclose(ea, ea2)


# --------------------------------------------------------------------------------------
# Symmetry, validity, composition
# --------------------------------------------------------------------------------------


def _mos2(kind):
    a = mx2("MoS2", kind, vacuum=10)
    a.pbc = (True, True, False)
    return a


def test_layer_groups_of_mos2_prototypes():
    structures = [_mos2("2H"), _mos2("1T")]
    np.testing.assert_array_equal(layer_groups(structures), [78, 72])
    assert layer_group_accuracy(structures, [78, 72]) == 1.0
    assert layer_group_accuracy(structures, [78, 78]) == 0.5
    with pytest.raises(ValueError, match="target labels"):
        layer_group_accuracy(structures, [78])


def test_validity_flags_overlap_and_disconnection():
    good = Icosahedron("Cu", 2)
    close = good.copy()
    close.positions[0] = close.positions[1] + [0.3, 0.0, 0.0]
    apart = good.copy()
    apart.positions[0] += [12.0, 0.0, 0.0]
    v = validity([good, close, apart])
    np.testing.assert_array_equal(v["distance_ok"], [True, False, True])
    np.testing.assert_array_equal(v["connected"], [True, True, False])
    np.testing.assert_array_equal(v["n_components"], [1, 1, 2])
    np.testing.assert_array_equal(v["valid"], [True, False, False])
    assert v["min_distance"][1] == pytest.approx(0.3)
    assert v["frac_valid"] == pytest.approx(1 / 3)


def test_validity_periodic_cell_checks():
    good = _mos2("2H")
    assert structure_validity(good)["valid"]
    outside = good.copy()
    outside.positions[0] += 1.5 * outside.cell[0]  # outside the cell along a periodic axis
    r = structure_validity(outside)
    assert not r["inside_cell"] and r["distance_ok"]  # same periodic structure otherwise
    # an image of another atom across the boundary, closer than the overlap limit
    img = good.copy()
    img.positions[1] = img.positions[0] + img.cell[0] - [0.2, 0.0, 0.0]
    img.wrap()
    r = structure_validity(img)
    assert not r["distance_ok"] and r["min_distance"] == pytest.approx(0.2, abs=1e-6)
    tiny = Atoms("Cu", positions=[[0, 0, 5]], cell=[0.8, 0.8, 10], pbc=(True, True, False))
    r = structure_validity(tiny)
    assert not r["image_ok"] and r["distance_ok"] and not r["valid"]


def test_composition_stats():
    pure = Icosahedron("Cu", 2)
    mixed = pure.copy()
    mixed.symbols[:3] = "Au"
    c = composition_stats([pure, pure, mixed, _mos2("2H")])
    assert c["fraction_monoelement"] == 0.5
    assert c["element_atom_counts"] == {"Au": 3, "Cu": 36, "Mo": 1, "S": 2}
    assert c["element_structure_counts"]["Cu"] == 3
    assert c["size_counts"] == {3: 1, 13: 3}


# --------------------------------------------------------------------------------------
# Energetics
# --------------------------------------------------------------------------------------


def test_formation_energy_eq21():
    refs = {("Pt", 4): -1.0, ("Cu", 4): -0.5}
    # (E − 3 E_Pt − 1 E_Cu) / 4
    assert formation_energy(-3.9, ["Pt", "Pt", "Pt", "Cu"], refs) == pytest.approx((-3.9 + 3.0 + 0.5) / 4)
    assert formation_energy(-2.0, ["Cu"] * 2, {"Cu": -0.8}) == pytest.approx(-0.2)
    with pytest.raises(KeyError, match="Au"):
        formation_energy(-1.0, ["Au"] * 4, refs)


def test_monometallic_formation_energy_is_zero_and_relax_lowers_energy():
    from ase.calculators.emt import EMT

    cluster = Icosahedron("Pt", 2)
    rattled = cluster.copy()
    rattled.rattle(0.15, seed=3)
    e_before = rattled.copy()
    e_before.calc = EMT()
    e0 = e_before.get_potential_energy()
    relaxed, e1 = relax(rattled, fmax=0.05, steps=300)
    assert e1 < e0 - 0.1 and relaxed.info["relax_converged"]
    assert np.abs(relaxed.get_forces()).max() < 0.05 + 1e-9
    refs = reference_energies([rattled])
    assert refs[("Pt", 13)] == pytest.approx(e1 / 13, abs=1e-6)
    assert formation_energy(e1, relaxed.get_chemical_symbols(), refs) == pytest.approx(0.0, abs=1e-6)
    # a calculator factory is accepted
    _, e2 = relax(rattled, calculator=EMT, fmax=0.05, steps=300, optimizer="BFGS")
    assert e2 == pytest.approx(e1, abs=0.05)
    with pytest.raises(ValueError, match="EMT"):
        relax(Icosahedron("Fe", 2))


def test_random_structure_search_respects_constraints():
    starts = random_structure_search("Pt6Cu7", 4, seed=0, min_distance=2.0, relax=False)
    for a in starts:
        assert sorted(a.get_chemical_symbols()) == sorted(["Pt"] * 6 + ["Cu"] * 7)
        d = a.get_all_distances()
        assert d[~np.eye(13, dtype=bool)].min() >= 2.0
        assert structure_validity(a)["connected"]
    again = random_structure_search({"Pt": 6, "Cu": 7}, 4, seed=0, min_distance=2.0, relax=False)
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(starts, again))
    from ase.calculators.emt import EMT

    relaxed = random_structure_search("Pd4Ag2", 2, seed=1)
    for s, r in zip(random_structure_search("Pd4Ag2", 2, seed=1, relax=False), relaxed):
        s.calc = EMT()
        assert r.info["energy"] < s.get_potential_energy()
        assert sorted(r.get_chemical_symbols()) == sorted(s.get_chemical_symbols())
    with pytest.raises(ValueError, match="EMT"):
        random_structure_search("Fe3", 1)


def test_energy_distribution_plot(tmp_path):
    from agedi_jax.evaluation import plot_energy_distributions

    fig = plot_energy_distributions({"model": [-0.1, -0.05, 0.0], "RSS": [0.02, 0.1, np.nan]},
                                    path=tmp_path / "e.png", bins=5)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["model (3)", "RSS (2)"]
    assert sum(p.get_height() for p in ax.patches) == 5  # NaN dropped
    assert (tmp_path / "e.png").stat().st_size > 0


# --------------------------------------------------------------------------------------
# Report and command line
# --------------------------------------------------------------------------------------


def test_evaluate_writes_json_and_plots(tmp_path):
    import ase.io

    ref = _cu_clusters() + [a.copy() for a in _cu_clusters()]
    for k, a in enumerate(ref[8:]):
        a.symbols[: k % 4] = "Ag"
    samples = noised_baseline(ref, sigma=0.1, seed=7)
    res = evaluate(samples, ref, tmp_path / "out", num_clusters=4, num_runs=2, sigmas=(0.0, 0.2),
                   fractions=(1.0, 0.5), seed=0, config={"note": "test"})
    data = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert set(data["prd"]) == {"samples", "100% σ=0.20 Å", "50% σ=0.00 Å", "50% σ=0.20 Å"}
    assert data["config"]["note"] == "test" and data["config"]["num_clusters"] == 4
    assert data["config"]["species"] == ["Cu", "Ag"]
    assert data["validity"]["frac_valid"] == 1.0
    assert data["composition"]["fraction_monoelement"] == pytest.approx(10 / 16)
    for name in ("prd.png", "tsne.png", "prd_curves.npz", "validity.npz"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    curves = np.load(tmp_path / "out" / "prd_curves.npz")
    assert prd_auc(curves["precision"][0], curves["recall"][0]) == pytest.approx(data["prd"]["samples"]["auc"])
    assert res["prd"]["samples"]["auc"] == data["prd"]["samples"]["auc"]

    # the command line: files in, JSON out, the arguments saved
    ase.io.write(tmp_path / "samples.extxyz", samples)
    ase.io.write(tmp_path / "ref.extxyz", ref)
    parser = add_evaluate_arguments(argparse.ArgumentParser())
    args = parser.parse_args([str(tmp_path / "samples.extxyz"), "--reference", str(tmp_path / "ref.extxyz"),
                              "--out", str(tmp_path / "cli"), "--num-clusters", "4", "--num-runs", "1",
                              "--sigmas", "0.1", "--fractions", "1.0", "--no-plots", "--quiet"])
    assert run_evaluate(args) == 0
    cli = json.loads((tmp_path / "cli" / "evaluation.json").read_text())
    assert cli["config"]["command_line"]["num_runs"] == 1
    assert set(cli["prd"]) == {"samples", "100% σ=0.10 Å"}
    bad = parser.parse_args([str(tmp_path / "missing.extxyz"), "--reference", str(tmp_path / "ref.extxyz")])
    assert run_evaluate(bad) == 2


def test_evaluate_layer_group_accuracy_for_2d(tmp_path):
    ref = [_mos2("2H"), _mos2("1T")] * 3
    samples = [a.copy() for a in ref]
    res = evaluate(samples, ref, None, num_clusters=2, num_runs=1, sigmas=(0.05,), fractions=(1.0,),
                   target_labels=[78, 72, 78, 72, 72, 72])
    assert res["symmetry"]["layer_group_accuracy"] == pytest.approx(5 / 6)
    assert res["config"]["periodic"] is True
    assert res["symmetry"]["layer_group_counts"] == {"78": 3, "72": 3}  # JSON keys
    for a, label in zip(samples, [78, 72, 72, 72, 72, 72]):  # targets read from info["label"]
        a.info["label"] = label
    res = evaluate(samples, ref, None, num_clusters=2, num_runs=1, sigmas=(0.05,), fractions=(1.0,))
    assert res["symmetry"]["layer_group_accuracy"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="not 2D"):
        evaluate(_cu_clusters(), _cu_clusters(), None, num_clusters=2, num_runs=1, sigmas=(0.1,),
                 fractions=(1.0,), target_labels=[1] * 8)
