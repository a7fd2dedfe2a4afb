"""Tests of the dense per-structure layout of the score networks (agedi_jax.nn.dense):
the same parameters and outputs (values and gradients) as the edge path on clusters of
several sizes, 2D and bulk cells and padded batches; equivariance and padding invariance;
the automatic choice of layout (host side, per batch) by the model's train and eval steps;
and the pieces it is built from (radial basis recurrence, filter, glibc settings).

Small networks and batches: compilation dominates on the CPU.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from scipy.spatial.transform import Rotation

from agedi_jax.batch import Bucket
from agedi_jax.convert import batch_from_atoms
from agedi_jax.nn import make_network, network_fields
from agedi_jax.nn.common import bessel_basis, radial_features
from agedi_jax.nn.dense import DenseLayout, check_layout, choose_layout, layout_reason
from agedi_jax.vocab import TypeVocab

CUTOFF = 4.0
VOCAB = TypeVocab(("Cu", "Pt"))
SMALL = dict(features=16, num_layers=2, num_basis=8, avg_num_neighbors=6.0, cutoff=CUTOFF)


def _cluster(n: int, seed: int) -> Atoms:
    rng = np.random.default_rng(seed)
    while True:
        pos = rng.uniform(-2.2, 2.2, size=(n, 3))
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)[np.triu_indices(n, 1)]
        if n < 2 or (d.min() > 1.8 and d.max() > CUTOFF + 0.3) or n > 8:
            symbols = "".join(rng.choice(["Cu", "Pt"], size=n))
            return Atoms(symbols, positions=pos)


def _cells() -> list[Atoms]:
    rng = np.random.default_rng(7)
    a = 2.9
    sheet = Atoms("CuPt", cell=[[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, 12.0]],
                  scaled_positions=[[0, 0, 0.5], [1 / 3, 2 / 3, 0.55]], pbc=(True, True, False))
    sheet2 = Atoms("PtPtCu", cell=[[3.4, 0, 0], [0.4, 3.1, 0], [0, 0, 14.0]],
                   scaled_positions=[[0.1, 0.1, 0.5], [0.6, 0.5, 0.52], [0.3, 0.8, 0.45]], pbc=(True, True, False))
    bulk = Atoms("PtCuCu", cell=np.diag([3.1, 3.3, 3.6]),
                 scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.0], [0.5, 0.1, 0.5]], pbc=True)
    for at in (sheet, sheet2, bulk):
        at.positions += rng.normal(scale=0.1, size=at.positions.shape)
    return [sheet, sheet2, bulk]


def _batch(atoms, bucket=None, labels=None):
    b = batch_from_atoms(atoms, VOCAB, CUTOFF, bucket=bucket, labels=labels)
    return jax.tree.map(jnp.asarray, b)


# one network instance per path; params from the edge path's init
NET = make_network("painn", num_types=VOCAB.num_types, num_labels=2, **SMALL)

CLUSTERS = _batch([_cluster(n, s) for n, s in ((3, 1), (7, 2), (5, 3), (7, 4))],
                  bucket=Bucket(32, 160, 6), labels=[1, 0, 2, 1])
CELLS = _batch(_cells() + [_cluster(4, 5)], labels=[1, 2, 0, 1])
T_CLUSTERS = jnp.linspace(0.1, 0.9, CLUSTERS.num_graphs)
T_CELLS = jnp.linspace(0.2, 0.8, CELLS.num_graphs)
PARAMS = jax.jit(NET.init)(jax.random.PRNGKey(0), CLUSTERS, T_CLUSTERS)


def _dense(batch):
    layout = choose_layout(batch, CUTOFF, max_ratio=None)
    assert layout is not None
    return NET.clone(layout=layout)


@functools.cache
def _jitted(net):
    return jax.jit(lambda p, b, t, w: net.apply(p, b, t, type_weights=w))


def _weights(batch):
    """Soft per-atom weights over the type table (type interpolation, Eq. 20)."""
    w = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(3), (batch.num_nodes, VOCAB.num_types + 1)))
    return w.at[:, 0].set(0.0)


def _apply(net, params, batch, t, type_weights=None):
    return _jitted(net)(params, batch, t, _weights(batch) if type_weights is None else type_weights)


def _apply_sparse(params, batch, t):
    return _apply(NET, params, batch, t)


def _close(a, b, tol=2e-5):
    scale = max(float(jnp.max(jnp.abs(a))), 1e-3)
    assert float(jnp.max(jnp.abs(a - b))) <= tol * scale, (float(jnp.max(jnp.abs(a - b))), scale)


# --------------------------------------------------------------------------------------
# Layout choice (host)
# --------------------------------------------------------------------------------------


def test_layout_choice():
    layout, why = layout_reason(CLUSTERS, CUTOFF, max_ratio=None)
    assert layout == DenseLayout(atoms=7, graphs=4, images=(0, 0, 0), periodic=False), why
    # the padded template of these mixed sizes is small next to 4 x 7 x 7 pairs
    assert choose_layout(CLUSTERS, CUTOFF, max_ratio=1.0) is None
    assert "dense pair slots" in layout_reason(CLUSTERS, CUTOFF, max_ratio=1.0)[1]
    cells = choose_layout(CELLS, CUTOFF, max_ratio=None)
    assert cells.periodic and cells.images[2] >= 1 and cells.images[0] >= 1 and cells.atoms == 4
    assert choose_layout(CLUSTERS, CUTOFF, max_atoms=6) is None
    # an incomplete edge template (a neighbour list, not every pair) stays on the edge path
    cut = CLUSTERS._replace(n_edge=CLUSTERS.n_edge.at[1].add(-1))
    assert choose_layout(cut, CUTOFF, max_ratio=None) is None
    # a traced batch cannot be inspected: edge path
    assert jax.jit(lambda b: jnp.asarray(choose_layout(b, CUTOFF) is None))(CLUSTERS)
    # uniform batch, exact bucket: dense by default
    uni = _batch([_cluster(6, s) for s in range(5)], bucket=Bucket(31, 151, 6))
    assert choose_layout(uni, CUTOFF) == DenseLayout(6, 5, (0, 0, 0), False)
    assert "layout" not in network_fields("painn") and "dense" in network_fields("painn")


def test_check_layout_and_nan_on_misfit():
    small = DenseLayout(atoms=5, graphs=4, images=(0, 0, 0), periodic=False)
    with pytest.raises(ValueError, match="at least"):
        check_layout(small, CLUSTERS, CUTOFF)
    with pytest.raises(ValueError, match="at least"):
        NET.clone(layout=small).apply(PARAMS, CLUSTERS, T_CLUSTERS)
    # inside jit the atoms that do not fit get NaN, loudly
    out = _apply(NET.clone(layout=small), PARAMS, CLUSTERS, T_CLUSTERS)
    per_graph = np.asarray(CLUSTERS.graph_index)
    pos = np.asarray(out.positions)
    assert np.isnan(pos[per_graph == 1]).all() and np.isfinite(pos[per_graph == 0]).all()


# --------------------------------------------------------------------------------------
# Same outputs, same gradients
# --------------------------------------------------------------------------------------


def test_dense_equals_sparse_clusters_and_cells():
    for batch, t in ((CLUSTERS, T_CLUSTERS), (CELLS, T_CELLS)):
        ref = _apply_sparse(PARAMS, batch, t)
        out = _apply(_dense(batch), PARAMS, batch, t)
        _close(ref.positions, out.positions)
        _close(ref.types, out.types)
        pad = ~np.asarray(batch.node_mask)
        assert np.all(np.asarray(out.positions)[pad] == 0) and np.all(np.asarray(out.types)[pad] == 0)


def test_film_conditioning_dense_equals_sparse_and_starts_as_identity():
    """FiLM modulation (``film=True``): zero-initialised, so a fresh network gives the
    outputs of the plain one with the shared parameters; with trained (here random)
    modulation weights the label changes the output multiplicatively and the dense layout
    still equals the edge path, rotations still rotate the position output."""
    film = NET.clone(film=True)
    params = jax.jit(film.init)(jax.random.PRNGKey(0), CLUSTERS, T_CLUSTERS)
    plain = {"params": {k: v for k, v in params["params"].items() if not k.startswith("film_")}}
    assert len(plain["params"]) < len(params["params"])
    _close(_apply_sparse(plain, CLUSTERS, T_CLUSTERS).positions, _apply(film, params, CLUSTERS, T_CLUSTERS).positions)
    key = jax.random.PRNGKey(5)
    params = jax.tree_util.tree_map_with_path(
        lambda k, x: 0.3 * jax.random.normal(key, x.shape) if "film_" in jax.tree_util.keystr(k) else x, params)
    ref = _apply(film, params, CLUSTERS, T_CLUSTERS)
    dense = film.clone(layout=choose_layout(CLUSTERS, CUTOFF, max_ratio=None))
    out = _apply(dense, params, CLUSTERS, T_CLUSTERS)
    _close(ref.positions, out.positions)
    _close(ref.types, out.types)
    relabelled = _apply(dense, params, CLUSTERS._replace(label=jnp.roll(CLUSTERS.label, 1)), T_CLUSTERS)
    assert float(jnp.max(jnp.abs(relabelled.positions - out.positions))) > 1e-3
    rot = jnp.asarray(Rotation.from_euler("xyz", [0.7, 0.2, -1.3]).as_matrix(), jnp.float32)
    rotated = CLUSTERS._replace(positions=jnp.asarray(CLUSTERS.positions, jnp.float32) @ rot.T)
    _close(out.positions @ rot.T, _apply(dense, params, rotated, T_CLUSTERS).positions, tol=1e-4)


def _full_sums(p_s, a, p_vs, w_s, w_vv, w_vs, dirs):
    """The message sums over every pair, ``w_*`` [R, P, P, S, F], ``dirs`` [R, P, P, S, 3]."""
    ds = np.einsum("rijsf,rjf->rif", w_s, p_s)
    dv = np.einsum("rijsf,rjcf->ricf", w_vv, a) + np.einsum("rijsf,rjf,rijsc->ricf", w_vs, p_vs, dirs)
    return ds, dv


@pytest.mark.parametrize("images", [(0, 0, 0), (1, 1, 0)])
def test_mirror_sums_equal_the_sums_over_every_pair(images):
    """The mirror layout (half of the pairs, agedi_jax.nn.painn.mirror_sums) against the
    plain sums over every ordered pair × image, for atom counts P = 1, 2 (no mirrored
    offset), 5 (odd) and 6 (even: the offset P/2 holds both pairs of its couples), without
    and with periodic images (the partner of image s is image -s); and ``neighbours`` /
    ``neighbours_t`` are each other's transposes (the backward pass)."""
    from agedi_jax.nn.dense import DensePairs, mirror_pairs, neighbour_columns
    from agedi_jax.nn.painn import mirror_sums, neighbours, neighbours_t

    shifts = DenseLayout(atoms=1, graphs=1, images=images).shifts
    neg = np.array([int(np.nonzero((shifts == -x).all(1))[0][0]) for x in shifts])
    ns, r, f = len(shifts), 2, 3
    rng = np.random.default_rng(0)
    sums = jax.jit(mirror_sums, static_argnums=(7, 8))

    def swap(x):
        return np.transpose(x, (0, 2, 1, 3, 4))[:, :, :, neg]

    for p in (1, 2, 5, 6):
        # a filter symmetric and directions antisymmetric under (i, j, s) -> (j, i, -s)
        w_s, w_vv, w_vs = (0.5 * (x + swap(x)) for x in rng.normal(size=(3, r, p, p, ns, f)).astype(np.float32))
        d = rng.normal(size=(r, p, p, ns, 3)).astype(np.float32)
        dirs = 0.5 * (d - swap(d))
        self_pair = (np.eye(p, dtype=bool)[:, :, None] & (np.arange(ns) == 0)[None, None, :])[None, ..., None]
        w_s, w_vv, w_vs = (np.where(self_pair, 0.0, x).astype(np.float32) for x in (w_s, w_vv, w_vs))
        p_s, p_vs = rng.normal(size=(2, r, p, f)).astype(np.float32)
        a = rng.normal(size=(r, p, 3, f)).astype(np.float32)
        ref = _full_sums(p_s, a, p_vs, w_s, w_vv, w_vs, dirs)
        cols, mirrored = neighbour_columns(p, ns)
        assert len(cols) * ns <= (p * p * ns) // 2 + p * ns  # about half of the pairs
        half = [mirror_pairs(DensePairs(x, x[..., 0], x[..., 0]), cols).vectors for x in (w_s, w_vv, w_vs, dirs)]
        out = sums(p_s, a, p_vs, *half, cols, mirrored)
        for x, y in zip(ref, out):
            np.testing.assert_allclose(np.asarray(y), x, rtol=1e-5, atol=1e-5)
    x = rng.normal(size=(r, p, 3, f)).astype(np.float32)
    g = rng.normal(size=(r, p, len(cols), 3, f)).astype(np.float32)
    np.testing.assert_allclose(float(jnp.vdot(neighbours(x, cols), g)), float(jnp.vdot(x, neighbours_t(g, cols))),
                               rtol=1e-5)
    _, vjp = jax.vjp(lambda y: neighbours(y, cols), jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(g))[0]), np.asarray(neighbours_t(g, cols)), rtol=1e-6)


def test_dense_same_parameters():
    dense = _dense(CLUSTERS)
    p2 = jax.eval_shape(dense.init, jax.random.PRNGKey(0), CLUSTERS, T_CLUSTERS)
    assert jax.tree.structure(p2) == jax.tree.structure(PARAMS)
    assert [x.shape for x in jax.tree.leaves(p2)] == [x.shape for x in jax.tree.leaves(PARAMS)]


def test_dense_gradients_match():
    def loss(net, params, pos, batch, t):
        out = net.apply(params, batch._replace(positions=pos), t)
        k = jnp.arange(out.positions.size).reshape(out.positions.shape) % 5
        return jnp.sum(out.positions**2 * k) + jnp.sum(jnp.sin(out.types))

    # periodic cells (images, minimum image); the clusters' parameter gradients are
    # compared through the train step in test_model_steps_pick_the_layout
    batch, t = CELLS, T_CELLS
    pos = jnp.asarray(batch.positions, jnp.float32)
    g = jax.jit(jax.grad(lambda p, x: loss(NET, p, x, batch, t), argnums=(0, 1)))(PARAMS, pos)
    dense = _dense(batch)
    gd = jax.jit(jax.grad(lambda p, x: loss(dense, p, x, batch, t), argnums=(0, 1)))(PARAMS, pos)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(gd)):
        _close(a, b, tol=5e-5)


def test_dense_padding_invariance_and_equivariance():
    dense = _dense(CLUSTERS)
    ref = _apply(dense, PARAMS, CLUSTERS, T_CLUSTERS)
    # more padding: more atom, edge and graph slots -> same outputs on the real atoms
    atoms = [_cluster(n, s) for n, s in ((3, 1), (7, 2), (5, 3), (7, 4))]
    big = _batch(atoms, bucket=Bucket(48, 256, 9), labels=[1, 0, 2, 1])
    layout = choose_layout(big, CUTOFF, max_ratio=None)
    assert layout.graphs == 4 and layout.atoms == 7
    t_big = jnp.concatenate([T_CLUSTERS[:4], jnp.full((5,), 0.3)])
    out = _apply(NET.clone(layout=layout), PARAMS, big, t_big)
    n = int(np.asarray(CLUSTERS.node_mask).sum())
    _close(ref.positions[:n], out.positions[:n])
    _close(ref.types[:n], out.types[:n])
    # a rotation of every cluster rotates the position output, leaves types unchanged
    rot = jnp.asarray(Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix(), jnp.float32)
    rotated = CLUSTERS._replace(positions=jnp.asarray(CLUSTERS.positions, jnp.float32) @ rot.T)
    out_r = _apply(dense, PARAMS, rotated, T_CLUSTERS)
    _close(ref.positions @ rot.T, out_r.positions, tol=1e-4)
    _close(ref.types, out_r.types, tol=1e-4)


# --------------------------------------------------------------------------------------
# Automatic selection in the model
# --------------------------------------------------------------------------------------


def test_model_steps_pick_the_layout():
    from agedi_jax.config import preset, replace
    from agedi_jax.model import build_model, dense_layout, init_state, make_eval_step, make_train_step, specialize

    cfg = replace(preset("quickstart"), model=dict(network="painn", features=16, num_layers=2, num_basis=8,
                                                   cutoff=CUTOFF, avg_num_neighbors=6.0),
                  train=dict(batch_size=4, warmup_steps=1))
    vocab = VOCAB
    model = build_model(cfg, vocab)
    uni = jax.tree.map(np.asarray, _batch([_cluster(6, s) for s in range(4)], bucket=Bucket(25, 121, 5)))
    assert dense_layout(model, uni)[0] == DenseLayout(6, 4, (0, 0, 0), False)
    dense_model = specialize(model, uni)
    assert dense_model.network.layout is not None and specialize(model, None).network.layout is None
    off = build_model(replace(cfg, model={"network_params": {"dense": False}}), vocab)
    assert specialize(off, uni).network.layout is None and "off" in dense_layout(off, uni)[1]

    state = init_state(model, jax.random.PRNGKey(0), uni)
    key = jax.random.PRNGKey(1)
    ev = make_eval_step(model)  # (picking a layout compiles nothing)
    m_auto = ev(state.ema_params, uni, key)
    m_edge = make_eval_step(model, dense=False)(state.ema_params, uni, key)
    for name in ("loss", "loss_positions", "loss_types"):
        assert abs(float(m_auto[name]) - float(m_edge[name])) <= 1e-4 * abs(float(m_edge[name])), name
    assert ev.for_batch(uni) is make_eval_step(dense_model, dense=False)
    assert ev.layouts == [DenseLayout(6, 4, (0, 0, 0), False)]
    # a batch of mixed sizes in a tight bucket: edge path
    mixed = jax.tree.map(np.asarray, _batch([_cluster(n, s) for n, s in ((2, 1), (8, 2))], bucket=Bucket(11, 61, 3)))
    assert dense_layout(model, mixed)[0] is None
    assert ev.for_batch(mixed) is make_eval_step(model, dense=False) and len(ev.layouts) == 1
    # a smaller uniform batch reuses the compiled layout when that is not much larger
    five = jax.tree.map(np.asarray, _batch([_cluster(6, s) for s in range(3)], bucket=Bucket(19, 91, 4)))
    assert ev.for_batch(five) is make_eval_step(dense_model, dense=False)
    # the train step dispatches the same way (``lower`` included)
    step = make_train_step(model)
    assert step.for_batch(uni) is make_train_step(dense_model, dense=False)
    assert step.for_batch(mixed) is make_train_step(model, dense=False)
    assert hasattr(step, "lower")


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


def test_bessel_recurrence_matches_direct_formula():
    r = jnp.asarray(np.concatenate([[0.0, 3e-10, 1e-4, 0.02], np.linspace(0.05, 9.0, 400)]), jnp.float32)
    for k in (1, 30):
        direct = np.sqrt(2 / 6.0) * np.sin(np.arange(1, k + 1) * np.pi * np.asarray(r, np.float64)[:, None] / 6.0)
        direct /= np.maximum(np.asarray(r, np.float64), 1e-30)[:, None]
        direct[0] = np.sqrt(2 / 6.0) * np.arange(1, k + 1) * np.pi / 6.0
        out = np.asarray(jax.jit(bessel_basis, static_argnums=(1, 2))(r, k, 6.0))
        assert np.max(np.abs(out - direct)) <= 2e-6 * np.max(np.abs(direct))
    grad = jax.jit(jax.vmap(jax.grad(lambda x: jnp.sum(bessel_basis(x, 8, 6.0)))))(r)
    assert bool(jnp.all(jnp.isfinite(grad))) and abs(float(grad[0])) < 1e-6
    feats = radial_features(jnp.asarray([1.0, 5.9, 6.5]), 8, 6.0)
    assert feats.shape == (3, 9) and float(feats[2].sum()) == 0.0


def test_tune_malloc_opt_out(monkeypatch):
    from agedi_jax import runtime

    monkeypatch.setenv(runtime.TUNE_MALLOC_ENV, "0")
    assert runtime.tune_malloc(force=True) == {"applied": False, "reason": "AGEDI_JAX_TUNE_MALLOC=0"}
    monkeypatch.delenv(runtime.TUNE_MALLOC_ENV)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert runtime.tune_malloc(force=True)["reason"] in ("mallopt", "no glibc", "mallopt refused")


def test_tune_xla_sets_the_flag_before_jax_starts(monkeypatch):
    """``import agedi_jax`` (conftest imports it before any computation) turned YNNPACK's
    fusions off where this jaxlib knows the option; the opt-out, a user's own setting and a started
    backend leave XLA_FLAGS alone; an option jaxlib lacks is never added (XLA would abort)."""
    import subprocess
    import sys

    from agedi_jax import runtime

    first = runtime.xla_settings()
    knows = runtime._jaxlib_knows("xla_cpu_experimental_ynn_fusion_type")
    # applied here, or in the pytest-xdist controller whose XLA_FLAGS the workers inherit
    assert first["applied"] == knows or first["reason"].startswith("XLA_FLAGS already sets"), first
    assert (runtime.XLA_CPU_FLAG in os.environ.get("XLA_FLAGS", "").split()) == knows
    assert not runtime._jaxlib_knows("xla_cpu_no_such_option_in_any_release")
    try:
        monkeypatch.setenv(runtime.TUNE_XLA_ENV, "off")
        assert runtime.tune_xla(force=True)["reason"] == "AGEDI_JAX_TUNE_XLA=0"
        monkeypatch.delenv(runtime.TUNE_XLA_ENV)
        monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise")
        assert runtime.tune_xla(force=True)["reason"].startswith("XLA_FLAGS already sets")
        assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise"
        monkeypatch.setenv("XLA_FLAGS", "")
        jnp.zeros(1).block_until_ready()  # the backend of this process has started
        assert runtime.tune_xla(force=True) == {"applied": False, "flag": runtime.XLA_CPU_FLAG,
                                                "reason": "JAX's backends had started before agedi_jax was imported"}
        assert os.environ["XLA_FLAGS"] == ""
    finally:
        runtime._XLA_STATE.clear()
        runtime._XLA_STATE.update(first)
    # a fresh process: the flag is in XLA_FLAGS when JAX starts, and JAX starts with it
    code = ("import os, agedi_jax, jax.numpy as jnp; print(float(jnp.ones(3).sum())); "
            "print(os.environ.get('XLA_FLAGS', ''))")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", runtime.TUNE_XLA_ENV)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] == "3.0"
    assert (runtime.XLA_CPU_FLAG in out.stdout.split("\n")[1].split()) == knows


# --------------------------------------------------------------------------------------
# Sampling picks the layout too (sample_atoms, predict_atoms)
# --------------------------------------------------------------------------------------


def test_sample_atoms_dense_equals_edge_path(tiny_config):
    """A fixed-seed joint sample through ``sample_atoms`` (generated types, learned-force-
    field guidance on x̂0, two batches) is the same with the dense layout as on the edge
    path (float rounding aside), and force-field prediction picks the layout as well."""
    from agedi_jax import forcefield
    from agedi_jax.config import replace
    from agedi_jax.generate import LayoutSampler, make_sampler, sample_atoms
    from agedi_jax.model import build_model, init_state, picks_layout, specialize

    cfg = replace(tiny_config, model=dict(avg_num_neighbors=4.0, energy_head=True),
                  sample=dict(steps=4, energy_guidance=0.5, guidance_potential="model", guidance_on="x0"))
    model = build_model(cfg, VOCAB)
    edge = build_model(replace(cfg, model={"network_params": {"dense": False}}), VOCAB)
    assert picks_layout(model) and not picks_layout(edge)
    example = jax.tree.map(np.asarray, _batch([_cluster(5, s) for s in range(3)]))
    params = init_state(model, jax.random.PRNGKey(0), example).params
    # the heads start at zero: perturb every parameter so that scores, energies and forces are not
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.2 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])
    kw = dict(n_atoms=5, num_samples=6, seed=3, batch_size=4)  # batches of 4 and 2 structures
    dense = sample_atoms(model, params, **kw)
    ref = sample_atoms(edge, params, **kw)
    run = make_sampler(model, config=replace(cfg, sample=dict(batch_size=cfg.sample.batch_size)))
    # one compiled layout: the last batch (2 rows) runs in the first one's (4 rows)
    assert isinstance(run, LayoutSampler) and run.layouts == [DenseLayout(5, 4, (0, 0, 0), False)]
    assert not isinstance(make_sampler(edge), LayoutSampler)
    assert not isinstance(make_sampler(specialize(model, example)), LayoutSampler)  # keeps its layout
    assert len(dense) == len(ref) == 6
    # a later request with fewer graph slots than the compiled layout's rows gets its own
    # layout (reusing the 4-row one crashed: rows beyond the batch's graph slots)
    one = sample_atoms(model, params, n_atoms=5, num_samples=1, seed=4)
    one_ref = sample_atoms(edge, params, n_atoms=5, num_samples=1, seed=4)
    assert np.max(np.abs(one[0].positions - one_ref[0].positions)) < 1e-4
    assert max(np.max(np.abs(a.positions)) for a in ref) > 1.0
    for a, b in zip(dense, ref):
        assert a.get_chemical_symbols() == b.get_chemical_symbols()
        assert np.max(np.abs(a.positions - b.positions)) < 1e-4, np.max(np.abs(a.positions - b.positions))
    # predict_atoms: one dispatcher, dense for these clusters, same energies and forces
    e_d, f_d = forcefield.predict_arrays(model, params, dense)
    e_e, f_e = forcefield.predict_arrays(edge, params, dense)
    assert forcefield._predict_fn(model).layouts
    np.testing.assert_allclose(e_d, e_e, rtol=1e-5, atol=1e-5)
    assert max(np.max(np.abs(x)) for x in f_e) > 1e-2
    for x, y in zip(f_d, f_e):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
