"""The lattice process and the lattice head: the polar decomposition against scipy, the
kernel against Monte Carlo and a forward Euler–Maruyama simulation, the kernel score
against autodiff of an independently written density, the density-scaled prior, the
reverse SDE on a Gaussian toy, fractional coordinates, and the head's equivariance and
invariances on real crystal structures."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.spacegroup import crystal
from scipy.linalg import polar

from agedi_jax import lattice as L
from agedi_jax.batch import Bucket
from agedi_jax.convert import batch_from_atoms
from agedi_jax.nn.lattice_head import LatticeHead
from agedi_jax.sde import VPCosineSchedule, VPLinearSchedule
from agedi_jax.vocab import TypeVocab

VOCAB = TypeVocab(("C", "O", "Ti", "Cu"))
BULK = np.ones((3, 3), bool)
LAYER = L.lattice_mask(np.array([True, True, False]))
OFF = [(0, 1), (0, 2), (1, 2)]


def rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def z_rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rutile() -> Atoms:
    return crystal(["Ti", "O"], basis=[(0, 0, 0), (0.3, 0.3, 0.0)], spacegroup=136,
                   cellpar=[4.59, 4.59, 2.96, 90, 90, 90])


def triclinic() -> Atoms:
    cell = np.array([[4.1, 0.0, 0.0], [1.2, 3.9, 0.0], [0.7, -0.9, 4.4]])
    frac = np.array([[0.1, 0.2, 0.3], [0.6, 0.55, 0.8], [0.35, 0.9, 0.05]])
    return Atoms("CO2", scaled_positions=frac, cell=cell, pbc=True)


def layer() -> Atoms:
    a = 2.46
    cell = np.array([[a, 0, 0], [-a / 2, a * math.sqrt(3) / 2, 0], [0, 0, 16.0]])
    return Atoms("C2", scaled_positions=[[1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.52]], cell=cell, pbc=[True, True, False])


def rotated(atoms: Atoms, q: np.ndarray) -> Atoms:
    out = atoms.copy()
    out.set_cell(atoms.cell[:] @ q.T, scale_atoms=False)
    out.positions = atoms.positions @ q.T
    return out


def rebased(atoms: Atoms, m: np.ndarray) -> Atoms:
    """The same crystal in the basis ``M L`` (``M`` unimodular)."""
    out = atoms.copy()
    out.set_cell(np.asarray(m, float) @ atoms.cell[:], scale_atoms=False)
    out.wrap()
    return out


def as_jax(batch):
    return jax.tree_util.tree_map(lambda x: None if x is None else jnp.asarray(x), batch)


# --------------------------------------------------------------------------------------
# Polar decomposition and coordinates
# --------------------------------------------------------------------------------------


def test_polar_decomposition_matches_scipy_and_removes_rotations():
    cells = [bulk("Cu", "fcc", a=3.6).cell[:], rutile().cell[:], triclinic().cell[:],
             np.diag([1.0, 1.0, -1.0]) @ triclinic().cell[:], layer().cell[:]]
    cells = np.stack(cells)
    s, r = map(np.asarray, L.polar_decomposition(jnp.asarray(cells, jnp.float32)))
    for c, si, ri in zip(cells, s, r):
        u, p = polar(c, side="left")  # c = p u
        np.testing.assert_allclose(si, p, atol=2e-5 * np.abs(p).max())
        np.testing.assert_allclose(ri, u, atol=2e-6)
        np.testing.assert_allclose(si @ ri, c, atol=2e-5 * np.abs(c).max())
        np.testing.assert_array_equal(si, si.T)
        assert np.linalg.eigvalsh(si).min() > 0
    q = rotation(3)
    s2, r2 = map(np.asarray, L.polar_decomposition(jnp.asarray(cells @ q.T, jnp.float32)))
    np.testing.assert_allclose(s2, s, atol=2e-5 * np.abs(s).max())
    np.testing.assert_allclose(r2, r @ q.T, atol=2e-6)
    # The layer's factors stay block-diagonal.
    assert np.abs(s[-1][:2, 2]).max() < 1e-6 and np.abs(r[-1][:2, 2]).max() < 1e-6


@pytest.mark.parametrize("param", L.PARAMS)
def test_coordinates_round_trip_and_equivariance(param):
    sde = L.LatticeSDE(scale=1.9, sigma_rel=0.3, param=param)
    rng = np.random.default_rng(0)
    s = np.stack([L._sqrt_gram(triclinic().cell[:]), L._sqrt_gram(rutile().cell[:]),
                  L._sqrt_gram(layer().cell[:])])
    n = np.array([3, 6, 2])
    mask = np.stack([BULK, BULK, np.asarray(LAYER)])
    y = L.cell_to_coords(sde, s, n, mask)
    np.testing.assert_allclose(L.coords_to_cell(sde, y, n, mask), s, rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(np.asarray(y)[2][:, 2], s[2][:, 2])  # the vacuum axis is kept
    q = rotation(1)
    yq = L.cell_to_coords(sde, q @ s[:2] @ q.T, n[:2], mask[:2])
    np.testing.assert_allclose(yq, q @ np.asarray(y)[:2] @ q.T, atol=3e-5 * (1 + np.abs(y).max()))
    if param == "log":  # the limit cell ℓ_N I has coordinates 0
        ell = 1.9 * 5 ** (1 / 3)
        np.testing.assert_allclose(L.cell_to_coords(sde, ell * np.eye(3), 5, BULK), 0.0, atol=1e-6)
        big = rng.normal(size=(3, 3))
        pd = L.coords_to_cell(sde, 2.0 * (big + big.T), 5, BULK)  # any symmetric Y gives a PD cell
        assert np.linalg.eigvalsh(np.asarray(pd)).min() > 0


# --------------------------------------------------------------------------------------
# The kernel
# --------------------------------------------------------------------------------------


def _y0(mask):
    y = np.array([[0.3, -0.2, 0.1], [-0.2, -0.1, 0.05], [0.1, 0.05, 0.2]])
    return np.where(mask, y, np.array([[0, 0, 0.0], [0, 0, 0], [0, 0, 16.0]]))


@pytest.mark.parametrize("param,mask,schedule", [
    ("log", BULK, VPLinearSchedule()),
    ("linear", BULK, VPCosineSchedule()),
    ("log", np.asarray(LAYER), VPLinearSchedule(0.1, 10.0)),
])
def test_marginal_against_monte_carlo_and_forward_simulation(param, mask, schedule):
    sde = L.LatticeSDE(schedule, scale=2.0, sigma_rel=0.25, param=param)
    y0, n, t, draws = _y0(mask), 8, 0.3, 20000
    mean, std = L.marginal(sde, y0, t, n, mask)
    keys = jax.random.split(jax.random.PRNGKey(0), draws)
    y, eps, _ = jax.vmap(lambda k: L.kernel_sample(k, sde, y0, t, n, mask))(keys)
    y = np.asarray(y, np.float64)
    var = np.where(np.eye(3, dtype=bool), 1.0, 0.5) * float(std) ** 2
    se = np.sqrt(var / draws)
    assert np.all(np.abs(y.mean(0) - mean)[mask] < 4.5 * se[mask] + 1e-6)
    assert np.all(np.abs(y.var(0) / var - 1.0)[mask] < 0.06)
    np.testing.assert_array_equal(y[:, ~mask], np.broadcast_to(y0[~mask], y[:, ~mask].shape))
    np.testing.assert_allclose(np.asarray(eps), (y - np.asarray(mean)) / float(std), atol=2e-4)

    # Forward Euler–Maruyama of dY = f dt + g dW_sym from Y_0 reaches the same Gaussian.
    steps, paths = 400, 4000
    h = t / steps

    def step(yk, inp):
        k, tk = inp
        noise = jnp.where(mask, L.sym_normal(k, (paths,)), 0.0)
        f = L.drift(sde, yk, tk, n, mask)
        return yk + h * f + jnp.sqrt(h * L.g2(sde, tk, n, mask)) * noise, None

    ts = (jnp.arange(steps) + 0.5) * h
    start = jnp.broadcast_to(jnp.asarray(y0, jnp.float32), (paths, 3, 3))
    ys, _ = jax.lax.scan(step, start, (jax.random.split(jax.random.PRNGKey(1), steps), ts))
    ys = np.asarray(ys, np.float64)
    assert np.all(np.abs(ys.mean(0) - mean)[mask] < 4.5 * np.sqrt(var / paths)[mask] + 2e-3 * float(std))
    assert np.all(np.abs(ys.var(0) / var - 1.0)[mask] < 0.12)


@pytest.mark.parametrize("mask", [BULK, np.asarray(LAYER)])
def test_kernel_score_is_the_gradient_of_the_log_density(mask):
    """Against an independently written density of the free entries (diagonal variance
    std², off-diagonal std²/2): the Frobenius gradient is ∂/∂S_ii on the diagonal and
    ½ ∂/∂S_ij off it."""
    sde = L.LatticeSDE(scale=2.0, sigma_rel=0.3, param="linear")
    y0, n, t = _y0(mask) + 3.0 * np.eye(3) * mask, 4, 0.4
    mean, std = map(np.asarray, L.marginal(sde, y0, t, n, mask))
    diag = [i for i in range(3) if mask[i, i]]
    off = [(i, j) for i, j in OFF if mask[i, j]]

    def log_p(free):
        d = free[: len(diag)] - jnp.asarray([mean[i, i] for i in diag])
        o = free[len(diag):] - jnp.asarray([mean[i, j] for i, j in off])
        v = std**2
        return (-0.5 * jnp.sum(d**2) / v - len(diag) * 0.5 * jnp.log(2 * jnp.pi * v)
                - jnp.sum(o**2) / v - len(off) * 0.5 * jnp.log(jnp.pi * v))

    rng = np.random.default_rng(2)
    y = np.asarray(mean) + np.where(mask, rng.normal(size=(3, 3)), 0.0)
    y = np.where(mask, 0.5 * (y + y.T), y0)
    free = jnp.asarray([y[i, i] for i in diag] + [y[i, j] for i, j in off])
    grad = np.asarray(jax.grad(log_p)(free))
    expect = np.zeros((3, 3))
    for k, i in enumerate(diag):
        expect[i, i] = grad[k]
    for k, (i, j) in enumerate(off):
        expect[i, j] = expect[j, i] = 0.5 * grad[len(diag) + k]
    score = np.asarray(L.kernel_score(sde, y, y0, t, n, mask))
    np.testing.assert_allclose(score, expect, rtol=1e-4, atol=1e-5)
    # The density in entries is the orthonormal-coordinate density times √2 per off-diagonal pair.
    lp = float(L.kernel_log_density(sde, y, y0, t, n, mask))
    np.testing.assert_allclose(lp + 0.5 * len(off) * math.log(2.0), float(log_p(free)), rtol=1e-5)
    np.testing.assert_allclose(L.eps_to_cell_score(-score * std, std), score, rtol=1e-6)


# --------------------------------------------------------------------------------------
# The prior
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 24])
def test_prior_is_density_scaled(n):
    """log prior: E log(V/N) = k log c exactly (the log-volume is k log ℓ_N + tr Y); linear
    prior: E[det S] = ℓ_N³ (1 − 3σ²/2) (the expected determinant of ℓ(I + σE))."""
    c, sigma, draws = 1.85, 0.27, 20000
    keys = jax.random.split(jax.random.PRNGKey(n), draws)
    for mask, k in ((BULK, 3), (np.asarray(LAYER), 2)):
        template = np.diag([0.0, 0.0, 16.0]) * ~mask
        sde = L.LatticeSDE(scale=c, sigma_rel=sigma, param="log")
        draw = jax.vmap(lambda kk, sde=sde, mask=mask, template=template: L.prior_cell(kk, sde, n, mask, template))
        s = np.asarray(draw(keys), np.float64)
        if k == 2:
            assert np.all(s[:, 2, 2] == 16.0) and np.all(s[:, :2, 2] == 0.0)
            s = s[:, :2, :2]
        logv = np.log(np.linalg.det(s) / n)
        assert np.all(np.linalg.eigvalsh(s) > 0)
        se = math.sqrt(k * sigma**2 / draws)
        assert abs(logv.mean() - k * math.log(c)) < 4.5 * se
        assert abs(logv.std() / math.sqrt(k * sigma**2) - 1.0) < 0.03
    sde = L.LatticeSDE(scale=c, sigma_rel=0.2, param="linear")
    s = np.asarray(jax.vmap(lambda kk: L.prior_cell(kk, sde, n, BULK, np.zeros((3, 3))))(keys), np.float64)
    det = np.linalg.det(s) / (c**3 * n)
    assert abs(det.mean() - (1.0 - 1.5 * 0.2**2)) < 4.5 * det.std() / math.sqrt(draws)


def test_reverse_sde_recovers_a_gaussian_toy():
    """Data Y_0 ~ N(m0, v0 I_sym): p_t is Gaussian with a closed-form score; integrating the
    reverse SDE (and the probability-flow ODE) from the prior recovers m0 and v0."""
    sde = L.LatticeSDE(VPLinearSchedule(0.1, 12.0), scale=2.0, sigma_rel=0.3, param="linear")
    mask, n, paths, steps = BULK, 8, 4000, 300
    m0 = 2.0 * 8 ** (1 / 3) * np.eye(3) + np.array([[0.4, 0.1, 0], [0.1, -0.3, 0.2], [0, 0.2, 0.1]])
    v0 = 0.05

    def score(y, t):
        mean, std = L.marginal(sde, m0, t, n, mask)
        a2 = jnp.exp(-sde.schedule.alpha(t))
        return -(y - mean) / (a2 * v0 + std**2)

    eps_t = 1e-3
    h = (1.0 - eps_t) / steps
    ts = 1.0 - h * jnp.arange(steps)

    def run(flow):
        def step(y, inp):
            k, t = inp
            d = L.reverse_drift(sde, y, t, score(y, t), n, mask, probability_flow=flow)
            noise = 0.0 if flow else jnp.sqrt(h * L.g2(sde, t, n, mask)) * L.sym_normal(k, (paths,))
            return y - h * d + noise, None

        y1 = jax.vmap(lambda k: L.prior_coords(k, sde, n, mask, jnp.zeros((3, 3))))(
            jax.random.split(jax.random.PRNGKey(5), paths))
        y, _ = jax.lax.scan(step, y1, (jax.random.split(jax.random.PRNGKey(6), steps), ts))
        return np.asarray(y, np.float64)

    var = np.where(np.eye(3, dtype=bool), 1.0, 0.5) * v0
    for flow in (False, True):
        y = run(flow)
        assert np.all(np.abs(y.mean(0) - m0) < 4.5 * np.sqrt(var / paths) + 0.01)
        assert np.all(np.abs(y.var(0) / var - 1.0) < 0.12)


# --------------------------------------------------------------------------------------
# Fractional coordinates and the batch
# --------------------------------------------------------------------------------------


def test_fractional_helpers_and_wrapped_normal():
    cell = triclinic().cell[:]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3)) * 4.0
    f = L.cart_to_frac(x, cell)
    np.testing.assert_allclose(L.frac_to_cart(f, cell), x, atol=2e-5)
    pbc = np.array([True, True, False])
    w = np.asarray(L.wrap_frac(f, pbc))
    assert np.all((w[:, :2] >= 0) & (w[:, :2] < 1)) and np.allclose(w[:, 2], np.asarray(f)[:, 2])
    np.testing.assert_allclose(np.round(np.asarray(f)[:, :2] - w[:, :2]), np.asarray(f)[:, :2] - w[:, :2], atol=1e-5)

    def energy(xx):
        return jnp.sum(jnp.sin(xx @ jnp.asarray([[0.3, -0.2, 0.5], [0.1, 0.4, -0.3], [0.2, 0.2, 0.1]])))

    gx = jax.grad(energy)(jnp.asarray(x, jnp.float32))
    gf = jax.grad(lambda ff: energy(L.frac_to_cart(ff, cell)))(jnp.asarray(f))
    np.testing.assert_allclose(L.frac_score(gx, cell), gf, rtol=1e-4, atol=1e-5)

    d = rng.uniform(-0.5, 0.5, size=(6, 3))
    std = np.array([0.05, 0.2, 0.4, 0.8, 1.5, 0.3])
    got = np.asarray(L.fractional_wrapped_normal_score(d, std, np.broadcast_to(pbc, (6, 3))))
    m = np.arange(-12, 13)[None, :]
    for a in range(2):  # brute-force image sum per periodic axis (float64)
        r = d[:, a : a + 1] - m
        wts = np.exp(-(r**2) / (2 * std[:, None] ** 2))
        np.testing.assert_allclose(got[:, a], -(wts * r).sum(1) / wts.sum(1) / std**2, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(got[:, 2], -d[:, 2] / std**2, rtol=1e-5)


def crystals_batch(atoms_list, cutoff=4.0, bucket=None):
    return as_jax(batch_from_atoms(atoms_list, VOCAB, cutoff, bucket=bucket))


def test_noise_cell_keeps_fractional_coordinates_and_is_rotation_invariant():
    sde = L.LatticeSDE(scale=1.9, sigma_rel=0.25)
    left = rebased(triclinic(), np.diag([1, 1, -1]))
    cluster = Atoms("CO", positions=[[0, 0, 0], [1.1, 0, 0]])
    structs = [bulk("Cu", "fcc", a=3.6), rutile(), left, layer(), cluster]
    b = crystals_batch(structs)
    t = jnp.array([0.2, 0.5, 0.9, 0.7, 0.4, 0.1])
    key = jax.random.PRNGKey(3)
    bt, eps, std = L.noise_cell(key, sde, b, t)
    f0 = np.asarray(L.batch_fractional(b), np.float64)
    f1 = np.asarray(L.batch_fractional(bt), np.float64)
    gi = np.asarray(b.graph_index)
    flip = np.ones_like(f0)
    flip[gi == 2, 0] = -1.0  # the left-handed cell: first lattice vector negated
    real = np.asarray(b.node_mask) & (gi < 4)
    np.testing.assert_allclose((f1 * flip)[real], f0[real], atol=2e-5)
    cell = np.asarray(bt.cell)
    np.testing.assert_allclose(cell, np.swapaxes(cell, 1, 2), atol=1e-6)
    assert np.all(np.linalg.eigvalsh(cell[:4]) > 0)
    np.testing.assert_array_equal(np.asarray(bt.positions)[gi == 4], np.asarray(b.positions)[gi == 4])
    np.testing.assert_array_equal(np.asarray(eps)[4:], 0.0)
    np.testing.assert_allclose(cell[3][:, 2], [0, 0, 16.0], atol=1e-5)  # the layer's vacuum axis
    np.testing.assert_allclose(np.asarray(bt.positions)[gi == 3, 2], np.asarray(b.positions)[gi == 3, 2], atol=1e-5)
    assert np.all(np.asarray(eps)[3][:, 2] == 0.0)
    # The ε-target is −std · the kernel score of the coordinates.
    mask = L.graph_lattice_mask(b)
    y0 = L.cell_to_coords(sde, L.canonicalize(b)[0].cell, b.n_node, mask)
    yt = L.cell_to_coords(sde, bt.cell, b.n_node, mask)
    sc = L.kernel_score(sde, yt, y0, t, b.n_node, mask)
    np.testing.assert_allclose(-np.asarray(std)[:4, None, None] * np.asarray(sc)[:4], np.asarray(eps)[:4], atol=5e-4)
    # O(3) invariance by construction: the same draw from a rotated copy gives the same result.
    q, qz = rotation(7), z_rotation(0.7)
    rot = [rotated(a, q) for a in structs[:3]] + [rotated(structs[3], qz), structs[4]]
    bq = crystals_batch(rot)
    btq, epsq, _ = L.noise_cell(key, sde, bq, t)
    np.testing.assert_allclose(np.asarray(btq.cell), cell, atol=2e-5)
    np.testing.assert_allclose(np.asarray(epsq), np.asarray(eps), atol=1e-6)
    fq = np.asarray(L.batch_fractional(btq))
    np.testing.assert_allclose(fq[real], f1[real], atol=2e-5)
    # canonicalize rotates (det R = +1), never mirrors.
    _, r = L.canonicalize(b)
    np.testing.assert_allclose(np.linalg.det(np.asarray(r)), 1.0, atol=1e-5)
    # The prior keeps fractional coordinates and the layer's vacuum axis.
    bp = L.cell_prior_sample(jax.random.PRNGKey(4), sde, b)
    np.testing.assert_allclose((np.asarray(L.batch_fractional(bp)) * flip)[real], f0[real], atol=2e-5)
    np.testing.assert_allclose(np.asarray(bp.cell)[3][:, 2], [0, 0, 16.0], atol=1e-5)


def test_fit_lattice():
    a = 3.6
    cu = bulk("Cu", "fcc", a=a, cubic=True)
    fit = L.fit_lattice([cu, cu.repeat((2, 2, 2)), bulk("Cu", "fcc", a=a)])
    assert fit.dim == 3 and fit.n_structures == 3
    assert fit.scale == pytest.approx(a / 4 ** (1 / 3), rel=1e-9)
    assert fit.spread == pytest.approx(0.0, abs=1e-9)
    assert set(fit.per_n) == {1, 4, 32}
    # The cubic cells sit exactly at ℓ_N I; only the primitive fcc cell (60° angles) deviates.
    cubic = L.fit_lattice([cu, cu.repeat((2, 2, 2))])
    assert cubic.sigma_log == pytest.approx(0.0, abs=1e-7) and cubic.sigma_linear == pytest.approx(0.0, abs=1e-7)
    assert fit.sigma_log > 0.05
    lay = layer()
    fit2 = L.fit_lattice([lay, lay.repeat((2, 1, 1))])
    area = abs(np.linalg.det(lay.cell[:2, :2]))
    assert fit2.dim == 2 and fit2.scale == pytest.approx(math.sqrt(area / 2), rel=1e-9)
    sde = fit2.sde("linear")
    assert sde.param == "linear" and sde.scale == fit2.scale
    with pytest.raises(ValueError, match="common"):
        L.fit_lattice([cu, lay])
    with pytest.raises(ValueError, match="no structures"):
        L.fit_lattice([])


def test_make_lattice_sde_validates():
    sde = L.make_lattice_sde("cosine", scale=2.0, sigma_rel=0.3, alpha_max=8.0)
    assert isinstance(sde.schedule, VPCosineSchedule) and sde.schedule.alpha_max == 8.0
    with pytest.raises(ValueError, match="unknown"):
        L.make_lattice_sde("geometric", scale=2.0)
    with pytest.raises(ValueError, match="no parameter"):
        L.make_lattice_sde("linear", scale=2.0, sigma_max=3.0)
    with pytest.raises(ValueError, match="scale"):
        L.make_lattice_sde("linear", scale=-1.0)
    with pytest.raises(ValueError, match="param"):
        L.make_lattice_sde("linear", scale=1.0, param="exp")


def test_spd_floor():
    s = np.array([[1.0, 0.0, 0.0], [0.0, -0.5, 0.0], [0.0, 0.0, 16.0]])
    q = np.eye(3)
    q[:2, :2] = z_rotation(0.4)[:2, :2]
    s = q @ s @ q.T
    out = np.asarray(L.spd_floor(s, np.asarray(LAYER), 0.3))
    np.testing.assert_allclose(np.linalg.eigvalsh(out[:2, :2]), [0.3, 1.0], atol=1e-5)
    np.testing.assert_array_equal(out[:, 2], s[:, 2])


# --------------------------------------------------------------------------------------
# The lattice head
# --------------------------------------------------------------------------------------

CUTOFF = 4.5
HEAD = LatticeHead(features=16, num_basis=6, cutoff=CUTOFF)


def node_features(batch, seed=0):
    """Invariant node features: a fixed random vector per type (what a network would give)."""
    table = jax.random.normal(jax.random.PRNGKey(seed), (len(VOCAB.symbols) + 1, 8))
    return table[batch.types]


@pytest.fixture(scope="module")
def head_params():
    b = crystals_batch([bulk("Cu", "fcc", a=3.6)], CUTOFF)
    return jax.jit(HEAD.init)(jax.random.PRNGKey(0), node_features(b), b)


_apply = jax.jit(HEAD.apply)


def head_out(params, structs, bucket=None, h=None):
    b = crystals_batch(structs, CUTOFF, bucket)
    return np.asarray(_apply(params, node_features(b) if h is None else h(b), b), np.float64), b


def test_head_equivariance_and_invariances(head_params):
    """Each crystal against a rotated copy (Q T Qᵀ), the same crystal in another basis
    (unimodular M, right- and left-handed), with atoms moved by lattice vectors, and a
    supercell (all equal T), in one batch."""
    q = rotation(11)
    m1 = np.array([[1, 1, 0], [0, 1, 0], [1, 1, 1]])
    m2 = np.array([[0, 1, 0], [1, 0, 0], [1, 2, 1]])  # det −1
    assert round(np.linalg.det(m1)) == 1 and round(np.linalg.det(m2)) == -1
    structs = []
    bases = (bulk("Cu", "fcc", a=3.6), rutile(), triclinic())
    for base in bases:
        moved = base.copy()
        moved.positions = base.positions + np.array([1, -2, 1]) @ base.cell[:] * (np.arange(len(base)) % 2 == 0)[:, None]
        structs += [base, rotated(base, q), rebased(base, m1), rebased(base, m2), moved, base.repeat((2, 1, 1))]
    out, _ = head_out(head_params, structs)
    for i, base in enumerate(bases):
        t = out[6 * i : 6 * i + 6]
        ref = t[0]
        scale = np.abs(ref).max()
        assert scale > 1e-3  # a non-trivial output
        np.testing.assert_allclose(ref, ref.T, atol=1e-6 * scale)
        np.testing.assert_allclose(t[1], q @ ref @ q.T, atol=2e-5 * scale)
        for k in (2, 3, 4, 5):
            np.testing.assert_allclose(t[k], ref, atol=2e-5 * scale, err_msg=f"variant {k} of {base.get_chemical_formula()}")
    assert np.abs(out[0] - out[6]).max() > 1e-3  # different crystals, different outputs
    np.testing.assert_array_equal(out[-1], 0.0)  # the padding graph


def test_head_ignores_padding(head_params):
    structs = [rutile(), triclinic()]
    t, b = head_out(head_params, structs)
    big = Bucket(b.num_nodes + 9, b.num_edges + 50, b.num_graphs + 3)

    def garbage(bb):
        h = node_features(bb)
        return jnp.where(bb.node_mask[:, None], h, 1e3)

    t2, _ = head_out(head_params, structs, big, garbage)
    np.testing.assert_allclose(t2[:2], t[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(t2[2:], 0.0)


def test_head_on_layers_and_clusters(head_params):
    qz = z_rotation(1.1)
    lay = layer()
    cluster = Atoms("CO", positions=[[0, 0, 0], [1.1, 0, 0]])
    t, _ = head_out(head_params, [lay, rotated(lay, qz), rebased(lay, np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]])), cluster])
    scale = np.abs(t[0]).max()
    assert scale > 1e-3
    np.testing.assert_array_equal(t[:3, 2, :], 0.0)
    np.testing.assert_array_equal(t[:3, :, 2], 0.0)
    np.testing.assert_allclose(t[1], qz @ t[0] @ qz.T, atol=2e-5 * scale)
    np.testing.assert_allclose(t[2], t[0], atol=2e-5 * scale)
    np.testing.assert_array_equal(t[3], 0.0)
