"""Position SDEs: schedules against quadrature and autodiff, kernels by Monte Carlo, the
batch conventions (zero CoM, fixed atoms, padding, wrapping) and the wrapped-normal score
against a brute-force image sum."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from scipy.integrate import quad

from agedi_jax import sde as S
from agedi_jax.batch import Bucket
from agedi_jax.convert import batch_from_atoms
from agedi_jax.geometry import com_axes, graph_mean, wrap_positions
from agedi_jax.scores import eps_to_score
from agedi_jax.vocab import TypeVocab
from tests.builders import anchor_batch

VOCAB = TypeVocab(("H", "C"))
SCHEDULES_VE = [S.VELinearSchedule(0.01, 8.0), S.VEGeometricSchedule(0.01, 8.0)]
SCHEDULES_VP = [S.VPLinearSchedule(0.1, 20.0), S.VPCosineSchedule(0.008, 10.0)]
ALL_SDES = [S.VESDE(s) for s in SCHEDULES_VE] + [S.VPSDE(s) for s in SCHEDULES_VP]
TS = [1e-5, 1e-3, 0.1, 0.37, 0.8, 1.0]
wrapped_score = jax.jit(S.wrapped_normal_score, static_argnames="images")




def mixed_atoms(rng) -> list[Atoms]:
    """A free cluster, a cluster with two fixed atoms, a 2D sheet (pbc T,T,F)."""
    cl = Atoms("C5H3", positions=rng.normal(size=(8, 3)) * 1.5 + 4.0)
    fx = Atoms("C4", positions=rng.normal(size=(4, 3)) + np.array([1.0, -2.0, 0.5]))
    from ase.constraints import FixAtoms

    fx.set_constraint(FixAtoms(indices=[0, 2]))
    cell = np.array([[3.2, 0, 0], [-1.6, 3.2 * math.sqrt(3) / 2, 0], [0, 0, 18.0]])
    sh = Atoms("C2H", cell=cell, pbc=(True, True, False), scaled_positions=[[0.1, 0.2, 0.5], [0.6, 0.7, 0.52], [0.3, 0.9, 0.45]])
    return [cl, fx, sh]


@pytest.fixture(scope="module")
def mixed():
    return batch_from_atoms(mixed_atoms(np.random.default_rng(0)), VOCAB, cutoff=2.0)


@pytest.fixture(scope="module")
def mixed_big():
    return batch_from_atoms(mixed_atoms(np.random.default_rng(0)), VOCAB, cutoff=2.0, bucket=Bucket(40, 3000, 6))


# --------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sch", SCHEDULES_VE, ids=lambda s: type(s).__name__)
def test_ve_schedule_integral_and_derivative(sch):
    with jax.enable_x64(True):
        g2 = jax.jit(sch.g2)
        sig2 = jax.grad(lambda t: sch.sigma(t) ** 2)
        var_grad = jax.grad(sch.variance)
        for t in TS:
            ref, _ = quad(lambda u: float(g2(u)), 0.0, t, epsabs=1e-13, epsrel=1e-12)
            assert float(sch.variance(t)) == pytest.approx(ref, rel=1e-9, abs=1e-14)
            # g² = d[σ²]/dt (Eq. 8) and the kernel variance has the same derivative
            assert float(sig2(t)) == pytest.approx(float(g2(t)), rel=1e-12)
            assert float(var_grad(t)) == pytest.approx(float(g2(t)), rel=1e-12)
            assert float(sch.variance(t)) == pytest.approx(float(sch.sigma(t)) ** 2 - float(sch.sigma(0.0)) ** 2, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("sch", SCHEDULES_VP, ids=lambda s: type(s).__name__)
def test_vp_schedule_integral_and_derivative(sch):
    with jax.enable_x64(True):
        beta = jax.jit(sch.beta)
        dalpha = jax.grad(sch.alpha)
        for t in TS:
            ref, _ = quad(lambda u: float(beta(u)), 0.0, t, epsabs=1e-13, epsrel=1e-12)
            assert float(sch.alpha(t)) == pytest.approx(ref, rel=1e-9, abs=1e-14)
            assert float(dalpha(t)) == pytest.approx(float(beta(t)), rel=1e-10)
    if isinstance(sch, S.VPCosineSchedule):
        # Nichol & Dhariwal's form e^{-α} = cos²φ(t)/cos²φ(0) and α(1) = alpha_max
        phi0 = math.pi / 2 * sch.s / (1 + sch.s)
        phi1 = math.acos(math.exp(-sch.alpha_max / 2) * math.cos(phi0))
        for t in TS:
            phi = phi0 + t * (phi1 - phi0)
            with jax.enable_x64(True):
                assert math.exp(-float(sch.alpha(t))) == pytest.approx(math.cos(phi) ** 2 / math.cos(phi0) ** 2, rel=1e-10)
        with jax.enable_x64(True):
            assert float(sch.alpha(1.0)) == pytest.approx(sch.alpha_max, rel=1e-12)
    # float32 keeps relative accuracy at small t (no cancellation in α)
    with jax.enable_x64(True):
        ref = float(sch.alpha(1e-5))
    assert float(sch.alpha(jnp.float32(1e-5))) == pytest.approx(ref, rel=1e-5)


def test_sde_kernels_and_drifts():
    ve, vp = S.VESDE(S.VELinearSchedule(0.01, 8.0)), S.VPSDE(S.VPLinearSchedule(0.1, 20.0))
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)))
        t = 0.3
        mean, std = ve.marginal(x, t)
        np.testing.assert_array_equal(mean, x)
        assert float(std) ** 2 == pytest.approx((0.01 + 0.3 * 7.99) ** 2 - 0.01**2, rel=1e-12)
        a = 0.1 * t + 0.5 * t * t * 19.9
        mean, std = vp.marginal(x, t)
        np.testing.assert_allclose(mean, x * math.exp(-a / 2), rtol=1e-12)
        assert float(std) ** 2 == pytest.approx(1 - math.exp(-a), rel=1e-12)
        np.testing.assert_allclose(vp.drift(x, t), -0.5 * (0.1 + t * 19.9) * x, rtol=1e-12)
        assert float(vp.diffusion(t)) ** 2 == pytest.approx(0.1 + t * 19.9, rel=1e-12)
        np.testing.assert_array_equal(ve.drift(x, t), 0.0)
        s = -x
        np.testing.assert_allclose(ve.reverse_drift(x, t, s), -ve.g2(t) * s, rtol=1e-12)
        np.testing.assert_allclose(vp.reverse_drift(x, t, s, probability_flow=True), vp.drift(x, t) - 0.5 * vp.g2(t) * s, rtol=1e-12)
    assert ve.prior_std == pytest.approx(math.sqrt(8.0**2 - 0.01**2), rel=1e-6)
    assert vp.prior_std == pytest.approx(math.sqrt(1 - math.exp(-10.05)), rel=1e-6)


def test_make_sde_and_bad_parameters():
    assert S.make_sde("ve", "geometric", sigma_min=0.1, sigma_max=5.0) == S.VESDE(S.VEGeometricSchedule(0.1, 5.0))
    assert S.make_sde("vp", "cosine") == S.VPSDE(S.VPCosineSchedule())
    with pytest.raises(ValueError, match="schedule"):
        S.make_sde("vp", "geometric")
    with pytest.raises(ValueError, match="sde"):
        S.make_sde("sub-vp")
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        S.VESDE(S.VELinearSchedule(5.0, 1.0)).std(0.5)
    with pytest.raises(TypeError, match="VPSDE needs one of its schedules"):
        S.VPSDE(S.VELinearSchedule()).std(0.5)
    with pytest.raises(ValueError, match="no parameter"):
        S.make_sde("vp", "cosine", sigma_max=3.0)
    assert S.make_sde("vp", "cosine", s=0.02, alpha_max=12.0) == S.VPSDE(S.VPCosineSchedule(0.02, 12.0))


@pytest.mark.parametrize("sde", ALL_SDES, ids=lambda s: type(s.schedule).__name__)
def test_no_nan_small_t(sde):
    t = jnp.asarray(np.geomspace(1e-5, 1.0, 25), jnp.float32)

    @jax.jit
    def values_and_grads(t):
        fs = (sde.std, sde.g2, sde.mean_coeff, sde.diffusion)
        return [f(t) for f in fs], [jax.vmap(jax.grad(f))(t) for f in fs]

    values, grads = values_and_grads(t)
    for v in values + grads:
        assert np.all(np.isfinite(np.asarray(v)))
    assert np.all(np.asarray(values[0]) > 0)


# --------------------------------------------------------------------------------------
# Noising
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noise_fn():
    return jax.jit(S.noise_positions, static_argnums=1)


@pytest.mark.parametrize("sde", [ALL_SDES[0], ALL_SDES[2]], ids=["ve", "vp"])
def test_noise_moments_monte_carlo(sde, noise_fn):
    """x_t | x_0 ~ N(x0 + (m−1)(x0 − c), std²) per free atom, c = anchor (fixed) at 0."""
    b = anchor_batch(64, 63)
    rng = np.random.default_rng(2)
    x0 = np.where((b.node_mask & ~b.fixed)[:, None], rng.normal(size=(b.num_nodes, 3)) * 2 + 1, 0.0)
    b = b._replace(positions=x0.astype(np.float32))
    t = np.full(b.num_graphs, 0.4, np.float32)
    bt, eps, std = noise_fn(jax.random.key(0), sde, b, t)
    free = b.node_mask & ~b.fixed
    m = float(sde.mean_coeff(0.4))
    sd = float(sde.std(0.4))
    resid = (np.asarray(bt.positions) - m * x0)[free]
    k = resid.size
    assert abs(resid.mean()) < 5 * sd / math.sqrt(k)
    assert resid.var() == pytest.approx(sd**2, abs=5 * sd**2 * math.sqrt(2 / k))
    # the ε target is exactly the standardized displacement; std is per atom
    np.testing.assert_allclose(np.asarray(eps)[free], resid / sd, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(np.asarray(std)[free], sd, rtol=1e-6)
    # the anchors (fixed) and padding are untouched, their ε is 0
    np.testing.assert_array_equal(np.asarray(bt.positions)[~free], x0[~free])
    np.testing.assert_array_equal(np.asarray(eps)[~free], 0.0)
    np.testing.assert_allclose(eps_to_score(eps, std)[free], -np.asarray(eps)[free] / sd, rtol=1e-6)


def test_noise_conventions_on_mixed_batch(mixed, noise_fn):
    """Zero CoM for the free cluster and z of the sheet, fixed atoms untouched, periodic
    axes wrapped, the padding atom at 0, and the target = −std · wrapped-normal score."""
    sde = ALL_SDES[0]
    t = np.array([0.5, 0.5, 0.5, 0.5], np.float32)[: mixed.num_graphs]
    bt, eps, std = noise_fn(jax.random.key(3), sde, mixed, t)
    x0, xt, eps = np.asarray(mixed.positions, np.float32), np.asarray(bt.positions), np.asarray(eps)
    gi, nm = np.asarray(mixed.graph_index), np.asarray(mixed.node_mask)
    cl, fx, sh = (gi == 0) & nm, (gi == 1) & nm, (gi == 2) & nm
    np.testing.assert_allclose(xt[cl].mean(0), x0[cl].mean(0), atol=2e-5)
    np.testing.assert_allclose(eps[cl].mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(eps[sh][:, 2].mean(), 0.0, atol=1e-6)
    fixed = np.asarray(mixed.fixed)
    np.testing.assert_array_equal(xt[fixed], x0[fixed])
    assert not np.allclose(xt[fx & ~fixed], x0[fx & ~fixed])
    np.testing.assert_array_equal(xt[~nm], 0.0)
    cell = np.asarray(mixed.cell[2], np.float64)
    frac = xt[sh] @ np.linalg.inv(cell)
    assert np.all((frac[:, :2] >= 0) & (frac[:, :2] < 1))
    # com axes: x,y,z for the cluster; z only for the sheet; none for the fixed cluster
    np.testing.assert_array_equal(np.asarray(com_axes(mixed))[:3], [[1, 1, 1], [0, 0, 0], [0, 0, 1]])
    # sheet target: −std × the wrapped score of the (unwrapped) displacement
    sd = float(sde.std(0.5))
    disp = xt[sh] - x0[sh]
    with jax.enable_x64(True):
        ws = np.asarray(wrapped_score(disp.astype(np.float64), np.full(3, sd), np.repeat(cell[None], 3, 0), np.tile([True, True, False], (3, 1))))
    np.testing.assert_allclose(eps[sh], -sd * ws, atol=3e-4)
    assert sd > 1.0 and not np.allclose(eps[sh][:, :2], disp[:, :2] / sd, atol=1e-2)  # the wrap matters here


def test_noise_padding_invariance(mixed, mixed_big, noise_fn):
    sde = ALL_SDES[0]
    t = np.linspace(0.2, 0.9, mixed.num_graphs).astype(np.float32)
    t_big = np.full(mixed_big.num_graphs, 0.5, np.float32)
    t_big[: mixed.num_graphs - 1] = t[:-1]
    a = noise_fn(jax.random.key(4), sde, mixed, t)
    b = noise_fn(jax.random.key(4), sde, mixed_big, t_big)
    real = np.asarray(mixed.node_mask)
    nr = real.sum()
    np.testing.assert_array_equal(np.asarray(a[0].positions)[real], np.asarray(b[0].positions)[:nr])
    np.testing.assert_array_equal(np.asarray(a[1])[real], np.asarray(b[1])[:nr])


def test_vp_on_periodic_raises(mixed, noise_fn):
    with pytest.raises(ValueError, match="cannot act on periodic axes"):
        S.noise_positions(jax.random.key(0), ALL_SDES[2], mixed, 0.5)
    with pytest.raises(ValueError, match="cannot act on periodic axes"):
        S.prior_sample(jax.random.key(0), ALL_SDES[2], mixed)
    # inside a trace the check cannot see pbc: the periodic graph is poisoned with NaN
    bt, _, _ = noise_fn(jax.random.key(0), ALL_SDES[2], mixed, np.full(mixed.num_graphs, 0.5, np.float32))
    gi, nm = np.asarray(mixed.graph_index), np.asarray(mixed.node_mask)
    x = np.asarray(bt.positions)
    assert np.all(np.isnan(x[(gi == 2) & nm])) and np.all(np.isfinite(x[(gi != 2) | ~nm]))


@pytest.mark.parametrize("sde", ALL_SDES, ids=lambda s: type(s.schedule).__name__)
def test_noise_finite_at_small_t(sde, noise_fn):
    b = anchor_batch(64, 63)
    b = b._replace(positions=np.random.default_rng(5).normal(size=(b.num_nodes, 3)).astype(np.float32))
    bt, eps, std = noise_fn(jax.random.key(0), sde, b, np.full(b.num_graphs, 1e-5, np.float32))
    for v in (bt.positions, eps, std, eps_to_score(eps, std)):
        assert np.all(np.isfinite(np.asarray(v)))


# --------------------------------------------------------------------------------------
# Wrapped normal
# --------------------------------------------------------------------------------------


def _brute_log_density(d, s, cell, pbc):
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(cell).T, axis=1)
    k = int(np.ceil(8 * s / spacing[pbc].min())) + 2
    r = np.arange(-k, k + 1)
    axes = [r if p else np.zeros(1) for p in pbc]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    diff = d[None] - grid @ cell
    lp = -np.sum(diff**2, -1) / (2 * s * s)
    m = lp.max()
    return m + np.log(np.exp(lp - m).sum())


def _brute_score(d, s, cell, pbc, h=1e-5):
    out = np.zeros(3)
    for i in range(3):
        e = np.zeros(3)
        e[i] = h
        out[i] = (_brute_log_density(d + e, s, cell, pbc) - _brute_log_density(d - e, s, cell, pbc)) / (2 * h)
    return out


CELLS = {
    "square2d": (np.diag([3.0, 3.0, 20.0]), [True, True, False]),
    "hex2d": (np.array([[3.2, 0, 0], [-1.6, 3.2 * math.sqrt(3) / 2, 0], [0.5, 0.3, 20.0]]), [True, True, False]),
    "triclinic3d": (np.array([[3.0, 0, 0], [0.8, 2.9, 0], [0.5, 0.7, 3.5]]), [True, True, True]),
    "chain": (np.array([[2.5, 0, 0], [0, 10, 0], [0, 0, 10]]), [True, False, False]),
}


@pytest.mark.parametrize("name", list(CELLS))
def test_wrapped_normal_score_against_image_sum(name):
    cell, pbc = CELLS[name]
    pbc = np.asarray(pbc)
    rng = np.random.default_rng(6)
    sigmas = np.array([0.05, 0.3, 0.7, 1.0, 1.2, 1.5, 3.0, 6.0])
    d = rng.normal(size=(len(sigmas), 3)) * sigmas[:, None] * 1.3
    with jax.enable_x64(True):
        got = np.asarray(wrapped_score(d, sigmas, np.repeat(cell[None], len(sigmas), 0), np.tile(pbc, (len(sigmas), 1))))
    for i, s in enumerate(sigmas):
        ref = _brute_score(d[i], s, cell, pbc)
        # compare in units of the score scale 1/σ
        np.testing.assert_allclose(got[i] * s, ref * s, atol=1e-6, err_msg=f"σ={s}")
    # without periodic axes it is the Gaussian score
    with jax.enable_x64(True):
        plain = wrapped_score(d, sigmas, np.zeros((len(sigmas), 3, 3)), np.zeros((len(sigmas), 3), bool))
    np.testing.assert_allclose(plain, -d / sigmas[:, None] ** 2, rtol=1e-12)


def test_wrapped_normal_score_is_periodic_and_finite():
    cell, pbc = CELLS["hex2d"]
    d = np.array([[0.4, -0.3, 0.2]])
    shifted = d + 2 * cell[0] - cell[1]
    for s in (0.01, 0.5, 2.0, 20.0):
        a = wrapped_score(d, np.array([s]), cell[None], np.array([pbc]))
        b = wrapped_score(shifted, np.array([s]), cell[None], np.array([pbc]))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 / s)
        assert np.all(np.isfinite(np.asarray(a)))


# --------------------------------------------------------------------------------------
# Prior and wrapping
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prior_fn():
    return jax.jit(S.prior_sample, static_argnums=1)


def test_prior_sample(mixed, prior_fn):
    sde = ALL_SDES[0]
    out = prior_fn(jax.random.key(7), sde, mixed)
    x0, x = np.asarray(mixed.positions, np.float32), np.asarray(out.positions)
    gi, nm, fixed = np.asarray(mixed.graph_index), np.asarray(mixed.node_mask), np.asarray(mixed.fixed)
    cl, sh = (gi == 0) & nm, (gi == 2) & nm
    np.testing.assert_allclose(x[cl].mean(0), x0[cl].mean(0), atol=1e-4)  # CoM of the template
    np.testing.assert_allclose(x[sh][:, 2].mean(), x0[sh][:, 2].mean(), atol=1e-4)
    np.testing.assert_array_equal(x[fixed], x0[fixed])
    np.testing.assert_array_equal(x[~nm], 0.0)
    frac = x[sh] @ np.linalg.inv(np.asarray(mixed.cell[2]))
    assert np.all((frac[:, :2] >= 0) & (frac[:, :2] < 1))
    spread = np.std(x[cl] - x[cl].mean(0))
    assert 0.3 * sde.prior_std < spread < 2.0 * sde.prior_std


def test_prior_sample_statistics(prior_fn):
    """Free clusters: per-atom variance (1 − 1/N)·std(1)² around the template's CoM."""
    sde = ALL_SDES[2]
    n_free = 8
    b = anchor_batch(256, n_free - 1)
    b = b._replace(fixed=np.zeros_like(b.fixed), positions=np.tile([1.0, 2.0, -3.0], (b.num_nodes, 1)) * b.node_mask[:, None])
    out = prior_fn(jax.random.key(8), sde, b)
    x = np.asarray(out.positions)[b.node_mask] - np.array([1.0, 2.0, -3.0])
    k = x.size
    expected = (1 - 1 / n_free) * sde.prior_std**2
    assert x.var() == pytest.approx(expected, abs=6 * expected * math.sqrt(2 / k))
    com = graph_mean(out, out.positions)[:-1]
    np.testing.assert_allclose(com, np.tile([1.0, 2.0, -3.0], (256, 1)), atol=1e-5)


def test_wrap_positions_matches_ase(mixed):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(mixed.num_nodes, 3)) * 6
    with jax.enable_x64(True):
        w = np.asarray(wrap_positions(mixed, x))
    gi, nm = np.asarray(mixed.graph_index), np.asarray(mixed.node_mask)
    for g in range(mixed.num_graphs):
        sel = (gi == g) & nm
        if not sel.any():
            continue
        a = Atoms(positions=x[sel], cell=mixed.cell[g], pbc=mixed.pbc[g])
        if mixed.pbc[g].any():
            a.wrap()
        np.testing.assert_allclose(w[sel], a.positions, atol=1e-9)
    with jax.enable_x64(True):
        w2 = np.asarray(wrap_positions(mixed, w))
    np.testing.assert_array_equal(w2, w)  # atoms already inside are bit-identical
