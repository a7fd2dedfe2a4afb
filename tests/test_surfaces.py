"""Surfaces (issue 20): atoms confined to a z window above a fixed slab.

The reflected-Brownian-motion kernel and its score against numerical references (a
simulated reflected random walk, a brute-force image sum), reflection and fixed atoms
through noising and every sampler, the uniform prior, named errors for bad windows, and
a tiny end-to-end run: train on slab + adsorbate structures, then sample from Python and
from the command line with ``formula`` / ``--formula`` and ``z_window`` / ``--z-window``.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import fcc111
from ase.constraints import FixAtoms

import jax
import jax.numpy as jnp

from agedi_jax import samplers
from agedi_jax.batch import StructureError, collate
from agedi_jax.config import preset, replace
from agedi_jax.convert import encode_structures
from agedi_jax.data import Dataset
from agedi_jax.geometry import com_axes, confined, displace, reflect_into
from agedi_jax.scores import Scores
from agedi_jax.sde import (
    make_sde,
    noise_positions,
    prior_sample,
    reflected_normal_density,
    reflected_normal_score,
)
from agedi_jax.surfaces import Z_WINDOW_KEY, prune_fixed_pairs, resolve_z_window
from agedi_jax.vocab import TypeVocab

LO, HI = 1.0, 4.0  # Å above the topmost fixed atom


def _brute_density(x, x0, s, lo, hi, images=300):
    """The reflected normal as a float64 image sum with 2·(2·300+1) images."""
    L = hi - lo
    j = np.arange(-images, images + 1)
    c = np.concatenate([(x0 - lo) + 2 * j * L, -(x0 - lo) + 2 * j * L])
    u = np.asarray(x, np.float64)[:, None] - lo
    return np.exp(-((u - c) ** 2) / (2 * s * s)).sum(1) / np.sqrt(2 * np.pi * s * s)


def slab(symbol: str = "Cu", adsorbate: str = "", seed: int = 0, vacuum: float = 6.0) -> Atoms:
    """A 2x2x2 fcc(111) slab, every substrate atom fixed, with adsorbate atoms at random
    in-plane positions 1.8–2.6 Å above the top layer."""
    s = fcc111(symbol, size=(2, 2, 2), vacuum=vacuum)
    s.translate([0.3, 0.2, 0.0])  # strictly inside the cell: wrapping leaves every atom bit-identical
    s.wrap()
    s.set_constraint(FixAtoms(indices=range(len(s))))
    if adsorbate:
        rng = np.random.default_rng(seed)
        add = Atoms(adsorbate)
        top = s.positions[:, 2].max()
        f = rng.uniform(0, 1, (len(add), 2))
        add.positions = f[:, :1] * s.cell[0] + f[:, 1:] * s.cell[1]
        add.positions[:, 2] = top + rng.uniform(1.8, 2.6, len(add))
        add.set_tags(0)
        fixed = s.constraints[0].get_indices()
        s.set_constraint()
        s += add
        s.set_constraint(FixAtoms(indices=fixed))
    s.info[Z_WINDOW_KEY] = (LO, HI)
    return s


def _batch(structures, vocab=None, cutoff=4.0):
    vocab = vocab or TypeVocab.from_atoms(structures)
    return jax.tree.map(jnp.asarray, collate(encode_structures(structures, vocab, cutoff)))


# --------------------------------------------------------------------------------------
# The kernel and its score
# --------------------------------------------------------------------------------------


def test_reflected_kernel_matches_simulated_reflected_brownian_motion():
    """200,000 reflected random walks (400 Gaussian steps, each reflected into the window)
    against the image-sum density: every histogram bin within 5 binomial standard errors,
    and the noising recipe reflect(x0 + σε) has the same law."""
    rng = np.random.default_rng(0)
    lo, hi, x0, sigma = 1.0, 4.0, 1.4, 1.7
    walkers, steps = 200_000, 400
    x = np.full(walkers, x0)
    for _ in range(steps):  # small steps, each bounced off the walls (independent numpy reference)
        x = x + rng.normal(0, sigma / np.sqrt(steps), walkers)
        x = np.where(x < lo, 2 * lo - x, x)
        x = np.where(x > hi, 2 * hi - x, x)
    assert x.min() >= lo and x.max() <= hi
    edges = np.linspace(lo, hi, 31)
    counts, _ = np.histogram(x, edges)
    fine = np.linspace(lo, hi, 3001)
    dens = np.asarray(reflected_normal_density(fine, x0, sigma, lo, hi), np.float64)
    cdf = np.concatenate([[0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(fine))])
    p = np.diff(np.interp(edges, fine, cdf))
    assert abs(cdf[-1] - 1) < 1e-5
    err = (counts - walkers * p) / np.sqrt(walkers * p * (1 - p))
    assert np.max(np.abs(err)) < 5, err
    folded = np.asarray(reflect_into(x0 + sigma * rng.normal(size=walkers), lo, hi))
    counts2, _ = np.histogram(folded, edges)
    err2 = (counts2 - walkers * p) / np.sqrt(walkers * p * (1 - p))
    assert np.max(np.abs(err2)) < 5, err2


@pytest.mark.parametrize("sigma", [0.05, 0.4, 1.4, 1.6, 3.0, 20.0])  # both sides of the switch at L/2 = 1.5
def test_reflected_score_matches_numerical_derivative(sigma):
    lo, hi = 1.0, 4.0
    # the reference at the float32 inputs the kernel sees (near a wall the score is so
    # sensitive to x at small σ that the input's own rounding would dominate)
    x = np.linspace(lo + 1e-4, hi - 1e-4, 301).astype(np.float32).astype(np.float64)
    for x0 in (float(np.float32(v)) for v in (1.0, 1.2, 2.5, 3.99)):
        ref = _brute_density(x, x0, sigma, lo, hi)
        h = 1e-5
        with np.errstate(divide="ignore", invalid="ignore"):  # underflow far from x0: excluded below
            fd = (np.log(_brute_density(x + h, x0, sigma, lo, hi)) - np.log(_brute_density(x - h, x0, sigma, lo, hi))) / (2 * h)
        ok = (ref > 1e-200) & np.isfinite(fd)
        score = np.asarray(reflected_normal_score(x, x0, sigma, lo, hi), np.float64)  # float32
        scale = np.maximum(1.0 / sigma, np.abs(fd))
        assert np.max(np.abs(score - fd)[ok] / scale[ok]) < 2e-4
        dens = np.asarray(reflected_normal_density(x, x0, sigma, lo, hi), np.float64)
        assert np.max(np.abs(dens - ref)[ok] / np.maximum(ref[ok], 1e-3 / (hi - lo))) < 2e-4
    # Neumann walls: zero normal derivative; large σ: uniform, zero score
    walls = np.asarray(reflected_normal_score(np.array([lo, hi]), 2.2, sigma, lo, hi))
    assert np.all(np.abs(walls) < 1e-4 * (hi - lo) / sigma**2)  # float32 cancellation of two ±L/σ² images
    if sigma >= 3.0:
        assert np.allclose(np.asarray(reflected_normal_density(x, 2.0, sigma, lo, hi)), 1 / (hi - lo), rtol=0.02)


def test_reflect_into():
    z = jnp.array([1.0, 2.5, 4.0, 0.5, 4.7, -3.2, 11.3, 7.0])
    out = np.asarray(reflect_into(z, 1.0, 4.0))
    assert np.array_equal(out[:3], np.asarray(z[:3]))  # inside: bit-identical
    assert np.allclose(out[3:], [1.5, 3.3, 2.8, 2.7, 1.0], atol=1e-5)
    assert np.array_equal(np.asarray(reflect_into(z, 2.0, 2.0)), np.asarray(z))  # no window: unchanged


# --------------------------------------------------------------------------------------
# Noising, prior, sampling
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slab_batch():
    structures = [slab("Cu", "Pt2", seed=1), slab("Cu", "PtCu", seed=2), slab("Pt", "Cu3", seed=3)]
    return _batch(structures), structures


def test_noising_keeps_free_atoms_in_window_and_fixed_atoms_bit_identical(slab_batch):
    b, _ = slab_batch
    sde = make_sde("ve", "linear", sigma_max=6.0)
    free = np.asarray(b.node_mask & ~b.fixed)
    w = np.asarray(b.z_window)[np.asarray(b.graph_index)]
    assert not np.asarray(com_axes(b))[:, 2].any() and np.asarray(confined(b))[:3].all()
    for t in (1e-3, 0.05, 0.3, 1.0):
        nb, eps, std = noise_positions(jax.random.PRNGKey(7), sde, b, jnp.full((b.num_graphs,), t))
        x = np.asarray(nb.positions)
        assert np.all((x[free, 2] >= w[free, 0]) & (x[free, 2] <= w[free, 1]))
        assert np.array_equal(x[np.asarray(b.fixed)], np.asarray(b.positions)[np.asarray(b.fixed)])
        assert np.all(np.isfinite(np.asarray(eps)))
    # small σ deep inside the window: the target is the Gaussian draw itself
    nb, eps, std = noise_positions(jax.random.PRNGKey(7), sde, b, jnp.full((b.num_graphs,), 1e-3))
    d = (np.asarray(nb.positions) - np.asarray(b.positions))[free] / np.asarray(std)[free, None]
    assert np.allclose(np.asarray(eps)[free], d, atol=2e-3)


def test_prior_is_uniform_in_window_and_plane(slab_batch):
    from scipy.stats import kstest

    b, _ = slab_batch
    sde = make_sde("ve")
    free = np.asarray(b.node_mask & ~b.fixed)
    gi = np.asarray(b.graph_index)
    zs, fs = [], []
    draw = jax.jit(lambda k: prior_sample(k, sde, b).positions)
    for i in range(300):
        x = np.asarray(draw(jax.random.PRNGKey(i)))
        assert np.array_equal(x[np.asarray(b.fixed)], np.asarray(b.positions)[np.asarray(b.fixed)])
        w = np.asarray(b.z_window)[gi[free]]
        zs.append((x[free, 2] - w[:, 0]) / (w[:, 1] - w[:, 0]))
        frac = np.einsum("ni,nij->nj", x[free], np.linalg.inv(np.asarray(b.cell)[gi[free]]))
        fs.append(frac[:, :2])
    z, f = np.concatenate(zs), np.concatenate(fs)
    assert z.min() >= 0 and z.max() <= 1
    assert kstest(z, "uniform").pvalue > 1e-3
    assert kstest(f[:, 0] % 1.0, "uniform").pvalue > 1e-3 and kstest(f[:, 1] % 1.0, "uniform").pvalue > 1e-3
    assert abs(np.corrcoef(z, f[:, 0] % 1.0)[0, 1]) < 0.05


@pytest.mark.parametrize("kind", ["em", "pc", "ode"])
def test_every_sampler_step_reflects_and_keeps_fixed_atoms(slab_batch, kind):
    """A score that pushes hard up and down: every step lands inside the window; fixed
    atoms and types never change."""
    b, _ = slab_batch
    sde = make_sde("ve", "linear", sigma_max=6.0)
    free = np.asarray(b.node_mask & ~b.fixed)
    w = np.asarray(b.z_window)[np.asarray(b.graph_index)]

    def score_fn(state, t, key, **kw):
        x = jnp.asarray(state.positions)
        push = 40.0 * jnp.sign(jnp.sin(7.0 * x[:, 2:3] + jnp.arange(x.shape[0])[:, None]))
        return Scores(positions=jnp.concatenate([0.3 * jnp.ones_like(x[:, :2]), push], -1))

    step = {"em": samplers.euler_maruyama(sde), "pc": samplers.predictor_corrector(sde),
            "ode": samplers.heun_ode(sde)}[kind]
    state = samplers.prior_state(jax.random.PRNGKey(0), b, sde)
    run = jax.jit(lambda k, s: samplers.sample_steps(k, s, score_fn, step, samplers.time_grid(8), 0, 4))
    for i in range(2):
        state = run(jax.random.PRNGKey(i), state)
        x = np.asarray(state.positions)
        assert np.all((x[free, 2] >= w[free, 0]) & (x[free, 2] <= w[free, 1]))
        assert np.array_equal(x[np.asarray(b.fixed)], np.asarray(b.positions)[np.asarray(b.fixed)])
    fin = samplers.finalize(sde, resolve_types=False)(jax.random.PRNGKey(3), state, 1e-3, score_fn)
    x = np.asarray(fin.positions)
    assert np.all((x[free, 2] >= w[free, 0]) & (x[free, 2] <= w[free, 1]))


def test_batches_without_windows_are_unchanged():
    from tests.conftest import cluster

    atoms = [cluster("Cu", 4, 2.5, 0), fcc111("Cu", (2, 2, 2), vacuum=5.0)]
    b = collate(encode_structures(atoms, TypeVocab.from_atoms(atoms), 4.0))
    assert b.z_window is None
    x = jnp.asarray(b.positions)
    dx = jnp.ones_like(x)
    bj = jax.tree.map(jnp.asarray, b)
    assert np.array_equal(np.asarray(displace(bj, x, dx)), np.asarray(displace(bj._replace(z_window=None), x, dx)))
    # mixed batch: the window field is [0, 0] for the graph without one, which is not confined
    mixed = collate(encode_structures([atoms[0], slab("Cu", "Pt")], TypeVocab(("Cu", "Pt")), 4.0))
    assert np.array_equal(np.asarray(mixed.z_window)[0], [0, 0]) and np.asarray(mixed.z_window)[1, 1] > 0
    assert np.asarray(confined(jax.tree.map(jnp.asarray, mixed))).tolist()[:2] == [False, True]


def test_pruned_fixed_pairs_keep_every_edge_within_the_cutoff(slab_batch):
    """Pruning drops only pairs of fixed atoms that never come within the cutoff: the edges
    within the cutoff (receiver, sender, vector) are the same, also after the atoms are
    moved by whole lattice vectors (wrapping)."""
    from agedi_jax.edges import edge_vectors

    _, structures = slab_batch
    vocab = TypeVocab.from_atoms(structures)
    enc = encode_structures(structures, vocab, 4.0)
    pruned = [prune_fixed_pairs(e, 4.0) for e in enc]
    assert sum(e.num_edges for e in pruned) < 0.75 * sum(e.num_edges for e in enc)
    rng = np.random.default_rng(0)
    for shift_seed in range(2):
        b1, b2 = (jax.tree.map(jnp.asarray, collate(e)) for e in (enc, pruned))
        if shift_seed:  # move every atom by a random whole lattice vector in the plane
            cell = np.asarray(b1.cell)[np.asarray(b1.graph_index)]
            k = rng.integers(-2, 3, (b1.num_nodes, 2))
            x = np.asarray(b1.positions) + k[:, :1] * cell[:, 0] + k[:, 1:] * cell[:, 1]
            b1, b2 = b1._replace(positions=jnp.asarray(x)), b2._replace(positions=jnp.asarray(x))

        def within(b):
            e = edge_vectors(b, 4.0)
            m = np.asarray(e.mask)
            v = np.round(np.asarray(e.vectors)[m], 4)
            rows = np.column_stack([np.asarray(b.receivers)[m], np.asarray(b.senders)[m], v])
            return rows[np.lexsort(rows.T[::-1])]

        assert np.allclose(within(b1), within(b2), atol=2e-4)


# --------------------------------------------------------------------------------------
# Named errors
# --------------------------------------------------------------------------------------


def test_bad_windows_are_named_errors():
    s = slab("Cu", "Pt")
    f = np.zeros(len(s), bool)
    f[:8] = True
    with pytest.raises(StructureError, match="empty"):
        resolve_z_window(s, (3.0, 2.0), f)
    with pytest.raises(StructureError, match="outside the cell"):
        resolve_z_window(s, (1.0, 40.0), f)
    with pytest.raises(StructureError, match="overlaps the slab"):
        resolve_z_window(s, (-1.0, 3.0), f)
    with pytest.raises(StructureError, match="no fixed atoms"):
        resolve_z_window(s, (1.0, 3.0), np.zeros(len(s), bool))
    with pytest.raises(StructureError, match="outside the z window"):
        resolve_z_window(s, (3.0, 5.0), f)
    cl = s.copy()
    cl.pbc = False
    with pytest.raises(StructureError, match="pbc"):
        resolve_z_window(cl, (1.0, 3.0), f)
    bad = s.copy()
    bad.info[Z_WINDOW_KEY] = (0.0, 3.0)
    with pytest.raises(ValueError, match="overlaps the slab"):
        encode_structures([bad], TypeVocab.from_atoms([bad]), 4.0)


# --------------------------------------------------------------------------------------
# End to end: train on slabs, sample from Python and the command line
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def surface_run(tmp_path_factory):
    from agedi_jax.train import fit

    data = [slab("Cu", ads, seed=k) for k, ads in enumerate(["Pt", "Pt2", "PtCu", "Pt2", "Cu2", "Pt"])]
    cfg = replace(
        preset("quickstart"),
        data={"val_fraction": 0.0, "max_atoms": 12},
        model={"network": "painn", "features": 4, "num_layers": 1, "num_basis": 4, "cutoff": 4.0, "types": False},
        process={"sigma_max": 4.0},
        # no optimiser step (its compilation alone would double this file's time): the run
        # directory, config and checkpoint of a model prepared on windowed training data
        train={"steps": 0, "batch_size": 3, "warmup_steps": 1},
        sample={"steps": 5, "batch_size": 4, "z_window": f"{LO},{HI}"},
    )
    run = tmp_path_factory.mktemp("surf") / "run"
    return fit(cfg, run, progress=False, dataset=Dataset(data, name="slabs"))


def test_training_data_windows_and_loss(surface_run):
    """The training structures' windows (``info[Z_WINDOW_KEY]``) reach the batch, and the
    joint loss on them is the mean squared reflected-kernel target (a network predicting 0)."""
    from agedi_jax.losses import LossConfig, joint_loss
    from agedi_jax.train import prepare_data

    data = [slab("Cu", ads, seed=k) for k, ads in enumerate(["Pt", "Pt2", "PtCu"])]
    prepared = prepare_data(surface_run.model.config, Dataset(data, name="slabs"))
    b = jax.tree.map(jnp.asarray, collate(prepared.train))
    top = np.array([a.positions[:8, 2].max() for a in data])
    assert np.allclose(np.asarray(b.z_window)[:3], np.stack([top + LO, top + HI], 1), atol=1e-5)
    config = LossConfig(sde=surface_run.model.sde)

    def zero_net(params, batch, t, label):
        return Scores(positions=jnp.zeros_like(batch.positions))

    loss = jax.jit(lambda key, t: joint_loss(None, zero_net, b, key, config, t=t)[0])
    for t in (0.01, 0.5, 1.0):
        tt = jnp.full((b.num_graphs,), t)
        _, eps, _ = noise_positions(jax.random.fold_in(jax.random.PRNGKey(3), 3), config.sde, b, tt)
        free = np.asarray(b.node_mask & ~b.fixed)
        assert np.isclose(float(loss(jax.random.PRNGKey(3), tt)), np.sum(np.asarray(eps)[free] ** 2) / free.sum(),
                          rtol=1e-5)


def _check_samples(out, template, n_new, window):
    top = template.positions[:, 2].max()
    kept = list(template.constraints[0].get_indices())
    for a in out:
        assert len(a) == len(template) + n_new
        assert np.array_equal(a.positions[: len(template)], template.positions)  # substrate untouched
        assert a.get_chemical_symbols()[: len(template)] == template.get_chemical_symbols()
        z = a.positions[len(template):, 2]
        assert np.all((z >= top + window[0] - 1e-4) & (z <= top + window[1] + 1e-4))
        assert list(a.constraints[0].get_indices()) == kept  # the template's own constraint
        assert list(a.get_tags()[len(template):]) == [0] * n_new


def test_sample_atoms_on_a_slab_template(surface_run):
    from agedi_jax.generate import sample_atoms

    template = fcc111("Cu", size=(2, 2, 2), vacuum=6.0)
    template.set_constraint(FixAtoms(indices=range(4)))  # bottom layer: kept on the output
    out = sample_atoms(surface_run.model, surface_run.state.ema_params, templates=[template], formula="Pt2",
                       z_window=(1.5, 3.5), num_samples=2, seed=0)
    assert len(out) == 2
    _check_samples(out, template, 2, (1.5, 3.5))
    assert all(a.get_chemical_symbols()[-2:] == ["Pt", "Pt"] for a in out)
    # the model's default window (sample.z_window) when none is given
    out2 = sample_atoms(surface_run.model, surface_run.state.ema_params, templates=[template], formula="PtCu",
                        num_samples=2, seed=1)
    _check_samples(out2, template, 2, (LO, HI))
    for bad, msg in [((3.0, 2.0), "empty"), ((1.0, 40.0), "outside the cell"), ((-1.0, 2.0), "overlaps the slab"),
                     ((1.0, 5.5), "noise reaches only")]:
        with pytest.raises(ValueError, match=msg):
            sample_atoms(surface_run.model, surface_run.state.ema_params, templates=[template], formula="Pt",
                         z_window=bad)


def test_cli_sample_on_a_slab_template(surface_run, tmp_path, capsys):
    from ase.io import read, write

    from agedi_jax.cli import main

    template = fcc111("Cu", size=(2, 2, 2), vacuum=6.0)
    template.set_constraint(FixAtoms(indices=range(4)))
    write(tmp_path / "slab.traj", template)
    out = tmp_path / "ads.extxyz"
    rc = main(["sample", str(surface_run.run_dir), "--template", str(tmp_path / "slab.traj"), "--formula", "Pt2",
               "--z-window", "1.5", "3.5", "--num", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    frames = read(out, ":")
    assert len(frames) == 2
    for a in frames:
        top = template.positions[:, 2].max()
        assert np.allclose(a.positions[:8], template.positions, atol=1e-6)
        assert np.all((a.positions[8:, 2] >= top + 1.5 - 1e-4) & (a.positions[8:, 2] <= top + 3.5 + 1e-4))
    capsys.readouterr()
    rc = main(["sample", str(surface_run.run_dir), "--template", str(tmp_path / "slab.traj"), "--formula", "Pt2",
               "--z-window", "3", "2", "--out", str(tmp_path / "x.extxyz"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "empty" in err


def test_parallel_shards_carry_windows():
    """Stacked data-parallel shards keep each structure's window in its global graph slot
    (an empty shard or one without windows gets [0, 0])."""
    from agedi_jax.batch import Bucket
    from agedi_jax.parallel import stack_shards, unstack
    from tests.conftest import cluster

    s1, s2 = slab("Cu", "Pt", seed=1), slab("Cu", "Pt2", seed=2)
    vocab = TypeVocab(("Cu", "Pt"))
    enc = encode_structures([s1, s2, cluster("Cu", 4, 2.5, 0)], vocab, 4.0)
    stacked = stack_shards([[enc[0]], [], [enc[2], enc[1]]], Bucket(64, 4096, 4))
    shards = unstack(stacked)
    assert all(sh.z_window is not None and sh.z_window.shape == (4, 2) for sh in shards)
    assert np.allclose(shards[0].z_window[0], enc[0].z_window) and np.allclose(shards[2].z_window[2], enc[1].z_window)
    assert not shards[1].z_window.any() and not shards[2].z_window[1].any()
