"""The SnBr2-type case (paper Fig. 7b): an MX2 composition that can take p-3m1 (layer group
72, the 1T phase) or p-6m2 (78, the 2H phase). Without guidance, which phase does the model
generate, and does guidance toward the other phase produce it?

1. SnBr2: the two C2DB training cells (SnBr2-8d365ca62c55, 2H, a = 4.22 Å, group 78;
   SnBr2-a41087b2c98b, 1T, a = 4.39 Å, group 72) and an ASE ``mx2`` cell at the mean
   lattice constant (4.30 Å, c and vacuum as the C2DB cells). Per cell ``--copies`` samples
   unconditionally (w = 0) and conditioned on 72 and on 78 at each w.
2. All MX2 formulas (3-atom cells) with both a 72 and a 78 entry in the training data: in the
   cell of each phase, conditioned on its own and on the other phase, at each w.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
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

HERE = Path(__file__).resolve().parent
P3M1, P6M2 = 72, 78


def snbr2_cells(train) -> dict:
    """{name: template Atoms} for the SnBr2 case (positions are irrelevant: generated)."""
    from ase.build import mx2

    cells = {}
    for a, lab in zip(train.structures, train.labels):
        if a.get_chemical_formula() == "Br2Sn" and int(lab) in (P3M1, P6M2):
            cells[f"C2DB {a.info['material_id']} (LG {int(lab)}, a={a.cell.lengths()[0]:.2f} Å)"] = a
    if len(cells) < 2:
        print("note: SnBr2 1T/2H entries not both found in the training data")
    lengths = [a.cell.lengths()[0] for a in cells.values()] or [4.30]
    c = float(np.mean([a.cell.lengths()[2] for a in cells.values()])) if cells else 18.5
    a0 = float(np.mean(lengths))
    proto = mx2("SnBr2", kind="1T", a=a0, thickness=3.0, vacuum=(c - 3.0) / 2)
    proto.pbc = (True, True, False)
    cells[f"ASE mx2 prototype (a={a0:.2f} Å)"] = proto
    return cells


def dist(groups: np.ndarray) -> dict:
    n = len(groups)
    c = Counter(int(g) for g in groups)
    return {"72": round(c.get(P3M1, 0) / n, 3), "78": round(c.get(P6M2, 0) / n, 3),
            "other": round(1 - (c.get(P3M1, 0) + c.get(P6M2, 0)) / n, 3), "n": n,
            "top": dict(c.most_common(4))}


def part_snbr2(model, params, train, weights, copies, steps, seed, grid="uniform") -> dict:
    cells = snbr2_cells(train)
    templates, labels, names = [], [], []
    for name, a in cells.items():
        for lab in (P3M1, P6M2):
            templates += [a] * copies
            labels += [lab] * copies
            names += [name] * copies
    samples = sample_templates(model, params, templates, labels, weights, steps=steps, seed=seed, grid=grid)
    names, labels = np.array(names), np.array(labels)
    out: dict = {}
    for name in cells:
        row = {}
        for w, s in samples.items():
            g = layer_groups([x for x, n in zip(s, names) if n == name])
            lab = labels[names == name]
            if w == 0.0:
                row["w=0 (unconditional)"] = dist(g)
            else:
                for target in (P3M1, P6M2):
                    row[f"w={w:g} -> {target}"] = dist(g[lab == target])
        out[name] = row
    allv = {str(w): validity_summary(s) for w, s in samples.items()}
    return dict(cells=out, validity=allv)


def part_mx2(model, params, train, weights, steps, seed, grid="uniform") -> dict:
    by = defaultdict(dict)
    for a, lab in zip(train.structures, train.labels):
        if len(a) == 3 and int(lab) in (P3M1, P6M2) and int(lab) not in by[a.get_chemical_formula()]:
            by[a.get_chemical_formula()][int(lab)] = a
    formulas = sorted(f for f, d in by.items() if len(d) == 2)
    templates, labels, phase = [], [], []
    for f in formulas:
        for cell_phase in (P3M1, P6M2):
            for lab in (P3M1, P6M2):
                templates.append(by[f][cell_phase])
                labels.append(lab)
                phase.append(cell_phase)
    samples = sample_templates(model, params, templates, labels, weights, steps=steps, seed=seed, grid=grid)
    labels, phase = np.array(labels), np.array(phase)
    table = {}
    for w, s in samples.items():
        g = layer_groups(s)
        for cp in (P3M1, P6M2):
            if w == 0.0:
                table[f"cell {cp}, w=0 (unconditional)"] = dist(g[phase == cp])
            else:
                for lab in (P3M1, P6M2):
                    table[f"cell {cp}, w={w:g} -> {lab}"] = dist(g[(phase == cp) & (labels == lab)])
    return dict(n_formulas=len(formulas), formulas=formulas, table=table)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", default=data_path("c2db/train.csv"))
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 3.0])
    ap.add_argument("--copies", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--grid", default="uniform", choices=["uniform", "quadratic", "log"], help="time-grid spacing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-mx2", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "snbr2.json")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    train = load_c2db_csv(args.data)
    model, params, _ = load_model(args.checkpoint)
    res = dict(checkpoint=str(args.checkpoint), steps=args.steps, grid=args.grid, seed=args.seed, weights=args.weights)
    res["snbr2"] = part_snbr2(model, params, train, args.weights, args.copies, args.steps, args.seed, args.grid)
    for name, row in res["snbr2"]["cells"].items():
        print(name)
        for k, v in row.items():
            print(f"   {k:24s} p-3m1 {v['72']:.2f}  p-6m2 {v['78']:.2f}  other {v['other']:.2f}   {v['top']}")
    if not args.skip_mx2:
        res["mx2"] = part_mx2(model, params, train, args.weights, args.steps, args.seed, args.grid)
        print(f"all {res['mx2']['n_formulas']} MX2 formulas with both phases in the training data:")
        for k, v in res["mx2"]["table"].items():
            print(f"   {k:32s} p-3m1 {v['72']:.2f}  p-6m2 {v['78']:.2f}  other {v['other']:.2f}")
    res["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out} ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
