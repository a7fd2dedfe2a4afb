"""EMT in JAX (agedi_jax.potentials) against ASE's EMT calculator.

One mixed batch (random and relaxed clusters of 2–55 atoms, PtCu / PdAg / AuNiAl, periodic
bulk cells and a Pt(111) slab, an isolated-atom pair, coincident atoms, padding) is
evaluated once in float32 and once in float64 by module-scoped jitted functions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron
from ase.optimize import FIRE

from agedi_jax.batch import Bucket, StructureError
from agedi_jax.convert import batch_from_atoms
from agedi_jax.evaluation.energetics import random_cluster
from agedi_jax.potentials import (
    EMT_ELEMENTS,
    UnsupportedElementError,
    emt_cutoff,
    energy_and_forces,
    make_emt,
)
from agedi_jax.vocab import MASK, TypeVocab

VOCAB = TypeVocab(("Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"))


def _mixed(symbols: str, counts, n: int, seed: int) -> Atoms:
    comp = dict(zip([symbols[i : i + 2] for i in range(0, len(symbols), 2)], counts))
    assert sum(comp.values()) == n
    return random_cluster(comp, np.random.default_rng(seed), min_distance=2.0)


def _ase_relaxed(atoms: Atoms, steps: int = 300) -> Atoms:
    a = atoms.copy()
    a.calc = EMT()
    FIRE(a, logfile=None).run(fmax=0.05, steps=steps)
    a.calc = None
    return a


@functools.cache
def _structures() -> list[Atoms]:
    out = [
        _mixed("PtCu", (1, 1), 2, 0),
        _mixed("PdAg", (2, 3), 5, 1),
        _mixed("AuNiAl", (3, 3, 3), 9, 2),
        _mixed("PtCu", (6, 7), 13, 3),
        _mixed("PdAg", (16, 17), 33, 4),
        _ase_relaxed(_mixed("PtCu", (7, 6), 13, 5)),
    ]
    ico = Icosahedron("Pd", 3)  # 55 atoms
    ico.symbols[np.random.default_rng(6).permutation(len(ico))[:25]] = "Ag"
    ico.rattle(0.05, seed=6)
    out.append(ico)
    cu = bulk("Cu", "fcc", a=3.62, cubic=True)  # conventional cell, 4 atoms
    cu.rattle(0.05, seed=7)
    out.append(cu)
    cuau = Atoms(  # a sheared 2-atom CuAu cell
        "CuAu",
        positions=[[0.0, 0.0, 0.0], [1.5, 1.4, 1.9]],
        cell=[[2.8, 0.0, 0.0], [0.3, 2.8, 0.0], [0.0, 0.0, 3.7]],
        pbc=True,
    )
    out.append(cuau)
    slab = fcc111("Pt", (2, 2, 3), vacuum=6.0)
    slab.pbc = (True, True, False)
    slab.symbols[[9, 10]] = "Cu"
    slab.rattle(0.05, seed=8)
    out.append(slab)
    out.append(Atoms("AuNi", positions=[[0, 0, 0], [7.0, 0, 0]]))  # beyond the cutoff
    return out


COINCIDENT = [
    Atoms("Pt2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
    Atoms("AuNiAl", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2.4, 0.3, 0.0]]),
]


def _ase_reference(structures):
    energies, forces = [], []
    for s in structures:
        a = s.copy()
        a.calc = EMT()
        energies.append(a.get_potential_energy())
        forces.append(a.get_forces())
    return np.array(energies), forces


@pytest.fixture(scope="module")
def emt_fn():
    return make_emt(VOCAB)


@pytest.fixture(scope="module")
def ef(emt_fn):
    return jax.jit(lambda b: energy_and_forces(emt_fn, b))


@pytest.fixture(scope="module")
def batch():
    structures = _structures() + COINCIDENT
    return batch_from_atoms(structures, VOCAB, emt_cutoff(VOCAB.symbols))


@pytest.fixture(scope="module")
def reference():
    return _ase_reference(_structures())


@pytest.fixture(scope="module")
def results(ef, batch):
    out = {}
    for x64 in (False, True):
        with jax.enable_x64(x64):
            e, f = ef(jax.tree.map(jnp.asarray, batch))
            out[x64] = (np.asarray(e, np.float64), np.asarray(f, np.float64))
    return out


def _errors(results, reference, x64):
    e, f = results[x64]
    e_ref, f_ref = reference
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in _structures()])])
    de = np.array([abs(e[k] - e_ref[k]) / len(s) for k, s in enumerate(_structures())])
    df = np.array(
        [np.abs(f[offsets[k] : offsets[k + 1]] - f_ref[k]).max() for k in range(len(_structures()))]
    )
    return de, df


def test_cutoff_and_constants():
    rc_list = emt_cutoff(["Pt", "Cu"])
    assert rc_list == pytest.approx(5.8770, abs=1e-3)
    assert emt_cutoff(EMT_ELEMENTS) == rc_list  # ASE's default: one cutoff for all elements
    calc = EMT()
    calc.initialize(Atoms("Pt"))
    assert rc_list == pytest.approx(calc.rc_list, abs=1e-12)


def test_energies_forces_float64(results, reference):
    de, df = _errors(results, reference, x64=True)
    assert de.max() < 1e-9, de
    assert df.max() < 1e-8, df


def test_energies_forces_float32(results, reference):
    de, df = _errors(results, reference, x64=False)
    assert de.max() < 1e-5, de  # eV/atom
    assert df.max() < 1e-4, df  # eV/Å


def test_isolated_atoms_and_padding(results, batch):
    e, f = results[True]
    k = len(_structures()) - 1  # AuNi 7 Å apart: no neighbours, E = -E0(Au) - E0(Ni)
    assert e[k] == pytest.approx(3.80 + 4.44, abs=1e-12)
    n_real = int(np.sum(batch.node_mask))
    n_graph = int(np.sum(batch.graph_mask))
    for x64 in (False, True):
        e, f = results[x64]
        assert np.all(e[n_graph:] == 0.0)
        assert np.all(f[n_real:] == 0.0)


def test_coincident_atoms_finite(results):
    first = sum(len(s) for s in _structures())
    for x64 in (False, True):
        e, f = results[x64]
        assert np.all(np.isfinite(e)) and np.all(np.isfinite(f))
    e, f = results[True]
    with np.errstate(all="ignore"):
        e_ref, _ = _ase_reference(COINCIDENT)  # ASE's energy is finite, its forces NaN
    n = len(_structures())
    np.testing.assert_allclose(e[n : n + 2], e_ref, rtol=1e-12)
    # coincident pair: equal and opposite forces, by symmetry zero along the pair
    np.testing.assert_allclose(f[first], 0.0, atol=1e-9)


def test_forces_are_minus_gradient(ef, batch):
    """Central finite differences of the energy on coordinates of several structures."""
    rng = np.random.default_rng(0)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in _structures()])])
    h = 1e-5
    with jax.enable_x64(True):
        jb = jax.tree.map(jnp.asarray, batch)
        _, forces = ef(jb)
        forces = np.asarray(forces)
        for k in (2, 5, 6, 7, 8, 9):  # clusters, relaxed, bulk, sheared cell, slab
            atom = int(offsets[k] + rng.integers(len(_structures()[k])))
            for axis in range(3):
                pos = np.asarray(batch.positions, np.float64).copy()
                pos[atom, axis] += h
                e_plus = np.asarray(ef(jb.replace(positions=jnp.asarray(pos)))[0])[k]
                pos[atom, axis] -= 2 * h
                e_minus = np.asarray(ef(jb.replace(positions=jnp.asarray(pos)))[0])[k]
                fd = -(e_plus - e_minus) / (2 * h)
                assert forces[atom, axis] == pytest.approx(fd, abs=1e-6), (k, atom, axis)


def test_padding_invariance(ef, batch, results):
    """The same structures in a bigger bucket give bit-identical real values."""
    structures = _structures() + COINCIDENT
    big = batch_from_atoms(
        structures,
        VOCAB,
        emt_cutoff(),
        bucket=Bucket(batch.num_nodes + 7, batch.num_edges + 100, batch.num_graphs + 2),
    )
    e, f = ef(jax.tree.map(jnp.asarray, big))
    n_real, g = int(np.sum(batch.node_mask)), len(structures)
    e0, f0 = results[False]
    np.testing.assert_array_equal(np.asarray(e)[:g], e0[:g])
    np.testing.assert_array_equal(np.asarray(f)[:n_real], f0[:n_real])
    assert np.all(np.asarray(f)[n_real:] == 0.0) and np.all(np.asarray(e)[g:] == 0.0)


def test_mask_atoms_contribute_nothing_in_jit(emt_fn, batch, results):
    """A MASK atom (type 0) is refused on the host and ignored under jit."""
    types = np.asarray(batch.types).copy()
    k_atom = 0  # first atom of structure 0 (a 2-atom PtCu cluster)
    types[k_atom] = MASK
    masked = batch.replace(types=types)
    with pytest.raises(StructureError, match="MASK"):
        emt_fn(masked)
    e = np.asarray(jax.jit(emt_fn)(jax.tree.map(jnp.asarray, masked)), np.float64)
    # the remaining atom of structure 0 is isolated: energy -E0 of its element
    other = VOCAB.decode([int(batch.types[1])])[0]
    from agedi_jax.potentials.emt import EMT_PARAMETERS

    assert e[0] == pytest.approx(-EMT_PARAMETERS[other][0], abs=1e-5)
    np.testing.assert_allclose(e[1:], results[False][0][1:], rtol=1e-6, atol=1e-5)


def test_unsupported_elements():
    with pytest.raises(UnsupportedElementError, match=r"\['H', 'O'\].*Al, Cu, Ag, Au, Ni, Pd, Pt"):
        make_emt(TypeVocab(("H", "Pt", "O")))
    with pytest.raises(UnsupportedElementError, match="'C'"):
        emt_cutoff(["Cu", "C"])
    fn = make_emt(TypeVocab(("Pt", "O")), allow_unsupported=True)
    b = batch_from_atoms([Atoms("PtO", positions=[[0, 0, 0], [2, 0, 0]])], TypeVocab(("Pt", "O")), 6.0)
    with pytest.raises(UnsupportedElementError, match="'O'"):
        fn(b)


def test_too_small_template_cutoff(emt_fn):
    cu = bulk("Cu", "fcc", a=3.62, cubic=True)
    small = batch_from_atoms([cu], VOCAB, 2.0)
    with pytest.raises(StructureError, match="cutoff"):
        emt_fn(small)
    emt_fn.check(batch_from_atoms([cu], VOCAB, emt_cutoff()))  # large enough: no error
