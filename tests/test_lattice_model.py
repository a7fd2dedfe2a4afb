"""Bulk crystals end to end (``process.lattice``): the joint loss against oracle outputs
(the lattice kernel score and the fractional wrapped-normal score), its invariance to
rotations of the crystal, the reverse cell sampler against an oracle score, a tiny
lattice model that trains (loss decreases on a fixed batch) and samples valid periodic
crystals for a composition (CSP) and for a number of atoms (de novo), reproducibly, and
the named errors of bad settings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from agedi_jax import lattice as L
from agedi_jax import losses, samplers
from agedi_jax.batch import collate
from agedi_jax.config import SampleConfig, preset, replace
from agedi_jax.convert import encode_structures
from agedi_jax.data import Dataset
from agedi_jax.edges import compact_edges, edge_vectors
from agedi_jax.generate import sample_atoms
from agedi_jax.model import build_model, init_state, make_train_step
from agedi_jax.scores import Scores
from agedi_jax.sde import make_sde
from agedi_jax.train import prepare_data
from agedi_jax.vocab import TypeVocab

LSDE = L.make_lattice_sde(scale=2.5, sigma_rel=0.25)
VE = make_sde("ve", "linear", sigma_min=0.01, sigma_max=5.0)


def toy_crystals(n: int = 12) -> list:
    """Strained, rattled fcc Cu, rocksalt NaCl and diamond Si (1–2 atoms, primitive
    cells; every third one a 2×1×1 supercell)."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        a = [bulk("Cu", "fcc", a=3.6), bulk("NaCl", "rocksalt", a=5.6), bulk("Si", "diamond", a=5.43)][k % 3]
        a = a * (2, 1, 1) if k % 4 == 3 else a.copy()
        a.set_cell(a.cell[:] @ (np.eye(3) + rng.normal(0, 0.03, (3, 3))), scale_atoms=True)
        a.rattle(0.02, seed=k)
        out.append(a)
    return out


VOCAB = TypeVocab.from_atoms(toy_crystals())
TINY = {
    "data": {"val_fraction": 0.2, "max_atoms": 8},
    "model": {"network": "painn", "features": 8, "num_layers": 1, "num_basis": 4, "cutoff": 4.0},
    "process": {"sigma_max": 5.0, "lattice": "log"},
    "train": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "log_every": 2, "val_every": 4,
              "checkpoint_every": 4, "val_batches": 1},
    "sample": {"steps": 8, "batch_size": 8},
}


@pytest.fixture(scope="module")
def lattice_config():
    return replace(preset("quickstart"), **TINY)


@pytest.fixture(scope="module")
def lattice_model(lattice_config):
    """(prepared data, model, initial train state) of the tiny lattice model."""
    data = prepare_data(lattice_config, Dataset(toy_crystals(), name="toybulk"))
    model = build_model(data.config, data.vocab)
    state = init_state(model, jax.random.PRNGKey(0), collate(data.train[:4]))
    return data, model, state


def _batch(atoms_list, cutoff=3.0):
    cells = [L.template_cell(LSDE.scale, len(a), a.pbc, 1.0) for a in atoms_list]
    enc = encode_structures(atoms_list, VOCAB, cutoff, image_cells=cells)
    return jax.tree_util.tree_map(jnp.asarray, collate(enc))


def _oracle_apply(clean):
    """A 'network' returning the exact ε-targets of the noised batch, computed from the
    clean batch: the lattice ε is ``−std ·`` the kernel score of ``Y_t`` given ``Y_0``;
    the Cartesian position ε̂ is the fractional wrapped-normal ε mapped back through
    ``ε̂_x = ℓ_N ε̂_f S⁻¹`` (the inverse of :func:`agedi_jax.lattice.eps_to_fractional`)."""
    canon, _ = L.canonicalize(clean)
    mask = L.graph_lattice_mask(clean)
    y0 = L.cell_to_coords(LSDE, canon.cell, clean.n_node, mask)
    f0 = L.batch_fractional(canon)

    def apply(params, noisy, t, label):
        n = noisy.n_node
        y = L.cell_to_coords(LSDE, noisy.cell, n, mask)
        _, std_l = L.marginal(LSDE, y0, t, n, mask)
        eps_l = -std_l[:, None, None] * L.kernel_score(LSDE, y, y0, t, n, mask)
        gi = noisy.graph_index
        ls = L.length_scale(LSDE, n, mask)[gi]
        std_f = VE.std(t[gi]) / ls
        d = L.batch_fractional(noisy) - f0
        eps_f = -std_f[:, None] * L.fractional_wrapped_normal_score(d, std_f, noisy.pbc[gi])
        eps_x = jnp.einsum("ni,nij->nj", eps_f, jnp.linalg.inv(noisy.cell[gi])) * ls[:, None]
        return Scores(positions=eps_x, types=None, cell=eps_l)

    return apply


def test_loss_targets_match_the_oracle_scores():
    atoms = toy_crystals(4)
    clean = _batch(atoms)
    cfg = losses.LossConfig(sde=VE, process=None, lattice=LSDE)
    for t in (0.05, 0.5, 0.9):
        _, m = losses.joint_loss(None, _oracle_apply(clean), clean, jax.random.PRNGKey(3), cfg, t=t)
        assert float(m["loss_lattice"]) < 1e-6
        assert float(m["loss_positions"]) < 1e-6
        # a wrong output costs: the lattice term of ε̂ = 0 is E‖ε‖² ≈ 6 per crystal
        zero = lambda p, b, tt, lab: Scores(positions=jnp.zeros_like(b.positions), cell=jnp.zeros((b.num_graphs, 3, 3)))
        _, m0 = losses.joint_loss(None, zero, clean, jax.random.PRNGKey(3), cfg, t=t)
        assert 1.0 < float(m0["loss_lattice"]) < 20.0


def test_loss_is_invariant_to_rotating_the_crystals(lattice_model):
    data, model, state = lattice_model
    atoms = data.train_atoms[:4]
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    rotated = []
    for a in atoms:
        b = a.copy()
        b.set_cell(a.cell[:] @ q.T, scale_atoms=True)
        rotated.append(b)
    cut = data.config.model.cutoff
    p = data.config.process
    cells = [L.template_cell(p.lattice_scale, len(a), a.pbc, p.lattice_y_max) for a in atoms]
    b0, b1 = (collate(encode_structures(x, data.vocab, cut, image_cells=cells)) for x in (atoms, rotated))
    loss = jax.jit(lambda b: losses.joint_loss(state.params, model.apply, b, jax.random.PRNGKey(2), model.loss_config)[0])
    l0, l1 = float(loss(b0)), float(loss(b1))
    assert np.isfinite(l0) and abs(l0 - l1) < 1e-4 * max(1.0, abs(l0))


def test_gaussian_cell_skip_is_the_exact_gaussian_eps_and_rotates_with_the_crystal():
    atoms = toy_crystals(4)
    batch = _batch(atoms)
    canon, _ = L.canonicalize(batch)
    t = jnp.linspace(0.2, 1.0, batch.num_graphs)
    mask = L.graph_lattice_mask(batch)
    eps = L.gaussian_cell_eps(LSDE, canon, t)
    y = L.cell_to_coords(LSDE, canon.cell, canon.n_node, mask)
    std = L.kernel_std(LSDE, t, canon.n_node, mask)
    np.testing.assert_allclose(np.asarray(eps), np.asarray(std[:, None, None] * y / LSDE.sigma_rel**2), atol=1e-5)
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    rot = canon._replace(cell=canon.cell @ q.T, positions=canon.positions @ q.T)
    eps_rot = L.gaussian_cell_eps(LSDE, rot, t)
    np.testing.assert_allclose(np.asarray(eps_rot), np.asarray(q @ eps @ q.T), atol=1e-4)


@pytest.mark.parametrize("network", ["nequip", "painn"])
def test_both_networks_give_an_equivariant_symmetric_cell_output(network):
    from agedi_jax.nn import make_network

    net = make_network(network, num_types=VOCAB.num_types, cutoff=3.0, features=8, num_layers=1, num_basis=4,
                       lattice_head=True, **({"vector_features": 4, "l_max": 1} if network == "nequip" else {}))
    atoms = toy_crystals(3)
    canon, _ = L.canonicalize(_batch(atoms))
    t = jnp.full((canon.num_graphs,), 0.4)
    params = jax.jit(net.init)(jax.random.PRNGKey(0), canon, t)
    apply = jax.jit(lambda p, b: net.apply(p, b, t).cell)
    out = apply(params, canon)
    assert out.shape == (canon.num_graphs, 3, 3)
    np.testing.assert_allclose(np.asarray(out), np.asarray(jnp.swapaxes(out, 1, 2)), atol=1e-6)
    assert float(jnp.abs(out[: len(atoms)]).max()) > 0 and float(jnp.abs(out[len(atoms):]).max()) == 0
    q, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    rot = canon._replace(cell=canon.cell @ q.T, positions=canon.positions @ q.T)
    out_rot = apply(params, rot)
    np.testing.assert_allclose(np.asarray(out_rot), np.asarray(q @ out @ q.T), atol=1e-4)


def oracle_cell_sampler(batch, sampler: str, lsde=LSDE):
    """(canonical batch, lattice mask, data coordinates y0, the exact cell score of the
    data cell with a zero position score, the joint lattice step) for oracle sampling tests."""
    canon, _ = L.canonicalize(batch)
    mask = L.graph_lattice_mask(batch)
    y0 = L.cell_to_coords(lsde, canon.cell, batch.n_node, mask)

    def score_fn(state, t, key, type_weights=None):
        y = L.cell_to_coords(lsde, state.cell, state.n_node, mask)
        return Scores(positions=jnp.zeros_like(state.positions), cell=L.kernel_score(lsde, y, y0, t, state.n_node, mask))

    step = samplers.make_step(VE, None, SampleConfig(sampler=sampler), lattice=lsde, y_max=1.0)
    return canon, mask, y0, score_fn, step


@pytest.mark.parametrize("sampler", ["em", "ode"])
def test_cell_sampler_recovers_the_data_cell_from_an_oracle_score(sampler):
    atoms = [bulk("NaCl", "rocksalt", a=5.6), bulk("Cu", "fcc", a=3.6) * (2, 1, 1)]
    batch = _batch(atoms)
    canon, mask, y0, score_fn, step = oracle_cell_sampler(batch, sampler)
    state = L.crystal_prior_sample(jax.random.PRNGKey(0), LSDE, batch, 1.0)
    grid = samplers.time_grid(200, 1e-3)
    out = jax.jit(lambda k, s: samplers.sample(k, s, score_fn, step, grid, None))(jax.random.PRNGKey(1), state)
    np.testing.assert_allclose(np.asarray(out.cell), np.asarray(canon.cell), atol=0.05)
    f = np.asarray(L.batch_fractional(out))[np.asarray(out.node_mask, bool)]
    assert np.all((f >= 0) & (f < 1))


def test_a_tiny_lattice_model_learns_a_fixed_batch(lattice_model):
    data, model, state = lattice_model
    assert data.config.process.lattice_scale > 0 and data.config.process.lattice_sigma > 0
    assert model.network.lattice_head and model.lattice is not None
    batch = collate(data.train[:4])
    state = jax.tree_util.tree_map(jnp.copy, state)  # the train step donates its state
    step = make_train_step(model)
    key = jax.random.PRNGKey(7)
    first = None
    for _ in range(25):
        state, m = step(state, batch, key)
        first = float(m["loss"]) if first is None else first
        assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["loss_lattice"]))
    assert float(m["loss"]) < first


def test_lattice_model_samples_valid_crystals(lattice_model):
    """An untrained network (the worst case for the cell bounds) on a coarse grid."""
    _, model, state = lattice_model
    params = state.ema_params
    csp = sample_atoms(model, params, compositions=["NaCl", "Cu2"], num_samples=2, seed=1)
    assert [a.get_chemical_formula() for a in csp] == ["ClNa", "ClNa", "Cu2", "Cu2"]
    novo = sample_atoms(model, params, n_atoms=2, num_samples=4, seed=1)  # same bucket: one compilation
    assert [len(a) for a in novo] == [2, 2, 2, 2]
    again = sample_atoms(model, params, n_atoms=2, num_samples=4, seed=1)
    for a, b in zip(novo, again):
        assert np.array_equal(a.positions, b.positions) and np.array_equal(a.cell[:], b.cell[:])
        assert a.get_chemical_formula() == b.get_chemical_formula()
    for a in csp + novo:
        assert a.pbc.all()
        assert np.all(np.isfinite(a.positions)) and np.all(np.isfinite(a.cell[:]))
        assert a.get_volume() > 0
        # the floor: every eigenvalue of the (symmetric) cell at least ℓ_N e^{-y_max}
        ell = model.lattice.scale * len(a) ** (1 / 3)
        w = np.linalg.eigvalsh(0.5 * (a.cell[:] + a.cell[:].T))
        assert w.min() >= ell * np.exp(-model.config.process.lattice_y_max) * (1 - 1e-4)
        assert w.max() <= ell * np.exp(L.Y_CAP) * (1 + 1e-4)
        assert "M" not in a.get_chemical_symbols()


def test_lattice_settings_fail_with_named_errors(lattice_config, tiny_config, toy_data):
    with pytest.raises(ValueError, match="process.lattice="):
        replace(lattice_config, process={"lattice": "cubic"})
    with pytest.raises(ValueError, match="process.sde=ve"):
        replace(lattice_config, process={"sde": "vp"})
    with pytest.raises(ValueError, match="lattice_y_max"):
        replace(lattice_config, process={"lattice_y_max": 0.0})
    with pytest.raises(ValueError, match="train.lambda_lattice"):
        replace(lattice_config, train={"lambda_lattice": -1.0})
    with pytest.raises(ValueError, match="not available with process.lattice"):
        replace(lattice_config, sample={"sampler": "pc"})
    with pytest.raises(ValueError, match="not available with process.lattice"):
        samplers.make_step(VE, None, SampleConfig(sampler="pc"), lattice=LSDE)
    with pytest.raises(ValueError, match="needs bulk crystals"):
        prepare_data(replace(tiny_config, process={"lattice": "log"}), toy_data)
    with pytest.raises(ValueError, match="not fitted"):
        build_model(lattice_config, VOCAB, avg_num_neighbors=5.0)


def test_lattice_config_round_trips_and_old_configs_load(lattice_model, tiny_config):
    from agedi_jax.config import Config

    cfg = lattice_model[0].config
    assert Config.from_json(cfg.to_json()) == cfg
    old = tiny_config.to_dict()  # a config saved before the lattice fields existed
    for k in ("lattice", "lattice_scale", "lattice_sigma", "lattice_schedule", "lattice_schedule_params",
              "lattice_y_max"):
        del old["process"][k]
    del old["train"]["lambda_lattice"]
    assert Config.from_dict(old) == tiny_config


def _edge_set(batch, cutoff):
    """{(sender, receiver, effective shift): vector} of the real edges within ``cutoff``."""
    e = edge_vectors(batch, cutoff)
    m = np.asarray(e.mask)
    s, r = np.asarray(batch.senders)[m], np.asarray(batch.receivers)[m]
    sh, v = np.rint(np.asarray(e.shifts)[m]).astype(int), np.asarray(e.vectors)[m]
    return {(int(a), int(b), tuple(c)): x for a, b, c, x in zip(s, r, sh, v)}


def test_compact_edges_keeps_exactly_the_real_edges_in_order_and_flags_overflow():
    atoms = toy_crystals(6)
    clean = _batch(atoms, cutoff=4.0)
    noisy = L.floor_cells(LSDE, L.noise_cell(jax.random.PRNGKey(1), LSDE, clean, jnp.full(clean.num_graphs, 0.7))[0], 1.0)
    full = _edge_set(noisy, 4.0)
    n_real = len(full)
    assert 0 < n_real < noisy.num_edges // 4  # the template is mostly images out of range
    compact, complete = compact_edges(noisy, 4.0, n_real + 5)
    assert compact.num_edges == n_real + 5 and bool(np.all(complete))
    assert _edge_set(compact, 4.0).keys() == full.keys()
    for k, v in _edge_set(compact, 4.0).items():
        np.testing.assert_allclose(v, full[k], atol=1e-5)
    recv = np.asarray(compact.receivers)
    assert np.all(np.diff(recv) >= 0)  # template order kept: receivers stay sorted
    assert int(np.sum(compact.edge_mask)) == n_real and int(np.sum(compact.n_edge)) == n_real + 5
    # against ASE's neighbour list of graph 0 at the noised cell
    from ase.neighborlist import neighbor_list

    a0 = atoms[0].copy()
    a0.set_cell(np.asarray(noisy.cell[0]))
    a0.positions = np.asarray(noisy.positions[: len(a0)])
    assert len(neighbor_list("i", a0, 4.0)) == int(np.asarray(compact.n_edge)[0])
    # overflow: the last graphs lose edges and are flagged; the kept ones are a prefix
    per_graph = np.bincount(np.asarray(noisy.graph_index)[np.asarray(noisy.receivers)][
        np.asarray(edge_vectors(noisy, 4.0).mask)], minlength=noisy.num_graphs)
    budget = int(per_graph[:2].sum())
    small, ok = compact_edges(noisy, 4.0, budget)
    np.testing.assert_array_equal(np.asarray(ok)[: len(atoms)], np.arange(len(atoms)) < 2)
    assert set(_edge_set(small, 4.0)) <= set(full)


def test_an_edge_budget_gives_the_same_outputs_and_loss_as_the_whole_template(lattice_model):
    data, model, state = lattice_model
    budgeted = build_model(replace(data.config, model={"edges_per_atom": 60.0}), data.vocab)
    batch = jax.tree_util.tree_map(jnp.asarray, collate(data.train[:4]))
    noisy = L.floor_cells(model.lattice, L.noise_cell(jax.random.PRNGKey(2), model.lattice, batch,
                                                         jnp.full(batch.num_graphs, 0.5))[0], 1.0)
    t = jnp.full(batch.num_graphs, 0.5)
    a = model.apply(state.params, noisy, t)
    b = budgeted.apply(state.params, noisy, t)
    assert budgeted.compact(noisy).num_edges < noisy.num_edges // 3
    np.testing.assert_allclose(np.asarray(b.positions), np.asarray(a.positions), atol=2e-5)
    np.testing.assert_allclose(np.asarray(b.cell), np.asarray(a.cell), atol=2e-5)
    key = jax.random.PRNGKey(4)
    la, ma = losses.joint_loss(state.params, model.apply, batch, key, model.loss_config)
    lb, mb = losses.joint_loss(state.params, budgeted.apply, batch, key, budgeted.loss_config)
    np.testing.assert_allclose(float(lb), float(la), rtol=1e-5)
    assert float(mb["edges_complete"]) == 1.0
    # a budget too small for the batch: graphs are dropped from the loss, and counted
    tight = build_model(replace(data.config, model={"edges_per_atom": 2.0}), data.vocab)
    lt, mt = losses.joint_loss(state.params, tight.apply, batch, key, tight.loss_config)
    assert np.isfinite(float(lt)) and float(mt["edges_complete"]) < 1.0
    with pytest.raises(ValueError, match="edges_per_atom"):
        replace(data.config, model={"edges_per_atom": -1.0})
