"""Evaluate the cluster models against their training data (paper Fig. 4b, 4c and the
"only mono-metallic clusters are sampled" claim of Sec. III A).

    python -m experiments.clusters.evaluate --budget cpu            # both subsets
    python -m experiments.clusters.evaluate --budget cpu --subset gm

For each subset with samples (``sample.py``) and for three feature protocols:

* ``paper``: species-resolved SOAP averaged over atoms, k-means with 20 clusters, 10 runs
  (Sajjadi et al. defaults; the paper's protocol);
* ``agnostic``: the same with element-agnostic SOAP (geometry only), 20 clusters;
* ``agnostic100``: element-agnostic SOAP with 100 clusters (finer bins);

PRD curves of the samples and of the synthetic baselines (100 % and 50 % subsamples of the
reference, σ = 0, 0.05, 0.1, 0.2, 0.3 Å position noise) against the reference, their AUC;
validity (minimum distance, connectivity), the mono-element fraction; t-SNE of reference and
samples (paper protocol features). Writes ``results/<budget>/fig4.json``, ``prd_<protocol>.png``,
``tsne.png``, ``min_distance.png`` and per-run details under ``results/<budget>/eval/``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from experiments.clusters import settings
from experiments.common import save_figure

PROTOCOLS = {
    "paper": dict(element_agnostic=False, num_clusters=20),
    "agnostic": dict(element_agnostic=True, num_clusters=20),
    "agnostic100": dict(element_agnostic=True, num_clusters=100),
}
TITLES = {"gm": "GM (N < 30)", "de200": "ΔE < 200 meV"}


def load_pair(budget: str, subset: str, results: Path):
    """(samples, reference, sampling metadata) of one subset."""
    from ase.io import read

    from agedi_jax.checkpoint import checkpoint_dir, load_config_and_vocab

    meta = json.loads((results / f"samples_{subset}.json").read_text())
    samples = read(results / f"samples_{subset}.extxyz", ":")
    for a in samples:
        a.pbc = False
    config, _, _ = load_config_and_vocab(checkpoint_dir(meta["run"]))
    reference = settings.reference_set(config, meta["max_reference"])
    if sorted(map(len, samples)) != sorted(map(len, reference)):
        raise ValueError(f"{subset}: samples and reference differ in their atom counts; rerun sample.py")
    return samples, reference, meta


def training_summary(run: Path) -> dict:
    """Steps, wall time (from the logged rates) and the last losses of a run."""
    from agedi_jax.runlog import read_metrics

    recs = read_metrics(run / "metrics.jsonl")
    train = [r for r in recs if r["split"] == "train"]
    val = [r for r in recs if r["split"] == "val"]
    wall = 0.0
    prev = 0
    for r in train:
        wall += (r["step"] - prev) / max(r["steps_per_s"], 1e-9)
        prev = r["step"]
    last = lambda rs: {k: round(float(v), 4) for k, v in rs[-1].items() if k.startswith("loss")} if rs else {}
    best = min(val, key=lambda r: r["loss"]) if val else None
    return dict(steps=train[-1]["step"] if train else 0, train_wall_s=round(wall), last_train=last(train),
                last_val=last(val), best_val_step=best["step"] if best else None,
                best_val_loss=round(best["loss"], 4) if best else None)


def figures(results: Path, protocols) -> None:
    """PRD per protocol (one panel per model), t-SNE maps and minimum-distance histograms,
    from the files under ``results`` (so subsets evaluated in separate calls share figures)."""
    from ase.io import read

    from agedi_jax.evaluation.plots import _pyplot, plot_prd_curves
    from agedi_jax.evaluation.validity import validity

    plt = _pyplot()
    subsets = [s for s in settings.SUBSETS if (results / f"samples_{s}.json").exists()]
    for name in protocols:
        have = [s for s in subsets if (results / "eval" / f"{s}_{name}" / "prd_curves.npz").exists()]
        if not have:
            continue
        fig, axes = plt.subplots(1, len(have), figsize=(5.2 * len(have), 5.2), squeeze=False)
        for ax, subset in zip(axes[0], have):
            z = np.load(results / "eval" / f"{subset}_{name}" / "prd_curves.npz")
            c = {str(k): (p, r) for k, p, r in zip(z["names"], z["precision"], z["recall"])}
            plot_prd_curves({"AGeDi": c.pop("AGeDi")}, baselines=c, ax=ax, title=f"{TITLES[subset]} — {name} SOAP")
        save_figure(fig, results / f"prd_{name}.png")
    have = [s for s in subsets if (results / "eval" / f"{s}_tsne.npz").exists()]
    if have:
        fig, axes = plt.subplots(2, len(have), figsize=(5 * len(have), 10), squeeze=False)
        for j, subset in enumerate(have):
            z = np.load(results / "eval" / f"{subset}_tsne.npz")
            for i, kind in enumerate(("paper", "agnostic")):
                ax = axes[i, j]
                e_ref, e_s = z[f"{kind}_reference"], z[f"{kind}_samples"]
                ax.scatter(e_s[:, 0], e_s[:, 1], s=5, alpha=0.5, color="C1", label=f"AGeDi samples ({len(e_s)})")
                ax.scatter(e_ref[:, 0], e_ref[:, 1], s=5, alpha=0.5, color="C0", label=f"training data ({len(e_ref)})")
                ax.set_xticks([]), ax.set_yticks([])
                what = "species-resolved SOAP" if kind == "paper" else "element-agnostic SOAP"
                ax.set_title(f"{TITLES[subset]}: t-SNE, {what}", fontsize=10)
                ax.legend(fontsize=8, markerscale=2, frameon=False)
        save_figure(fig, results / "tsne.png", dpi=100)
    # the sample files are not committed (size): plot the subsets whose samples are here
    subsets = [s for s in subsets if (results / f"samples_{s}.extxyz").exists()]
    if subsets:
        fig, axes = plt.subplots(1, len(subsets), figsize=(5 * len(subsets), 3.5), squeeze=False)
        for ax, subset in zip(axes[0], subsets):
            meta = json.loads((results / f"samples_{subset}.json").read_text())
            samples = read(results / f"samples_{subset}.extxyz", ":")
            for a in samples:
                a.pbc = False
            from agedi_jax.checkpoint import checkpoint_dir, load_config_and_vocab

            config, _, _ = load_config_and_vocab(checkpoint_dir(meta["run"]))
            d_ref = np.asarray(validity(settings.reference_set(config, meta["max_reference"]))["min_distance"])
            d_s = np.asarray(validity(samples)["min_distance"])
            bins = np.linspace(0, max(4.0, float(np.nanmax(d_ref))), 60)
            ax.hist(np.clip(d_ref, 0, bins[-1]), bins=bins, alpha=0.5, label="training data")
            ax.hist(np.clip(d_s, 0, bins[-1]), bins=bins, alpha=0.5, label="AGeDi samples")
            ax.set_xlabel("shortest interatomic distance (Å)")
            ax.set_title(TITLES[subset])
            ax.legend(fontsize=8, frameon=False)
        save_figure(fig, results / "min_distance.png")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", choices=settings.BUDGETS, default="cpu")
    ap.add_argument("--subset", choices=settings.SUBSETS, nargs="+", default=list(settings.SUBSETS))
    ap.add_argument("--protocols", nargs="*", choices=list(PROTOCOLS), default=list(PROTOCOLS),
                    help="PRD protocols to (re)compute; none = only t-SNE and figures")
    ap.add_argument("--results", type=Path, default=None, help="default results/<budget>")
    ap.add_argument("--quick", action="store_true", help="2 k-means runs, no t-SNE")
    args = ap.parse_args(argv)

    from agedi_jax.evaluation import evaluate

    results = args.results or settings.results_dir(args.budget)
    summary_path = results / "fig4.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for subset in args.subset:
        if not (results / f"samples_{subset}.json").exists():
            print(f"no samples for {subset} in {results}; skipped", flush=True)
            continue
        samples, reference, meta = load_pair(args.budget, subset, results)
        entry = summary.get(subset, {})
        entry.update(sampling=meta, training=training_summary(Path(meta["run"])),
                     n_samples=len(samples), n_reference=len(reference))
        entry.setdefault("prd", {})
        for name in args.protocols:
            proto = dict(PROTOCOLS[name])
            if args.quick:  # tiny smoke sets cannot hold 100 k-means clusters
                proto["num_clusters"] = min(proto["num_clusters"], (len(samples) + len(reference)) // 4)
            t0 = time.perf_counter()
            res = evaluate(samples, reference, results / "eval" / f"{subset}_{name}",
                           num_runs=2 if args.quick else 10, tsne=False, plots=False,
                           sample_name="AGeDi", **proto)
            dt = time.perf_counter() - t0
            print(f"{subset} {name}: " + ", ".join(f"{k} {v['auc']:.3f}" for k, v in res["prd"].items())
                  + f"  ({dt:.0f} s)", flush=True)
            entry["prd"][name] = dict(protocol=proto, auc={k: round(v["auc"], 4) for k, v in res["prd"].items()},
                                      f8={k: round(v["f_beta"], 4) for k, v in res["prd"].items()},
                                      f1_8={k: round(v["f_beta_inv"], 4) for k, v in res["prd"].items()},
                                      seconds=round(dt))
            if name == "paper":
                entry["validity"] = res["validity"]
                entry["validity_reference"] = res["validity_reference"]
                comp = res["composition"]
                entry["composition"] = dict(
                    fraction_monoelement=comp["fraction_monoelement"],
                    fraction_monoelement_reference=res["composition_reference"]["fraction_monoelement"],
                    n_elements_sampled=len(comp["element_structure_counts"]),
                    n_elements_reference=len(res["composition_reference"]["element_structure_counts"]),
                    element_structure_counts=comp["element_structure_counts"],
                    top_formulas=comp["top_formulas"],
                )
        mixed = [a.get_chemical_formula() for a in samples if len(set(a.get_chemical_symbols())) > 1]
        entry.setdefault("composition", {})["mixed_examples"] = mixed[:20]
        if not args.quick:
            t0 = time.perf_counter()
            from agedi_jax.evaluation import soap_features, species_of, tsne_map

            species = species_of(samples, reference)
            maps = {}
            for kind, agnostic in (("paper", False), ("agnostic", True)):
                f_ref = soap_features(reference, species=species, sparse=True, element_agnostic=agnostic)
                f_s = soap_features(samples, species=species, sparse=True, element_agnostic=agnostic)
                e_ref, e_s = tsne_map(f_ref, f_s, seed=0)
                maps[f"{kind}_reference"], maps[f"{kind}_samples"] = e_ref, e_s
            (results / "eval").mkdir(parents=True, exist_ok=True)
            np.savez(results / "eval" / f"{subset}_tsne.npz", **maps)
            entry["tsne_seconds"] = round(time.perf_counter() - t0)
        summary[subset] = entry
    figures(results, list(PROTOCOLS))
    results.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2))
    print(f"wrote {summary_path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
