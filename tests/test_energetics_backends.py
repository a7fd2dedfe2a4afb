"""The evaluation's relaxation backends (agedi_jax.evaluation.energetics): the batched JAX
FIRE + EMT path gives the ASE optimizer loop's minima within the FIRE tolerance, keeps the
ASE path's output contract (copy with calculator, info, ASE's convergence criterion,
input order, constraints), and other calculators / optimizers still go through ASE."""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.cluster import Icosahedron
from ase.constraints import FixAtoms, FixBondLength

from agedi_jax.evaluation.energetics import (
    _is_default_emt,
    _use_jax,
    random_cluster,
    random_structure_search,
    reference_energies,
    relax,
    relax_many,
)


@pytest.fixture(scope="module")
def starts():
    """Random connected PtCu / PdAg clusters of 6 and 9 atoms (two chunk shapes)."""
    out = []
    for k, comp in enumerate(["Pt3Cu3", "Pd5Ag4", "Cu6", "Pt2Cu7", "Pd2Ag4", "Ag9"]):
        a = random_cluster(comp, np.random.default_rng([5, k]), min_distance=2.0)
        a.info["tag"] = k
        out.append(a)
    return out


def test_backend_choice():
    from ase.calculators.emt import EMT

    assert _is_default_emt(None) and _is_default_emt(EMT) and _is_default_emt(EMT())
    assert not _is_default_emt(EMT(asap_cutoff=True)) and not _is_default_emt(LennardJones())
    a = Icosahedron("Pt", 2)
    assert _use_jax([a], None, "FIRE", "auto") and not _use_jax([a], None, "BFGS", "auto")
    assert not _use_jax([a], None, "FIRE", "ase") and not _use_jax([a], LennardJones(), "FIRE", "auto")
    b = a.copy()
    b.set_constraint(FixBondLength(0, 1))
    assert not _use_jax([b], None, "FIRE", "auto")
    with pytest.raises(ValueError, match="backend='jax'"):
        _use_jax([a], None, "BFGS", "jax")
    with pytest.raises(ValueError, match="backend"):
        relax(a, backend="gpu")


def test_jax_and_ase_backends_agree(starts):
    fmax = 0.05
    r_jax, e_jax, c_jax = relax_many(starts, fmax=fmax, steps=500, backend="jax")
    r_ase, e_ase, c_ase = relax_many(starts, fmax=fmax, steps=500, backend="ase")
    assert c_jax.all() and c_ase.all()
    # same local minima: FIRE from the same start, float32 vs float64 forces
    np.testing.assert_allclose(e_jax, e_ase, atol=2e-3)
    for s, a, b in zip(starts, r_jax, r_ase):
        assert a.get_chemical_symbols() == s.get_chemical_symbols()  # input order kept
        assert a.info["tag"] == s.info["tag"] and a.info["energy"] == pytest.approx(a.get_potential_energy())
        assert isinstance(a.calc, EMT)
        assert np.sqrt((a.get_forces() ** 2).sum(1)).max() < fmax  # ASE's criterion, float64
        assert np.abs(a.positions - b.positions).max() < 0.05
        assert not np.array_equal(s.positions, a.positions)  # input untouched, copy moved
    # single-structure API = the batched one
    _, e_one = relax(starts[1])
    assert e_one == pytest.approx(e_jax[1], abs=1e-6)


def test_fixed_atoms_stay_and_other_calculators_use_ase():
    a = Icosahedron("Cu", 2)
    a.rattle(0.1, seed=1)
    a.set_constraint(FixAtoms(indices=[0, 3]))
    r, _ = relax(a, backend="jax")
    np.testing.assert_array_equal(r.positions[[0, 3]], a.positions[[0, 3]])
    assert r.info["relax_converged"]
    lj = relax_many([a], calculator=lambda: LennardJones(sigma=2.3, epsilon=0.4, rc=6.0), steps=50)
    assert isinstance(lj[0][0].calc, LennardJones)
    with pytest.raises(ValueError, match="EMT"):
        relax_many([Icosahedron("Fe", 2)])
    with pytest.raises(ValueError, match="no atoms"):
        relax_many([a[:0]])


def test_rss_and_references_use_the_batched_path():
    rss = random_structure_search("Pt3Cu2", 3, seed=2)
    rss_ase = [relax(s, backend="ase")[0] for s in random_structure_search("Pt3Cu2", 3, seed=2, relax=False)]
    np.testing.assert_allclose([r.info["energy"] for r in rss], [r.info["energy"] for r in rss_ase], atol=2e-3)
    clusters = [Icosahedron("Pt", 2), Icosahedron("Cu", 2)]
    clusters[0].rattle(0.05, seed=0)
    refs = reference_energies(clusters + [rss[0]])
    assert set(refs) == {("Pt", 13), ("Cu", 13)}
    assert refs[("Pt", 13)] == pytest.approx(relax(clusters[0], backend="ase")[1] / 13, abs=1e-4)
