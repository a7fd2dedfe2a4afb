"""Batched FIRE relaxation (agedi_jax.relax) against ASE's FIRE with ASE's EMT.

One batch (perturbed relaxed 13-atom clusters, random 13-atom clusters, a Pt(111)/Cu slab
with a fixed bottom layer, a Cu3Au bulk cell) is relaxed once in float32 through
``relax_atoms`` and once in float64 through ``relax``; ASE relaxes the same starts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron
from ase.constraints import FixAtoms
from ase.optimize import FIRE

from agedi_jax.batch import Bucket
from agedi_jax.convert import batch_from_atoms
from agedi_jax.evaluation.energetics import random_cluster
from agedi_jax.potentials import emt_cutoff, make_emt
from agedi_jax.relax import RelaxResult, relax, relax_atoms
from agedi_jax.vocab import TypeVocab

FMAX = 0.05
MAX_STEPS = 600
WELL_DEFINED = [0, 1, 4, 5]  # perturbed minima: ASE and JAX must land in the same one


def _ase_relax(atoms, steps=MAX_STEPS):
    a = atoms.copy()
    a.calc = EMT()
    opt = FIRE(a, logfile=None)
    converged = opt.run(fmax=FMAX, steps=steps)
    return a, a.get_potential_energy(), opt.nsteps, converged


@pytest.fixture(scope="module")
def structures():
    out = []
    for k, (host, guest) in enumerate([("Cu", "Pt"), ("Ag", "Pd")]):
        ico = Icosahedron(host, 2)  # 13 atoms
        ico.symbols[np.random.default_rng(k).permutation(13)[:6]] = guest
        relaxed = _ase_relax(ico)[0]
        relaxed.calc = None
        relaxed.rattle(0.05, seed=10 + k)
        out.append(relaxed)
    out.append(random_cluster({"Pt": 6, "Cu": 7}, np.random.default_rng(1), min_distance=2.0))
    out.append(random_cluster({"Pd": 7, "Ag": 6}, np.random.default_rng(2), min_distance=2.0))
    slab = fcc111("Pt", (2, 2, 3), vacuum=6.0)
    slab.pbc = (True, True, False)
    slab.symbols[[8, 9]] = "Cu"
    slab.rattle(0.1, seed=3)
    slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))  # bottom layer
    out.append(slab)
    cu3au = bulk("Cu", "fcc", a=3.7, cubic=True)
    cu3au.symbols[0] = "Au"
    cu3au.rattle(0.1, seed=4)  # atoms at the origin move out of the cell: wrapped
    out.append(cu3au)
    return out


@pytest.fixture(scope="module")
def vocab(structures):
    return TypeVocab.from_atoms(structures)


@pytest.fixture(scope="module")
def batch(structures, vocab):
    return batch_from_atoms(structures, vocab, emt_cutoff(vocab.symbols))


@pytest.fixture(scope="module")
def ase_results(structures):
    return [_ase_relax(s) for s in structures]


@pytest.fixture(scope="module")
def jax_results(structures):
    return relax_atoms(structures, "emt", fmax=FMAX, max_steps=MAX_STEPS)


@pytest.fixture(scope="module")
def batch_result(batch, vocab):
    return relax(make_emt(vocab), batch, fmax=FMAX, max_steps=MAX_STEPS)


def test_converged_and_forces_below_fmax(jax_results, structures):
    relaxed, _, converged = jax_results
    assert len(relaxed) == len(structures) and converged.all()
    for a, s in zip(relaxed, structures):
        assert a.get_chemical_symbols() == s.get_chemical_symbols()
        assert np.array_equal(a.pbc, s.pbc) and np.allclose(a.cell, s.cell)
        a = a.copy()
        a.calc = EMT()  # FixAtoms is kept: ASE zeroes the forces on fixed atoms
        fmax = np.linalg.norm(a.get_forces(), axis=1).max()
        assert fmax <= FMAX + 1e-4  # float32 forces agree with ASE to ~3e-5 eV/Å
        assert a.get_potential_energy() == pytest.approx(a.info["energy"], abs=1e-4)


def test_energies_agree_with_ase_fire(jax_results, ase_results):
    _, energies, _ = jax_results
    e_ase = np.array([r[1] for r in ase_results])
    assert all(r[3] for r in ase_results)
    de = np.abs(energies - e_ase)
    assert de[WELL_DEFINED].max() < 2e-3, de
    assert np.median(de) < 2e-3, de


def test_float64_matches_ase_fire_step_by_step(structures, vocab, ase_results):
    """In float64 the trajectories are ASE's: same step counts, energies and positions."""
    with jax.enable_x64(True):
        b = batch_from_atoms(structures, vocab, emt_cutoff())
        out, res = relax(make_emt(vocab), b, fmax=FMAX, max_steps=MAX_STEPS)
        pos = np.asarray(out.positions)
    assert res.energy.dtype == jnp.float64
    off = 0
    for k, (a_ase, e_ase, nsteps, _) in enumerate(ase_results):
        n = len(a_ase)
        assert int(res.steps[k]) == nsteps, k
        assert float(res.energy[k]) == pytest.approx(e_ase, abs=1e-8)
        d = pos[off : off + n] - a_ase.positions
        if a_ase.pbc.any():  # JAX wraps periodic axes, ASE does not
            frac = d @ np.linalg.inv(a_ase.cell.array)
            frac[:, a_ase.pbc] -= np.round(frac[:, a_ase.pbc])
            d = frac @ a_ase.cell.array
        assert np.abs(d).max() < 1e-8, k
        off += n


def test_fixed_atoms_unchanged(jax_results, structures, batch, batch_result):
    relaxed, _, _ = jax_results
    slab, out = structures[4], relaxed[4]
    fixed = slab.constraints[0].get_indices()
    assert np.array_equal(out.positions[fixed], slab.positions[fixed])  # bit-identical
    assert not np.allclose(out.positions, slab.positions)
    out_batch, _ = batch_result
    f = np.asarray(batch.fixed)
    assert f.sum() == len(fixed)
    start = np.asarray(jnp.asarray(batch.positions))
    assert np.array_equal(np.asarray(out_batch.positions)[f], start[f])


def test_result_layout_and_padding(batch, batch_result):
    out_batch, res = batch_result
    assert isinstance(res, RelaxResult)
    g, n = int(np.sum(batch.graph_mask)), int(np.sum(batch.node_mask))
    assert res.energy.shape == res.fmax.shape == res.converged.shape == res.steps.shape
    assert res.converged[:g].all() and not res.converged[g:].any()
    assert (np.asarray(res.fmax)[:g] < FMAX).all()
    assert np.all(np.asarray(res.energy)[g:] == 0) and np.all(np.asarray(res.steps)[g:] == 0)
    np.testing.assert_array_equal(np.asarray(out_batch.positions)[n:], np.asarray(batch.positions)[n:])


def test_periodic_axes_wrapped(batch, batch_result):
    out_batch, _ = batch_result
    pos = np.asarray(out_batch.positions, np.float64)
    gi = np.asarray(batch.graph_index)
    free = np.asarray(batch.node_mask) & ~np.asarray(batch.fixed)
    for k in (4, 5):
        sel = free & (gi == k)
        frac = pos[sel] @ np.linalg.inv(np.asarray(batch.cell[k], np.float64))
        periodic = np.asarray(batch.pbc[k])
        assert (frac[:, periodic] >= -1e-6).all() and (frac[:, periodic] < 1 + 1e-6).all()
    # the Cu3Au start had atoms outside the cell
    start = np.asarray(batch.positions)[gi == 5] @ np.linalg.inv(np.asarray(batch.cell[5]))
    assert (start < 0).any()


def test_padding_invariance(batch, vocab, structures, batch_result):
    """The same structures in a bigger bucket relax identically."""
    big = batch_from_atoms(
        structures,
        vocab,
        emt_cutoff(),
        bucket=Bucket(batch.num_nodes + 9, batch.num_edges + 64, batch.num_graphs + 2),
    )
    out_big, res_big = relax(make_emt(vocab), big, fmax=FMAX, max_steps=MAX_STEPS)
    out, res = batch_result
    g, n = len(structures), int(np.sum(batch.node_mask))
    np.testing.assert_array_equal(np.asarray(res_big.steps)[:g], np.asarray(res.steps)[:g])
    np.testing.assert_allclose(np.asarray(res_big.energy)[:g], np.asarray(res.energy)[:g], atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(out_big.positions)[:n], np.asarray(out.positions)[:n], atol=1e-5
    )


def test_deterministic_and_max_steps(batch, vocab, batch_result):
    fn = make_emt(vocab)
    out, res = relax(fn, batch, fmax=FMAX, max_steps=MAX_STEPS)
    out0, res0 = batch_result
    np.testing.assert_array_equal(np.asarray(out.positions), np.asarray(out0.positions))
    for a, b in zip(res, res0):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, short = relax(fn, batch, fmax=FMAX, max_steps=3)  # traced: no recompilation
    g = int(np.sum(batch.graph_mask))
    assert (np.asarray(short.steps)[:g] <= 3).all()
    assert not np.asarray(short.converged)[:g].all()


def test_bad_arguments(batch, vocab):
    fn = make_emt(vocab)
    with pytest.raises(ValueError, match="fmax"):
        relax(fn, batch, fmax=0.0)
    with pytest.raises(ValueError, match="potential"):
        relax_atoms([bulk("Cu")], potential="lj")
    with pytest.raises(ValueError, match="cutoff"):
        relax_atoms([bulk("Cu")], potential=make_emt)
