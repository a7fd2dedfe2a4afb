"""Precision–recall curve of the model against the training data with synthetic baselines
(paper Fig. 6c) and a t-SNE map (Fig. 6b), on periodic SOAP features.

Positions are generated for ``--num-templates`` random training structures (their cell,
composition and layer group, guidance ``--w``). Every set is compared with the whole
(repaired) training set: the model's samples, the baselines (100 % / 50 % of the training
set with N(0, σ²) position noise) and the template subset itself without noise (the ideal
the model is aiming at with the same subsample size).

Features: atom-averaged SOAP, periodic in x, y (dscribe; r_cut 5 Å, n_max 6, l_max 4,
σ 0.5 Å). The paper used MACE-MPA-0 features, whose weights are not available here.
``--features agnostic`` (default) describes geometry only (one placeholder species): with
the composition given to the model and 62 elements, species-resolved SOAP mostly clusters
by element and hardly sees positions; ``--features species`` uses species-resolved SOAP.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from agedi_jax.checkpoint import load_model
from agedi_jax.data import load_c2db_csv
from agedi_jax.evaluation import (
    baseline_label,
    compute_prd_from_embedding,
    noised_baseline,
    plot_embedding,
    plot_prd_curves,
    prd_auc,
    soap_features,
    species_of,
    tsne_map,
)
from experiments.common import data_path
from experiments.two_d.guided_sampling import (
    layer_groups,
    sample_templates,
    validity_summary,
)

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", default=data_path("c2db/train.csv"))
    ap.add_argument("--num-templates", type=int, default=1000)
    ap.add_argument("--w", type=float, default=1.0, help="guidance weight of the samples")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--grid", default="uniform", choices=["uniform", "quadratic", "log"], help="time-grid spacing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2, 0.3])
    ap.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5])
    ap.add_argument("--features", choices=["agnostic", "species"], default="agnostic")
    ap.add_argument("--tsne-points", type=int, default=1000, help="training points in the t-SNE map")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--tag", default="")
    ap.add_argument("--save-samples", type=Path, default=None,
                    help="write the samples (extxyz) and stop: sample on a GPU, score elsewhere")
    ap.add_argument("--samples", type=Path, default=None,
                    help="score these samples (from --save-samples with the same --data, --num-templates, --seed)")
    args = ap.parse_args(argv)
    tag = args.tag or f"{args.features}"

    t_all = time.perf_counter()
    train = load_c2db_csv(args.data)
    ref = list(train.structures)
    rng = np.random.default_rng(args.seed)
    idx = np.sort(rng.choice(len(ref), size=min(args.num_templates, len(ref)), replace=False))
    templates = [ref[i] for i in idx]
    labels = np.asarray(train.labels)[idx]
    keep = labels > 0
    templates, labels, idx = [t for t, k in zip(templates, keep) if k], labels[keep], idx[keep]

    t0 = time.perf_counter()
    if args.samples is not None:
        import ase.io

        samples = ase.io.read(args.samples, index=":")
        if len(samples) != len(templates) or any(
            a.get_chemical_formula() != t.get_chemical_formula() for a, t in zip(samples, templates)
        ):
            raise SystemExit(f"{args.samples} does not hold the samples of these templates "
                             f"(--data, --num-templates and --seed must be those of --save-samples)")
    else:
        model, params, config = load_model(args.checkpoint)
        samples = sample_templates(model, params, templates, labels, [args.w], steps=args.steps,
                                   seed=args.seed, grid=args.grid)[args.w]
    sample_s = time.perf_counter() - t0
    if args.save_samples is not None:
        import ase.io

        args.save_samples.parent.mkdir(parents=True, exist_ok=True)
        ase.io.write(args.save_samples, samples, format="extxyz")
        print(f"wrote {len(samples)} samples to {args.save_samples} in {sample_s:.1f} s")
        return 0

    sets = {"AGeDi-JAX": samples}
    baselines = {f"templates {100 * len(idx) / len(ref):.0f}% σ=0": templates}
    for f in args.fractions:
        for s in args.sigmas:
            baselines[baseline_label(f, s)] = noised_baseline(ref, f, s, seed=args.seed)

    t0 = time.perf_counter()
    species = species_of(ref)
    kw = dict(element_agnostic=True) if args.features == "agnostic" else dict(species=species, sparse=True)
    feats_ref = soap_features(ref, periodic=True, **kw)
    feats = {k: soap_features(v, periodic=True, **kw) for k, v in {**sets, **baselines}.items()}
    soap_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    curves = {}
    for k, f in feats.items():
        p, r = compute_prd_from_embedding(f, feats_ref, enforce_balance=False, seed=args.seed)
        curves[k] = (p, r)
    prd_s = time.perf_counter() - t0
    aucs = {k: round(prd_auc(*c), 4) for k, c in curves.items()}
    for k, a in aucs.items():
        print(f"  AUC {a:.3f}  {k}")

    args.out.mkdir(parents=True, exist_ok=True)
    plot_prd_curves({k: curves[k] for k in sets}, {k: curves[k] for k in baselines},
                    path=args.out / f"prd_{tag}.png",
                    title=f"C2DB, periodic SOAP ({args.features}), w={args.w:g}")

    t0 = time.perf_counter()
    sub = rng.choice(len(ref), size=min(args.tsne_points, len(ref)), replace=False)
    ref_feats = feats_ref[sub] if not hasattr(feats_ref, "tocsr") else feats_ref.tocsr()[sub]
    emb_ref, emb_smp = tsne_map(ref_feats, feats["AGeDi-JAX"], seed=args.seed)
    plot_embedding({"training data": emb_ref, "AGeDi-JAX samples": emb_smp}, path=args.out / f"tsne_{tag}.png",
                   title=f"t-SNE of periodic SOAP ({args.features})")
    tsne_s = time.perf_counter() - t0

    lg = layer_groups(samples)
    result = dict(
        checkpoint=str(args.checkpoint), data=args.data, n_reference=len(ref), n_templates=len(templates),
        w=args.w, steps=args.steps, grid=args.grid, seed=args.seed, features=args.features, auc=aucs,
        curves={k: dict(precision=np.round(c[0], 4).tolist(), recall=np.round(c[1], 4).tolist())
                for k, c in curves.items()},
        layer_group_accuracy=float(np.mean(lg == labels)),
        validity_samples=validity_summary(samples), validity_templates=validity_summary(templates),
        seconds=dict(sampling=round(sample_s, 1), soap=round(soap_s, 1), prd=round(prd_s, 1),
                     tsne=round(tsne_s, 1), total=round(time.perf_counter() - t_all, 1)),
    )
    (args.out / f"prd_{tag}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "curves"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
