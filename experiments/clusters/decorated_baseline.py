"""A second baseline for the interpolation study (not in the paper): random decoration of the
mono-metallic GM cluster.

    python -m experiments.clusters.decorated_baseline --budget cpu     # after interpolate.py

For every interpolated AGeDi cluster A(N−n)B(n) of ``interpolate.py`` one baseline cluster
with the same composition is built: the QCD GM geometry of the majority element (A_N if
n ≤ N/2, else B_N), with randomly chosen sites given the minority element, then relaxed with
EMT exactly as the AGeDi and RSS clusters. This asks whether the model adds anything beyond
"take the mono-metallic motif and mix the elements" — a stronger baseline than RSS.

Writes ``results/<budget>/fig5_decorated.json`` and ``fig5_decorated.png`` (AGeDi, RSS and
decorated-GM formation energies, Eq. 21 with the same EMT-relaxed GM references).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from experiments.clusters import settings
from experiments.clusters.interpolate import SYSTEMS, qcd_clusters, relax_all, stats


def decorated(host, a: str, b: str, n_b: int, rng: np.random.Generator):
    """``host`` (a mono-element cluster of A or B) with exactly ``n_b`` B atoms on random sites."""
    atoms = host.copy()
    n = len(atoms)
    symbols = np.array([a] * n, dtype=object)
    symbols[rng.choice(n, size=n_b, replace=False)] = b
    atoms.set_chemical_symbols(list(symbols))
    atoms.calc = None
    return atoms


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    settings.add_study_arguments(ap, seed=11, quick="the first 4 samples per system; writes nothing", run=False)
    args = ap.parse_args(argv)

    from ase.io import read
    from scipy.stats import mannwhitneyu

    from agedi_jax.evaluation import formation_energy
    from agedi_jax.evaluation.plots import _pyplot

    results = args.results or settings.results_dir(args.budget)
    out = {}
    arrays = {}
    t_all = time.perf_counter()
    for k, (a, b, n) in enumerate(SYSTEMS):
        tag = f"{a}{b}"
        model = read(results / f"interpolated_{tag}.extxyz", ":4" if args.quick else ":")
        rss = read(results / f"rss_{tag}.extxyz", ":")
        f_model = np.array([s.info["formation_energy"] for s in model])
        f_rss = np.array([s.info["formation_energy"] for s in rss])
        gm = qcd_clusters((a, b), n, "gm")
        refs = {}
        for el in (a, b):
            _, e, _ = relax_all(gm[el])
            refs[el] = float(e.min()) / n
        rng = np.random.default_rng([args.seed, k])
        starts = []
        for s in model:
            n_b = s.get_chemical_symbols().count(b)
            if n_b <= n / 2:
                starts.append(decorated(gm[a][0], a, b, n_b, rng))
            else:
                starts.append(decorated(gm[b][0], b, a, n - n_b, rng))
        t0 = time.perf_counter()
        relaxed, energies, conv = relax_all(starts)
        dt = time.perf_counter() - t0
        f_dec = np.array([formation_energy(e, s.get_chemical_symbols(), refs) for s, e in zip(relaxed, energies)])
        arrays[tag] = (f_model, f_rss, f_dec)
        out[tag] = dict(
            n=len(model), references_eV_per_atom=refs, relax_converged=round(float(conv.mean()), 4),
            formation_energy=dict(agedi=stats(f_model), rss=stats(f_rss), decorated_gm=stats(f_dec)),
            agedi_below_decorated_median=round(float(np.mean(f_model < np.median(f_dec))), 4),
            mann_whitney_p_agedi_lower_than_decorated=float(mannwhitneyu(f_model, f_dec, alternative="less").pvalue),
            mann_whitney_p_decorated_lower_than_agedi=float(mannwhitneyu(f_dec, f_model, alternative="less").pvalue),
            relax_s=round(dt, 1),
        )
        print(tag, json.dumps(out[tag]["formation_energy"]), flush=True)

    if args.quick:
        return 0
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(arrays), figsize=(5.5 * len(arrays), 3.8), squeeze=False)
    for ax, ((a, b, n), (tag, (fm, fr, fd))) in zip(axes[0], zip(SYSTEMS, arrays.items())):
        bins = np.linspace(min(fm.min(), fr.min(), fd.min()), max(fm.max(), fr.max(), fd.max()), 40)
        for label, v in (("AGeDi (interpolation)", fm), ("RSS", fr), ("decorated GM", fd)):
            ax.hist(v, bins=bins, alpha=0.45, label=f"{label}: median {np.median(v) * 1000:.0f} meV/atom")
        ax.set_xlabel("formation energy, EMT (eV/atom)")
        ax.set_ylabel("count")
        ax.set_title(f"{a}$_{{{n}-n}}${b}$_n$")
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(results / "fig5_decorated.png", dpi=110)
    plt.close(fig)
    summary = dict(wall_s=round(time.perf_counter() - t_all), seed=args.seed, systems=out)
    (results / "fig5_decorated.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {results / 'fig5_decorated.json'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
