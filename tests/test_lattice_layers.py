"""The in-plane cell of layers (pbc T, T, F) diffusing with ``process.lattice``: the layer
mask and its coordinates, the 3-entry kernel against its own density, the 2D reduction,
edge templates without images along z, invariance of the noising under rotations about
z, a full sampled trajectory that never moves the vacuum axis (oracle cell score), a
tiny layer model that trains and samples layers (from a composition with layer-group
guidance, and from templates whose c it keeps), and the named errors of bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, graphene, mx2

from agedi_jax import lattice as L
from agedi_jax import samplers
from agedi_jax.batch import StructureError, collate
from agedi_jax.config import preset, replace
from agedi_jax.convert import encode_structures
from agedi_jax.data import Dataset
from agedi_jax.edges import image_range
from agedi_jax.generate import make_templates, sample_atoms
from agedi_jax.model import build_model, init_state, make_train_step
from agedi_jax.sde import make_sde
from agedi_jax.train import prepare_data
from agedi_jax.vocab import TypeVocab
from tests.test_lattice_model import TINY as BULK_TINY
from tests.test_lattice_model import oracle_cell_sampler

PBC2 = (True, True, False)
LAYER = np.asarray(L.lattice_mask(np.array(PBC2)))
LSDE = L.make_lattice_sde(scale=1.7, sigma_rel=0.25)
VE = make_sde("ve", "linear", sigma_min=0.01, sigma_max=5.0)
VOCAB = TypeVocab(("B", "N", "S", "Mo"))


def z_rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotated(atoms: Atoms, q: np.ndarray) -> Atoms:
    out = atoms.copy()
    out.set_cell(atoms.cell[:] @ q.T, scale_atoms=False)
    out.positions = atoms.positions @ q.T
    return out


def toy_layers(n: int = 10) -> list:
    """Strained, rattled 2H-MoS2 and hexagonal BN (3 and 2 atoms; every fourth a 2×1
    supercell), layer group 78 in ``info``; c along z (19.19 and 14 Å)."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        if k % 2 == 0:
            a = mx2("MoS2", "2H", a=3.18, thickness=3.19, vacuum=8.0)
        else:
            a = graphene("BN", a=2.50, vacuum=7.0)
        a.pbc = PBC2
        if k % 4 == 3:
            a = a * (2, 1, 1)
        m = np.eye(3)
        m[:2, :2] += rng.normal(0, 0.03, (2, 2))
        a.set_cell(a.cell[:] @ m, scale_atoms=True)
        a.rattle(0.02, seed=k)
        a.info["layer_group"] = 78
        out.append(a)
    return out


def layer_batch(atoms_list, cutoff=3.0, y_max=1.0):
    cells = [L.template_cell(LSDE.scale, len(a), a.pbc, y_max) for a in atoms_list]
    enc = encode_structures(atoms_list, VOCAB, cutoff, image_cells=cells)
    return jax.tree_util.tree_map(jnp.asarray, collate(enc))


def left_handed_layer() -> Atoms:
    """BN in the basis (b, a): the same layer, a × b along −z."""
    a = toy_layers(2)[1]
    cell = a.cell[:].copy()
    cell[[0, 1]] = cell[[1, 0]]
    out = a.copy()
    out.set_cell(cell, scale_atoms=False)
    return out


# --------------------------------------------------------------------------------------
# Mask, coordinates, kernel, reduction, edges
# --------------------------------------------------------------------------------------


def test_layer_mask_coordinates_and_edge_images():
    assert LAYER.tolist() == [[True, True, False], [True, True, False], [False, False, False]]
    assert float(L.periodic_dim(LAYER)) == 2.0
    e = np.asarray(jnp.where(LAYER, L.sym_normal(jax.random.PRNGKey(0), (5,)), 0.0))
    assert np.all(e[:, 2, :] == 0) and np.all(e[:, :, 2] == 0) and np.all(e[:, 0, 1] == e[:, 1, 0])
    lay = toy_layers(1)[0]
    s = L._sqrt_gram(lay.cell[:])
    for param in L.PARAMS:
        sde = L.LatticeSDE(scale=1.7, sigma_rel=0.25, param=param)
        y = L.cell_to_coords(sde, s, 3, LAYER)
        np.testing.assert_array_equal(np.asarray(y)[2], np.asarray(s[2], np.float32))  # the vacuum row as is
        np.testing.assert_allclose(L.coords_to_cell(sde, y, 3, LAYER), s, rtol=2e-5, atol=2e-5)
    # density length of a layer: ℓ_N = c √N (area per atom c²)
    np.testing.assert_allclose(float(L.length_scale(LSDE, 4, LAYER)), 1.7 * 2.0, rtol=1e-6)
    # the edge template of a moving layer cell has no images along z
    tmpl = L.template_cell(LSDE.scale, 3, PBC2, 1.0)
    r = image_range(tmpl, np.array(PBC2), 5.0)
    assert r[2] == 0 and r[0] > 0 and r[1] > 0
    b = layer_batch(toy_layers(3), cutoff=5.0)
    assert np.all(np.asarray(b.shifts)[:, 2] == 0) and np.abs(np.asarray(b.shifts)[:, :2]).max() > 0
    # fit: area per atom (k = 2)
    fit = L.fit_lattice([lay, lay.repeat((2, 1, 1))])
    area = abs(np.linalg.det(lay.cell[:2, :2])) / 3
    assert fit.dim == 2 and fit.scale == pytest.approx(math.sqrt(area), rel=1e-9)


def test_three_entry_kernel_matches_its_density_and_monte_carlo():
    """The layer kernel has d = 3 orthonormal coordinates (S11, S22, √2 S12): its log
    density's entry gradient is the kernel score, its normaliser is (3/2) log 2πσ², and
    draws have the kernel's mean and variance on those 3 coordinates only."""
    sde = L.LatticeSDE(scale=2.0, sigma_rel=0.3, param="log")
    y0 = np.array([[0.2, -0.1, 0.0], [-0.1, 0.15, 0.0], [0.0, 0.0, 17.0]])
    n, t = 4, 0.45
    mean, std = map(np.asarray, L.marginal(sde, y0, t, n, LAYER))
    y = mean + np.where(LAYER, np.array([[0.1, 0.05, 0.3], [0.05, -0.2, 0.1], [0.3, 0.1, 0.4]]), 0.0)
    grad = np.asarray(jax.grad(lambda yy: L.kernel_log_density(sde, yy, y0, t, n, LAYER))(jnp.asarray(y)))
    score = np.asarray(L.kernel_score(sde, y, y0, t, n, LAYER))
    np.testing.assert_allclose(score, np.where(LAYER, grad, 0.0), rtol=1e-5, atol=1e-6)
    lp0 = float(L.kernel_log_density(sde, mean, y0, t, n, LAYER))
    assert lp0 == pytest.approx(-1.5 * math.log(2 * math.pi * float(std) ** 2), rel=1e-5)
    draws = 6000
    ys, eps, _ = jax.vmap(lambda k: L.kernel_sample(k, sde, y0, t, n, LAYER))(jax.random.split(jax.random.PRNGKey(1), draws))
    ys = np.asarray(ys, np.float64)
    coords = np.stack([ys[:, 0, 0], ys[:, 1, 1], math.sqrt(2) * ys[:, 0, 1]], 1)
    expect = np.array([mean[0, 0], mean[1, 1], math.sqrt(2) * mean[0, 1]])
    assert np.all(np.abs(coords.mean(0) - expect) < 4.5 * float(std) / math.sqrt(draws))
    cov = np.cov(coords.T) / float(std) ** 2
    assert np.abs(cov - np.eye(3)).max() < 0.08
    np.testing.assert_array_equal(ys[:, 2], np.broadcast_to(y0[2], (draws, 3)))
    np.testing.assert_array_equal(ys[:, :2, 2], 0.0)


def test_layer_reduction_is_the_2d_analogue_of_niggli():
    base = toy_layers(2)[1].cell[:]
    m = np.array([[2, 1, 0], [5, 3, 0], [0, 0, 1]])  # unimodular in-plane change of basis
    skew = m @ base
    for cell in (skew, np.diag([-1.0, 1.0, 1.0]) @ skew, base):
        red = L.reduce_cell(cell, PBC2)
        a, b = red[0, :2], red[1, :2]
        assert a @ a <= b @ b + 1e-9 and abs(a @ b) <= 0.5 * (a @ a) + 1e-9
        assert a[0] * b[1] - a[1] * b[0] > 0  # right-handed in plane
        np.testing.assert_array_equal(red[2], cell[2])  # c untouched
        np.testing.assert_array_equal(red[:2, 2], 0.0)
        change = red[:2, :2] @ np.linalg.inv(base[:2, :2])  # same lattice: integer, |det| 1
        np.testing.assert_allclose(change, np.round(change), atol=1e-8)
        assert abs(abs(np.linalg.det(change)) - 1) < 1e-8
    s1 = L._sqrt_gram(L.reduce_cell(skew, PBC2))
    s2 = L._sqrt_gram(L.reduce_cell(base, PBC2))
    np.testing.assert_allclose(s1, s2, atol=1e-9)


# --------------------------------------------------------------------------------------
# Invariance and the vacuum axis
# --------------------------------------------------------------------------------------


def test_layer_noising_is_invariant_under_rotations_about_z():
    """Cell noise and position noise of layers (one left-handed) from rotated copies are
    the same draw; c and every z are kept by the cell noise; z is noised by σ(t) ε_z in Å
    with a zero-CoM ε_z that is its own target."""
    structs = toy_layers(3) + [left_handed_layer()]
    key = jax.random.PRNGKey(5)

    @jax.jit
    def noise(b):
        t = jnp.linspace(0.2, 0.8, b.num_graphs)
        bc, eps_c, _ = L.noise_cell(jax.random.fold_in(key, 0), LSDE, b, t)
        bc = L.floor_cells(LSDE, bc, 1.0)
        bt, eps_x, std_f = L.noise_fractional(jax.random.fold_in(key, 1), VE, LSDE, bc, t)
        return bc, bt, eps_c, eps_x

    def noised(atoms_list):
        b = layer_batch(atoms_list)
        return (b, *noise(b))

    b, bc, bt, eps_c, eps_x = noised(structs)
    real = np.asarray(b.node_mask, bool)
    gi = np.asarray(b.graph_index)
    cells = np.asarray(bc.cell)
    for g, a in enumerate(structs):
        np.testing.assert_array_equal(cells[g, 2], np.asarray(a.cell[2], np.float32))  # c exactly
        np.testing.assert_array_equal(cells[g, :2, 2], 0.0)
        assert np.linalg.det(cells[g, :2, :2]) > 0
    np.testing.assert_allclose(np.asarray(bc.positions)[real, 2], np.asarray(b.positions)[real, 2], atol=1e-5)
    # z: Cartesian VE noise with a zero-CoM draw, target = the draw
    sigma = np.asarray(VE.std(jnp.linspace(0.2, 0.8, b.num_graphs)))[gi]
    dz = (np.asarray(bt.positions)[:, 2] - np.asarray(bc.positions)[:, 2])[real]
    ez = np.asarray(eps_x)[real, 2]
    np.testing.assert_allclose(dz, sigma[real] * ez, atol=2e-5)
    for g in range(len(structs)):
        assert abs(ez[gi[real] == g].mean()) < 1e-6
    # rotations about z (and a translation in the plane) give the same draws
    q = z_rotation(0.9)
    rot = [rotated(a, q) for a in structs]
    for a in rot:
        a.translate([0.7, -0.3, 0.0])
        a.wrap()
    _, bcq, btq, eps_cq, eps_xq = noised(rot)
    np.testing.assert_allclose(np.asarray(bcq.cell), cells, atol=3e-5)
    np.testing.assert_allclose(np.asarray(eps_cq), np.asarray(eps_c), atol=1e-6)
    np.testing.assert_allclose(np.asarray(eps_xq)[real], np.asarray(eps_x)[real], atol=2e-4)
    np.testing.assert_allclose(np.asarray(btq.positions)[real, 2], np.asarray(bt.positions)[real, 2], atol=1e-4)


def test_sampled_trajectory_keeps_the_vacuum_axis_and_recovers_the_cell(sampler="em"):
    """Reverse diffusion with the exact cell score of a data cell and a zero position
    score: c never moves (every step, bit for bit), z keeps its centre of mass, the
    in-plane cell reaches the data's."""
    atoms = toy_layers(2)
    batch = layer_batch(atoms)
    canon, mask, y0, score_fn, step = oracle_cell_sampler(batch, sampler, LSDE)
    grid = samplers.time_grid(150, 1e-3)
    real = jnp.asarray(batch.node_mask, bool)

    @jax.jit
    def run(key):
        state = L.crystal_prior_sample(jax.random.fold_in(key, 0), LSDE, batch, 1.0, pos_sde=VE)

        def body(s, i):
            s = step(jax.random.fold_in(key, i + 1), s, grid[i], grid[i + 1], score_fn)
            zc = jnp.sum(jnp.where(real, s.positions[:, 2], 0.0)) / jnp.sum(real)
            return s, (s.cell[:, 2, :], s.cell[:, :2, 2], zc)

        z_start = jnp.sum(jnp.where(real, state.positions[:, 2], 0.0)) / jnp.sum(real)
        out, traj = jax.lax.scan(body, state, jnp.arange(len(grid) - 1))
        return state, out, traj, z_start

    state, out, (c_rows, ab_z, zc), z_start = run(jax.random.PRNGKey(2))
    c0 = np.asarray(batch.cell)[:, 2]
    np.testing.assert_array_equal(np.asarray(state.cell)[:, 2], c0)
    np.testing.assert_array_equal(np.asarray(c_rows), np.broadcast_to(c0, np.asarray(c_rows).shape))
    np.testing.assert_array_equal(np.asarray(ab_z), 0.0)
    np.testing.assert_allclose(np.asarray(zc), float(z_start), atol=2e-4)
    # the prior drew z around the template's centre of mass with the VE σ(1) = 5 Å
    zs = np.asarray(state.positions)[np.asarray(real), 2]
    assert np.std(zs) > 1.0
    np.testing.assert_allclose(np.asarray(out.cell)[:2], np.asarray(canon.cell)[:2], atol=0.05)
    f = np.asarray(L.batch_fractional(out))[np.asarray(real)]
    assert np.all((f[:, :2] >= 0) & (f[:, :2] < 1))


# --------------------------------------------------------------------------------------
# A tiny model of layers, end to end
# --------------------------------------------------------------------------------------

# the bulk lattice tests' tiny model, on labelled layers, positions only
TINY = {**BULK_TINY, "data": {**BULK_TINY["data"], "label": "layer_group"},
        "model": {**BULK_TINY["model"], "types": False}, "train": {**BULK_TINY["train"], "label_dropout": 0.1}}


@pytest.fixture(scope="module")
def layer_config():
    return replace(preset("quickstart"), **TINY)


@pytest.fixture(scope="module")
def layer_model(layer_config):
    """(prepared data, model, parameters after a few steps on a fixed batch, losses)."""
    data = prepare_data(layer_config, Dataset(toy_layers(), name="toylayers"))
    model = build_model(data.config, data.vocab)
    batch = collate(data.train[:4])
    state = init_state(model, jax.random.PRNGKey(0), batch)
    step = make_train_step(model)
    history = []
    for _ in range(12):
        state, m = step(state, batch, jax.random.PRNGKey(7))
        history.append({k: float(v) for k, v in m.items()})
    return data, model, state, history


def test_a_tiny_layer_model_trains(layer_model):
    data, model, state, history = layer_model
    p = data.config.process
    assert p.lattice_scale > 0 and p.lattice_sigma > 0
    assert p.lattice_layer_c == pytest.approx(np.median([a.cell[2, 2] for a in data.train_atoms]), abs=1e-3)
    assert data.config.model.num_labels == 78
    for a in data.train_atoms:  # reduced in plane, c and pbc untouched
        assert tuple(a.pbc) == PBC2 and a.cell[2, 0] == 0 and a.cell[2, 1] == 0
        assert np.linalg.det(a.cell[:2, :2]) > 0
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["loss_lattice"]) for h in history)
    assert history[-1]["loss"] < history[0]["loss"]


def test_a_tiny_layer_model_samples_layers(layer_model):
    """From compositions with layer-group guidance (no template cell), and from templates:
    layers with pbc (T, T, F), c = (0, 0, c_z) of the config or of the template, full-rank
    in-plane cells within the floor and cap; the sample does not depend on a rotation of
    the template about z."""
    data, model, state, _ = layer_model
    params = state.ema_params
    c_z = data.config.process.lattice_layer_c
    out = sample_atoms(model, params, compositions=["MoS2", "BN"], num_samples=2, seed=1, label=78, guidance=2.0)
    assert [a.get_chemical_formula() for a in out] == ["MoS2", "MoS2", "BN", "BN"]
    tmpl, bn = toy_layers(2)
    tmpl.set_cell(np.diag([1.0, 1.0, 22.0 / tmpl.cell[2, 2]]) @ tmpl.cell[:], scale_atoms=False)
    # templates of the same sizes: the same bucket, one compilation for the three calls
    from_t = sample_atoms(model, params, templates=[tmpl, tmpl, bn, bn], seed=3, label=78, guidance=2.0)
    rot = rotated(tmpl, z_rotation(0.8))
    from_r = sample_atoms(model, params, templates=[rot, rot, bn, bn], seed=3, label=78, guidance=2.0)
    for a, c in [(x, c_z) for x in out] + [(from_t[0], 22.0), (from_r[0], 22.0), (from_t[2], bn.cell[2, 2])]:
        assert tuple(a.pbc) == PBC2
        np.testing.assert_allclose(a.cell[2], [0.0, 0.0, c], rtol=1e-6)
        np.testing.assert_array_equal(a.cell[:2, 2], 0.0)
        assert np.all(np.isfinite(a.positions))
        s2 = 0.5 * (a.cell[:2, :2] + a.cell[:2, :2].T)
        w = np.linalg.eigvalsh(s2)
        ell = model.lattice.scale * math.sqrt(len(a))
        assert w.min() >= ell * math.exp(-data.config.process.lattice_y_max) * (1 - 1e-4)
        assert w.max() <= ell * math.exp(L.Y_CAP) * (1 + 1e-4)
        assert abs(np.linalg.det(a.cell[:2, :2])) > 0.1
    np.testing.assert_allclose(from_r[0].cell[:], from_t[0].cell[:], atol=1e-3)
    np.testing.assert_allclose(from_r[0].get_scaled_positions(), from_t[0].get_scaled_positions(), atol=1e-3)


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_bad_periodic_input_fails_with_named_errors(layer_model, layer_config):
    data, model, _, _ = layer_model
    lay = toy_layers(1)[0]
    tilted = lay.copy()
    cell = lay.cell[:].copy()
    cell[2] = [1.5, 0.0, cell[2, 2]]
    tilted.set_cell(cell, scale_atoms=False)
    wire = lay.copy()
    wire.pbc = (True, False, False)
    sideways = lay.copy()
    sideways.pbc = (False, True, True)
    lifted = lay.copy()
    cell = lay.cell[:].copy()
    cell[0, 2] = 0.4
    lifted.set_cell(cell, scale_atoms=False)
    assert L.check_cell_layout(lay.cell[:], lay.pbc) == 2
    assert L.check_cell_layout(bulk("Cu").cell[:], (True, True, True)) == 3
    with pytest.raises(ValueError, match=r"c must point along \+z"):
        L.check_cell_layout(tilted.cell[:], tilted.pbc)
    with pytest.raises(ValueError, match="xy plane"):
        L.check_cell_layout(lifted.cell[:], lifted.pbc)
    with pytest.raises(ValueError, match=r"pbc \(T, F, F\)"):
        L.check_cell_layout(wire.cell[:], wire.pbc)
    with pytest.raises(ValueError, match=r"pbc \(F, T, T\)"):
        L.check_cell_layout(sideways.cell[:], sideways.pbc)
    for bad, msg in ((tilted, r"structure 1: .*c must point along \+z"), (wire, r"structure 1: .*\(T, F, F\)"),
                     (bulk("BN", "zincblende", a=3.6), "mix bulk crystals and layers")):
        bad.info["layer_group"] = 1
        with pytest.raises(ValueError, match=msg):
            prepare_data(layer_config, Dataset([lay, bad] + toy_layers(3), name="bad"))
    with pytest.raises(StructureError, match="generates layers"):
        make_templates(model, templates=[bulk("BN", "zincblende", a=3.6)])
    with pytest.raises(StructureError, match=r"template 0: .*c must point along \+z"):
        make_templates(model, templates=[tilted])
    with pytest.raises(ValueError, match="lattice_layer_c"):
        replace(layer_config, process={"lattice_layer_c": -1.0})
