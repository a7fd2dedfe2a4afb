"""The atomistic batch: round trip, buckets, in-jit edges against ASE, masks, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, mx2
from ase.cluster import Icosahedron
from ase.constraints import FixAtoms
from ase.neighborlist import neighbor_list

from agedi_jax.batch import AtomsBatch, Bucket, StructureError, round_up
from agedi_jax.convert import atoms_from_batch, batch_from_atoms
from agedi_jax.edges import edge_vectors, image_range
from agedi_jax.geometry import com_axes, graph_mean, remove_com
from agedi_jax.vocab import MASK, TypeVocab

RNG = np.random.default_rng(20261124)


def random_cluster(n: int, symbols=("Cu", "Pt"), box: float = 6.0) -> Atoms:
    return Atoms(
        symbols=list(RNG.choice(symbols, n)), positions=RNG.uniform(0, box, (n, 3)), pbc=False
    )


def hex_2d(a: float = 3.2) -> Atoms:
    atoms = mx2("MoS2", kind="2H", a=a, vacuum=8.0)
    atoms.pbc = (True, True, False)
    atoms.positions += RNG.normal(0, 0.2, atoms.positions.shape)
    return atoms


def small_bulk() -> list[Atoms]:
    fcc = bulk("Cu", "fcc", a=3.6)  # primitive, 1 atom, interplanar spacing 2.08 Å
    fcc.rattle(0.05, seed=1)
    tri = Atoms(
        "CuPt",
        cell=[[3.0, 0.0, 0.0], [1.4, 3.1, 0.0], [0.7, -0.9, 3.3]],
        scaled_positions=[[0.1, 0.2, 0.3], [0.6, 0.55, 0.8]],
        pbc=True,
    )
    return [fcc, tri]


ALL_SYMBOLS = ("Cu", "Mo", "S", "Pt")
VOCAB = TypeVocab(ALL_SYMBOLS)

_edge_fn = jax.jit(edge_vectors, static_argnums=1)


def _edge_sets(atoms_list, cutoff):
    """Our (i, j, S) -> distance maps per structure and ASE's."""
    batch = batch_from_atoms(atoms_list, VOCAB, cutoff)
    with jax.enable_x64(True):
        e = jax.tree.map(np.asarray, _edge_fn(jax.tree.map(jnp.asarray, batch), cutoff))
    out = []
    offset = 0
    for k, atoms in enumerate(atoms_list):
        i, j, S, d = neighbor_list("ijSd", atoms, cutoff)
        ref = {(a, b, tuple(s)): dist for a, b, s, dist in zip(i, j, S.astype(int), d)}
        sel = e.mask & (batch.graph_index[batch.receivers] == k)
        shifts = np.rint(e.shifts[sel]).astype(int)
        ours = {
            (a - offset, b - offset, tuple(s)): dist
            for a, b, s, dist in zip(batch.receivers[sel], batch.senders[sel], shifts, e.lengths[sel])
        }
        out.append((ref, ours))
        offset += len(atoms)
    return out


@pytest.mark.parametrize(
    "kind", ["clusters", "narrow_hexagonal_2d", "bulk"],
)
def test_edges_match_ase_neighbor_list(kind):
    cutoff = 6.0
    if kind == "clusters":
        structures = [random_cluster(n) for n in (2, 7, 13)]
    elif kind == "narrow_hexagonal_2d":
        structures = [hex_2d(3.2), hex_2d(3.4)]
    else:
        structures = small_bulk()
    for ref, ours in _edge_sets(structures, cutoff):
        assert len(ref) > 0
        assert set(ref) == set(ours)
        diff = max(abs(ref[k] - ours[k]) for k in ref)
        assert diff < 1e-5


def test_image_range_derived_from_interplanar_spacing():
    # a = 3.2 Å hexagonal: spacing a·sin(60°) = 2.77 Å; cutoff 5 Å needs 5x5 images, not 3x3.
    atoms = hex_2d(3.2)
    r = image_range(atoms.cell[:], atoms.pbc, 5.0)
    assert r.tolist() == [2, 2, 0]
    # a wide cell (spacing 10.4 Å > 2 x 5 Å) needs only the minimum image; no images along
    # non-periodic axes
    wide = mx2("MoS2", a=12.0, vacuum=8.0)
    wide.pbc = (True, True, False)
    assert image_range(wide.cell[:], wide.pbc, 5.0).tolist() == [0, 0, 0]
    assert image_range(wide.cell[:], wide.pbc, 6.0).tolist() == [1, 1, 0]
    assert image_range(np.zeros((3, 3)), [False] * 3, 5.0).tolist() == [0, 0, 0]


def test_edges_independent_of_wrapping_in_float32():
    """Moving atoms by lattice vectors (unwrapped coordinates) gives the same neighbours."""
    atoms = hex_2d(3.2)
    moved = atoms.copy()
    moved.positions[0] += 2 * atoms.cell[0] - 3 * atoms.cell[1]
    moved.positions[2] += atoms.cell[1]
    cutoff = 6.0
    b1 = batch_from_atoms([atoms], VOCAB, cutoff)
    b2 = batch_from_atoms([moved], VOCAB, cutoff)
    e1 = _edge_fn(b1, cutoff)
    e2 = _edge_fn(b2, cutoff)
    assert np.array_equal(np.asarray(e1.mask), np.asarray(e2.mask))
    np.testing.assert_allclose(np.asarray(e1.lengths), np.asarray(e2.lengths), atol=1e-4)


def test_round_trip_is_exact():
    structures = [random_cluster(5), hex_2d(), small_bulk()[1]]
    structures[0].set_constraint(FixAtoms(indices=[1, 3]))
    info = [{"energy": -1.5, "name": f"s{k}"} for k in range(3)]
    for a, i in zip(structures, info):
        a.info.update(i)
    batch = batch_from_atoms(structures, VOCAB, 5.0, labels=[0, 78, 3])
    back = atoms_from_batch(batch, VOCAB, info=[a.info for a in structures])
    assert len(back) == 3
    for a, b in zip(structures, back):
        assert np.array_equal(a.positions, b.positions)
        assert a.get_chemical_symbols() == b.get_chemical_symbols()
        assert np.array_equal(a.cell[:], b.cell[:])
        assert np.array_equal(a.pbc, b.pbc)
        for key, value in a.info.items():
            assert b.info[key] == value
    assert back[1].info["label"] == 78 and "label" not in back[0].info
    assert back[0].constraints[0].get_indices().tolist() == [1, 3]
    assert batch.fixed.sum() == 2


def test_graphs_tuple_round_trip():
    batch = batch_from_atoms([random_cluster(4), hex_2d()], VOCAB, 5.0)
    graph = batch.to_graphs_tuple()
    assert int(np.sum(graph.n_node)) == batch.num_nodes
    assert int(np.sum(graph.n_edge)) == batch.num_edges
    again = AtomsBatch.from_graphs_tuple(graph)
    for x, y in zip(batch, again):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_padding_layout():
    batch = batch_from_atoms([random_cluster(3), random_cluster(4)], VOCAB, 5.0)
    n, e, g = batch.num_nodes, batch.num_edges, batch.num_graphs
    assert batch.node_mask.sum() == 7 and not batch.node_mask[-1]
    assert batch.graph_mask.tolist()[:2] == [True, True] and not batch.graph_mask[-1]
    assert np.all(batch.graph_index[~batch.node_mask] == g - 1)
    assert batch.edge_mask.sum() == 3 * 2 + 4 * 3 and not batch.edge_mask[-1]
    assert np.all(batch.senders[~batch.edge_mask] == n - 1)
    assert batch.n_node.sum() == n and batch.n_edge.sum() == e
    # every padded size is on the ladder
    assert all(round_up(x) == x for x in (n, e, g))


def test_masked_types_for_sampling_templates():
    a = random_cluster(6)
    a.set_constraint(FixAtoms(indices=[0]))
    batch = batch_from_atoms([a], VOCAB, 5.0, masked_types=True)
    assert batch.types[0] == VOCAB.index(a[0].symbol)
    assert np.all(batch.types[1:6] == MASK)


def test_same_bucket_does_not_recompile():
    @jax.jit
    def total_length(batch):
        return jnp.sum(jnp.where(edge_vectors(batch, 5.0).mask, edge_vectors(batch, 5.0).lengths, 0.0))

    bucket = Bucket(n_node=32, n_edge=512, n_graph=4)
    b1 = batch_from_atoms([random_cluster(9), random_cluster(12)], VOCAB, 5.0, bucket=bucket)
    b2 = batch_from_atoms([random_cluster(5), random_cluster(7), random_cluster(11)], VOCAB, 5.0, bucket=bucket)
    total_length(b1)
    total_length(b2)
    assert total_length._cache_size() == 1
    # the automatic ladder maps similar batches to the same bucket too
    auto1 = batch_from_atoms([random_cluster(13)] * 8, VOCAB, 5.0)
    auto2 = batch_from_atoms([random_cluster(12)] * 8, VOCAB, 5.0)
    assert auto1.bucket == auto2.bucket
    total_length(auto1)
    total_length(auto2)
    assert total_length._cache_size() == 2


def test_padded_edges_give_zero_messages_and_finite_gradients():
    """Two atoms on top of each other and padded edges: a smooth message function stays
    finite, padded/masked edges contribute exactly zero."""
    cutoff = 4.0
    a = Atoms("Cu3", positions=[[0, 0, 0], [0, 0, 0], [1.5, 0, 0]])
    batch = jax.tree.map(jnp.asarray, batch_from_atoms([a], VOCAB, cutoff))

    def energy(pos):
        e = edge_vectors(batch.replace(positions=pos), cutoff)
        x = e.lengths / cutoff
        envelope = jnp.where(e.mask, (1 - x**2) ** 2, 0.0)
        unit = e.vectors / e.lengths[:, None]
        msg = envelope[:, None] * unit * jnp.exp(-e.lengths)[:, None]
        return jnp.sum(msg**2), msg

    (val, msg), grad = jax.value_and_grad(energy, has_aux=True)(batch.positions)
    assert np.isfinite(val) and np.all(np.isfinite(np.asarray(grad)))
    msg = np.asarray(msg)
    assert np.all(msg[~np.asarray(batch.edge_mask)] == 0.0)
    e = edge_vectors(batch, cutoff)
    assert np.all(np.asarray(e.lengths)[~np.asarray(e.mask)] == pytest.approx(2 * cutoff))


def test_graph_mean_and_remove_com_ignore_padding():
    structures = [random_cluster(4), hex_2d()]
    structures[0].positions += 10.0
    batch = batch_from_atoms(structures, VOCAB, 5.0)
    pos = jnp.asarray(batch.positions).at[-1].set(1e6)  # garbage in a padding slot
    batch = jax.tree.map(jnp.asarray, batch).replace(positions=pos)
    mean = np.asarray(graph_mean(batch, pos))
    np.testing.assert_allclose(mean[0], structures[0].positions.mean(0), rtol=1e-5)
    centred = np.asarray(remove_com(batch, pos))
    axes = np.asarray(com_axes(batch))
    assert axes[0].all() and axes[1].tolist() == [False, False, True] and not axes[-1].any()
    np.testing.assert_allclose(centred[:4].mean(0), 0.0, atol=1e-4)
    # 2D: only z is centred, x and y untouched
    np.testing.assert_allclose(centred[4:7, :2], structures[1].positions[:, :2], rtol=1e-6)
    np.testing.assert_allclose(centred[4:7, 2].mean(), 0.0, atol=1e-4)
    assert np.all(centred[7:] == 0.0)


def test_vocab():
    vocab = TypeVocab.from_atoms([Atoms("PtCu"), Atoms("H2O")])
    assert vocab.symbols == ("H", "O", "Cu", "Pt")
    assert vocab.encode(["Pt", "H"]).tolist() == [4, 1]
    assert vocab.decode([0, 3]) == ["X", "Cu"]
    assert TypeVocab.from_dict(vocab.to_dict()) == vocab
    with pytest.raises(KeyError, match="'Au' is not in the type vocabulary"):
        vocab.encode(["Au"])
    with pytest.raises(ValueError, match="not chemical symbols"):
        TypeVocab(("Cu", "Xx"))


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: [Atoms("AuCu", positions=[[0, 0, 0], [2, 0, 0]])], r"structure 0 \(AuCu\): element 'Au'"),
        (lambda: [random_cluster(3), Atoms()], r"structure 1 \(empty\): empty structure"),
        (lambda: [Atoms("Cu2", positions=[[0, 0, 0], [np.nan, 0, 0]])], r"non-finite .*atoms \[1\]"),
        (
            lambda: [Atoms("Cu2", positions=[[0, 0, 0], [2, 0, 0]], cell=[[3, 0, 0], [0, 3, 0], [0, 0, 0]], pbc=True)],
            "singular in a periodic direction",
        ),
        (
            lambda: [Atoms("Cu2", positions=[[0, 0, 0], [2, 0, 0]], cell=[[3, 0, 0], [6, 0, 0], [0, 0, 5]], pbc=True)],
            "cell is singular",
        ),
    ],
)
def test_bad_input_names_structure_and_problem(make, pattern):
    with pytest.raises(StructureError, match=pattern):
        batch_from_atoms(make(), VOCAB, 5.0)


def test_too_large_for_padding():
    with pytest.raises(StructureError, match="14 atoms is more than the configured maximum of 13"):
        batch_from_atoms([random_cluster(14)], VOCAB, 5.0, max_atoms=13)
    with pytest.raises(StructureError, match="does not fit the padding"):
        batch_from_atoms([random_cluster(10)], VOCAB, 5.0, bucket=Bucket(8, 256, 2))
    with pytest.raises(StructureError, match="empty list"):
        batch_from_atoms([], VOCAB, 5.0)


def test_icosahedron_is_a_cluster_batch():
    ico = Icosahedron("Pt", 2)  # Pt13
    ico.pbc = False
    batch = batch_from_atoms([ico] * 4, VOCAB, 6.0)
    assert batch.num_graphs >= 5 and batch.edge_mask.sum() == 4 * 13 * 12
    e = _edge_fn(batch, 6.0)
    assert int(np.asarray(e.mask).sum()) == 4 * 13 * 12  # every pair of Pt13 is within 6 Å
