"""Bimetallic clusters by type interpolation (paper Eq. 20, Sec. III A, Fig. 5) from the GM
model, with EMT in place of MACE + DFT.

    python -m experiments.clusters.interpolate --budget cpu --num 192
    python -m experiments.clusters.interpolate --quick                 # 8 samples, 20 steps

For Pt(12−n)Cu(n) and Pd(13−n)Ag(n): ``num`` clusters are sampled from the GM model with
``interpolate=(A, B)`` and only the number of atoms given (the model picks the composition);
every cluster is relaxed with EMT (FIRE, fmax 0.05 eV/Å, ≤ 500 steps; batched in JAX since
issue 17, the ASE loop's minima within the FIRE tolerance); formation
energies follow Eq. 21 with per-atom references from the QCD GM clusters A_N and B_N relaxed
the same way. A random structure search (RSS: random connected starts in a sphere, same
relaxation) is run for the same compositions with the same number of structures.

Writes ``results/<budget>/fig5.json`` (medians, per-composition tables, timings),
``fig5_histograms.png``, ``fig5_by_composition.png``, ``fig5_tsne.png`` and the relaxed
clusters ``interpolated_<A><B>.extxyz`` / ``rss_<A><B>.extxyz``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from experiments.clusters import settings
from experiments.common import save_figure

SYSTEMS = (("Pt", "Cu", 12), ("Pd", "Ag", 13))
COLORS = {"Pt": "#4c72b0", "Cu": "#dd8452", "Pd": "#55a868", "Ag": "#8172b3"}


def qcd_clusters(elements, n_atoms: int, subset: str | None) -> dict[str, list]:
    """QCD clusters of the given elements and size (``subset`` "gm" or None = all polymorphs)."""
    from agedi_jax.data import load_qcd

    ds = load_qcd(settings.data_dir(), subset=subset, elements=list(elements))
    out: dict[str, list] = {e: [] for e in elements}
    for a in ds.structures:
        if len(a) == n_atoms:
            b = a.copy()
            b.calc = None
            out[a.info["element"]].append(b)
    return out


def relax_all(structures, log_every: int = 0, label: str = "") -> tuple[list, np.ndarray, np.ndarray]:
    """EMT-relax every structure (FIRE, fmax 0.05 eV/Å, ≤ 500 steps; batched in JAX by
    :func:`agedi_jax.evaluation.energetics.relax_many`): (relaxed, energy [n] eV, converged [n])."""
    from agedi_jax.evaluation.energetics import relax_many

    t0 = time.perf_counter()
    relaxed, energies, conv = relax_many(list(structures))
    if log_every:
        print(f"    {label} relaxed {len(relaxed)} in {time.perf_counter() - t0:.1f} s", flush=True)
    return relaxed, energies, conv


def formation(structures, energies, references: dict) -> np.ndarray:
    """Formation energies (eV/atom, Eq. 21) of ``structures`` with total ``energies`` (eV)
    against per-atom ``references`` (eV/atom by element)."""
    from agedi_jax.evaluation import formation_energy

    return np.array([formation_energy(e, s.get_chemical_symbols(), references) for s, e in zip(structures, energies)])


def relaxed_formation_energies(structures, references: dict, log_every: int = 0,
                               label: str = "") -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """EMT-relax ``structures`` (:func:`relax_all`) and score them by Eq. 21 against
    ``references``: (relaxed, energy [n] eV, formation energy [n] eV/atom, converged [n])."""
    relaxed, energies, conv = relax_all(structures, log_every, label)
    return relaxed, energies, formation(relaxed, energies, references), conv


def reference_energies(clusters: dict[str, list], n_atoms: int) -> dict[str, float]:
    """Per-atom references of Eq. 21 (eV/atom by element): the lowest EMT energy of each
    element's ``n_atoms``-atom clusters after relaxation (:func:`relax_all`)."""
    return {el: float(relax_all(group)[1].min()) / n_atoms for el, group in clusters.items()}


def system_title(system: str) -> str:
    """A system name such as ``Pt(12-n)Cu(n)`` with its counts as mathtext subscripts."""
    return system.replace("(", "$_{").replace(")", "}$")


def single_points(structures) -> np.ndarray:
    """EMT energies (eV) of structures as they are."""
    from agedi_jax.evaluation import get_calculator

    out = []
    for a in structures:
        b = a.copy()
        b.calc = get_calculator(None, b.get_chemical_symbols())
        out.append(float(b.get_potential_energy()))
    return np.asarray(out)


def stats(x) -> dict:
    x = np.asarray(x, float)
    if x.size == 0:
        return dict(n=0)
    return dict(n=int(x.size), median=round(float(np.median(x)), 4), mean=round(float(x.mean()), 4),
                min=round(float(x.min()), 4), q25=round(float(np.quantile(x, 0.25)), 4),
                q75=round(float(np.quantile(x, 0.75)), 4))


def run_system(model, params, a: str, b: str, n: int, *, num: int, steps: int, seed: int, results: Path) -> dict:
    from ase.io import write

    from agedi_jax.evaluation import random_structure_search, validity
    from agedi_jax.generate import sample_atoms

    tag = f"{a}{b}"
    timings = {}
    # References (Eq. 21): QCD GM clusters A_N, B_N relaxed with EMT; all QCD polymorphs too.
    t0 = time.perf_counter()
    gm = qcd_clusters((a, b), n, "gm")
    every = qcd_clusters((a, b), n, None)
    refs, refs_all = reference_energies(gm, n), reference_energies(every, n)
    timings["references_s"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    samples = sample_atoms(model, params, n_atoms=n, num_samples=num, interpolate=(a, b), steps=steps, seed=seed)
    timings["sampling_s"] = round(time.perf_counter() - t0, 1)
    for s in samples:
        s.pbc = False
    raw_validity = validity(samples)
    ok_elements = all(set(s.get_chemical_symbols()) <= {a, b} for s in samples)
    e_raw = single_points(samples)

    t0 = time.perf_counter()
    relaxed, e_model, f_model, conv_model = relaxed_formation_energies(samples, refs, log_every=64,
                                                                       label=f"{tag} AGeDi")
    timings["relax_agedi_s"] = round(time.perf_counter() - t0, 1)
    comps = Counter(int(s.get_chemical_symbols().count(b)) for s in samples)

    t0 = time.perf_counter()
    rss, e_rss_list, conv_rss_list, comp_rss = [], [], [], []
    for k, (n_b, count) in enumerate(sorted(comps.items())):
        got = random_structure_search({a: n - n_b, b: n_b}, count, seed=seed * 100 + n_b)
        rss += got
        e_rss_list += [g.info["energy"] for g in got]
        conv_rss_list += [g.info["relax_converged"] for g in got]
        comp_rss += [n_b] * count
    timings["rss_s"] = round(time.perf_counter() - t0, 1)
    e_rss = np.asarray(e_rss_list)

    f_rss = formation(rss, e_rss, refs)
    f_model_all = formation(relaxed, e_model, refs_all)
    f_rss_all = formation(rss, e_rss, refs_all)
    n_b_model = np.array([s.get_chemical_symbols().count(b) for s in relaxed])
    n_b_rss = np.asarray(comp_rss)
    for s, f in zip(relaxed + rss, np.concatenate([f_model, f_rss])):
        s.info["formation_energy"] = float(f)
        s.calc = None
    write(results / f"interpolated_{tag}.extxyz", relaxed, format="extxyz")
    write(results / f"rss_{tag}.extxyz", rss, format="extxyz")

    bimetallic_m = (n_b_model > 0) & (n_b_model < n)
    bimetallic_r = (n_b_rss > 0) & (n_b_rss < n)
    per_comp = []
    for n_b in sorted(comps):
        fm, fr = f_model[n_b_model == n_b], f_rss[n_b_rss == n_b]
        per_comp.append(dict(formula=f"{a}{n - n_b}{b}{n_b}", n_b=n_b, count=int(comps[n_b]),
                             agedi=stats(fm), rss=stats(fr),
                             agedi_below_rss_median=round(float(np.mean(fm < np.median(fr))), 3)))
    from scipy.stats import mannwhitneyu

    p_less = float(mannwhitneyu(f_model, f_rss, alternative="less").pvalue)
    return dict(
        system=f"{a}({n}-n){b}(n)", n_atoms=n, num_samples=num, steps=steps, seed=seed,
        only_a_b=ok_elements,
        composition_counts={int(k): int(v) for k, v in sorted(comps.items())},
        fraction_bimetallic=round(float(np.mean(bimetallic_m)), 4),
        raw_validity={k: raw_validity[k] for k in ("frac_valid", "frac_distance_ok", "frac_connected")},
        raw_min_distance_median=round(float(np.median(raw_validity["min_distance"])), 3),
        references_eV_per_atom=dict(gm=refs, all_polymorphs=refs_all,
                                    n_gm={el: len(gm[el]) for el in (a, b)},
                                    n_all={el: len(every[el]) for el in (a, b)}),
        relax_converged=dict(agedi=round(float(conv_model.mean()), 4), rss=round(float(np.mean(conv_rss_list)), 4)),
        emt_energy_unrelaxed_per_atom=stats(e_raw / n),
        formation_energy=dict(agedi=stats(f_model), rss=stats(f_rss),
                              agedi_bimetallic=stats(f_model[bimetallic_m]), rss_bimetallic=stats(f_rss[bimetallic_r]),
                              agedi_all_polymorph_refs=stats(f_model_all), rss_all_polymorph_refs=stats(f_rss_all)),
        agedi_below_rss_median=round(float(np.mean(f_model < np.median(f_rss))), 4),
        mann_whitney_p_agedi_lower=p_less,
        per_composition=per_comp,
        timings=timings,
        _arrays=dict(f_model=f_model, f_rss=f_rss, n_b_model=n_b_model, n_b_rss=n_b_rss, samples=samples),
    )


def plot(results: Path, out: dict, training: dict) -> None:
    from agedi_jax.evaluation.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(out), figsize=(5.5 * len(out), 3.8), squeeze=False)
    for ax, (tag, r) in zip(axes[0], out.items()):
        arr = r["_arrays"]
        lo = min(arr["f_model"].min(), arr["f_rss"].min())
        hi = max(arr["f_model"].max(), arr["f_rss"].max())
        bins = np.linspace(lo, hi, 40)
        for label, v in (("AGeDi (interpolation)", arr["f_model"]), ("RSS", arr["f_rss"])):
            ax.hist(v, bins=bins, alpha=0.55, label=f"{label}: median {np.median(v) * 1000:.0f} meV/atom")
            ax.axvline(np.median(v), color="k", lw=0.8, ls=":")
        ax.set_xlabel("formation energy, EMT (eV/atom)")
        ax.set_ylabel("count")
        ax.set_title(system_title(r["system"]))
        ax.legend(fontsize=8, frameon=False)
    save_figure(fig, results / "fig5_histograms.png")

    fig, axes = plt.subplots(1, len(out), figsize=(5.5 * len(out), 3.8), squeeze=False)
    for ax, (tag, r) in zip(axes[0], out.items()):
        rows = r["per_composition"]
        nb = [row["n_b"] for row in rows]
        for key, marker in (("agedi", "o"), ("rss", "s")):
            med = [row[key]["median"] for row in rows]
            mn = [row[key]["min"] for row in rows]
            line, = ax.plot(nb, med, marker + "-", label=f"{'AGeDi' if key == 'agedi' else 'RSS'} median")
            ax.plot(nb, mn, marker + "--", color=line.get_color(), alpha=0.6, label=f"{'AGeDi' if key == 'agedi' else 'RSS'} min")
        ax2 = ax.twinx()
        ax2.bar(nb, [row["count"] for row in rows], alpha=0.15, color="gray")
        ax2.set_ylabel("samples per composition", color="gray")
        ax.set_xlabel(f"n ({tag[2:]} atoms)")
        ax.set_ylabel("formation energy, EMT (eV/atom)")
        ax.set_title(system_title(r["system"]))
        ax.legend(fontsize=7, frameon=False)
    save_figure(fig, results / "fig5_by_composition.png")

    # Fig. 5a: t-SNE of the GM training clusters of the four metals and the (unrelaxed) samples.
    from agedi_jax.evaluation import soap_features, tsne_map

    species = ["Cu", "Pd", "Ag", "Pt"]
    samples = [s for r in out.values() for s in r["_arrays"]["samples"]]
    frac = []
    for (a, b, n), r in zip(SYSTEMS, out.values()):
        frac += list(r["_arrays"]["n_b_model"] / n)
    f_t = soap_features(training["structures"], species=species)
    f_s = soap_features(samples, species=species)
    e_t, e_s = tsne_map(f_t, f_s, seed=0)
    fig, ax = plt.subplots(figsize=(6, 5))
    for el in species:
        m = np.array([e == el for e in training["elements"]])
        ax.scatter(e_t[m, 0], e_t[m, 1], s=30, marker="*", color=COLORS[el], label=f"{el} GM training", edgecolor="k", lw=0.3)
    start = 0
    for (a, b, n), r in zip(SYSTEMS, out.values()):
        k = len(r["_arrays"]["samples"])
        fr = np.asarray(frac[start:start + k])
        ca, cb = np.array(plt.matplotlib.colors.to_rgb(COLORS[a])), np.array(plt.matplotlib.colors.to_rgb(COLORS[b]))
        cols = (1 - fr)[:, None] * ca + fr[:, None] * cb
        ax.scatter(e_s[start:start + k, 0], e_s[start:start + k, 1], s=8, c=cols, alpha=0.8,
                   label=f"{a}{n}−n{b}n samples")
        start += k
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title("t-SNE (SOAP): interpolated clusters and GM training data")
    ax.legend(fontsize=7, frameon=False)
    save_figure(fig, results / "fig5_tsne.png")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    settings.add_study_arguments(ap, seed=7, quick="8 samples, 20 steps", steps=True)
    ap.add_argument("--num", type=int, default=192, help="samples (and RSS structures) per system")
    args = ap.parse_args(argv)

    from agedi_jax.checkpoint import load_model

    results = args.results or settings.results_dir(args.budget)
    results.mkdir(parents=True, exist_ok=True)
    num, steps = args.num, args.steps or settings.SAMPLE_STEPS[args.budget]
    if args.quick:
        num, steps = 8, 20
    run = args.run or settings.run_dir(args.budget, "gm")
    model, params, _ = load_model(run)
    t_all = time.perf_counter()
    out = {}
    for k, (a, b, n) in enumerate(SYSTEMS):
        print(f"{a}{b} N={n}: {num} samples, {steps} EM steps", flush=True)
        out[f"{a}{b}"] = run_system(model, params, a, b, n, num=num, steps=steps, seed=args.seed + k, results=results)
        r = out[f"{a}{b}"]
        fe = r["formation_energy"]
        print(f"  compositions {r['composition_counts']}; median E_form AGeDi {fe['agedi']['median']:.3f}, "
              f"RSS {fe['rss']['median']:.3f} eV/atom; {r['timings']}", flush=True)
    from agedi_jax.data import load_qcd

    gm4 = load_qcd(settings.data_dir(), subset="gm", elements=["Pt", "Cu", "Pd", "Ag"])
    training = dict(structures=gm4.structures, elements=[a.info["element"] for a in gm4.structures])
    plot(results, out, training)
    for r in out.values():
        r.pop("_arrays")
    summary = dict(run=str(run), wall_s=round(time.perf_counter() - t_all),
                   calculator="EMT (JAX FIRE via energetics.relax_many; ASE before issue 17)",
                   relax=dict(optimizer="FIRE", fmax=0.05, steps=500), systems=out)
    (results / "fig5.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {results / 'fig5.json'} in {summary['wall_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
