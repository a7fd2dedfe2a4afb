"""Tests of the score networks (agedi_jax.nn): symmetry, padding, periodicity, safety,
trainability and conditioning, for both NequIP and PaiNN, and of their global inputs
(pooled context, log N, centre-of-mass vectors) and equivariant normalisation.

Compile time dominates on CPU, so every network is built once per module at a small size,
and all tests share a handful of batch shapes (one cluster bucket, one larger padded
bucket, one periodic bucket) and three jitted functions per network (apply, apply with
type weights, loss-and-gradients).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ase import Atoms
from scipy.spatial.transform import Rotation

from agedi_jax.batch import AtomsBatch, Bucket
from agedi_jax.convert import batch_from_atoms
from agedi_jax.edges import edge_vectors
from agedi_jax.geometry import remove_com
from agedi_jax.vocab import TypeVocab
from agedi_jax.nn import NETWORKS, PaiNN, average_num_neighbors, make_network, network_fields
from agedi_jax.nn.common import bessel_basis, polynomial_envelope, unit_vectors
from agedi_jax.nn.context import GlobalContext, com_features, graph_size_features
from agedi_jax.nn.norms import IrrepsNorm, VectorNorm

CUTOFF = 4.0
VOCAB = TypeVocab(("Cu", "Pt"))
NUM_LABELS = 2
SMALL = {
    "nequip": dict(features=16, vector_features=8, num_layers=2, l_max=2, num_basis=6,
                   radial_hidden=16),
    "painn": dict(features=16, num_layers=2, num_basis=8),
}
CLUSTER_BUCKET = Bucket(n_node=12, n_edge=40, n_graph=3)
BIG_BUCKET = Bucket(n_node=20, n_edge=64, n_graph=6)


# --------------------------------------------------------------------------------------
# Structures
# --------------------------------------------------------------------------------------


def _cluster(n: int, seed: int, symbols: str) -> Atoms:
    """A random, non-symmetric cluster with all distances in [2.0, 5.5] Å, so that some
    pairs are beyond the 4 Å cutoff."""
    rng = np.random.default_rng(seed)
    while True:
        pos = rng.uniform(-2.2, 2.2, size=(n, 3))
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)[np.triu_indices(n, 1)]
        if d.min() > 2.0 and d.max() > CUTOFF + 0.3:
            return Atoms(symbols, positions=pos)


def _periodic() -> list[Atoms]:
    """A 2D hexagonal sheet (pbc T,T,F) and a small bulk cell, both rattled."""
    rng = np.random.default_rng(7)
    a = 2.9
    sheet = Atoms(
        "CuPt",
        cell=[[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, 12.0]],
        scaled_positions=[[0, 0, 0.5], [1 / 3, 2 / 3, 0.55]],
        pbc=(True, True, False),
    )
    bulk = Atoms(
        "PtCuCu",
        cell=np.diag([3.1, 3.3, 3.6]),
        scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.0], [0.5, 0.1, 0.5]],
        pbc=True,
    )
    for at in (sheet, bulk):
        at.positions += rng.normal(scale=0.1, size=at.positions.shape)
    return [sheet, bulk]


def _change_basis(at: Atoms, m: np.ndarray) -> Atoms:
    """The same crystal with lattice vectors ``m @ cell`` (unimodular ``m``), positions unchanged."""
    out = at.copy()
    out.set_cell(np.asarray(m) @ at.cell.array, scale_atoms=False)
    return out


def _batch(atoms_list, bucket, labels=None) -> AtomsBatch:
    return batch_from_atoms(atoms_list, VOCAB, CUTOFF, bucket=bucket, labels=labels)


CLUSTERS = [_cluster(5, 0, "CuPtPtCuPt"), _cluster(4, 1, "PtPtCuCu")]
LABELS = [1, 2]
T = np.array([0.3, 0.7, 0.0], np.float32)  # last slot: padding graph


def _periodic_bucket() -> Bucket:
    sheet, bulk = _periodic()
    variants = [
        [sheet, bulk],
        [_change_basis(sheet, [[1, 0, 0], [1, 1, 0], [0, 0, 1]]),
         _change_basis(bulk, [[1, 0, 0], [1, 1, 0], [1, 0, 1]])],
    ]
    sizes = [batch_from_atoms(v, VOCAB, CUTOFF).bucket for v in variants]
    return Bucket(max(s.n_node for s in sizes), max(s.n_edge for s in sizes), 3)


PERIODIC_BUCKET = _periodic_bucket()


# --------------------------------------------------------------------------------------
# Shared networks and compiled functions
# --------------------------------------------------------------------------------------


class Net(NamedTuple):
    name: str
    model: Any
    params: Any
    apply: Any  # jit(model.apply)(params, batch, t, label)
    apply_tw: Any  # same with type_weights
    loss_grads: Any  # (params, batch, t, label, tgt_pos, tgt_types) -> (loss, g_params, g_positions)


def _loss(model, params, positions, batch, t, label, tgt_pos, tgt_types):
    out = model.apply(params, batch._replace(positions=positions), t, label)
    w = batch.node_mask.astype(positions.dtype)
    n = jnp.sum(w)
    lp = jnp.sum(w[:, None] * (out.positions - tgt_pos) ** 2) / n
    lt = jnp.sum(w[:, None] * (out.types - tgt_types) ** 2) / n
    return lp + lt


@pytest.fixture(scope="module", params=sorted(NETWORKS))
def net(request) -> Net:
    name = request.param
    model = make_network(name, num_types=VOCAB.num_types, num_labels=NUM_LABELS,
                         cutoff=CUTOFF, avg_num_neighbors=3.0, **SMALL[name])
    batch = _batch(CLUSTERS, CLUSTER_BUCKET, LABELS)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), batch, T, batch.label)

    def loss_grads(params, batch, t, label, tgt_pos, tgt_types):
        f = lambda p, x: _loss(model, p, x, batch, t, label, tgt_pos, tgt_types)
        loss, (gp, gx) = jax.value_and_grad(f, argnums=(0, 1))(params, jnp.asarray(batch.positions))
        return loss, gp, gx

    apply = jax.jit(model.apply)
    apply_tw = jax.jit(lambda p, b, t, l, tw: model.apply(p, b, t, l, type_weights=tw))
    return Net(name, model, params, apply, apply_tw, jax.jit(loss_grads))


@pytest.fixture(scope="module")
def cluster_batch() -> AtomsBatch:
    return _batch(CLUSTERS, CLUSTER_BUCKET, LABELS)


@pytest.fixture(scope="module")
def cluster_out(net, cluster_batch):
    return net.apply(net.params, cluster_batch, T, cluster_batch.label)


def _real(batch, x):
    return np.asarray(x)[np.asarray(batch.node_mask)]


def _assert_close(a, b, rel=2e-4, what=""):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-3)
    err = np.abs(a - b).max()
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel:.0e} x scale {scale:.3g}"


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


def test_radial_basis_and_envelope():
    with jax.enable_x64(True):
        r = jnp.linspace(0.0, 5.0, 501, dtype=jnp.float64)
        # orthonormality of the Bessel basis: ∫_0^c r² B_m B_n dr = δ_mn
        b = bessel_basis(r, 4, 5.0)
        gram = jnp.trapezoid(r[:, None, None] ** 2 * b[:, :, None] * b[:, None, :], r, axis=0)
        np.testing.assert_allclose(gram, np.eye(4), atol=2e-3)
        # finite value and derivatives at r = 0 (limit k π / c · sqrt(2/c))
        np.testing.assert_allclose(bessel_basis(jnp.zeros(1), 2, 5.0)[0],
                                   np.sqrt(2 / 5.0) * np.pi * np.array([1, 2]) / 5.0, rtol=1e-12)
        d2 = jax.jacfwd(jax.grad(lambda x: bessel_basis(x, 3, 5.0).sum()))(0.0)
        assert np.isfinite(d2)
        u = lambda x: polynomial_envelope(x, 5.0, 6)
        assert float(u(0.0)) == 1.0
        for order in (u, jax.grad(u), jax.grad(jax.grad(u))):
            assert abs(float(order(5.0 - 1e-9))) < 1e-6
        assert float(u(5.0)) == 0.0 and float(u(10.0)) == 0.0
        assert np.all(np.diff(np.asarray(u(r))) <= 1e-15)  # monotone decreasing
        # safe unit vectors: exact directions for bonds, 0 and finite gradient at 0
        v = jnp.array([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
        np.testing.assert_allclose(unit_vectors(v)[0], np.array([1, 2, 2]) / 3.0, rtol=1e-10)
        g = jax.jacobian(lambda x: unit_vectors(x).sum())(v)
        assert np.all(np.isfinite(g)) and np.all(unit_vectors(v)[1] == 0)


def test_average_num_neighbors():
    dimer = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]])
    assert average_num_neighbors([dimer], CUTOFF) == pytest.approx(1.0)
    trimer = Atoms("Cu3", positions=[[0, 0, 0], [0, 0, 2.5], [0, 0, 5.5]])  # 0–2 beyond cutoff
    assert average_num_neighbors([trimer], CUTOFF) == pytest.approx(4 / 3)
    from ase.neighborlist import neighbor_list

    atoms = CLUSTERS + _periodic()
    ref = sum(len(neighbor_list("i", a, CUTOFF)) for a in atoms) / sum(len(a) for a in atoms)
    assert average_num_neighbors(atoms, CUTOFF) == pytest.approx(ref)
    batches = [_batch(CLUSTERS, CLUSTER_BUCKET), _batch(_periodic(), PERIODIC_BUCKET)]
    assert average_num_neighbors(batches, CUTOFF) == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError, match="no atom has a neighbour"):
        average_num_neighbors([Atoms("Cu")], CUTOFF)


def test_make_network_and_config():
    assert isinstance(make_network(num_types=3), NETWORKS["nequip"])
    assert isinstance(make_network("PaiNN", num_types=3), PaiNN)
    with pytest.raises(ValueError, match="unknown network"):
        make_network("schnet", num_types=3)
    with pytest.raises(ValueError, match="no field"):
        make_network("painn", num_types=3, l_max=2)
    assert "l_max" in network_fields("nequip") and "l_max" not in network_fields("painn")
    # every network in the registry has the shared interface the model passes by name
    for name in NETWORKS:
        assert {"num_types", "num_labels", "cutoff", "position_head", "type_head"} <= set(network_fields(name))
    m = make_network("nequip", num_types=3, com_scales=[2.0, 5.0], normalize=False)  # lists from JSON
    assert m.com_scales == (2.0, 5.0) and not m.normalize and m.global_context and m.com_vector


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_bad_inputs_raise_clear_errors(name, cluster_batch):
    model = make_network(name, num_types=2, num_labels=NUM_LABELS, cutoff=CUTOFF)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="t must be"):
        model.init(key, cluster_batch, np.zeros(5))
    with pytest.raises(ValueError, match="type_weights"):
        model.init(key, cluster_batch, T, type_weights=np.ones((12, 2)))
    with pytest.raises(ValueError, match="label values"):
        model.init(key, cluster_batch, T, np.array([3, 1, 0], np.int32))
    with pytest.raises(ValueError, match="batch.types"):
        model.init(key, cluster_batch._replace(types=cluster_batch.types + 2), T)
    with pytest.raises(ValueError, match="num_labels = 0"):
        make_network(name, num_types=2, cutoff=CUTOFF).init(key, cluster_batch, T, np.array([1, 0, 0], np.int32))
    with pytest.raises(ValueError, match="at least one head"):
        make_network(name, num_types=2, position_head=False, type_head=False).init(key, cluster_batch, T)


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("head", ["position_head", "type_head"])
def test_switched_off_head_returns_none_and_owns_no_parameters(name, head, cluster_batch):
    kw = dict(num_types=2, num_labels=NUM_LABELS, cutoff=CUTOFF, **SMALL[name])
    on = make_network(name, **kw)
    off = make_network(name, **kw, **{head: False})
    key = jax.random.PRNGKey(0)
    p_on = jax.eval_shape(on.init, key, cluster_batch, T)  # traces, does not compile
    p_off = jax.eval_shape(off.init, key, cluster_batch, T)
    out = jax.eval_shape(off.apply, p_off, cluster_batch, T)
    field = "positions" if head == "position_head" else "types"
    assert getattr(out, field) is None
    assert getattr(out, "types" if field == "positions" else "positions") is not None
    size = lambda p: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(p))
    assert size(p_off) < size(p_on)
    names = {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(p_off)}
    assert not any(("position" in s) if field == "positions" else ("type_head" in s) for s in names)


# --------------------------------------------------------------------------------------
# Symmetry
# --------------------------------------------------------------------------------------


def test_output_basics(net, cluster_batch, cluster_out):
    n, k = cluster_batch.num_nodes, VOCAB.num_types
    assert cluster_out.positions.shape == (n, 3) and cluster_out.types.shape == (n, k)
    pad = ~np.asarray(cluster_batch.node_mask)
    assert np.all(np.asarray(cluster_out.positions)[pad] == 0)
    assert np.all(np.asarray(cluster_out.types)[pad] == 0)
    # zero centre of mass per cluster
    com = np.asarray(jax.ops.segment_sum(cluster_out.positions, cluster_batch.graph_index, 3))
    np.testing.assert_allclose(com[:2], 0.0, atol=1e-5)
    assert np.abs(_real(cluster_batch, cluster_out.positions)).max() > 1e-3


def test_rotation_equivariance(net, cluster_batch, cluster_out):
    rots = Rotation.random(2, random_state=3).as_matrix()
    rotated = []
    for at, r in zip(CLUSTERS, rots):
        at = at.copy()
        at.positions = at.positions @ r.T
        rotated.append(at)
    out = net.apply(net.params, _batch(rotated, CLUSTER_BUCKET, LABELS), T, cluster_batch.label)
    gi = np.asarray(cluster_batch.graph_index)[np.asarray(cluster_batch.node_mask)]
    expect = np.einsum("nij,nj->ni", rots[gi], _real(cluster_batch, cluster_out.positions))
    _assert_close(_real(cluster_batch, out.positions), expect, what="rotated positions output")
    _assert_close(_real(cluster_batch, out.types), _real(cluster_batch, cluster_out.types),
                  what="type log-scores under rotation")
    # Reflection too: the position output is a 1o (polar) vector.
    mirrored = []
    for at in CLUSTERS:
        at = at.copy()
        at.positions = -at.positions
        mirrored.append(at)
    out = net.apply(net.params, _batch(mirrored, CLUSTER_BUCKET, LABELS), T, cluster_batch.label)
    _assert_close(_real(cluster_batch, out.positions), -_real(cluster_batch, cluster_out.positions),
                  what="inverted positions output")


def test_translation_invariance(net, cluster_batch, cluster_out):
    b = cluster_batch._replace(positions=cluster_batch.positions + np.array([3.0, -1.0, 7.5]))
    out = net.apply(net.params, b, T, cluster_batch.label)
    _assert_close(_real(b, out.positions), _real(b, cluster_out.positions), what="translated")
    _assert_close(_real(b, out.types), _real(b, cluster_out.types), what="translated types")


def test_permutation_equivariance(net, cluster_batch, cluster_out):
    perms = [np.array([3, 0, 4, 1, 2]), np.array([2, 3, 1, 0])]
    permuted = [at[p] for at, p in zip(CLUSTERS, perms)]
    b = _batch(permuted, CLUSTER_BUCKET, LABELS)
    out = net.apply(net.params, b, T, b.label)
    index = np.concatenate([perms[0], 5 + perms[1]])
    _assert_close(_real(b, out.positions), _real(b, cluster_out.positions)[index], what="permuted")
    _assert_close(_real(b, out.types), _real(b, cluster_out.types)[index], what="permuted types")


def test_periodic_invariances(net):
    sheet, bulk = _periodic()
    labels = [1, 0]
    ref = net.apply(net.params, _batch([sheet, bulk], PERIODIC_BUCKET, labels), T, np.array([1, 0, 0], np.int32))
    b0 = _batch([sheet, bulk], PERIODIC_BUCKET, labels)
    assert np.abs(_real(b0, ref.positions)).max() > 1e-3
    # COM projection only along the sheet's non-periodic z axis; none for bulk
    np.testing.assert_allclose(np.asarray(ref.positions)[:2, 2].sum(), 0.0, atol=1e-5)

    # an atom moved by a lattice vector (same template, positions only)
    moved = b0.positions.copy()
    moved[0] += sheet.cell[0] - 2 * sheet.cell[1]
    moved[3] += bulk.cell[2] - bulk.cell[0]
    out = net.apply(net.params, b0._replace(positions=moved), T, b0.label)
    _assert_close(_real(b0, out.positions), _real(b0, ref.positions), what="atom moved by a lattice vector")
    _assert_close(_real(b0, out.types), _real(b0, ref.types), what="types, lattice vector")

    # the same crystals described by other cells (unimodular change of basis)
    other = [_change_basis(sheet, [[1, 0, 0], [1, 1, 0], [0, 0, 1]]),
             _change_basis(bulk, [[1, 0, 0], [1, 1, 0], [1, 0, 1]])]
    b1 = _batch(other, PERIODIC_BUCKET, labels)
    assert not np.allclose(b1.cell, b0.cell)
    out = net.apply(net.params, b1, T, b1.label)
    _assert_close(_real(b1, out.positions), _real(b0, ref.positions), what="equivalent cell")
    _assert_close(_real(b1, out.types), _real(b0, ref.types), what="types, equivalent cell")


# --------------------------------------------------------------------------------------
# Padding and safety
# --------------------------------------------------------------------------------------


def test_padding_changes_nothing(net, cluster_batch, cluster_out):
    big = _batch(CLUSTERS, BIG_BUCKET, LABELS)
    # garbage in every padding slot: positions, types, times, labels
    pad = ~np.asarray(big.node_mask)
    pos = big.positions.copy()
    pos[pad] = np.random.default_rng(0).normal(size=(pad.sum(), 3)) * 3
    types = big.types.copy()
    types[pad] = 1
    label = np.array([1, 2, 2, 1, 1, 2], np.int32)
    t = np.array([0.3, 0.7, 0.9, np.nan, 0.5, 0.1], np.float32)
    big = big._replace(positions=pos, types=types)
    out = net.apply(net.params, big, t, label)
    _assert_close(_real(big, out.positions), _real(cluster_batch, cluster_out.positions), 1e-5, "padded")
    _assert_close(_real(big, out.types), _real(cluster_batch, cluster_out.types), 1e-5, "padded types")
    assert np.all(np.asarray(out.positions)[pad] == 0) and np.all(np.asarray(out.types)[pad] == 0)


def _targets(batch, seed):
    rng = np.random.default_rng(seed)
    pos = remove_com(batch, jnp.asarray(rng.normal(size=(batch.num_nodes, 3)), jnp.float32))
    typ = jnp.where(batch.node_mask[:, None], rng.normal(size=(batch.num_nodes, VOCAB.num_types)), 0.0)
    return pos, typ.astype(jnp.float32)


def test_coincident_atoms_are_safe(net, cluster_batch):
    pos = cluster_batch.positions.copy()
    pos[1] = pos[0]  # two atoms on top of each other
    pos[6] = pos[5] + 1e-7  # and two almost on top of each other
    b = cluster_batch._replace(positions=pos)
    out = net.apply(net.params, b, T, b.label)
    assert np.all(np.isfinite(out.positions)) and np.all(np.isfinite(out.types))
    loss, gp, gx = net.loss_grads(net.params, b, T, b.label, *_targets(b, 0))
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(gp)), "NaN/inf parameter gradient"
    assert np.all(np.isfinite(gx)), "NaN/inf position gradient"


def test_every_parameter_gets_a_gradient(net, cluster_batch):
    _, gp, gx = net.loss_grads(net.params, cluster_batch, T, cluster_batch.label, *_targets(cluster_batch, 1))
    dead = [jax.tree_util.keystr(k) for k, g in jax.tree_util.tree_leaves_with_path(gp)
            if not np.any(np.asarray(g) != 0)]
    assert not dead, f"parameters with zero gradient: {dead}"
    names = {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(gp)}
    assert any("label" in s for s in names) and any("time" in s for s in names)
    assert np.abs(_real(cluster_batch, gx)).max() > 0


# --------------------------------------------------------------------------------------
# Conditioning
# --------------------------------------------------------------------------------------


def test_label_conditioning_changes_output(net, cluster_batch, cluster_out):
    outs = {}
    for lab in ([0, 0, 0], [2, 1, 0], [1, 2, 0]):
        o = net.apply(net.params, cluster_batch, T, np.array(lab, np.int32))
        assert np.all(np.isfinite(o.positions)) and np.all(np.isfinite(o.types))
        outs[tuple(lab)] = o
    base = _real(cluster_batch, cluster_out.types)  # labels (1, 2)
    np.testing.assert_array_equal(_real(cluster_batch, outs[(1, 2, 0)].types), base)
    for lab in ((0, 0, 0), (2, 1, 0)):
        diff = np.abs(_real(cluster_batch, outs[lab].types) - base).max()
        assert diff > 1e-3 * np.abs(base).max(), f"label {lab} leaves the type output unchanged"
        diff = np.abs(_real(cluster_batch, outs[lab].positions) - _real(cluster_batch, cluster_out.positions)).max()
        assert diff > 1e-4, f"label {lab} leaves the position output unchanged"
    # the label of one graph does not leak into another
    only_first = np.asarray(cluster_batch.graph_index) == 1
    mixed = net.apply(net.params, cluster_batch, T, np.array([0, 2, 0], np.int32))
    np.testing.assert_allclose(np.asarray(mixed.types)[only_first], np.asarray(cluster_out.types)[only_first],
                               rtol=1e-6, atol=1e-7)


def test_time_conditioning_changes_output(net, cluster_batch, cluster_out):
    out = net.apply(net.params, cluster_batch, np.array([0.9, 0.7, 0.0], np.float32), cluster_batch.label)
    first = np.asarray(cluster_batch.graph_index) == 0
    second = np.asarray(cluster_batch.graph_index) == 1
    assert np.abs(np.asarray(out.types)[first] - np.asarray(cluster_out.types)[first]).max() > 1e-4
    np.testing.assert_allclose(np.asarray(out.types)[second], np.asarray(cluster_out.types)[second],
                               rtol=1e-6, atol=1e-7)


def test_type_weights(net, cluster_batch, cluster_out):
    onehot = np.eye(VOCAB.num_types + 1, dtype=np.float32)[cluster_batch.types]
    out = net.apply_tw(net.params, cluster_batch, T, cluster_batch.label, onehot)
    _assert_close(out.positions, cluster_out.positions, 1e-6, "one-hot type weights")
    _assert_close(out.types, cluster_out.types, 1e-6, "one-hot type weights")
    # Eq. (20): atoms 0 and 1 get α E_Cu + (1 − α) E_Pt; the output moves away from both
    mix = onehot.copy()
    mix[:2] = [0.0, 0.3, 0.7]
    out_mix = net.apply_tw(net.params, cluster_batch, T, cluster_batch.label, mix)
    assert np.all(np.isfinite(out_mix.types))
    for pure in ([0.0, 1.0, 0.0], [0.0, 0.0, 1.0]):
        w = onehot.copy()
        w[:2] = pure
        o = net.apply_tw(net.params, cluster_batch, T, cluster_batch.label, w)
        assert np.abs(np.asarray(o.types)[:2] - np.asarray(out_mix.types)[:2]).max() > 1e-4


# --------------------------------------------------------------------------------------
# Global inputs: pooled context, graph size, centre-of-mass vectors
# --------------------------------------------------------------------------------------

SCALES = (1.0, 3.0, 10.0)


def _com_oracle(positions, axes, scales=SCALES):
    d = np.where(axes, positions - positions.mean(0), 0.0)
    d2 = (d**2).sum(1, keepdims=True)
    l2 = np.asarray(scales) ** 2
    return d2 / (d2 + l2), d[:, :, None] / np.sqrt(d2 + l2)[:, None, :]


def test_com_features_oracle_zero_on_periodic_axes_and_fixed_graphs():
    sheet, bulk = _periodic()
    structures = [CLUSTERS[0], CLUSTERS[1], sheet, bulk]
    fixed = [np.zeros(5, bool), np.array([False, True, False, False]), np.zeros(2, bool), np.zeros(3, bool)]
    axes = [np.ones(3, bool), np.zeros(3, bool), np.array([False, False, True]), np.zeros(3, bool)]
    with jax.enable_x64(True):
        b = batch_from_atoms(structures, VOCAB, CUTOFF, fixed=fixed)
        s, v = com_features(jax.tree.map(jnp.asarray, b), jnp.asarray(b.positions), SCALES)
        s, v = np.asarray(s), np.asarray(v)
        start = 0
        for at, ax in zip(structures, axes):
            sl = slice(start, start + len(at))
            es, ev = _com_oracle(at.positions, ax)
            np.testing.assert_allclose(s[sl], es, atol=1e-12, err_msg=at.get_chemical_formula())
            np.testing.assert_allclose(v[sl], ev, atol=1e-12, err_msg=at.get_chemical_formula())
            start += len(at)
        # cluster: non-trivial; sheet: only z; bulk and the pinned cluster: nothing
        assert np.abs(v[:5]).min(axis=(0, 2)).max() > 0
        assert np.all(v[9:11, :2] == 0) and np.abs(v[9:11, 2]).max() > 0.01
        assert np.all(v[5:9] == 0) and np.all(v[11:] == 0) and np.all(s[11:] == 0)
        assert np.all(np.linalg.norm(v, axis=1) < 1) and np.all((0 <= s) & (s < 1))


def test_com_features_symmetries_and_padding():
    rot = Rotation.random(random_state=4).as_matrix()
    with jax.enable_x64(True):
        b = jax.tree.map(jnp.asarray, _batch(CLUSTERS, CLUSTER_BUCKET))
        s, v = com_features(b, b.positions, SCALES)
        real = np.asarray(b.node_mask)
        # rotation (and inversion) about any point: vectors rotate, scalars are invariant
        for m in (rot, -rot):
            moved = b.positions @ m.T + jnp.array([1.0, -4.0, 2.5])
            s2, v2 = com_features(b, moved, SCALES)
            np.testing.assert_allclose(s2[real], s[real], atol=1e-12)
            np.testing.assert_allclose(v2[real], np.einsum("ij,njk->nik", m, v)[real], atol=1e-12)
        # a permutation inside a graph permutes the rows
        perm = np.array([3, 0, 4, 1, 2] + list(range(5, 12)))
        s3, v3 = com_features(b, b.positions[perm], SCALES)
        np.testing.assert_allclose(v3[real], np.asarray(v)[perm][real], atol=1e-12)
        # garbage padding atoms and more padding graphs change nothing
        big = jax.tree.map(jnp.asarray, _batch(CLUSTERS, BIG_BUCKET))
        pos = big.positions.at[9:].set(1e3)
        s4, v4 = com_features(big, pos, SCALES)
        np.testing.assert_allclose(v4[:9], v[:9], atol=1e-12)
        assert np.all(np.asarray(v4)[9:] == 0) and np.all(np.asarray(s4)[9:] == 0)
    with pytest.raises(ValueError, match="com scales"):
        com_features(b, b.positions, (1.0, -2.0))
    with pytest.raises(ValueError, match="com_scales"):
        make_network("painn", num_types=2, com_scales=()).init(jax.random.PRNGKey(0), b, T)


def test_global_context_pooling_is_padding_and_permutation_invariant(cluster_batch):
    rng = np.random.default_rng(0)
    s = rng.normal(size=(CLUSTER_BUCKET.n_node, 6)).astype(np.float32)
    module = GlobalContext(8)
    params = module.init(jax.random.PRNGKey(0), cluster_batch, s)
    apply = jax.jit(module.apply)
    out = np.asarray(apply(params, cluster_batch, s))
    real = np.asarray(cluster_batch.node_mask)
    gi = np.asarray(cluster_batch.graph_index)
    for g in (0, 1):  # one context per graph, broadcast to its atoms
        rows = out[real & (gi == g)]
        np.testing.assert_allclose(rows, np.broadcast_to(rows[0], rows.shape), rtol=1e-6)
    assert np.abs(out[0] - out[5]).max() > 1e-3, "the two graphs get the same context"
    # the features of padding atoms do not enter the mean
    s_pad = s.copy()
    s_pad[~real] = 1e6
    np.testing.assert_allclose(apply(params, cluster_batch, s_pad)[real], out[real], rtol=1e-5, atol=1e-6)
    # permuting the atoms of graph 0 leaves every context unchanged
    perm = np.array([3, 0, 4, 1, 2] + list(range(5, CLUSTER_BUCKET.n_node)))
    np.testing.assert_allclose(apply(params, cluster_batch, s[perm])[real], out[real], rtol=1e-5, atol=1e-6)
    # another bucket (more padding atoms and graphs, garbage in them): the same contexts
    big = _batch(CLUSTERS, BIG_BUCKET, LABELS)
    s_big = rng.normal(size=(BIG_BUCKET.n_node, 6)).astype(np.float32) * 100
    s_big[:9] = s[:9]
    np.testing.assert_allclose(apply(params, big, s_big)[:9], out[:9], rtol=1e-5, atol=1e-6)
    # log N from the node mask, 0 for padding slots
    np.testing.assert_allclose(graph_size_features(jax.tree.map(jnp.asarray, big))[:, 0],
                               [np.log(5), np.log(4), 0, 0, 0, 0], rtol=1e-6)


def _with_isolated_atom(symbols: str) -> AtomsBatch:
    """Graph 0: three bonded atoms of ``symbols`` and a Cu atom 6.5 Å from all of them
    (beyond the cutoff); graph 1: a cluster."""
    g0 = Atoms(symbols + "Cu", positions=[[0, 0, 0], [2.5, 0, 0], [1.25, 2.1, 0], [9.0, 0, 0]])
    return _batch([g0, CLUSTERS[1]], CLUSTER_BUCKET, LABELS)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_global_context_reaches_isolated_atoms(name):
    """At high noise the graph falls apart; an isolated atom must still see its structure's
    composition (through the pooled context), and only through it."""
    cu, pt = _with_isolated_atom("Cu3"), _with_isolated_atom("Pt3")
    iso = 3
    for context in (True, False):
        model = make_network(name, num_types=2, num_labels=NUM_LABELS, cutoff=CUTOFF,
                             avg_num_neighbors=3.0, global_context=context, **SMALL[name])
        params = jax.jit(model.init)(jax.random.PRNGKey(1), cu, T, cu.label)
        apply = jax.jit(model.apply)
        a, b = apply(params, cu, T, cu.label), apply(params, pt, T, pt.label)
        diff_types = np.abs(np.asarray(a.types)[iso] - np.asarray(b.types)[iso]).max()
        diff_pos = np.abs(np.asarray(a.positions)[iso] - np.asarray(b.positions)[iso]).max()
        if context:
            assert diff_types > 1e-3 and diff_pos > 1e-5, (diff_types, diff_pos)
        else:
            # positions: the zero-CoM projection mixes the outputs of the graph's atoms
            assert diff_types < 1e-6, diff_types
        # the other graph never notices
        np.testing.assert_allclose(np.asarray(a.types)[4:8], np.asarray(b.types)[4:8], rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------
# Normalisation and stability
# --------------------------------------------------------------------------------------


def test_norms_are_equivariant_bounded_and_smooth():
    import e3nn_jax as e3nn

    rot = Rotation.random(random_state=5).as_matrix()
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(0)
        x = e3nn.normal("4x0e + 3x1o + 2x2e", key, (7,)) * 50.0
        norm = IrrepsNorm(eps=1.0)
        params = norm.init(key, x)
        y = norm.apply(params, x)
        assert y.irreps == x.irreps
        for m in (rot, -rot):
            np.testing.assert_allclose(norm.apply(params, x.transform_by_matrix(m)).array,
                                       y.transform_by_matrix(m).array, atol=1e-10)
        sc = y.filter(keep="0e").array
        np.testing.assert_allclose(sc.mean(-1), 0, atol=1e-8)
        np.testing.assert_allclose(sc.std(-1), 1, rtol=1e-3)
        for ir in ("1o", "2e"):  # large inputs are scaled to unit RMS per atom
            np.testing.assert_allclose(np.sqrt((y.filter(keep=ir).array ** 2).mean(-1)), 1, rtol=1e-3)

        v = jnp.asarray(np.random.default_rng(0).normal(size=(7, 3, 5))) * 50.0
        vnorm = VectorNorm(eps=1.0)
        p = vnorm.init(key, v)
        out = vnorm.apply(p, v)
        for m in (rot, -rot):
            np.testing.assert_allclose(vnorm.apply(p, jnp.einsum("ij,njf->nif", m, v)),
                                       jnp.einsum("ij,njf->nif", m, out), atol=1e-10)
        np.testing.assert_allclose(jnp.mean(jnp.sum(out**2, axis=1), axis=-1), 1.0, rtol=1e-3)
        # soft near zero: tiny vectors pass almost unchanged, the map is smooth at v = 0
        np.testing.assert_allclose(vnorm.apply(p, v * 1e-6), v * 1e-6, rtol=1e-5)
        jac = jax.jacobian(lambda z: vnorm.apply(p, z))(jnp.zeros((1, 3, 5)))
        assert np.all(np.isfinite(jac)) and np.abs(jac).max() <= 1.0 + 1e-12


def _close_contacts(batch: AtomsBatch, count: int, seed: int) -> list[AtomsBatch]:
    """Noisy copies of the cluster batch with atoms 0.03–0.3 Å apart in both graphs."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        pos = np.asarray(batch.positions).copy()
        pos[:9] += rng.normal(scale=rng.uniform(0.2, 1.5), size=(9, 3))
        for i, j in ((0, 1), (2, 3), (5, 6)):
            u = rng.normal(size=3)
            pos[j] = pos[i] + rng.uniform(0.03, 0.3) * u / np.linalg.norm(u)
        out.append(batch._replace(positions=pos))
    return out


def test_normalisation_bounds_outputs_at_close_contacts(net, cluster_batch):
    """Parameters × 3 and nearly coincident atoms: the output stays finite and modest. The
    unnormalised PaiNN, by contrast, overflows (the training loss spikes of 1e8 seen before)."""
    batches = _close_contacts(cluster_batch, 4, 0)
    big = jax.tree.map(lambda x: 3.0 * x, net.params)
    for b in batches:
        out = net.apply(big, b, T, b.label)
        for field in (out.positions, out.types):
            assert np.all(np.isfinite(field)) and np.abs(field).max() < 1e3, np.abs(field).max()
    if net.name == "painn":
        raw = make_network("painn", num_types=2, num_labels=NUM_LABELS, cutoff=CUTOFF,
                           avg_num_neighbors=3.0, normalize=False, **SMALL["painn"])
        params = jax.tree.map(lambda x: 3.0 * x, jax.jit(raw.init)(jax.random.PRNGKey(0), batches[0], T, cluster_batch.label))
        out = jax.jit(raw.apply)(params, batches[0], T, cluster_batch.label)
        worst = np.abs(np.asarray(out.positions)).max()
        assert not np.isfinite(worst) or worst > 1e5, worst


def test_short_training_with_close_contacts_stays_order_one(net, cluster_batch):
    """A few hundred Adam steps (large learning rate) on noisy configurations with close
    contacts and unit-variance targets: the outputs stay O(1) on unseen close contacts."""
    train = _close_contacts(cluster_batch, 8, 1)
    targets = [_targets(b, 10 + k) for k, b in enumerate(train)]
    opt = optax.adam(1e-2)
    update = jax.jit(lambda g, s, p: opt.update(g, s, p))
    params, state = net.params, opt.init(net.params)
    losses = []
    for step in range(200):
        k = step % len(train)
        loss, gp, _ = net.loss_grads(params, train[k], T, cluster_batch.label, *targets[k])
        updates, state = update(gp, state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and max(losses) < 20, max(losses)
    for b in _close_contacts(cluster_batch, 4, 2):
        out = net.apply(params, b, T, b.label)
        worst = max(np.abs(_real(b, out.positions)).max(), np.abs(_real(b, out.types)).max())
        assert worst < 10, worst


# --------------------------------------------------------------------------------------
# Trainability
# --------------------------------------------------------------------------------------


def test_overfits_a_single_structure(net):
    # one noisy cluster (in the shared bucket), fixed t and label, fixed random targets
    at = CLUSTERS[0].copy()
    at.positions += np.random.default_rng(5).normal(scale=0.3, size=at.positions.shape)
    b = _batch([at], CLUSTER_BUCKET, [1])
    t = np.array([0.4, 0.0, 0.0], np.float32)
    tgt_pos, tgt_types = _targets(b, 2)
    opt = optax.adam(1e-2)
    update = jax.jit(lambda g, s, p: opt.update(g, s, p))
    params, state = net.params, opt.init(net.params)
    losses = []
    for _ in range(300):
        loss, gp, _ = net.loss_grads(params, b, t, b.label, tgt_pos, tgt_types)
        updates, state = update(gp, state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert min(losses[-10:]) < losses[0] / 10, f"loss {losses[0]:.3g} -> {min(losses[-10:]):.3g}"
