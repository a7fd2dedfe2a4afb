"""Layer-group accuracy versus classifier-free guidance weight (paper Fig. 7a), for any C2DB
CSV of the train/val format and any checkpoint.

For every structure of the CSV its cell, pbc, composition and layer group (spglib, symprec
0.1) are the template and the condition; positions are generated at each guidance weight
w (Eq. 19: w = 0 unconditional, 1 conditional, > 1 stronger), and the layer group of each
sample is compared with the condition. Prints the accuracy per w, per w for the most common
groups, the validity of the samples, and writes everything (per-structure groups included)
to ``--out``.

    python -m experiments.two_d.evaluate_cfg experiments/two_d/model \
        --data ../shared/data/c2db/val.csv --steps 100 --out experiments/two_d/results/cfg_val.json

``--positions repaired`` (default) computes the target layer groups from the repaired
positions (``c2db_fix.py``), the labels the model was trained on; ``--positions raw`` uses
the CSV as :func:`agedi_jax.data.load_c2db_csv` reads it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from agedi_jax.checkpoint import load_model
from agedi_jax.data import load_c2db_csv
from experiments.common import data_path
from experiments.two_d.guided_sampling import (
    layer_groups,
    sample_templates,
    validity_summary,
)

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def accuracy_table(targets: np.ndarray, predicted: dict[float, np.ndarray], top: int = 6) -> dict:
    """Overall accuracy per w and per target group for the ``top`` most common groups."""
    groups = [g for g, _ in Counter(targets.tolist()).most_common(top)]
    table = {}
    for w, pred in predicted.items():
        row = {"all": float(np.mean(pred == targets))}
        for g in groups:
            m = targets == g
            row[str(g)] = float(np.mean(pred[m] == g))
        table[w] = row
    return dict(n=int(len(targets)), groups=groups, counts={str(g): int(np.sum(targets == g)) for g in groups}, table=table)


def print_table(acc: dict, validity: dict | None = None, file=sys.stdout) -> None:
    groups = acc["groups"]
    head = f"{'w':>5} {'all':>6} " + " ".join(f"{'LG' + str(g):>6}" for g in groups)
    if validity:
        head += f" {'valid':>6} {'dmin50':>6}"
    print(head, file=file)
    print(f"{'n':>5} {acc['n']:>6} "
          + " ".join(f"{acc['counts'][str(g)]:>6}" for g in groups), file=file)
    for w, row in acc["table"].items():
        line = f"{w:5.2f} {row['all']:6.3f} " + " ".join(f"{row[str(g)]:6.3f}" for g in groups)
        if validity:
            v = validity[w]
            line += f" {v['frac_valid']:6.3f} {v['min_distance_p50']:6.2f}"
        print(line, file=file)


def plot_accuracy(acc: dict, path: Path, title: str = "") -> None:
    """Accuracy versus guidance weight, overall and for the most common groups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = sorted(acc["table"])
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(ws, [acc["table"][w]["all"] for w in ws], "k-o", lw=2, label=f"all ({acc['n']})")
    for g in acc["groups"]:
        ax.plot(ws, [acc["table"][w][str(g)] for w in ws], "--.", lw=1,
                label=f"LG {g} ({acc['counts'][str(g)]})")
    ax.set_xlabel("guidance weight w")
    ax.set_ylabel("layer-group accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, frameon=False, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path, help="run directory or checkpoint directory")
    ap.add_argument("--data", default=data_path("c2db/val.csv"), help="C2DB CSV (train/val format)")
    ap.add_argument("--positions", choices=["repaired", "raw"], default="repaired")
    ap.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS))
    ap.add_argument("--steps", type=int, default=100, help="Euler–Maruyama steps")
    ap.add_argument("--sampler", default="em", choices=["em", "pc", "ode"])
    ap.add_argument("--grid", default="uniform", choices=["uniform", "quadratic", "log"],
                    help="time-grid spacing (sample.grid)")
    ap.add_argument("--num", type=int, default=None, help="use the first NUM structures only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--top", type=int, default=6, help="most common groups in the table")
    ap.add_argument("--no-ema", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="JSON with the table and per-structure groups")
    ap.add_argument("--plot", type=Path, default=None, help="PNG of accuracy versus w (Fig. 7a)")
    ap.add_argument("--samples-out", type=Path, default=None, help="extxyz of all samples (info: label, guidance)")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    ds = load_c2db_csv(args.data, repair_positions=args.positions == "repaired")
    structures, targets = list(ds.structures), np.asarray(ds.labels, int)
    if args.num is not None:
        structures, targets = structures[: args.num], targets[: args.num]
    unlabelled = targets == 0
    if unlabelled.any():
        print(f"note: {int(unlabelled.sum())} structures have no layer group (spglib failed): left out")
        structures = [s for s, u in zip(structures, unlabelled) if not u]
        targets = targets[~unlabelled]
    model, params, config = load_model(args.checkpoint, use_ema=not args.no_ema)
    unknown = sorted({s for a in structures for s in a.get_chemical_symbols()} - set(model.vocab.symbols))
    if unknown:
        raise SystemExit(f"elements {unknown} of {args.data} are not in the model's vocabulary")
    print(f"{len(structures)} structures from {args.data} ({args.positions} positions); "
          f"model {config.model.network} {config.model.features}x{config.model.num_layers}; "
          f"{args.steps} {args.sampler} steps ({args.grid} grid); weights {args.weights}", flush=True)

    t0 = time.perf_counter()
    samples = sample_templates(model, params, structures, targets, args.weights, steps=args.steps,
                               seed=args.seed, batch_size=args.batch_size, sampler=args.sampler,
                               grid=args.grid)
    sample_s = time.perf_counter() - t0
    predicted = {w: layer_groups(s) for w, s in samples.items()}
    validity = {w: validity_summary(s) for w, s in samples.items()}
    acc = accuracy_table(targets, predicted, args.top)
    print()
    print_table(acc, validity)
    result = dict(
        data=str(args.data), positions=args.positions, checkpoint=str(args.checkpoint), steps=args.steps,
        sampler=args.sampler, grid=args.grid, seed=args.seed, n=len(structures), weights=args.weights,
        accuracy=acc, validity=validity, sample_seconds=round(sample_s, 1),
        total_seconds=round(time.perf_counter() - t_start, 1),
        targets=targets.tolist(), predicted={str(w): p.tolist() for w, p in predicted.items()},
        material_ids=[a.info.get("material_id") for a in structures],
        predicted_distribution={str(w): dict(Counter(p.tolist()).most_common(10)) for w, p in predicted.items()},
    )
    print(f"\nsampling {sample_s:.0f} s, total {result['total_seconds']:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    if args.plot:
        plot_accuracy(acc, args.plot, title=f"{Path(args.data).name}, {args.steps} {args.sampler} steps, {args.grid} grid")
    if args.samples_out:
        from ase.io import write

        args.samples_out.parent.mkdir(parents=True, exist_ok=True)
        write(args.samples_out, [a for s in samples.values() for a in s], format="extxyz")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
