"""Samplers: Gaussian oracles with exact scores (moments, convergence orders, the exact
probability-flow map), the joint type marginals, determinism, scan = Python loop,
inpainting, padding invariance, periodic wrapping, guidance and interpolation, NaN safety."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agedi_jax import discrete
from agedi_jax import samplers as SM
from agedi_jax import sde as S
from agedi_jax.batch import AtomsBatch, Bucket
from agedi_jax.convert import batch_from_atoms
from agedi_jax.geometry import graph_mean
from agedi_jax.vocab import MASK, TypeVocab
from agedi_jax.scores import Scores
from tests.builders import anchor_batch as _anchor_batch
from tests.builders import mixed_atoms as _mixed_atoms

VE = S.VESDE(S.VELinearSchedule(0.01, 8.0))
VP = S.VPSDE(S.VPLinearSchedule(0.1, 20.0))
MU = np.array([2.0, -3.0, 4.0])  # data mean of the free atoms (Å), relative to the anchor
S0 = 0.5  # data standard deviation (Å)
EPS = 1e-3
K = 3
PROCESS = discrete.AbsorbingProcess(K)
P0 = np.array([0.5, 0.3, 0.2])  # type distribution of the free atoms




def anchor_batch(n_graphs: int, n_free: int, pad_atoms: int = 1, pad_graphs: int = 1) -> AtomsBatch:
    """Anchor graphs (:func:`tests.builders.anchor_batch`): anchor type 1, free atoms MASK."""
    return _anchor_batch(n_graphs, n_free, pad_atoms, pad_graphs, anchor_type=1, free_type=MASK, pad_type=MASK)


def exact_start(sde, batch, seed=0):
    """Free atoms drawn from the exact marginal at t = 1 (no prior mismatch)."""
    rng = np.random.default_rng(seed)
    m1 = float(sde.mean_coeff(1.0))
    v1 = m1**2 * S0**2 + sde.prior_std**2
    pos = m1 * MU + math.sqrt(v1) * rng.normal(size=batch.positions.shape)
    pos[~(batch.node_mask & ~batch.fixed)] = 0.0
    return batch._replace(positions=pos.astype(batch.positions.dtype))


def gaussian_score_fn(sde, mu=MU, s0=S0, log_p0=np.log(P0)):
    """Exact scores: positions of N(m μ, m² s0² + std²) about the anchor, types of
    independent atoms with law p0 (:func:`discrete.independent_log_score`)."""

    def fn(state, t, key, type_weights=None):
        tt = t[state.graph_index]
        m = sde.mean_coeff(tt)[:, None]
        v = m * m * s0 * s0 + sde.std(tt)[:, None] ** 2
        pos = -(state.positions - m * jnp.asarray(mu, state.positions.dtype)) / v
        types = discrete.independent_log_score(jnp.asarray(log_p0, pos.dtype), PROCESS.total(tt))
        return Scores(positions=pos, types=types)

    return fn


def em_recursion(sde, grid, s0=S0, start_var=None, start_mean=None):
    """Mean coefficient (per unit μ) and variance that Euler–Maruyama produces for this
    linear problem, computed independently in numpy: x' = c x + b + g sqrt(h) z."""
    m1 = float(sde.mean_coeff(1.0))
    a = m1 if start_mean is None else start_mean
    var = m1**2 * s0**2 + sde.prior_std**2 if start_var is None else start_var
    for t, tn in zip(grid[:-1], grid[1:]):
        h = t - tn
        g2 = float(sde.g2(t))
        m = float(sde.mean_coeff(t))
        v = m * m * s0 * s0 + float(sde.std(t)) ** 2
        beta = 0.0 if sde.periodic else g2  # VP: drift −½ β x with β = g²
        c = 1 + 0.5 * beta * h - g2 * h / v
        a = c * a + g2 * h * m / v
        var = c * c * var + g2 * h
    return a, var


prior_state = jax.jit(SM.prior_state, static_argnames="mask_types")


def loop(step_jit, key, state, grid):
    """The Python-loop reference: the jitted step called once per grid interval."""
    grid = np.asarray(grid)
    state = jax.tree_util.tree_map(jnp.asarray, state)
    for i in range(len(grid) - 1):
        state = step_jit(jax.random.fold_in(key, i), state, grid[i], grid[i + 1])
    return state


def jit_step(step, score_fn):
    return jax.jit(lambda k, s, t, tn: step(k, s, t, tn, score_fn))


def free_positions(state, batch):
    return np.asarray(state.positions)[batch.node_mask & ~batch.fixed]


# --------------------------------------------------------------------------------------
# Gaussian oracles
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big():
    return anchor_batch(128, 63)  # 8064 free atoms, 24192 coordinates


def test_em_vp_first_order_and_recursion(big):
    """EM on the VP SDE: moments equal the EM recursion (this checks Δt, the drift and the
    noise scale exactly), and the mean error shrinks like 1/N."""
    b = exact_start(VP, big)
    step = jit_step(SM.euler_maruyama(VP), gaussian_score_fn(VP))
    me = float(VP.mean_coeff(EPS))
    errs = []
    for n in (8, 16, 32, 64):
        grid = np.asarray(SM.time_grid(n, EPS), np.float64)
        x = free_positions(loop(step, jax.random.key(n), b, grid), big)
        a, var = em_recursion(VP, grid)
        k = x.shape[0]
        sd = math.sqrt(var)
        np.testing.assert_allclose(x.mean(0), a * MU, atol=5 * sd / math.sqrt(k))
        np.testing.assert_allclose(x.var(0), var, atol=5 * var * math.sqrt(2 / k))
        errs.append(np.dot(x.mean(0) - me * MU, MU) / np.dot(MU, MU))
    slope = np.polyfit(np.log([8, 16, 32, 64]), np.log(np.abs(errs)), 1)[0]
    assert -1.2 < slope < -0.8, (errs, slope)


def test_em_and_pc_ve_reproduce_the_data(big):
    """VE with exact scores: the mean is exact and the variance equals the EM recursion's
    at N = 32 and approaches s0² (plus the tiny std(eps)²); PC as well."""
    b = exact_start(VE, big, seed=1)
    grid = np.asarray(SM.time_grid(32, EPS), np.float64)
    x = free_positions(loop(jit_step(SM.euler_maruyama(VE), gaussian_score_fn(VE)), jax.random.key(0), b, grid), big)
    k = x.shape[0]
    _, var_em = em_recursion(VE, grid)
    target = S0**2 + float(VE.std(EPS)) ** 2
    np.testing.assert_allclose(x.var(0), var_em, atol=5 * var_em * math.sqrt(2 / k))
    np.testing.assert_allclose(x.mean(0), MU, atol=5 * math.sqrt(target / k))
    assert abs(var_em - target) < 0.15 * target
    # predictor–corrector on the same grid: the data moments too (the corrector's own
    # Langevin bias is ~snr², see the next test)
    pc = free_positions(loop(jit_step(SM.predictor_corrector(VE, 0.16, 1), gaussian_score_fn(VE)), jax.random.key(1), b, grid), big)
    np.testing.assert_allclose(pc.mean(0), MU, atol=5 * math.sqrt(target / k))
    assert abs(pc.var(0).mean() - target) < 0.15 * target


@pytest.mark.parametrize("sde", [VE, VP], ids=["ve", "vp"])
def test_langevin_corrector_targets_the_marginal(big, sde):
    """Corrector steps at a fixed time (t_next = t, so the predictor is a no-op) started
    from a wrong distribution converge to the unadjusted-Langevin law of the marginal
    N(m μ, v): mean m μ, variance v / (1 − ε/2v) with ε ≈ 2 snr² v."""
    t, snr = 0.3, 0.3
    m = float(sde.mean_coeff(t))
    v = m * m * S0**2 + float(sde.std(t)) ** 2
    rng = np.random.default_rng(11)
    start = m * MU + math.sqrt(v) * (0.5 + 1.5 * rng.normal(size=big.positions.shape))
    b = big._replace(positions=np.where((big.node_mask & ~big.fixed)[:, None], start, 0.0))
    step = jit_step(SM.predictor_corrector(sde, snr, 1), gaussian_score_fn(sde))
    state = jax.tree_util.tree_map(jnp.asarray, b)
    for i in range(60):
        state = step(jax.random.key(i), state, t, t)
    x = free_positions(state, big)
    np.testing.assert_allclose(x.mean(0), m * MU, atol=0.03 + 5 * math.sqrt(v / x.shape[0]))
    ratio = x.var(0).mean() / v
    assert 1.06 < ratio < 1.15, ratio  # ULA bias 1/(1 − snr²) ≈ 1.10


@pytest.mark.parametrize("sde", [VE, VP], ids=["ve", "vp"])
def test_ode_heun_second_order_euler_first_order(sde):
    """The probability-flow ODE of a Gaussian maps x_1 to m μ + (x_1 − m_1 μ) sqrt(v/v_1)
    exactly: Heun converges like 1/N², Euler like 1/N (deterministic, float64)."""
    with jax.enable_x64(True):
        b = exact_start(sde, anchor_batch(2, 7), seed=3)
        free = b.node_mask & ~b.fixed
        m1, me = float(sde.mean_coeff(1.0)), float(sde.mean_coeff(EPS))
        v1 = m1**2 * S0**2 + sde.prior_std**2
        ve = me**2 * S0**2 + float(sde.std(EPS)) ** 2
        exact = (me * MU + (b.positions - m1 * MU) * math.sqrt(ve / v1))[free]
        sf = gaussian_score_fn(sde)
        ns = [8, 16, 32, 64]
        for step, lo, hi in ((SM.heun_ode(sde), 1.75, 2.3), (SM.euler_maruyama(sde, probability_flow=True), 0.7, 1.15)):
            f = jit_step(step, sf)
            errs = []
            for n in ns:
                out = loop(f, jax.random.key(0), b, np.asarray(SM.time_grid(n, EPS)))
                errs.append(np.abs(np.asarray(out.positions)[free] - exact).max())
            slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
            assert lo < slope < hi, (type(step).__name__, errs, slope)
            if isinstance(step, SM.HeunODE):
                assert errs[-1] < 0.02


def test_zero_com_cluster_sampling():
    """Free clusters (no fixed atoms): the sampler keeps every graph's CoM exactly and the
    per-atom variance is (1 − 1/N) times the EM recursion's (the zero-CoM projection)."""
    n_atoms = 8
    b = anchor_batch(256, n_atoms - 1)
    b = b._replace(fixed=np.zeros_like(b.fixed), types=np.zeros_like(b.types))
    centres = np.random.default_rng(4).normal(size=(b.num_graphs, 3)) * 3
    b = b._replace(positions=np.where(b.node_mask[:, None], centres[b.graph_index], 0.0))
    state = prior_state(jax.random.key(5), b, VP)

    def score_fn(state, t, key, type_weights=None):
        tt = t[state.graph_index]
        v = VP.mean_coeff(tt) ** 2 * S0**2 + VP.std(tt) ** 2
        c = graph_mean(state, state.positions)[state.graph_index]
        return Scores(positions=-(state.positions - c) / v[:, None])

    grid = SM.time_grid(64, EPS)
    out = jax.jit(lambda k, s: SM.sample(k, s, score_fn, SM.euler_maruyama(VP), grid))(jax.random.key(6), state)
    x = np.asarray(out.positions)[b.node_mask]
    com = np.asarray(graph_mean(out, out.positions))[:-1]
    np.testing.assert_allclose(com, centres[:-1], atol=2e-5)
    _, var = em_recursion(VP, np.asarray(grid, np.float64), start_var=VP.prior_std**2, start_mean=0.0)
    expected = (1 - 1 / n_atoms) * var
    resid = x - centres[b.graph_index[b.node_mask]]
    assert resid.var() == pytest.approx(expected, abs=5 * expected * math.sqrt(2 / resid.size))


# --------------------------------------------------------------------------------------
# Joint sampling: the type marginals
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["tau", "analytic"])
def test_joint_sampler_type_marginals(big, method):
    """With the exact concrete score of independent atoms with law p0, the joint sampler's
    types follow p0 (any step count for this oracle), no MASK is left, the fixed anchors
    keep their type, and the positions are still right."""
    b = exact_start(VE, big, seed=7)
    if method == "tau":
        step = SM.joint(SM.euler_maruyama(VE), SM.tau_leaping(PROCESS))
    else:
        step = SM.joint(SM.heun_ode(VE), SM.analytic(PROCESS))
    grid = SM.time_grid(32, EPS)
    out = jax.jit(lambda k, s: SM.sample(k, s, gaussian_score_fn(VE), step, grid))(jax.random.key(8), b)
    z = np.asarray(out.types)
    free = b.node_mask & ~b.fixed
    assert not np.any(z[free] == MASK)
    np.testing.assert_array_equal(z[~free], b.types[~free])
    freq = np.bincount(z[free], minlength=K + 1)[1:] / free.sum()
    np.testing.assert_allclose(freq, P0, atol=5 * np.sqrt(0.25 / free.sum()))
    x = np.asarray(out.positions)[free]
    np.testing.assert_allclose(x.mean(0), MU, atol=0.02)
    assert x.var(0).mean() == pytest.approx(S0**2, rel=0.2)


# --------------------------------------------------------------------------------------
# Determinism, scan vs loop, inpainting, padding, periodicity
# --------------------------------------------------------------------------------------

VOCAB = TypeVocab(("H", "C", "O"))


def mixed_atoms():
    return _mixed_atoms(9, fixed_sheet=True)




def toy_score_fn(state, t, key, type_weights=None):
    """A smooth position score pulling every atom towards its graph's fixed atoms /
    centre, and type log-scores favouring type 2; depends only on the atom and its graph."""
    tt = t[state.graph_index][:, None]
    x = state.positions
    pos = -(x - jnp.sin(x)) / (0.3 + tt * 4.0)
    ls = jnp.broadcast_to(jnp.array([0.0, 1.0, -0.5], x.dtype), (x.shape[0], 3)) + jnp.log(tt)
    return Scores(positions=pos, types=ls)


@pytest.fixture(scope="module")
def mixed():
    return batch_from_atoms(mixed_atoms(), VOCAB, cutoff=2.0, masked_types=True)


@pytest.fixture(scope="module")
def mixed_run(mixed):
    """One jitted joint sampler (PC + analytic) on the mixed batch, shared by tests."""
    step = SM.joint(SM.predictor_corrector(VE, 0.16, 1), SM.analytic(PROCESS))
    grid = SM.time_grid(12, EPS)
    run = jax.jit(lambda k, s: SM.sample(k, s, toy_score_fn, step, grid))
    state0 = prior_state(jax.random.key(10), mixed, VE)
    return run, step, grid, state0


def test_same_key_same_sample_and_scan_equals_loop(mixed_run):
    run, step, grid, state0 = mixed_run
    a = run(jax.random.key(11), state0)
    b = run(jax.random.key(11), state0)
    c = run(jax.random.key(12), state0)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a.positions, c.positions)
    ref = loop(jit_step(step, toy_score_fn), jax.random.key(11), state0, grid)
    ref = jax.jit(lambda k, s: SM.Finalize()(k, s, grid[-1], toy_score_fn))(jax.random.fold_in(jax.random.key(11), len(grid) - 1), ref)
    np.testing.assert_allclose(a.positions, ref.positions, atol=1e-5)
    np.testing.assert_array_equal(a.types, ref.types)


def test_inpainting_padding_periodicity_com(mixed, mixed_run):
    run, _, _, state0 = mixed_run
    out = run(jax.random.key(13), state0)
    x0, x = np.asarray(state0.positions), np.asarray(out.positions)
    z0, z = np.asarray(state0.types), np.asarray(out.types)
    nm, fixed, gi = mixed.node_mask, mixed.fixed, mixed.graph_index
    # fixed atoms never move and keep their (physical) type; padding stays at 0 and MASK
    np.testing.assert_array_equal(x[fixed], np.asarray(mixed.positions, x.dtype)[fixed])
    np.testing.assert_array_equal(z[fixed], mixed.types[fixed])
    assert np.all(z0[fixed] != MASK)
    np.testing.assert_array_equal(x[~nm], 0.0)
    np.testing.assert_array_equal(z[~nm], z0[~nm])
    # every free atom got a physical type
    assert np.all(z[nm & ~fixed] != MASK) and np.all(z0[nm & ~fixed] == MASK)
    # periodic axes wrapped, CoM kept along zero-CoM axes (cluster: xyz; free sheet: z)
    for g in (2, 3):
        frac = x[(gi == g) & nm] @ np.linalg.inv(mixed.cell[g])
        assert np.all((frac[:, :2] >= 0) & (frac[:, :2] < 1))
    cl, sh2 = (gi == 0) & nm, (gi == 3) & nm
    np.testing.assert_allclose(x[cl].mean(0), x0[cl].mean(0), atol=1e-4)
    np.testing.assert_allclose(x[sh2][:, 2].mean(), x0[sh2][:, 2].mean(), atol=1e-4)
    assert np.all(np.isfinite(x))


def test_padding_invariance_of_samples(mixed, mixed_run):
    run, _, _, _ = mixed_run
    big = batch_from_atoms(mixed_atoms(), VOCAB, cutoff=2.0, masked_types=True, bucket=Bucket(32, 600, 8))
    s_small = prior_state(jax.random.key(14), mixed, VE)
    s_big = prior_state(jax.random.key(14), big, VE)
    nr = int(mixed.node_mask.sum())
    np.testing.assert_array_equal(np.asarray(s_small.positions)[:nr], np.asarray(s_big.positions)[:nr])
    a = run(jax.random.key(15), s_small)
    b = run(jax.random.key(15), s_big)
    np.testing.assert_allclose(np.asarray(a.positions)[:nr], np.asarray(b.positions)[:nr], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(a.types)[:nr], np.asarray(b.types)[:nr])


# --------------------------------------------------------------------------------------
# Guidance and interpolation
# --------------------------------------------------------------------------------------


def labelled_score_fn(state, t, key, type_weights=None):
    lab = state.label[state.graph_index].astype(state.positions.dtype)[:, None]
    pos = -state.positions + lab * jnp.array([1.0, 0.0, 0.0], state.positions.dtype)
    ls = jnp.stack([lab[:, 0], -lab[:, 0], 0.5 * lab[:, 0]], -1) + t[state.graph_index][:, None]
    return Scores(positions=pos, types=ls)


def test_classifier_free_guidance(mixed):
    state = mixed._replace(label=np.array([2, 0, 5, 1, 0], np.int32)[: mixed.num_graphs])
    state = jax.tree_util.tree_map(jnp.asarray, state)
    t = jnp.full(state.num_graphs, 0.4)
    key = jax.random.key(0)
    cond = labelled_score_fn(state, t, key)
    uncond = labelled_score_fn(state._replace(label=jnp.zeros_like(state.label)), t, key)
    assert not np.allclose(cond.positions, uncond.positions)
    for w, ref in ((1.0, cond), (0.0, uncond)):
        for ww in (w, jnp.asarray(w)):
            out = SM.guided(labelled_score_fn, ww)(state, t, key)
            np.testing.assert_array_equal(out.positions, ref.positions)
            np.testing.assert_array_equal(out.types, ref.types)
    out = SM.guided(labelled_score_fn, 3.0)(state, t, key)
    np.testing.assert_allclose(out.positions, 3 * cond.positions - 2 * uncond.positions, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.types, 3 * cond.types - 2 * uncond.types, rtol=1e-6, atol=1e-6)


def test_interpolation_weights_and_allowed_types(mixed):
    a_type, b_type = 1, 3  # H and O; the score prefers C (2)

    @jax.jit
    def call(state, t, key):
        box = {}

        def spy(state, t, key, type_weights=None):
            box["w"] = type_weights
            return toy_score_fn(state, t, key)

        out = SM.interpolated(spy, a_type, b_type, K)(state, t, key)
        return out, box["w"]

    state = jax.tree_util.tree_map(jnp.asarray, mixed)
    z = np.asarray(state.types).copy()
    free = np.where(mixed.node_mask & ~mixed.fixed)[0]
    z[free[:6]] = [1, 3, 2, MASK, 1, 3]  # graph 0: A, B, C, MASK, A, B
    state = state._replace(types=jnp.asarray(z))
    t = jnp.full(state.num_graphs, 0.5)
    out, w = call(state, t, jax.random.key(1))
    w = np.asarray(w)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
    alpha = w[free[0], a_type]
    assert 0 < alpha < 1
    np.testing.assert_allclose(w[free[0]], [0, alpha, 0, 1 - alpha], rtol=1e-6)
    np.testing.assert_allclose(w[free[1]], [0, 1 - alpha, 0, alpha], rtol=1e-6)  # same α for B
    np.testing.assert_array_equal(w[free[2]], np.eye(K + 1)[2])
    np.testing.assert_array_equal(w[free[3]], np.eye(K + 1)[MASK])
    _, w2 = call(state, t, jax.random.key(2))
    assert np.asarray(w2)[free[0], a_type] != alpha  # a new α at every call
    ls = np.asarray(out.types)
    assert np.all(ls[:, b_type - 1] > -100) and np.all(ls[:, 1] == SM.NEG_LOG_SCORE)
    # a whole types-only sample only ever unmasks into {A, B}
    types_only = lambda s, t, k, type_weights=None: Scores(types=toy_score_fn(s, t, k).types)  # noqa: E731
    fn = SM.interpolated(types_only, a_type, b_type, K)
    res = jax.jit(lambda k, s: SM.sample(k, s, fn, SM.tau_leaping(PROCESS), SM.time_grid(8, EPS)))(jax.random.key(3), mixed)
    zz = np.asarray(res.types)[free]
    assert set(np.unique(zz)) <= {a_type, b_type} and len(np.unique(zz)) == 2
    np.testing.assert_array_equal(np.asarray(res.positions), np.asarray(mixed.positions, np.float32))


# --------------------------------------------------------------------------------------
# Safety
# --------------------------------------------------------------------------------------


def test_no_nan_down_to_tiny_eps_including_gradients():
    b = anchor_batch(4, 7)
    grid = SM.time_grid(16, 1e-5)
    free = b.node_mask & ~b.fixed
    cosine, geometric = S.VPSDE(S.VPCosineSchedule()), S.VESDE(S.VEGeometricSchedule(0.01, 8.0))
    step = SM.joint(SM.predictor_corrector(cosine, 0.01), SM.tau_leaping(PROCESS))
    state = prior_state(jax.random.key(0), b, cosine)
    out = jax.jit(lambda k, s: SM.sample(k, s, gaussian_score_fn(cosine), step, grid, SM.finalize(cosine)))(jax.random.key(1), state)
    assert np.all(np.isfinite(np.asarray(out.positions)))
    assert not np.any(np.asarray(out.types)[b.node_mask] == MASK)

    # Heun + analytic on the geometric VE SDE, differentiated with respect to the data mean
    step = SM.joint(SM.heun_ode(geometric), SM.analytic(PROCESS))
    state = prior_state(jax.random.key(0), b, geometric)

    def run(mu):
        out = SM.sample(jax.random.key(2), state, gaussian_score_fn(geometric, mu=mu), step, grid, SM.finalize(geometric))
        return jnp.sum(out.positions[free], 0), out.types

    mu = jnp.asarray(MU, jnp.float32)
    (total, types), (jac, _) = jax.jit(jax.vmap(lambda v: jax.jvp(run, (mu,), (v,)), out_axes=(None, 0)))(jnp.eye(3))
    assert np.all(np.isfinite(np.asarray(total))) and np.all(np.isfinite(np.asarray(jac)))
    assert not np.any(np.asarray(types)[b.node_mask] == MASK)
    # the exact flow map x_eps = μ + (x_1 − μ) sqrt(v_eps / v_1) gives d(Σx)/dμ = 28 (1 − sqrt(v_eps / v_1)) I
    ratio = math.sqrt((S0**2 + float(geometric.std(1e-5)) ** 2) / (S0**2 + geometric.prior_std**2))
    np.testing.assert_allclose(np.asarray(jac), 28.0 * (1 - ratio) * np.eye(3), atol=0.3)


def test_bad_inputs(mixed):
    with pytest.raises(ValueError, match="cannot act on periodic axes"):
        SM.sample(jax.random.key(0), mixed, toy_score_fn, SM.euler_maruyama(VP), SM.time_grid(4))
    with pytest.raises(ValueError, match="no position score"):
        SM.sample(jax.random.key(0), mixed, lambda s, t, k: Scores(types=toy_score_fn(s, t, k).types), SM.euler_maruyama(VE), SM.time_grid(4))
    with pytest.raises(ValueError, match="strictly decreasing"):
        SM.sample(jax.random.key(0), mixed, toy_score_fn, SM.euler_maruyama(VE), jnp.linspace(0.001, 1.0, 5))
    with pytest.raises(ValueError, match="two different physical types"):
        SM.interpolated(toy_score_fn, 2, 2, K)
    with pytest.raises(ValueError, match="snr"):
        SM.predictor_corrector(VE, snr=0.0)


def test_time_grid():
    for kind in ("uniform", "quadratic", "log"):
        g = np.asarray(SM.time_grid(10, 1e-3, kind))
        assert g.shape == (11,) and g[0] == 1.0 and g[-1] == pytest.approx(1e-3) and np.all(np.diff(g) < 0)
    np.testing.assert_allclose(np.diff(np.asarray(SM.time_grid(4, 0.2))), -0.2, rtol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        SM.time_grid(10, kind="cubic")
    with pytest.raises(ValueError, match="num_steps"):
        SM.time_grid(0)
