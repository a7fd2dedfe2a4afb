"""Losses: the exact score attains the analytic minimum of denoising score matching, the
ε / score parametrisations agree, padding and fixed atoms change nothing, label dropout,
the training modes, and finite gradients down to t = 1e-5."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

from agedi_jax import discrete
from agedi_jax import losses as L
from agedi_jax import scores as SC
from agedi_jax import sde as S
from agedi_jax.batch import AtomsBatch, Bucket
from agedi_jax.convert import batch_from_atoms
from agedi_jax.geometry import remove_com
from agedi_jax.scores import Scores
from agedi_jax.vocab import MASK, TypeVocab
from tests.builders import anchor_batch as _anchor_batch
from tests.builders import mixed_atoms as _mixed_atoms

VE = S.VESDE(S.VELinearSchedule(0.01, 8.0))
VP = S.VPSDE(S.VPLinearSchedule(0.1, 20.0))
K = 3
PROCESS = discrete.AbsorbingProcess(K)
MU = np.array([1.0, -2.0, 0.5])
S0 = 0.6
VOCAB = TypeVocab(("H", "C", "O"))


def mixed_atoms():
    return _mixed_atoms(4)


def anchor_batch(n_graphs: int, n_free: int) -> AtomsBatch:
    """Graphs of one fixed anchor at the origin + ``n_free`` free atoms with data
    N(MU, S0²) (drawn here), one padding atom and graph (:func:`tests.builders.anchor_batch`)."""
    b = _anchor_batch(n_graphs, n_free, anchor_type=2, free_type=2, pad_type=0)
    free = b.node_mask & ~b.fixed
    x = np.where(free[:, None], MU + S0 * np.random.default_rng(0).normal(size=(len(free), 3)), 0.0)
    return b._replace(positions=x.astype(np.float32))


def exact_apply(sde, parametrization):
    """A 'network' that knows the exact score of the Gaussian data about the anchor."""

    def apply(params, batch, t, label):
        tt = t[batch.graph_index]
        m = sde.mean_coeff(tt)[:, None]
        std = sde.std(tt)
        v = m * m * S0**2 + std[:, None] ** 2
        score = -(batch.positions - m * jnp.asarray(MU, batch.positions.dtype)) / v
        out = score if parametrization == "score" else SC.score_to_eps(score, std)
        return Scores(positions=out)

    return apply


def minimum(sde, t):
    """Analytic minimum of E||std s + ε||² per atom for Gaussian data: 3 m²s0²/(m²s0² + std²)."""
    m, std = float(sde.mean_coeff(t)), float(sde.std(t))
    r = m * m * S0**2 / (m * m * S0**2 + std**2)
    return 3 * r, r


@pytest.fixture(scope="module")
def gauss():
    return anchor_batch(128, 31)  # 3968 free atoms


@pytest.mark.parametrize("sde", [VE, VP], ids=["ve", "vp"])
def test_exact_score_attains_the_analytic_minimum(gauss, sde):
    n_free = int((gauss.node_mask & ~gauss.fixed).sum())
    cfg = {p: L.LossConfig(sde=sde, parametrization=p) for p in ("eps", "score")}
    f = {p: jax.jit(lambda key, t, p=p: L.joint_loss(None, exact_apply(sde, p), gauss, key, cfg[p], t=t)[0]) for p in cfg}
    for t in (0.05, 0.3, 0.9):
        tg = jnp.full(gauss.num_graphs, t, jnp.float32)
        lo, r = minimum(sde, t)
        loss = float(f["eps"](jax.random.key(1), tg))
        # per-coordinate error² is (r χ²₁)-distributed: the mean over atoms has SE sqrt(6/n) r
        assert loss == pytest.approx(lo, abs=5 * math.sqrt(6 / n_free) * r)
        # the score parametrisation of the same score gives the same loss (same key)
        assert float(f["score"](jax.random.key(1), tg)) == pytest.approx(loss, rel=1e-4)
    # t ~ U(eps, 1): the expected minimum by quadrature
    cfg_r = L.LossConfig(sde=sde)
    f_r = jax.jit(lambda k: L.joint_loss(None, exact_apply(sde, "eps"), gauss, k, cfg_r)[0])
    vals = [float(f_r(jax.random.key(i))) for i in range(3)]
    mean_min = quad(lambda u: minimum(sde, u)[0], 1e-3, 1.0)[0] / (1 - 1e-3)
    var_t = quad(lambda u: (minimum(sde, u)[0] - mean_min) ** 2, 1e-3, 1.0)[0]
    se = math.sqrt(var_t / gauss.num_graphs / 3)
    assert np.mean(vals) == pytest.approx(mean_min, abs=5 * se + 0.02)


def test_weightings_are_lambda_over_std2(gauss):
    t = 0.4
    tg = jnp.full(gauss.num_graphs, t, jnp.float32)
    names = ("std2", "g2", "none")

    @jax.jit
    def all_weightings(key):
        apply = exact_apply(VE, "eps")
        return [L.joint_loss(None, apply, gauss, key, L.LossConfig(sde=VE, weighting=w), t=tg)[0] for w in names]

    vals = dict(zip(names, map(float, all_weightings(jax.random.key(2)))))
    std2 = float(VE.std(t)) ** 2
    assert vals["none"] == pytest.approx(vals["std2"] / std2, rel=1e-4)
    assert vals["g2"] == pytest.approx(vals["std2"] * float(VE.g2(t)) / std2, rel=1e-4)


def test_score_eps_conversions_round_trip():
    eps = jnp.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    std = jnp.array([2.0, 0.5])
    s = SC.eps_to_score(eps, std)
    np.testing.assert_allclose(s, [[-0.5, -1.0, -1.5], [-1.0, 2.0, 0.0]])  # s = −ε/std (Eq. 7)
    np.testing.assert_allclose(SC.score_to_eps(s, std), eps, rtol=1e-6)
    np.testing.assert_allclose(SC.output_to_score(eps, std, "eps"), s)
    np.testing.assert_allclose(SC.output_to_score(s, std, "score"), s)
    np.testing.assert_allclose(SC.output_to_eps(s, std, "score"), eps, rtol=1e-6)
    np.testing.assert_array_equal(SC.eps_to_score(eps, jnp.array([0.0, 1.0]))[0], 0.0)
    # make_score_fn gives the same physical score for both parametrisations of one score
    b = anchor_batch(2, 3)
    t = jnp.full(b.num_graphs, 0.3)
    a = SC.make_score_fn(exact_apply(VE, "eps"), None, VE, "eps")(b, t, None)
    c = SC.make_score_fn(exact_apply(VE, "score"), None, VE, "score")(b, t, None)
    np.testing.assert_allclose(a.positions, c.positions, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="parametrization"):
        SC.output_to_score(eps, std, "x0")


# --------------------------------------------------------------------------------------
# A toy network on a mixed batch
# --------------------------------------------------------------------------------------


def toy_params():
    rng = np.random.default_rng(3)
    return {"a": jnp.float32(0.3), "b": jnp.asarray(rng.normal(size=3), jnp.float32),
            "W": jnp.asarray(rng.normal(size=(K + 1, K)), jnp.float32), "v": jnp.asarray(rng.normal(size=K), jnp.float32)}


def toy_apply(params, batch, t, label, fixed_output=0.0):
    tt = t[batch.graph_index][:, None]
    lab = label[batch.graph_index][:, None].astype(tt.dtype)
    pos = params["a"] * jnp.sin(batch.positions) + params["b"] * tt + 0.1 * lab
    pos = jnp.where(batch.fixed[:, None], fixed_output, pos)
    types = jax.nn.one_hot(batch.types, K + 1) @ params["W"] + (tt + jnp.log(tt)) * params["v"]
    types = jnp.where(batch.fixed[:, None], fixed_output, types)
    return Scores(positions=remove_com(batch, pos), types=types)




JOINT = L.LossConfig(sde=VE, process=PROCESS, lambda_positions=1.0, lambda_types=0.5, p_uncond=0.3)


@pytest.fixture(scope="module")
def joint_fn():
    return jax.jit(L.joint_loss, static_argnums=(1, 4))


def test_padding_does_not_change_the_loss(joint_fn):
    small = batch_from_atoms(mixed_atoms(), VOCAB, cutoff=2.0, labels=[1, 2, 3])
    big = batch_from_atoms(mixed_atoms(), VOCAB, cutoff=2.0, labels=[1, 2, 3], bucket=Bucket(40, 800, 8))
    p = toy_params()
    for key in (jax.random.key(5), jax.random.key(6)):
        a, ma = joint_fn(p, toy_apply, small, key, JOINT)
        b, mb = joint_fn(p, toy_apply, big, key, JOINT)
        assert float(a) == pytest.approx(float(b), rel=1e-5)
        for k in ma:
            assert float(ma[k]) == pytest.approx(float(mb[k]), rel=1e-5, abs=1e-7)
        assert float(ma["loss_types"]) > 0 and float(ma["loss_positions"]) > 0


def test_fixed_atoms_contribute_nothing(joint_fn):
    batch = batch_from_atoms(mixed_atoms(), VOCAB, cutoff=2.0, labels=[1, 2, 3])
    p = toy_params()
    a, _ = joint_fn(p, toy_apply, batch, jax.random.key(7), JOINT)
    huge = lambda *args: toy_apply(*args, fixed_output=1e3)
    b, _ = joint_fn(p, huge, batch, jax.random.key(7), JOINT)
    assert float(a) == float(b)
    # the average is over real non-fixed atoms: dsm_loss on hand-made inputs
    pred = jnp.zeros((5, 3))
    eps = jnp.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0], [9.0, 9, 9], [7.0, 7, 7]])
    mask = jnp.array([True, True, True, False, False])
    assert float(L.dsm_loss(pred, eps, mask)) == pytest.approx((1 + 4 + 9) / 3)
    assert float(L.dsm_loss(pred, eps, mask, weight=jnp.full(5, 2.0))) == pytest.approx(2 * 14 / 3)


def test_score_entropy_loss_matches_discrete():
    rng = np.random.default_rng(8)
    n = 12
    ls = jnp.asarray(rng.normal(size=(n, K)), jnp.float32)
    z0 = jnp.asarray(rng.integers(1, K + 1, n), jnp.int32)
    zt = jnp.where(jnp.arange(n) % 2 == 0, MASK, z0)
    sb, rate = PROCESS.total(jnp.full(n, 0.4)), PROCESS.rate(jnp.full(n, 0.4))
    mask = jnp.arange(n) < 9
    per_atom = discrete.score_entropy(ls, z0, zt, sb, rate)
    assert float(L.score_entropy_loss(ls, z0, zt, sb, rate, mask)) == pytest.approx(float(per_atom[:9].sum() / 9), rel=1e-6)
    exact = discrete.independent_log_score(jnp.log(jax.nn.one_hot(z0 - 1, K) + 1e-30), sb)
    assert float(L.score_entropy_loss(exact, z0, zt, sb, rate, mask)) == pytest.approx(0.0, abs=1e-5)


def test_label_dropout_modes_and_what_the_network_sees():
    batch = anchor_batch(200, 2)
    batch = batch._replace(label=np.where(batch.graph_mask, 1 + np.arange(batch.num_graphs) % 4, 0).astype(np.int32))

    def run(cfg, key):
        box = {}

        def apply(params, noisy, t, label):
            box.update(noisy=noisy, t=t, label=label)
            tt = t[noisy.graph_index][:, None]
            return Scores(positions=jnp.zeros_like(noisy.positions), types=jnp.zeros((noisy.num_nodes, K)) + tt)

        loss, metrics = L.joint_loss(None, apply, batch, key, cfg)
        return loss, metrics, box["noisy"], box["t"], box["label"]

    real = batch.graph_mask
    run_jit = jax.jit(run, static_argnums=0)
    cfg = L.LossConfig(sde=VE, process=PROCESS, p_uncond=0.5)
    same = run_jit(cfg, jax.random.key(9))
    _, _, noisy, t, label = same
    label = np.asarray(label)
    assert 0.4 <= (label[real] == 0).mean() <= 0.6
    np.testing.assert_array_equal(np.asarray(noisy.label), label)
    np.testing.assert_array_equal(label[real & (label != 0)], batch.label[real & (label != 0)])
    t = np.asarray(t)
    assert np.all((t >= 1e-3) & (t <= 1.0)) and t[real].std() > 0.2
    # types corrupted with probability 1 − e^{−σ̄(t)} (never the fixed anchors); positions noised
    z = np.asarray(noisy.types)
    free = batch.node_mask & ~batch.fixed
    assert np.all(z[batch.fixed] == 2)
    p_mask = 1 - np.exp(-np.asarray(PROCESS.total(t[batch.graph_index])))
    assert abs((z[free] == MASK).mean() - p_mask[free].mean()) < 5 * math.sqrt(0.25 / free.sum())
    assert not np.allclose(np.asarray(noisy.positions)[free], batch.positions[free])

    # modes: positions only / types only
    _, m, noisy, _, _ = run_jit(L.LossConfig(sde=VE), jax.random.key(10))
    np.testing.assert_array_equal(np.asarray(noisy.types), batch.types)
    assert float(m["loss_types"]) == 0.0 and float(m["loss_positions"]) > 0
    _, m, noisy, _, _ = run_jit(L.LossConfig(sde=None, process=PROCESS), jax.random.key(10))
    np.testing.assert_array_equal(np.asarray(noisy.positions), batch.positions)
    assert float(m["loss_positions"]) == 0.0 and float(m["loss_types"]) > 0
    # independent times: the network gets the same position time, the types see another time
    ind = run_jit(L.LossConfig(sde=VE, process=PROCESS, p_uncond=0.5, independent_t=True), jax.random.key(9))
    np.testing.assert_array_equal(np.asarray(same[3]), np.asarray(ind[3]))
    np.testing.assert_array_equal(np.asarray(same[2].positions), np.asarray(ind[2].positions))
    assert not np.array_equal(np.asarray(same[2].types), np.asarray(ind[2].types))


@pytest.mark.parametrize("sde", [VE, VP], ids=["ve", "vp"])
def test_finite_gradients_down_to_t_1e_5(sde):
    batch = anchor_batch(3, 4)
    p = toy_params()
    combos = (("eps", "std2"), ("score", "none"))

    @jax.jit
    def grads(p, t):
        out = []
        for param, weighting in combos:
            cfg = L.LossConfig(sde=sde, process=PROCESS, t_eps=1e-5, parametrization=param, weighting=weighting)
            out.append(jax.grad(lambda p: L.joint_loss(p, toy_apply, batch, jax.random.key(12), cfg, t=t)[0])(p))
        return out

    for t in (1e-5, 1e-3, 1.0):
        for leaf in jax.tree_util.tree_leaves(grads(p, jnp.full(batch.num_graphs, t, jnp.float32))):
            assert np.all(np.isfinite(np.asarray(leaf))), t
            if t == 1.0:  # at small t no type is masked and the type head gets no gradient
                assert np.any(np.asarray(leaf) != 0)


def test_config_validation():
    with pytest.raises(ValueError, match="nothing to train"):
        L.LossConfig(sde=None, process=None)
    with pytest.raises(ValueError, match="parametrization"):
        L.LossConfig(parametrization="x0")
    with pytest.raises(ValueError, match="weighting"):
        L.LossConfig(weighting="snr")
    with pytest.raises(ValueError, match="p_uncond"):
        L.LossConfig(p_uncond=1.5)
    with pytest.raises(TypeError, match="AbsorbingProcess"):
        L.LossConfig(process=3)
    hash(L.LossConfig(sde=VP, process=PROCESS))  # static-argument friendly


def test_beta_time_draw_matches_its_law_and_config():
    """``process.t_beta_a/b`` draw training times from t_eps + (1 − t_eps) Beta(a, b): the
    per-graph draws follow that law (mean and variance), (1, 1) keeps the uniform draw."""
    from agedi_jax.batch import EncodedStructure, collate
    from agedi_jax.config import preset, replace
    from agedi_jax.keys import graph_beta

    n = 4000
    enc = [EncodedStructure(np.zeros((1, 3)), np.ones(1, np.int32), np.zeros((3, 3)), np.zeros(3, bool),
                            np.zeros(1, bool), 0, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 3)))] * n
    batch = collate(enc)
    u = np.asarray(graph_beta(jax.random.key(0), batch, 3.0, 2.0))[:n]
    assert abs(u.mean() - 0.6) < 0.01 and abs(u.var() - 0.04) < 0.004  # Beta(3, 2): mean 3/5, var 1/25
    cfg = replace(preset("quickstart"), process={"t_beta_a": 3.0, "t_beta_b": 2.0})
    from agedi_jax.model import build_model

    model = build_model(cfg, TypeVocab(("Cu",)), avg_num_neighbors=3.0)
    assert model.loss_config.t_beta == (3.0, 2.0)
    with pytest.raises(ValueError, match="t_beta_a and process.t_beta_b must be > 0"):
        replace(cfg, process={"t_beta_a": 0.0})
