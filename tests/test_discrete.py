"""Tests of the absorbing-state type process (agedi_jax.discrete): oracles in float64
(scipy / jax expm, quadrature, closed-form concrete scores, exact enumeration of the
samplers' laws) and sampling checks with tight statistical tolerances."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg

from agedi_jax import discrete as d
from agedi_jax.discrete import MASK, AbsorbingProcess, GeometricSchedule, LogLinearSchedule

SCHEDULES = [LogLinearSchedule(), GeometricSchedule(), LogLinearSchedule(eps=1e-5)]
K = 3
P0 = np.array([0.2, 0.3, 0.5])


def _within(count, n, p, nsig=5.0):
    """Binomial count within ``nsig`` standard deviations of ``n p``."""
    return abs(count - n * p) <= nsig * np.sqrt(n * p * (1 - p)) + 1e-9


def _m(process, t):
    """Masking probability 1 - e^{-σ̄(t)} (float64)."""
    with jax.enable_x64(True):
        return float(-jnp.expm1(-process.total(jnp.float64(t))))


# --------------------------------------------------------------------------------------
# Schedules and the kernel
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: repr(s))
def test_schedule_total_is_integral_of_rate(sched):
    with jax.enable_x64(True):
        for t in [1e-5, 0.1, 0.5, 0.9, 1.0]:
            quad, _ = scipy.integrate.quad(lambda u: float(sched.rate(u)), 0.0, t, epsabs=1e-13, epsrel=1e-12)
            got = float(sched.total(t) - sched.total(0.0))
            assert got == pytest.approx(quad, rel=1e-9, abs=1e-13)
        ts = jnp.linspace(0.0, 1.0, 11)
        grad = jax.vmap(jax.grad(sched.total))(ts)
        np.testing.assert_allclose(grad, sched.rate(ts), rtol=1e-12)
        start = 0.0 if isinstance(sched, LogLinearSchedule) else sched.sigma_min
        assert float(sched.total(0.0)) == pytest.approx(start, rel=1e-14, abs=0)


def test_loglinear_masking_is_linear_in_t():
    with jax.enable_x64(True):
        p = AbsorbingProcess(K, LogLinearSchedule(eps=1e-3))
        ts = np.linspace(0.0, 1.0, 7)
        np.testing.assert_allclose([_m(p, t) for t in ts], (1 - 1e-3) * ts, rtol=1e-12, atol=1e-15)


def test_rate_matrix_is_eq17():
    q = np.asarray(AbsorbingProcess(4).rate_matrix())
    expect = np.zeros((5, 5))
    expect[0, 1:] = 1.0
    expect[np.arange(1, 5), np.arange(1, 5)] = -1.0
    np.testing.assert_array_equal(q, expect)
    np.testing.assert_array_equal(q.sum(axis=0), 0.0)  # Eq. 10: columns conserve probability


@pytest.mark.parametrize("sched", SCHEDULES[:2], ids=lambda s: type(s).__name__)
def test_kernel_equals_expm(sched):
    with jax.enable_x64(True):
        p = AbsorbingProcess(4, sched)
        q = p.rate_matrix()
        ts = jnp.array([0.0, 1e-6, 0.3, 0.77, 1.0])
        kern = p.kernel(ts)
        assert kern.shape == (5, 5, 5) and kern.dtype == jnp.float64
        for i, t in enumerate(ts):
            sb = p.total(t)
            np.testing.assert_allclose(kern[i], jax.scipy.linalg.expm(sb * q), atol=1e-12, rtol=0)
            ref = scipy.linalg.expm(float(sb) * np.asarray(q))
            np.testing.assert_allclose(kern[i], ref, atol=1e-12, rtol=0)
        np.testing.assert_allclose(kern.sum(axis=-2), 1.0, atol=1e-14)
        assert jnp.all(kern >= 0)


@pytest.mark.parametrize("sched", SCHEDULES[:2], ids=lambda s: type(s).__name__)
def test_product_of_small_step_kernels_is_kernel_of_integrated_rate(sched):
    """Π_i expm(σ(t_i) Δt Q) over a fine midpoint grid on [0, t] composed with the
    kernel at 0 equals the kernel at t (Chapman-Kolmogorov with a time-varying rate)."""
    with jax.enable_x64(True):
        p = AbsorbingProcess(3, sched)
        q = np.asarray(p.rate_matrix())
        t, steps = 0.8, 2000
        edges = np.linspace(0.0, t, steps + 1)
        mids = 0.5 * (edges[1:] + edges[:-1])
        rates = np.asarray(p.rate(jnp.asarray(mids)))
        gen = jnp.asarray(rates * np.diff(edges))[:, None, None] * q
        steps_k = np.asarray(jax.vmap(jax.scipy.linalg.expm)(gen))
        prod = np.asarray(p.kernel(0.0))
        for k in steps_k:
            prod = k @ prod
        np.testing.assert_allclose(prod, np.asarray(p.kernel(t)), atol=2e-6)


# --------------------------------------------------------------------------------------
# Corruption
# --------------------------------------------------------------------------------------


def test_corrupt_frequency_fixed_and_determinism():
    p = AbsorbingProcess(K)
    n = 40000
    rng = np.random.default_rng(0)
    z0 = rng.integers(1, K + 1, n).astype(np.int32)
    z0[-100:] = MASK  # padding atoms
    t = np.where(np.arange(n) % 2 == 0, 0.3, 0.85).astype(np.float32)
    fixed = rng.random(n) < 0.2
    key = jax.random.key(1)
    zt = np.asarray(p.corrupt(key, z0, t, fixed))
    assert zt.dtype == np.int32
    np.testing.assert_array_equal(zt[fixed], z0[fixed])
    assert np.all((zt == z0) | (zt == MASK))
    assert np.all(zt[-100:] == MASK)
    free = ~fixed & (z0 != MASK)
    for tv in (0.3, 0.85):
        sel = free & (t == tv)
        assert _within(np.sum(zt[sel] == MASK), sel.sum(), _m(p, tv))
    np.testing.assert_array_equal(zt, np.asarray(p.corrupt(key, z0, t, fixed)))
    assert not np.array_equal(zt, np.asarray(p.corrupt(jax.random.key(2), z0, t, fixed)))
    # a scalar t is broadcast; t = 0 (log-linear) masks nothing, the prior is all MASK
    np.testing.assert_array_equal(np.asarray(p.corrupt(key, z0, 0.0)), z0)
    np.testing.assert_array_equal(np.asarray(p.prior(5)), np.zeros(5, np.int32))


# --------------------------------------------------------------------------------------
# Score entropy
# --------------------------------------------------------------------------------------


def _bracket_direct(log_score, z0, sigma_bar):
    """Σ_y ŝ_y − a log ŝ_{z0} + a (log a − 1), straight from Eq. 14 (float64 numpy)."""
    a = 1.0 / np.expm1(sigma_bar)
    s = np.exp(log_score)
    return s.sum(-1) - a * log_score[np.arange(len(z0)), z0 - 1] + a * (np.log(a) - 1.0)


def test_score_entropy_nonnegative_and_matches_eq14():
    rng = np.random.default_rng(3)
    n = 512
    log_score = rng.normal(0.0, 3.0, (n, K))
    z0 = rng.integers(1, K + 1, n)
    zt = np.where(rng.random(n) < 0.8, MASK, z0)
    sb = np.exp(rng.uniform(np.log(1e-8), np.log(15.0), n))
    rate = rng.uniform(0.1, 5.0, n)
    with jax.enable_x64(True):
        loss = np.asarray(d.score_entropy(log_score, z0, zt, sb, rate))
    expect = np.where(zt == MASK, rate * _bracket_direct(log_score, z0, sb), 0.0)
    np.testing.assert_allclose(loss, expect, rtol=1e-9)
    f32 = np.float32
    loss32 = np.asarray(d.score_entropy(log_score.astype(f32), z0, zt, sb.astype(f32), rate.astype(f32)))
    assert np.all(loss32 >= 0) and np.all(np.isfinite(loss32))
    np.testing.assert_allclose(loss32, expect, rtol=2e-3, atol=1e-4 * np.abs(expect).max())


@pytest.mark.parametrize("x64", [False, True])
def test_score_entropy_zero_with_zero_gradient_at_true_ratio(x64):
    with jax.enable_x64(x64):
        sb = jnp.array([1e-8, 1e-3, 0.5, 3.0, 12.0])
        z0 = jnp.array([1, 2, 3, 1, 2])
        cols = jnp.arange(K)[None, :] == (z0 - 1)[:, None]
        log_true = jnp.where(cols, d.masked_log_ratio(sb)[:, None], -1e30)
        f = lambda ls: d.score_entropy(ls, z0, jnp.zeros(5, jnp.int32), sb, jnp.ones(5)).sum()
        val, grad = jax.value_and_grad(f)(log_true)
        assert float(val) == 0.0
        assert np.all(np.asarray(grad) == 0.0)
    with jax.enable_x64(True):  # an independent computation of log a: zero to rounding
        sb = np.array([1e-8, 1e-3, 0.5, 3.0, 12.0])
        log_true = np.where(np.asarray(cols), -np.log(np.expm1(sb))[:, None], -1e30)
        loss = np.asarray(d.score_entropy(log_true, np.asarray(z0), np.zeros(5, int), sb, np.ones(5)))
        assert np.all(np.abs(loss) <= 1e-12 * (1.0 / np.expm1(sb)))


def test_score_entropy_softmax_identity_and_expected_minimum():
    """With ŝ = a softmax(l) the bracket is −a log p(z0); the expectation over z0 ~ p0 is
    stationary (zero gradient) at the true concrete score ŝ = a p0."""
    rng = np.random.default_rng(4)
    n = 64
    logits = rng.normal(0.0, 2.0, (n, K))
    z0 = rng.integers(1, K + 1, n)
    sb = np.exp(rng.uniform(np.log(1e-4), np.log(8.0), n))
    with jax.enable_x64(True):
        log_a = d.masked_log_ratio(sb)
        log_score = log_a[:, None] + jax.nn.log_softmax(logits)
        bracket = d.score_entropy(log_score, z0, np.zeros(n, int), sb, np.ones(n))
        logp = np.asarray(jax.nn.log_softmax(logits))[np.arange(n), z0 - 1]
        np.testing.assert_allclose(bracket, -np.exp(log_a) * logp, rtol=1e-10)

        sb1 = 0.7
        zs = jnp.arange(1, K + 1)

        def expected(ls):  # E_{z0 ~ p0} loss for one masked atom with shared log-score
            rows = jnp.broadcast_to(ls, (K, K))
            per = d.score_entropy(rows, zs, jnp.zeros(K, int), jnp.full(K, sb1), jnp.full(K, 2.0))
            return jnp.sum(jnp.asarray(P0) * per)

        true = d.independent_log_score(jnp.log(P0), sb1)
        np.testing.assert_allclose(jax.grad(expected)(true), 0.0, atol=1e-14)
        off = true + jnp.array([0.3, -0.2, 0.1])
        assert expected(off) > expected(true)


def test_score_entropy_is_zero_off_mask_and_finite_everywhere():
    p = AbsorbingProcess(K)
    n = 8
    ts = jnp.array([1e-5, 1e-4, 1e-3, 0.1, 0.5, 0.9, 0.999, 1.0], jnp.float32)
    z0 = jnp.array([1, 2, 3, 1, 2, 3, 1, 2])
    log_score = jnp.array(np.random.default_rng(5).normal(0, 4, (n, K)), jnp.float32)
    log_score = log_score.at[:, 2].set(-1e30).at[0, 0].set(-1e30)  # disallowed types
    for sched in [LogLinearSchedule(eps=1e-5), GeometricSchedule()]:
        p = AbsorbingProcess(K, sched)

        def total(ls, zt):
            return d.score_entropy(ls, z0, zt, p.total(ts), p.rate(ts)).sum()

        for zt in [jnp.zeros(n, jnp.int32), z0, z0.at[::2].set(0)]:
            val, grad = jax.value_and_grad(total)(log_score, zt)
            assert np.isfinite(float(val)) and np.all(np.isfinite(np.asarray(grad)))
            per = d.score_entropy(log_score, z0, zt, p.total(ts), p.rate(ts))
            assert np.all(np.asarray(per)[np.asarray(zt) != MASK] == 0.0)
            assert np.all(np.asarray(grad)[np.asarray(zt) != MASK] == 0.0)
    # padding atoms (z0 = MASK) contribute nothing even when zt = MASK
    none = jnp.zeros(n, jnp.int32)
    pad = d.score_entropy(log_score, none, none, p.total(ts), p.rate(ts))
    assert np.all(np.asarray(pad) == 0.0)
    # σ̄ = 0 for an unmasked atom (t = 0) leaves no NaN behind the mask
    g = jax.grad(lambda ls: d.score_entropy(ls, z0, z0, jnp.zeros(n), jnp.ones(n)).sum())(log_score)
    assert np.all(np.asarray(g) == 0.0)


# --------------------------------------------------------------------------------------
# Reverse steps: exact laws by enumeration
# --------------------------------------------------------------------------------------


def _one_token_masked_path(process, grid, transition):
    """P(still masked) after each step of a one-atom chain started masked, with the true
    concrete score of p0 (float64, no sampling), and the law of the unmasking type."""
    pm, path, laws = 1.0, [], []
    for t, s in zip(grid[:-1], grid[1:]):
        ls = d.independent_log_score(jnp.log(P0), process.total(jnp.array([t])))
        probs = np.exp(np.asarray(transition(jnp.array([MASK]), ls, jnp.array([t]), jnp.array([s]), process)))[0]
        pm *= probs[0]
        path.append(pm)
        laws.append(probs[1:] / probs[1:].sum() if probs[1:].sum() > 0 else P0)
    return np.array(path), np.array(laws)


def _tau(*a):
    return d.tau_leap_transition(*a, rate_form="euler")


@pytest.mark.parametrize("sched", SCHEDULES[:2], ids=lambda s: type(s).__name__)
def test_analytic_step_is_exact_for_one_token_at_any_step_count(sched):
    with jax.enable_x64(True):
        p = AbsorbingProcess(K, sched)
        for grid in [np.array([1.0, 0.0]), np.array([1.0, 0.62, 0.2, 0.01]), np.linspace(1.0, 1e-3, 9)]:
            path, laws = _one_token_masked_path(p, grid, d.analytic_transition)
            exact = np.array([_m(p, s) / _m(p, 1.0) for s in grid[1:]])
            np.testing.assert_allclose(path, exact, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(laws, np.broadcast_to(P0, laws.shape), rtol=1e-12)


def test_tau_leaping_converges_and_is_exact_for_loglinear_euler():
    with jax.enable_x64(True):
        p = AbsorbingProcess(K, LogLinearSchedule())
        grid = np.linspace(1.0, 1e-3, 5)
        path, _ = _one_token_masked_path(p, grid, _tau)
        # σ(t) a(t) = 1/t for the log-linear schedule: the Euler step is exact
        np.testing.assert_allclose(path, [_m(p, s) / _m(p, 1.0) for s in grid[1:]], rtol=1e-12)

        p = AbsorbingProcess(K, GeometricSchedule())
        for form in ["euler", "integrated"]:
            errs = []
            for n_steps in [4, 16, 64]:
                grid = np.linspace(1.0, 1e-3, n_steps + 1)
                tr = lambda *a: d.tau_leap_transition(*a, rate_form=form)
                path, laws = _one_token_masked_path(p, grid, tr)
                exact = np.array([_m(p, s) / _m(p, 1.0) for s in grid[1:]])
                errs.append(np.abs(path - exact).max())
                np.testing.assert_allclose(laws, np.broadcast_to(P0, laws.shape), rtol=1e-12)
            assert errs[0] > errs[1] > errs[2] and errs[2] < 0.06, (form, errs)
            assert errs[2] / errs[1] < 0.3  # first order: ~1/4 per 4x steps


# Two atoms with dependent types, K = 2: the exact concrete score of atom i given the
# state is a(σ̄) p0(z_i = y | the other atom's type if unmasked).
PAIR = np.array([[0.05, 0.45], [0.40, 0.10]])  # PAIR[y1-1, y2-1]
STATES = list(itertools.product(range(3), repeat=2))


def _pair_log_conditionals():
    """[len(STATES) * 2, 2] log p0(z_i = y | the other atom), rows (state, atom)."""
    rows = []
    for z in STATES:
        for i in range(2):
            other = z[1 - i]
            table = PAIR if i == 0 else PAIR.T
            cond = table.sum(axis=1) if other == MASK else table[:, other - 1]
            rows.append(np.log(cond / cond.sum()))
    return np.array(rows)


def _pair_log_scores(sigma_bar):
    """Exact log concrete scores a(σ̄) p0(z_i = y | other), rows (state, atom)."""
    return np.asarray(d.masked_log_ratio(sigma_bar)) + _pair_log_conditionals()


def _pair_sampler_law(process, grid, transition):
    """Exact law of the two-atom sampler's output (steps over grid, then resolve_mask)."""
    zt = jnp.array([z[i] for z in STATES for i in range(2)])
    idx = {z: k for k, z in enumerate(STATES)}
    dist = np.zeros(len(STATES))
    dist[idx[(0, 0)]] = 1.0
    for t, s in zip(grid[:-1], grid[1:]):
        ls = _pair_log_scores(process.total(jnp.float64(t)))
        n = zt.shape[0]
        lp = np.exp(np.asarray(transition(zt, ls, jnp.full(n, t), jnp.full(n, s), process)))
        lp = lp.reshape(len(STATES), 2, 3)
        trans = np.zeros((len(STATES), len(STATES)))
        for a, z in enumerate(STATES):
            for b, w in enumerate(STATES):
                trans[a, b] = lp[a, 0, w[0]] * lp[a, 1, w[1]]
        dist = dist @ trans
    # resolve_mask: each masked atom ∝ ŝ at the final state (sampled simultaneously)
    cond = np.exp(_pair_log_conditionals()).reshape(len(STATES), 2, 2)  # ∝ ŝ
    out = np.zeros((2, 2))
    for a, z in enumerate(STATES):
        probs = [cond[a, i] if z[i] == MASK else np.eye(2)[z[i] - 1] for i in range(2)]
        out += dist[a] * np.outer(probs[0], probs[1])
    return out


def test_two_dependent_atoms_marginals_exact_joint_converges():
    with jax.enable_x64(True):
        p = AbsorbingProcess(2, LogLinearSchedule())
        for name, tr in [("analytic", d.analytic_transition), ("tau_leap", _tau)]:
            tvs = []
            for n_steps in [1, 4, 16, 64]:
                law = _pair_sampler_law(p, np.linspace(1.0, 0.0, n_steps + 1), tr)
                assert law.sum() == pytest.approx(1.0, abs=1e-12)
                np.testing.assert_allclose(law.sum(1), PAIR.sum(1), atol=1e-12)  # marginals exact
                np.testing.assert_allclose(law.sum(0), PAIR.sum(0), atol=1e-12)
                tvs.append(0.5 * np.abs(law - PAIR).sum())
            assert tvs[0] > 0.1, (name, tvs)  # one step unmasks both atoms independently
            assert all(a > b for a, b in zip(tvs, tvs[1:])) and tvs[-1] < 0.01, (name, tvs)


# --------------------------------------------------------------------------------------
# Sampling: the samplers draw from their laws; fixed / unmasked atoms; robustness
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampler():
    """One jitted one-token-law sampler shared by the tests (n = 30000, K = 3): the
    package's sampling loop (:func:`agedi_jax.samplers.sample`, a ``lax.scan`` then the
    final MASK resolution) on one structure of n atoms whose type score is the exact
    concrete score of ``P0``."""
    from agedi_jax import samplers
    from agedi_jax.batch import EncodedStructure, collate
    from agedi_jax.scores import Scores

    p = AbsorbingProcess(K)
    log_p0 = jnp.log(jnp.asarray(P0, jnp.float32))

    def score_fn(z, t):
        return jnp.broadcast_to(d.independent_log_score(log_p0, p.total(t)), (z.shape[0], K))

    def batch_score_fn(state, t, key):
        return Scores(types=score_fn(state.types, jnp.asarray(t)[state.graph_index]))

    def template(z1, fixed):
        n = len(z1)
        empty = np.zeros(0, np.int32)
        enc = EncodedStructure(np.zeros((n, 3)), np.asarray(z1, np.int32), np.zeros((3, 3)), np.zeros(3, bool),
                               np.asarray(fixed, bool), 0, empty, empty, np.zeros((0, 3)))
        return collate([enc])

    steps = {"analytic": samplers.analytic(p), "tau_leap": samplers.tau_leaping(p)}

    @functools.partial(jax.jit, static_argnames="method")
    def _run(key, state, grid, method):
        return samplers.sample(key, state, batch_score_fn, steps[method], grid, samplers.finalize())

    def run(key, z1, grid, fixed, method="analytic"):
        state = template(z1, fixed)
        out = _run(key, jax.tree.map(jnp.asarray, state), jnp.asarray(grid, jnp.float32), method)
        return np.asarray(out.types)[np.asarray(state.node_mask)]

    return p, score_fn, run


def test_steps_sample_their_transition_laws(sampler):
    p, score_fn, _ = sampler
    n = 30000
    z = jnp.zeros(n, jnp.int32)
    t, s = jnp.full(n, 0.7), jnp.full(n, 0.4)
    ls = score_fn(z, t)
    for step, tr in [(d.analytic_step, d.analytic_transition), (d.tau_leap_step, d.tau_leap_transition)]:
        out = np.asarray(step(jax.random.key(7), z, ls, t, s, p))
        probs = np.exp(np.asarray(tr(z, ls, t, s, p))[0])
        np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
        assert probs[0] == pytest.approx(0.4 / 0.7, rel=1e-4)  # log-linear: m(s)/m(t) = s/t
        for k in range(K + 1):
            assert _within(np.sum(out == k), n, probs[k]), (step.__name__, k)
        np.testing.assert_array_equal(out, np.asarray(step(jax.random.key(7), z, ls, t, s, p)))


def test_sample_types_reproduces_p0_and_keeps_fixed_atoms(sampler):
    p, _, run = sampler
    n = 30000
    fixed = np.zeros(n, bool)
    fixed[:1000] = True
    z1 = np.where(fixed, 2, MASK).astype(np.int32)
    grid = jnp.linspace(1.0, 1e-3, 5)
    for method in ["analytic", "tau_leap"]:
        out = np.asarray(run(jax.random.key(11), z1, grid, fixed, method))
        assert np.all(out[:1000] == 2)
        free = out[1000:]
        assert np.all(free != MASK)
        for k in range(K):
            assert _within(np.sum(free == k + 1), free.size, P0[k]), method
        np.testing.assert_array_equal(out, np.asarray(run(jax.random.key(11), z1, grid, fixed, method)))
    # a grid ending at a large t_min = 0.3 still leaves no MASK (resolve_mask) and the law is p0
    out = np.asarray(run(jax.random.key(12), z1, jnp.linspace(1.0, 0.3, 5), fixed))
    assert np.all(out != MASK)
    for k in range(K):
        assert _within(np.sum(out[1000:] == k + 1), n - 1000, P0[k])


def test_steps_leave_unmasked_and_fixed_atoms_alone():
    p = AbsorbingProcess(K)
    zt = jnp.array([0, 1, 2, 3, 0, 0])
    fixed = jnp.array([False, False, False, False, True, False])
    ls = jnp.zeros((6, K))
    key = jax.random.key(0)
    for step in [d.analytic_step, d.tau_leap_step]:
        out = np.asarray(step(key, zt, ls, 1.0, 0.0, p, fixed))  # t_next = 0: every free MASK resolves
        np.testing.assert_array_equal(out[1:5], [1, 2, 3, 0])
        assert out[0] != MASK and out[5] != MASK
        out = np.asarray(step(key, zt, ls, 0.5, 0.5, p))  # zero-length step: nothing moves
        np.testing.assert_array_equal(out, zt)
    out = np.asarray(d.resolve_mask(key, zt, ls, fixed))
    assert out[4] == MASK and np.all(out[[0, 5]] != MASK)
    greedy = d.resolve_mask(key, zt, jnp.array([[0.0, 2.0, 1.0]] * 6), greedy=True)
    np.testing.assert_array_equal(greedy, [2, 1, 2, 3, 2, 2])


@pytest.mark.parametrize(
    "sched", [LogLinearSchedule(eps=1e-5), GeometricSchedule()], ids=lambda s: type(s).__name__
)
def test_steps_no_nan_for_extreme_times_and_scores(sched):
    p = AbsorbingProcess(K, sched)
    ts = jnp.array([1.0, 1.0, 0.5, 0.5, 1e-4, 1e-5, 2e-5, 0.9])
    tn = jnp.array([0.99, 0.0, 0.49, 0.1, 1e-5, 0.0, 1e-5, 0.899])
    n = ts.shape[0]
    zt = jnp.zeros(n, jnp.int32)
    ls = jnp.array(np.random.default_rng(2).normal(0, 5, (n, K)), jnp.float32)
    # type 2 disallowed everywhere; row 3 over-confident (jump mass >> 1 -> clipping)
    ls = ls.at[:, 1].set(-1e30).at[3].set(jnp.array([40.0, -1e30, 30.0]))
    for tr in [d.analytic_transition, d.tau_leap_transition]:
        lp = np.asarray(tr(zt, ls, ts, tn, p))
        assert not np.any(np.isnan(lp)) and not np.any(lp == np.inf)
        np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, rtol=1e-5)
        assert np.all(np.exp(lp[:, 2]) < 1e-30)  # the disallowed type is never drawn
    lp = np.asarray(d.tau_leap_transition(zt, ls, ts, tn, p))
    assert lp[3, 0] == -np.inf  # stay probability clipped at 0, row renormalised
    out = np.asarray(d.tau_leap_step(jax.random.key(0), zt, ls, ts, tn, p))
    assert np.all((out >= 0) & (out <= K)) and np.all(out != 2)


def test_process_is_static_under_jit():
    p = AbsorbingProcess(K, GeometricSchedule(1e-3, 10.0))
    assert jax.tree_util.tree_leaves(p) == []
    f = jax.jit(lambda proc, t: proc.kernel(t))
    np.testing.assert_allclose(f(p, 0.4), p.kernel(0.4), rtol=1e-6)
    g = jax.jit(d.score_entropy)
    args = (jnp.ones((4, K)), jnp.array([1, 2, 3, 0]), jnp.zeros(4, jnp.int32), jnp.full(4, 0.5), jnp.ones(4))
    np.testing.assert_allclose(g(*args), d.score_entropy(*args), rtol=1e-6)


def test_bad_input_names_the_problem():
    p = AbsorbingProcess(K)
    z = jnp.zeros(4, jnp.int32)
    ls = jnp.zeros((4, K))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="columns but the process has K = 3"):
        d.tau_leap_step(key, z, jnp.zeros((4, K + 1)), 0.5, 0.4, p)
    with pytest.raises(ValueError, match="t_next must not exceed t"):
        d.analytic_step(key, z, ls, 0.4, 0.5, p)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        p.corrupt(key, jnp.ones(4, jnp.int32), 1.5)
    with pytest.raises(ValueError, match="outside 0..3"):
        p.corrupt(key, jnp.array([1, 2, 4, 0]), 0.5)
    with pytest.raises(TypeError, match="integer type indices"):
        d.score_entropy(ls, jnp.ones(4), z, jnp.ones(4), jnp.ones(4))
    with pytest.raises(ValueError, match="per-atom"):
        d.score_entropy(ls, jnp.ones(4, jnp.int32), z, jnp.ones(3), jnp.ones(4))
    with pytest.raises(TypeError, match="fixed must be boolean"):
        d.resolve_mask(key, z, ls, jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="eps must lie in"):
        AbsorbingProcess(K, LogLinearSchedule(eps=1.5)).total(0.5)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        GeometricSchedule(1.0, 0.5).rate(0.5)
    with pytest.raises(ValueError, match="num_types must be a positive int"):
        AbsorbingProcess(0).rate_matrix()
    with pytest.raises(ValueError, match="rate_form"):
        d.tau_leap_transition(z, ls, 0.5, 0.4, p, rate_form="midpoint")
