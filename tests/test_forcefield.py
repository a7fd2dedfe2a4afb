"""Learned force field and force-field guidance: energy / force labels in the batch
(round trip, padding), per-element referencing, the energy head's forces (−∂E/∂R by
finite differences, rotation equivariance), joint training on EMT-labelled clusters,
EMT- and model-guided sampling (lower energies, fixed atoms, determinism, invariants of
the guided Langevin corrector), and the config fields."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from agedi_jax import forcefield
from agedi_jax import samplers as SM
from agedi_jax import sde as S
from agedi_jax.batch import Bucket, collate
from agedi_jax.config import override, preset, replace
from agedi_jax.convert import atoms_from_batch, atoms_labels, batch_from_atoms, encode_structures
from agedi_jax.geometry import remove_com
from agedi_jax.model import build_model, init_state, make_eval_step, make_train_step
from agedi_jax.potentials import make_emt
from agedi_jax.scores import Scores
from agedi_jax.vocab import TypeVocab

VOCAB = TypeVocab(("Cu", "Pt"))
CUTOFF = 5.0


def emt_cluster(formula: str, seed: int, rattle: float = 0.15) -> Atoms:
    """The first atoms of a 13-atom icosahedron (compact small clusters), rattled, with
    EMT energy and forces on a SinglePointCalculator."""
    from ase.cluster import Icosahedron

    a = Atoms(formula)
    ico = Icosahedron("Cu", 2, latticeconstant=3.7)
    a.positions = ico.positions[: len(a)]
    rng = np.random.default_rng(seed)
    a.positions += rng.normal(scale=rattle, size=a.positions.shape)
    a.positions -= a.positions.mean(0)
    a.calc = EMT()
    e, f = a.get_potential_energy(), a.get_forces()
    a.calc = SinglePointCalculator(a, energy=e, forces=f)
    return a


@pytest.fixture(scope="module")
def labelled():
    formulas = ["Cu6", "Pt6", "Cu3Pt3", "Cu5", "Pt4Cu2", "Pt5"]
    return [emt_cluster(f, k) for k, f in enumerate(formulas)]


def tiny_config(**model):
    cfg = preset("quickstart")
    m = dict(network="painn", features=16, num_layers=1, cutoff=CUTOFF, avg_num_neighbors=5.0,
             energy_head=True, global_context=False)
    m.update(model)
    return replace(cfg, model=m, process=dict(data_scale=0.0),
                   train=dict(learning_rate=5e-3, warmup_steps=5, steps=150, ema_decay=0.0,
                              lambda_energy=1.0, lambda_forces=1.0))


@pytest.fixture(scope="module")
def ff(labelled):
    """A tiny joint model with a shared energy head, its encoded data and jitted steps."""
    enc = encode_structures(labelled, VOCAB, CUTOFF)
    cfg = forcefield.prepare_config(tiny_config(), VOCAB, enc)
    model = build_model(cfg, VOCAB)
    batch = collate(enc)
    state = init_state(model, jax.random.PRNGKey(0), batch)
    ef = forcefield._predict_fn(model)  # the jitted energy_and_forces predict_atoms uses (one compilation)
    return dict(model=model, batch=batch, state=state, ef=ef, enc=enc)


# --------------------------------------------------------------------------------------
# Labels in the batch
# --------------------------------------------------------------------------------------


def test_labels_round_trip_through_collate_and_atoms(labelled):
    only_energy = Atoms("Cu4", positions=np.eye(4, 3) * 2.4)
    only_energy.info["energy"] = 1.25
    plain = Atoms("Pt2", positions=[[0, 0, 0], [2.5, 0, 0]])
    stale = labelled[0].copy()
    stale.calc = SinglePointCalculator(stale, energy=3.0, forces=np.zeros((6, 3)))
    stale.positions += 0.1  # moved after the calculation: the results are not its labels
    structures = [labelled[1], only_energy, plain, labelled[2], stale]
    assert atoms_labels(stale) == (None, None)
    enc = encode_structures(structures, VOCAB, CUTOFF)
    small = collate(enc)
    big = collate(enc, Bucket(small.num_nodes + 7, small.num_edges + 5, small.num_graphs + 3))
    for b in (small, big):
        assert b.has_labels
        np.testing.assert_array_equal(b.energy_mask[:6], [True, True, False, True, False, False])
        assert not b.energy_mask[5:].any() and np.all(b.energy[~b.energy_mask] == 0)
        assert b.energy[0] == pytest.approx(labelled[1].get_potential_energy())
        assert b.energy[1] == 1.25
        assert b.force_mask.sum() == 12 and np.all(b.forces[~b.force_mask] == 0)
        assert not b.force_mask[~b.node_mask].any()
    # padding invariance: the real part is identical in both buckets
    n = int(small.node_mask.sum())
    np.testing.assert_array_equal(small.forces[:n], big.forces[:n])
    np.testing.assert_array_equal(small.energy[:5], big.energy[:5])
    back = atoms_from_batch(big, VOCAB)
    assert back[0].get_potential_energy() == pytest.approx(labelled[1].get_potential_energy())
    np.testing.assert_allclose(back[0].get_forces(), labelled[1].get_forces())
    np.testing.assert_allclose(back[3].get_forces(), labelled[2].get_forces())
    assert back[1].get_potential_energy() == 1.25 and "forces" not in back[1].calc.results
    assert back[2].calc is None and back[4].calc is None
    # no labels read: masks all False, nothing attached
    bare = batch_from_atoms(structures, VOCAB, CUTOFF, read_labels=False)
    assert not bare.energy_mask.any() and not bare.force_mask.any()
    # hand-built batches without label fields still work everywhere
    assert not bare.without_labels().has_labels


def test_parallel_layout_carries_labels(labelled):
    from agedi_jax import parallel

    enc = encode_structures(labelled, VOCAB, CUTOFF)
    chunks = [enc[:2], [], enc[2:5]]
    bucket = Bucket(24, 128, 7)
    stacked = parallel.stack_shards(chunks, bucket)
    union = parallel.union_batch(chunks, bucket)
    shards = parallel.unstack(stacked)
    assert not shards[1].energy_mask.any()
    for d, shard in enumerate(shards):
        sel = np.where(shard.energy_mask)[0]
        np.testing.assert_array_equal(shard.energy[sel], union.energy[sel])
    np.testing.assert_array_equal(np.where(union.energy_mask)[0], [0, 1, 2, 3, 4])


def test_fit_reference_recovers_linear_energies():
    ref = {"Cu": -3.5, "Pt": -5.75}
    structures = []
    for k, f in enumerate(["Cu3", "Pt2", "Cu2Pt2", "Pt5", "Cu4Pt"]):
        a = Atoms(f, positions=np.random.default_rng(k).normal(size=(len(Atoms(f)), 3)) * 3)
        a.info["energy"] = sum(ref[s] for s in a.get_chemical_symbols()) + 0.01 * k
        structures.append(a)
    got, scale = forcefield.fit_reference(structures, VOCAB)
    assert got["Cu"] == pytest.approx(-3.5, abs=0.02) and got["Pt"] == pytest.approx(-5.75, abs=0.02)
    assert 0 < scale < 0.02
    cfg = forcefield.prepare_config(tiny_config(), VOCAB, structures)
    assert dict(cfg.model.energy_reference).keys() == {"Cu", "Pt"} and cfg.model.energy_scale == scale
    assert forcefield.prepare_config(tiny_config(energy_head=False), VOCAB, structures).model.energy_reference == ()


# --------------------------------------------------------------------------------------
# The energy head
# --------------------------------------------------------------------------------------


def _rotation(seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_energy_head_forces_are_minus_gradient_and_equivariant(ff):
    model, batch, params, ef = ff["model"], ff["batch"], ff["state"].params, ff["ef"]
    b = jax.tree.map(jnp.asarray, batch)
    e, f = ef(params, b)
    e, f = np.asarray(e), np.asarray(f)
    assert np.all(np.isfinite(e)) and np.all(f[~batch.node_mask] == 0) and e[-1] == 0
    # forces = −∂E/∂R by central differences (float32: h = 1e-2 Å)
    h = 1e-2
    for i, a in [(0, 0), (7, 2), (15, 1)]:
        g = int(batch.graph_index[i])
        d = np.zeros_like(batch.positions)
        d[i, a] = h
        ep = np.asarray(ef(params, b._replace(positions=b.positions + d))[0])[g]
        em = np.asarray(ef(params, b._replace(positions=b.positions - d))[0])[g]
        assert -(ep - em) / (2 * h) == pytest.approx(f[i, a], rel=0.05, abs=2e-3)
    # rotation (with reflection parity +1) and translation: E invariant, F equivariant
    rot = _rotation(3)
    moved = b._replace(positions=b.positions @ rot.T + jnp.asarray([1.0, -2.0, 0.5]) * b.node_mask[:, None])
    e2, f2 = ef(params, moved)
    np.testing.assert_allclose(np.asarray(e2), e, atol=2e-4 * np.abs(e).max())
    np.testing.assert_allclose(np.asarray(f2), f @ rot.T, atol=1e-4 + 1e-3 * np.abs(f).max())
    # absolute energies: the head is a small correction to the per-element reference
    table = forcefield.reference_table(model.config, VOCAB)
    ref = np.array([table[VOCAB.encode(a.get_chemical_symbols())].sum() for a in atoms_from_batch(batch, VOCAB)])
    assert np.all(np.abs(e[:6] - ref) < 6 * 4 * model.config.model.energy_scale * 6)


def test_separate_energy_network(labelled, ff):
    cfg = replace(ff["model"].config, model=dict(energy_network="separate"))
    model = build_model(cfg, VOCAB)
    state = init_state(model, jax.random.PRNGKey(1), ff["batch"])
    assert set(state.params) == {"score", "energy"}
    assert "energy_head" not in str(jax.tree_util.tree_structure(state.params["score"]))
    out = forcefield.predict_atoms(model, state.params, labelled[:2])
    assert out[0] is not labelled[0] and np.isfinite(out[0].get_potential_energy())
    assert out[1].get_forces().shape == (6, 3)


def test_joint_training_reduces_energy_and_force_errors(ff, labelled):
    model, batch, state = ff["model"], ff["batch"], ff["state"]
    train_step = make_train_step(model)
    key = jax.random.PRNGKey(5)
    # the evaluation step reports the force-field errors (traced only: no compilation)
    shapes = jax.eval_shape(make_eval_step(model, jit=False), state.params, batch, key)
    assert {"loss_energy", "loss_forces", "energy_mae", "force_mae", "force_rmse"} <= set(shapes)
    before = forcefield.evaluate_atoms(model, state.params, labelled)
    st = jax.tree.map(jnp.array, state)
    history = []
    for i in range(model.config.train.steps):
        st, metrics = train_step(st, batch, jax.random.fold_in(key, i))
        history.append(metrics)
    history = jax.device_get(history)
    # the training metrics (at the parameters before each update) match the host evaluation
    assert float(history[0]["energy_mae"]) == pytest.approx(before["energy_mae"], rel=1e-3, abs=1e-5)
    assert float(history[0]["force_mae"]) == pytest.approx(before["force_mae"], rel=1e-3, abs=1e-5)
    after = forcefield.evaluate_atoms(model, st.params, labelled)
    assert np.isfinite(float(history[-1]["loss"]))
    assert after["energy_mae"] < 0.5 * before["energy_mae"], (before, after)
    assert after["force_mae"] < 0.7 * before["force_mae"], (before, after)
    assert after["force_mae"] < after["force_mae_zero"]
    ff["trained"] = st.params


# --------------------------------------------------------------------------------------
# Force-field guidance
# --------------------------------------------------------------------------------------

SDE = S.VESDE(S.VELinearSchedule(0.01, 4.0))
S0 = 1.3  # Å, spread of the toy "data": a Gaussian blob with no idea of bonding


def blob_score(state, t, key, type_weights=None):
    """Exact score of an isotropic Gaussian blob (zero centre of mass) noised by SDE."""
    v = S0**2 + SDE.std(t[state.graph_index])[:, None] ** 2
    return Scores(positions=-remove_com(state, state.positions) / v)


EMT_FN = make_emt(VOCAB, check=False)
GRID = SM.time_grid(60, 1e-3)


_RUNS: dict = {}
PT13_BUCKET = Bucket(112, 8 * 156 + 4, 10)


def _sampler(name: str):
    """The jitted toy sampler ``run(key, template) -> (state, EMT energies)`` of one of
    a few score / step combinations (cached: each compiles once per module)."""
    if name not in _RUNS:
        wrap = {
            "plain": lambda f: f,
            "x0": lambda f: SM.energy_guided(f, EMT_FN, 2.0, zeta=1.0, on="x0", sde=SDE, max_force=10.0),
            "xt": lambda f: SM.energy_guided(f, EMT_FN, 2.0, zeta=1.0, on="xt", sde=SDE, max_force=10.0),
        }
        if name == "pc_corrector":
            score_fn = blob_score
            step = SM.with_corrector_guidance(SM.predictor_corrector(SDE, snr=0.16, n_corrector=1), wrap["xt"])
        else:
            score_fn, step = wrap[name](blob_score), SM.euler_maruyama(SDE)

        def run(key, template):
            st = SM.prior_state(jax.random.fold_in(key, 0), template, SDE, mask_types=False)
            out = SM.sample(jax.random.fold_in(key, 1), st, score_fn, step, GRID, SM.finalize(SDE))
            return out, EMT_FN(out)

        _RUNS[name] = jax.jit(run)
    return _RUNS[name]


@pytest.fixture(scope="module")
def pt13():
    return batch_from_atoms([Atoms("Pt13", positions=np.zeros((13, 3)))] * 8, VOCAB, CUTOFF, bucket=PT13_BUCKET)


@pytest.mark.parametrize("on", ["x0", "xt"])
def test_emt_guidance_lowers_the_energy_at_the_same_seed(pt13, on):
    key = jax.random.PRNGKey(0)
    plain, e0 = _sampler("plain")(key, pt13)
    run = _sampler(on)
    out, e1 = run(key, pt13)
    e0, e1 = np.asarray(e0)[:8], np.asarray(e1)[:8]
    assert np.all(e1 < e0), (e0, e1)
    assert np.median(e1) < 0.1 * np.median(e0)
    x = np.asarray(out.positions)
    assert np.all(np.isfinite(x)) and np.all(x[~pt13.node_mask] == 0)
    np.testing.assert_allclose(x[:104].reshape(8, 13, 3).mean(1), 0.0, atol=1e-5)
    again, _ = run(key, pt13)
    np.testing.assert_array_equal(np.asarray(again.positions), x)


def test_guidance_leaves_fixed_atoms_alone(pt13):
    base = Atoms("Pt13", positions=np.random.default_rng(0).normal(size=(13, 3)) * 2.0)
    base.set_constraint(FixAtoms(indices=[0, 4, 9]))
    tmpl = batch_from_atoms([base] * 8, VOCAB, CUTOFF, bucket=PT13_BUCKET)
    out, _ = _sampler("x0")(jax.random.PRNGKey(2), tmpl)
    x = np.asarray(out.positions)
    np.testing.assert_array_equal(x[tmpl.fixed], np.asarray(tmpl.positions, np.float32)[tmpl.fixed])
    assert np.all(np.isfinite(x)) and np.all(x[~tmpl.node_mask] == 0)


def test_guided_langevin_corrector_keeps_invariants(pt13):
    wrap = lambda f: SM.energy_guided(f, EMT_FN, 2.0, on="xt", sde=SDE, max_force=10.0)  # noqa: E731
    key = jax.random.PRNGKey(0)
    out, e = _sampler("pc_corrector")(key, pt13)
    plain, e0 = _sampler("plain")(key, pt13)  # Euler–Maruyama, unguided, same seed
    x = np.asarray(out.positions)
    assert np.all(np.isfinite(x)) and np.all(x[~pt13.node_mask] == 0)
    np.testing.assert_allclose(x[:104].reshape(8, 13, 3).mean(1), 0.0, atol=1e-5)
    assert not np.allclose(x, np.asarray(plain.positions))
    assert np.median(np.asarray(e)[:8]) < np.median(np.asarray(e0)[:8])
    with pytest.raises(ValueError, match="predictor-corrector"):
        SM.with_corrector_guidance(SM.euler_maruyama(SDE), wrap)


def test_model_guidance_runs_in_the_compiled_sampler(ff):
    """sampling_fns: CFG-free joint model, learned force field on x̂0, generated types
    (MASK atoms take their most probable type for the energy), a fixed atom."""
    model = ff["model"]
    params = ff.get("trained", ff["state"].params)
    cfg = replace(model.config, sample=dict(steps=20, energy_guidance=2.0, guidance_on="x0"))
    base = Atoms("Cu5", positions=np.random.default_rng(1).normal(size=(5, 3)))
    base.set_constraint(FixAtoms(indices=[2]))
    tmpl = batch_from_atoms([base] * 3, VOCAB, CUTOFF, masked_types=True)

    @jax.jit
    def run(params, key):
        score_fn, step = model.sampling_fns(params, cfg)
        st = SM.prior_state(jax.random.fold_in(key, 0), tmpl, model.sde, mask_types=True)
        grid = SM.time_grid(cfg.sample.steps, cfg.process.t_eps)
        return SM.sample(jax.random.fold_in(key, 1), st, score_fn, step, grid, SM.finalize(model.sde))

    a = run(params, jax.random.PRNGKey(0))
    b = run(params, jax.random.PRNGKey(0))
    x = np.asarray(a.positions)
    np.testing.assert_array_equal(x, np.asarray(b.positions))
    assert np.all(np.isfinite(x)) and not a.has_labels
    np.testing.assert_array_equal(x[tmpl.fixed], np.asarray(tmpl.positions, np.float32)[tmpl.fixed])
    assert set(np.asarray(a.types)[tmpl.node_mask].tolist()) <= {1, 2}


def test_config_fields_and_errors():
    cfg = override(preset("quickstart"), ["model.energy_head=true", "sample.energy_guidance=2",
                                          "sample.guidance_on=xt", "train.lambda_forces=10"])
    assert cfg.sample.guidance_on == "xt" and cfg.train.lambda_forces == 10.0
    with pytest.raises(ValueError, match="needs model.energy_head"):
        override(preset("quickstart"), ["sample.energy_guidance=2"])
    assert override(preset("quickstart"), ["sample.energy_guidance=2", "sample.guidance_potential=emt"])
    with pytest.raises(ValueError, match="guidance_on"):
        override(preset("quickstart"), ["sample.guidance_on=x1"])
    with pytest.raises(ValueError, match="sampler=pc"):
        override(cfg, ["sample.guidance_in=corrector"])
    with pytest.raises(ValueError, match="energy_network"):
        override(preset("quickstart"), ["model.energy_network=twin"])
