"""Bimetallic clusters by type interpolation with force-field guidance (issue 17 items 5–6).

    nice -n 5 python -m experiments.clusters.guided --budget cpu        # ~40 min on 2 shared cores
    python -m experiments.clusters.guided --quick                       # smoke run (and sampler check)

For Pt(12−n)Cu(n) and Pd(13−n)Ag(n) (the systems of ``interpolate.py``), ``--num`` clusters
per setting are sampled from the GM model with type interpolation (Eq. 20; only the number
of atoms given) and with force-field guidance of the position score,
``s + λ (1 − t)^ζ F`` (:func:`agedi_jax.samplers.energy_guided`, evaluated on the noisy
state x_t, ζ = 1, per-atom force cap 10 eV/Å), for every λ of ``--scales`` and two force
fields:

* ``emt`` — EMT in JAX (the potential the clusters are then judged with: an upper bound);
* ``learned`` — the energy head of a model trained on the QCD GM clusters' GAP energies and
  forces (``model.energy_network=separate``, the settings of ``forcefield.py``; trained
  into ``runs/cpu_gm_ff`` if that checkpoint is missing). Its data are relaxed minima only.

λ = 0 is the unguided sampler. Every setting uses the same seed (paired noise). Each
sampled cluster is relaxed with EMT (FIRE, fmax 0.05 eV/Å, ≤ 500 steps, batched in JAX by
:func:`agedi_jax.evaluation.energetics.relax_many`); formation energies follow Eq. 21 with
the EMT-relaxed QCD GM clusters A_N, B_N as references (as ``interpolate.py``). Baselines,
for every composition that any setting produced: a random structure search (RSS: random
connected starts in a sphere, 2.0 Å minimum distance, ``--rss`` per composition, relaxed
the same way) and the "decorated GM" clusters of ``decorated_baseline.py`` (the majority
element's GM cluster with random minority sites, ``--rss`` per composition). Each
setting's medians are compared with the baselines *matched to its composition histogram*
(each baseline structure weighted by count in the setting / count in the baseline), and
per cluster with the median of the baseline of its own composition.

Cost of guidance: the time per sample (compiled sampler, compilation excluded and reported
separately) and diversity — PR-AUC (Sajjadi et al.; element-agnostic SOAP, k-means with
10 clusters, 10 runs, ``agedi_jax.evaluation``) of the raw samples against the model's
training clusters of the same size (all elements; geometry only since the training data
are mono-metallic), the same for the relaxed samples, the PR-AUC of a guided set against
the unguided samples (how far guidance moves the distribution), the mean pairwise SOAP
distance of a set, and the fraction of distinct relaxed minima (composition and energy to
1 meV/atom). The time per sample is also measured with the settings interleaved on one
batch (``timing_interleaved``), since the machine's load changes during the study. The
EMT energy of the samples as sampled (before relaxation) shows what guidance does directly.

Writes ``results/<budget>/guided.json``, ``guided_energy.png`` (median formation energy vs λ
with the composition-matched baselines) and ``guided_cost.png`` (PR-AUC, SOAP spread and
time per sample vs λ).

The sampler here is the package's (:func:`agedi_jax.model.DiffusionModel.sampling_fns`,
:func:`agedi_jax.samplers.sample_start` / ``sample_steps`` / ``sample_finish``, templates from
:func:`agedi_jax.generate.prepare_request`) with λ a traced argument, so one compilation
serves every λ, and with the force field of any model of the same vocabulary (the
learned head is a separate checkpoint from the diffusion model). ``--quick`` checks it
against :func:`agedi_jax.sample_atoms` (``energy_guidance=λ``) at the same seed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from experiments.clusters import settings
from experiments.clusters.decorated_baseline import decorated
from experiments.clusters.interpolate import (
    SYSTEMS,
    qcd_clusters,
    reference_energies,
    relaxed_formation_energies,
    single_points,
    stats,
    system_title,
)
from experiments.common import save_figure

SCALES = (0.0, 0.25, 0.5, 1.0, 2.0)
POTENTIALS = ("emt", "learned")
FF_RUN = settings.HERE / "runs" / "cpu_gm_ff"
PRD = dict(num_clusters=10, num_runs=10)
COLORS = {"emt": "#c44e52", "learned": "#4c72b0"}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------------------
# The learned force field
# --------------------------------------------------------------------------------------


def ff_config(steps: int):
    """The ``separate`` energy-network model of ``forcefield.py`` (PaiNN 32 × 3, batch 16,
    λ_E = λ_F = 1), as a ``fit`` config."""
    from agedi_jax.config import replace
    from experiments.clusters.forcefield import _config

    args = SimpleNamespace(features=32, layers=3, batch=16, steps=steps, lambda_energy=1.0, lambda_forces=1.0)
    every = max(steps // 3, 1)
    return replace(_config(args, "separate"),
                   train=dict(log_every=max(steps // 30, 1), val_every=every, checkpoint_every=every))


def load_or_train_ff(run: Path, steps: int, quick: bool):
    """(model, params, info) of the learned force field: loaded from ``run`` or trained."""
    from agedi_jax import fit, load_model
    from agedi_jax.forcefield import evaluate_atoms

    info = dict(run=str(run.relative_to(settings.REPO)) if run.is_relative_to(settings.REPO) else str(run))
    if not (run / "checkpoints").exists():
        print(f"training the learned force field ({steps} steps) into {run}", flush=True)
        t0 = time.perf_counter()
        result = fit(ff_config(steps), run, progress=False)
        info["trained_now_s"] = round(time.perf_counter() - t0, 1)
        model, params = result.model, result.state.ema_params
    else:
        model, params, _ = load_model(run)
    cfg = model.config
    if not cfg.model.energy_head:
        raise ValueError(f"{run} has no energy head (model.energy_head)")
    from agedi_jax.train import prepare_data

    data = prepare_data(cfg)
    val = data.val_atoms[:24] if quick else data.val_atoms
    ev = evaluate_atoms(model, params, val)
    from experiments.clusters.evaluate import training_summary

    info["training"] = training_summary(run)  # steps, wall time from the logged rates, last losses
    info.update(network=cfg.model.network, features=cfg.model.features, layers=cfg.model.num_layers,
                energy_network=cfg.model.energy_network, steps=cfg.train.steps,
                held_out={k: (round(1e3 * v, 2) if k.startswith(("energy", "force")) else v) for k, v in ev.items()},
                units="meV/atom (energy_*), meV/Å (force_*)")
    return model, params, info


# --------------------------------------------------------------------------------------
# The guided sampler (traced λ, any energy function)
# --------------------------------------------------------------------------------------


def make_runner(model, cfg, interpolate, energy: str, ff_model=None):
    """``run(params, ff_params, key, template, generate[g], scale) -> batch``, jitted: the
    reverse diffusion of :func:`agedi_jax.generate.make_sampler` with type interpolation and,
    unless ``energy == "none"``, force-field guidance from EMT or ``ff_model``'s head."""
    import jax
    import jax.numpy as jnp

    from agedi_jax import samplers
    from agedi_jax.forcefield import model_energy_fn
    from agedi_jax.potentials import make_emt
    from agedi_jax.vocab import MASK

    s = cfg.sample
    if s.energy_guidance != 0:
        raise ValueError("make_runner adds the guidance itself: give a config with sample.energy_guidance = 0")
    step = samplers.make_step(model.sde, model.process, s)
    grid = samplers.time_grid(s.steps, cfg.process.t_eps, s.grid)
    final = samplers.finalize(model.sde if s.denoise else None, resolve_types=model.process is not None)
    emt = make_emt(model.vocab, allow_unsupported=True, check=False)

    def run(params, ff_params, key, template, generate, scale):
        score_fn, step_ = model.sampling_fns(params, cfg, interpolate=interpolate)
        if energy != "none":
            fn = emt if energy == "emt" else model_energy_fn(ff_model, ff_params)
            score_fn = samplers.energy_guided(score_fn, fn, scale, zeta=s.guidance_zeta, on=s.guidance_on,
                                              sde=model.sde, max_force=s.guidance_max_force)
        state = samplers.prior_state(jax.random.fold_in(key, 0), template, model.sde, mask_types=False)
        free = jnp.asarray(state.node_mask) & ~jnp.asarray(state.fixed)
        types = jnp.where(free & generate[state.graph_index], MASK, state.types)
        state = samplers.sample_start(state._replace(types=types.astype(state.types.dtype)), step)
        k1 = jax.random.fold_in(key, 1)
        state = samplers.sample_steps(k1, state, score_fn, step_, grid, jnp.int32(0), jnp.int32(s.steps))
        return samplers.sample_finish(k1, state, score_fn, grid, final)

    return jax.jit(run)


class SetSampler:
    """Samples of one system for any (force field, λ): one compilation per force field."""

    def __init__(self, model, params, a: str, b: str, n: int, num: int, steps: int, seed: int,
                 ff_model=None, ff_params=None):
        from agedi_jax.batch import collate, common_bucket
        from agedi_jax.generate import prepare_request

        self.model, self.params, self.ff_model, self.ff_params = model, params, ff_model, ff_params
        self.req = prepare_request(model, n_atoms=n, num_samples=num, interpolate=(a, b), steps=steps, seed=seed,
                                   energy_guidance=0.0)
        bs = self.req.config.sample.batch_size
        self.chunks = [list(range(i, min(i + bs, num))) for i in range(0, num, bs)]
        bucket = common_bucket([[self.req.encoded[i] for i in c] for c in self.chunks])
        self.batches = [collate([self.req.encoded[i] for i in c], bucket) for c in self.chunks]
        self.gen = []
        for c in self.chunks:
            g = np.zeros(bucket.n_graph, bool)
            g[: len(c)] = [self.req.generate[i] for i in c]
            self.gen.append(g)
        self.compiled: dict = {}
        self.compile_s: dict = {}

    def _args(self, bi: int, scale: float):
        import jax
        import jax.numpy as jnp

        key = jax.random.fold_in(jax.random.PRNGKey(self.req.config.sample.seed), bi)
        ff = self.ff_params if self.ff_params is not None else {}
        return (self.params, ff, key, self.batches[bi], jnp.asarray(self.gen[bi]), jnp.float32(scale))

    def _get(self, energy: str):
        if energy not in self.compiled:
            run = make_runner(self.model, self.req.config, self.req.interpolate, energy, self.ff_model)
            t0 = time.perf_counter()
            self.compiled[energy] = run.lower(*self._args(0, 1.0)).compile()
            self.compile_s[energy] = round(time.perf_counter() - t0, 1)
        return self.compiled[energy]

    def sample(self, energy: str, scale: float) -> tuple[list, float]:
        """(clusters, sampling seconds without compilation); ``energy`` none | emt | learned."""
        import jax

        fn = self._get(energy)
        t0 = time.perf_counter()
        out = []
        for bi, c in enumerate(self.chunks):
            res = jax.device_get(fn(*self._args(bi, scale)))
            out += self.req.to_atoms(self.model, res, c)
        dt = time.perf_counter() - t0
        for s in out:
            s.pbc = False
            s.info.update(energy_guidance=float(scale), guidance_potential=energy)
        return out, dt


def interleaved_timing(sampler: SetSampler, settings_list, repeats: int = 3) -> dict:
    """Seconds per sample of one batch of ``sampler`` for each (force field, λ), the
    settings interleaved ``repeats`` times so that a shared machine's changing load hits
    them alike (compiled beforehand; min and median over the repeats)."""
    import jax

    times: dict = {f"{e}_{s:g}": [] for e, s in settings_list}
    num = len(sampler.chunks[0])
    for _ in range(repeats):
        for energy, scale in settings_list:
            fn = sampler._get(energy)
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*sampler._args(0, scale)).positions)
            times[f"{energy}_{scale:g}"].append((time.perf_counter() - t0) / num)
    return {k: dict(min=round(min(v), 4), median=round(float(np.median(v)), 4)) for k, v in times.items()}


def check_against_sample_atoms(model, params, a: str, b: str, n: int) -> dict:
    """Max position difference (Å) and type agreement between this sampler and
    :func:`agedi_jax.sample_atoms` (unguided and EMT-guided, λ = 1), 8 clusters, 20 steps."""
    from agedi_jax import sample_atoms

    out = {}
    sampler = SetSampler(model, params, a, b, n, num=8, steps=20, seed=3)
    for energy, scale in (("none", 0.0), ("emt", 1.0)):
        mine, _ = sampler.sample(energy, scale)
        ref = sample_atoms(model, params, n_atoms=n, num_samples=8, interpolate=(a, b), steps=20, seed=3,
                           energy_guidance=scale, guidance_potential="emt" if scale else None)
        dx = max(float(np.abs(x.positions - y.positions).max()) for x, y in zip(mine, ref))
        same = all(x.get_chemical_symbols() == y.get_chemical_symbols() for x, y in zip(mine, ref))
        out[f"{energy}_{scale:g}"] = dict(max_position_difference_A=dx, same_types=same)
    return out


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


def weighted_median(values, weights) -> float:
    order = np.argsort(values)
    v, w = np.asarray(values)[order], np.asarray(weights, float)[order]
    c = np.cumsum(w) / w.sum()
    return float(v[np.searchsorted(c, 0.5)])


def matched(f_set, nb_set, f_base, nb_base) -> dict:
    """A baseline compared with a set at the set's composition histogram."""
    counts = Counter(nb_set.tolist())
    base_counts = Counter(nb_base.tolist())
    w = np.array([counts.get(k, 0) / base_counts[k] for k in nb_base.tolist()])
    per_comp_median = {k: float(np.median(f_base[nb_base == k])) for k in base_counts}
    below = np.array([f < per_comp_median[k] for f, k in zip(f_set, nb_set.tolist())])
    return dict(median_matched=round(weighted_median(f_base, w), 4),
                below_own_composition_median=round(float(below.mean()), 4))


def soap(structs):
    from agedi_jax.evaluation import soap_features

    return soap_features(structs, element_agnostic=True)


def prd_auc_of(f_set, f_ref) -> float:
    from agedi_jax.evaluation import compute_prd_from_embedding, prd_auc

    p, r = compute_prd_from_embedding(f_set, f_ref, enforce_balance=False, **PRD)
    return round(float(prd_auc(p, r)), 4)


def mean_pairwise(f) -> float:
    from scipy.spatial.distance import pdist

    f = np.asarray(f, float)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return round(float(pdist(f).mean()), 4)


def distinct_minima(structs, f_form, tol: float = 1e-3) -> float:
    keys = {(s.get_chemical_formula(), int(round(f / tol))) for s, f in zip(structs, f_form)}
    return round(len(keys) / max(len(structs), 1), 4)


def baselines(a: str, b: str, n: int, comps: set, gm: dict, refs: dict, per_comp: int, seed: int) -> dict:
    """RSS and decorated-GM clusters for every composition (number of B atoms) in ``comps``."""
    from agedi_jax.evaluation import random_cluster

    def scored(starts, nb, t0) -> dict:
        relaxed, _, f, conv = relaxed_formation_energies(starts, refs)
        return dict(structures=relaxed, f=f, nb=np.asarray(nb), converged=conv,
                    seconds=round(time.perf_counter() - t0, 1))

    out = {}
    t0 = time.perf_counter()
    starts, nb = [], []
    for n_b in sorted(comps):
        for k in range(per_comp):
            starts.append(random_cluster({a: n - n_b, b: n_b}, np.random.default_rng([seed, n_b, k]), min_distance=2.0))
            nb.append(n_b)
    out["rss"] = scored(starts, nb, t0)
    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 1])
    starts, nb = [], []
    for n_b in sorted(comps):
        for _ in range(per_comp):
            starts.append(decorated(gm[a][0], a, b, n_b, rng) if n_b <= n / 2 else decorated(gm[b][0], b, a, n - n_b, rng))
            nb.append(n_b)
    out["decorated"] = scored(starts, nb, t0)
    return out


def run_system(model, params, ff, a: str, b: str, n: int, args, reference_n: list) -> dict:
    from agedi_jax.evaluation import validity
    from agedi_jax.forcefield import predict_arrays

    ff_model, ff_params = ff if ff is not None else (None, None)
    tag = f"{a}{b}"
    t_sys = time.perf_counter()
    gm = qcd_clusters((a, b), n, "gm")
    refs = reference_energies(gm, n)
    sampler = SetSampler(model, params, a, b, n, args.num, args.steps, args.seed, ff_model, ff_params)

    settings_list = [("none", 0.0)] + [(p, s) for p in POTENTIALS for s in args.scales if s > 0
                                       and (p != "learned" or ff is not None)]
    sets = {}
    for energy, scale in settings_list:
        name = "unguided" if energy == "none" else f"{energy}_{scale:g}"
        raw, dt = sampler.sample(energy, scale)
        e_raw = single_points(raw)
        t0 = time.perf_counter()
        relaxed, _, f, conv = relaxed_formation_energies(raw, refs)
        sets[name] = dict(potential=energy, scale=scale, raw=raw, relaxed=relaxed, f=f,
                          e_raw=e_raw / n,
                          nb=np.array([s.get_chemical_symbols().count(b) for s in raw]), converged=conv,
                          sample_s=dt, relax_s=time.perf_counter() - t0)
        print(f"  {tag} {name}: {dt / len(raw):.3f} s/sample, EMT as sampled {np.median(e_raw) / n:.3f} eV/atom, "
              f"median E_f {np.median(sets[name]['f']) * 1e3:.1f} meV/atom, load {_load()}", flush=True)

    comps = set()
    for v in sets.values():
        comps |= set(v["nb"].tolist())
    base = baselines(a, b, n, comps, gm, refs, args.rss, args.seed)
    print(f"  {tag} baselines: RSS {len(base['rss']['f'])} ({base['rss']['seconds']} s), decorated "
          f"{len(base['decorated']['f'])} ({base['decorated']['seconds']} s)", flush=True)

    t0 = time.perf_counter()
    f_ref = soap(reference_n)
    f_unguided = soap(sets["unguided"]["raw"])
    rows = {}
    for name, v in sets.items():
        f_raw, f_rel = soap(v["raw"]), soap(v["relaxed"])
        shift = {} if name == "unguided" else dict(prd_auc_raw_vs_unguided=prd_auc_of(f_raw, f_unguided))
        val = validity(v["raw"])
        bim = (v["nb"] > 0) & (v["nb"] < n)
        rows[name] = dict(
            potential=v["potential"], scale=v["scale"], n=len(v["raw"]),
            composition_counts={int(k): int(c) for k, c in sorted(Counter(v["nb"].tolist()).items())},
            fraction_bimetallic=round(float(bim.mean()), 4),
            raw_valid=round(float(val["frac_valid"]), 4),
            raw_min_distance_median=round(float(np.median(val["min_distance"])), 3),
            relax_converged=round(float(v["converged"].mean()), 4),
            emt_energy_raw_eV_per_atom=stats(v["e_raw"]),
            formation_energy=stats(v["f"]), formation_energy_bimetallic=stats(v["f"][bim]),
            rss=matched(v["f"], v["nb"], base["rss"]["f"], base["rss"]["nb"]),
            decorated_gm=matched(v["f"], v["nb"], base["decorated"]["f"], base["decorated"]["nb"]),
            prd_auc_raw=prd_auc_of(f_raw, f_ref), prd_auc_relaxed=prd_auc_of(f_rel, f_ref),
            **shift,
            soap_pairwise_distance=mean_pairwise(f_raw), distinct_minima=distinct_minima(v["relaxed"], v["f"]),
            seconds_per_sample=round(v["sample_s"] / len(v["raw"]), 4),
            relax_seconds=round(v["relax_s"], 1),
        )
    for key in ("rss", "decorated"):
        rows[f"baseline_{key}"] = dict(n=len(base[key]["f"]), formation_energy=stats(base[key]["f"]),
                                       relax_converged=round(float(base[key]["converged"].mean()), 4),
                                       prd_auc_relaxed=prd_auc_of(soap(base[key]["structures"]), f_ref),
                                       seconds=base[key]["seconds"])
    prd_s = time.perf_counter() - t0

    diag = {}
    if ff is not None:  # how the learned field relates to EMT on the unguided samples
        from scipy.stats import spearmanr

        raw = sets["unguided"]["raw"]
        _, f_ml = predict_arrays(ff_model, ff_params, raw)
        cos, ratio = [], []
        from ase.calculators.emt import EMT

        for s, fm in zip(raw, f_ml):
            t = s.copy()
            t.calc = EMT()
            fe = t.get_forces()
            ne, nm = np.linalg.norm(fe, axis=1), np.linalg.norm(fm, axis=1)
            ok = (ne > 1e-3) & (nm > 1e-6)
            cos += list((fe * fm).sum(1)[ok] / (ne[ok] * nm[ok]))
            ratio += list(nm[ok] / ne[ok])
        e_ml, _ = predict_arrays(ff_model, ff_params, sets["unguided"]["relaxed"])
        e_emt = [s.info["energy"] for s in sets["unguided"]["relaxed"]]
        diag = dict(force_cosine_median=round(float(np.median(cos)), 3),
                    force_cosine_q25_q75=[round(float(q), 3) for q in np.percentile(cos, [25, 75])],
                    force_norm_ratio_learned_over_emt_median=round(float(np.median(ratio)), 3),
                    spearman_energy_relaxed=round(float(spearmanr(e_ml, e_emt).statistic), 3),
                    on="unguided samples: raw (forces), EMT-relaxed (energies)")
    return dict(system=f"{a}({n}-n){b}(n)", n_atoms=n, references_eV_per_atom=refs,
                n_reference_prd=len(reference_n), compile_s=sampler.compile_s, settings=rows,
                learned_vs_emt=diag, prd_seconds=round(prd_s, 1), wall_s=round(time.perf_counter() - t_sys, 1))


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def _series(rows: dict, scales):
    """(force field, λ values, setting names) of each force field with guided settings in
    ``rows``, λ = 0 (the unguided setting) first."""
    for pot in POTENTIALS:
        xs = [0.0] + [s for s in scales if s > 0 and f"{pot}_{s:g}" in rows]
        if len(xs) > 1:
            yield pot, xs, ["unguided"] + [f"{pot}_{s:g}" for s in xs[1:]]


def plot(results: Path, out: dict, scales) -> None:
    from agedi_jax.evaluation.plots import _pyplot

    plt = _pyplot()
    systems = list(out.items())
    fig, axes = plt.subplots(1, len(systems), figsize=(5.5 * len(systems), 3.8), squeeze=False)
    for ax, (tag, r) in zip(axes[0], systems):
        rows = r["settings"]
        for pot, xs, names in _series(rows, scales):
            med = np.array([rows[k]["formation_energy"]["median"] for k in names]) * 1e3
            lo = np.array([rows[k]["formation_energy"]["q25"] for k in names]) * 1e3
            hi = np.array([rows[k]["formation_energy"]["q75"] for k in names]) * 1e3
            shift = 0.96 if pot == "emt" else 1.04
            ax.errorbar([x * shift for x in xs], med, yerr=[med - lo, hi - med], marker="o", capsize=3, color=COLORS[pot],
                        label=f"{'EMT' if pot == 'emt' else 'learned'} guidance (median, IQR)")
            ax.plot(xs, [rows[k]["rss"]["median_matched"] * 1e3 for k in names], ":", color=COLORS[pot], alpha=0.7)
            ax.plot(xs, [rows[k]["decorated_gm"]["median_matched"] * 1e3 for k in names], "--", color=COLORS[pot],
                    alpha=0.7)
        ax.plot([], [], "k:", label="RSS, composition-matched median")
        ax.plot([], [], "k--", label="decorated GM, composition-matched median")
        ax.set_xscale("symlog", linthresh=0.25)
        ax.set_xticks(list(scales))
        ax.set_xticklabels([f"{s:g}" for s in scales])
        ax.set_xlabel("guidance scale λ (eV⁻¹)")
        ax.set_ylabel("formation energy, EMT (meV/atom)")
        ax.set_title(system_title(r["system"]))
        ax.legend(fontsize=7, frameon=False)
    save_figure(fig, results / "guided_energy.png")

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ls, (tag, r) in zip(("-", "--"), systems):
        rows = r["settings"]
        for pot, xs, names in _series(rows, scales):
            lab = f"{tag}, {'EMT' if pot == 'emt' else 'learned'}"
            axes[0].plot(xs, [rows[k]["prd_auc_raw"] for k in names], "o" + ls, color=COLORS[pot], label=lab)
            axes[1].plot(xs, [rows[k]["soap_pairwise_distance"] for k in names], "o" + ls, color=COLORS[pot], label=lab)
            axes[2].plot(xs, [rows[k]["seconds_per_sample"] * 1e3 for k in names], "o" + ls, color=COLORS[pot],
                         label=lab)
    for ax, yl in zip(axes, ("PR-AUC vs training clusters (raw samples)", "mean pairwise SOAP distance",
                             "sampling time per cluster (ms)")):
        ax.set_xscale("symlog", linthresh=0.25)
        ax.set_xticks(list(scales))
        ax.set_xticklabels([f"{s:g}" for s in scales])
        ax.set_xlabel("guidance scale λ (eV⁻¹)")
        ax.set_ylabel(yl)
    axes[0].legend(fontsize=7, frameon=False)
    save_figure(fig, results / "guided_cost.png")


# --------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    settings.add_study_arguments(ap, seed=7, quick="8 samples, 20 steps, 2 scales, the sampler check, a 30-step "
                                 "force field if none is there; writes nothing unless --results", steps=True)
    ap.add_argument("--num", type=int, default=128, help="samples per system and setting")
    ap.add_argument("--scales", type=float, nargs="+", default=list(SCALES), help="λ values (eV⁻¹); 0 = unguided")
    ap.add_argument("--rss", type=int, default=48, help="RSS and decorated-GM clusters per composition (>= 40)")
    ap.add_argument("--ff-run", type=Path, default=FF_RUN, help="learned force field (trained here if missing)")
    ap.add_argument("--ff-steps", type=int, default=3000, help="training steps if the force field is trained here")
    ap.add_argument("--no-learned", action="store_true", help="EMT guidance only")
    ap.add_argument("--check", action="store_true", help="compare the sampler with sample_atoms first")
    ap.add_argument("--timing-only", action="store_true",
                    help="only the interleaved timing (PtCu, one batch, unguided / EMT / learned at λ = 1), "
                         "merged into an existing guided.json")
    args = ap.parse_args(argv)

    import jax

    from agedi_jax.checkpoint import load_model

    t_all = time.perf_counter()
    load_start = _load()
    results = args.results or settings.results_dir(args.budget)
    args.steps = args.steps or settings.SAMPLE_STEPS[args.budget]
    if args.quick:
        args.num, args.steps, args.scales, args.rss = 8, 20, [0.0, 1.0], 4
        args.check = True
    run = args.run or settings.run_dir(args.budget, "gm")
    model, params, cfg = load_model(run)
    report: dict = dict(run=str(Path(run).resolve().relative_to(settings.REPO)), num=args.num, steps=args.steps,
                        scales=list(args.scales), seed=args.seed, rss_per_composition=args.rss,
                        guidance=dict(on=cfg.sample.guidance_on, zeta=cfg.sample.guidance_zeta,
                                      max_force_eV_per_A=cfg.sample.guidance_max_force, sampler=cfg.sample.sampler),
                        relax=dict(potential="EMT (JAX)", optimizer="FIRE", fmax=0.05, steps=500,
                                   via="agedi_jax.evaluation.energetics.relax_many"),
                        prd=dict(features="element-agnostic SOAP", reference="training clusters of the same size",
                                 **PRD))
    if args.check:
        a, b, n = SYSTEMS[0]
        report["sampler_check"] = check_against_sample_atoms(model, params, a, b, n)
        print(f"sampler check: {report['sampler_check']}", flush=True)

    ff = None
    if not args.no_learned:
        t0 = time.perf_counter()
        ff_run = args.ff_run
        if args.quick and not (ff_run / "checkpoints").exists():
            import tempfile

            ff_run = Path(tempfile.mkdtemp(prefix="guided_ff_"))  # never a 30-step model in runs/
        ff_model, ff_params, info = load_or_train_ff(ff_run, 30 if args.quick else args.ff_steps, args.quick)
        if ff_model.vocab.symbols != model.vocab.symbols:
            raise ValueError("the force field's vocabulary differs from the diffusion model's")
        info["load_or_train_s"] = round(time.perf_counter() - t0, 1)
        report["learned_force_field"] = info
        ff = (ff_model, ff_params)
        print(f"learned force field: {info}", flush=True)

    def timing() -> dict:
        a, b, n = SYSTEMS[0]
        sampler = SetSampler(model, params, a, b, n, cfg.sample.batch_size, args.steps, args.seed, *(ff or (None, None)))
        chosen = [("none", 0.0), ("emt", 1.0)] + ([("learned", 1.0)] if ff is not None else [])
        res = interleaved_timing(sampler, chosen, repeats=2 if args.quick else 3)
        return dict(system=f"{a}{b}", batch=cfg.sample.batch_size, steps=args.steps, seconds_per_sample=res,
                    compile_s=sampler.compile_s, load_average_1_5_15=_load())

    if args.timing_only:
        path = results / "guided.json"
        full = json.loads(path.read_text())
        full["timing_interleaved"] = timing()
        path.write_text(json.dumps(full, indent=1))
        print(f"timing: {full['timing_interleaved']}; updated {path}", flush=True)
        return 0

    reference = settings.reference_set(cfg, None)
    out = {}
    for k, (a, b, n) in enumerate(SYSTEMS):
        print(f"{a}{b} N={n}: {args.num} samples per setting, {args.steps} EM steps, load {_load()}", flush=True)
        ref_n = [s for s in reference if len(s) == n]
        out[f"{a}{b}"] = run_system(model, params, ff, a, b, n, args, ref_n)
    report["systems"] = out
    report["timing_interleaved"] = timing()
    print(f"timing: {report['timing_interleaved']}", flush=True)
    report["wall_s"] = round(time.perf_counter() - t_all)
    report["load_average_1_5_15"] = dict(start=load_start, end=_load())
    report["machine"] = f"{os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()})"
    if args.quick and args.results is None:
        print(json.dumps(report, indent=1)[:4000])
        return 0
    results.mkdir(parents=True, exist_ok=True)
    path = results / ("guided_quick.json" if args.quick else "guided.json")
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path} in {report['wall_s']} s", flush=True)
    plot(results, out, args.scales)
    print(f"wrote {results}/guided_energy.png, guided_cost.png", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
