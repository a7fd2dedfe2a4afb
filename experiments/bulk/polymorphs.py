"""Add to ``results/<name>.json`` how many validation structures have a *polymorph* in the
training split (same reduced formula, but no StructureMatcher duplicate), and the main CSP
row's match rate split by that::

    python -m experiments.bulk.polymorphs            # perov5
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from experiments.common import write_json

HERE = Path(__file__).resolve().parent


def main(name: str = "perov5") -> None:
    from pymatgen.core import Composition

    from agedi_jax.config import Config
    from agedi_jax.data.bulk import split_indices
    from agedi_jax.train import load_training_data

    path = HERE / "results" / f"{name}.json"
    r = json.loads(path.read_text())
    cfg = Config.from_dict(r["config"])
    d = r["data"]
    ds = load_training_data(cfg)
    train_idx, val_idx = split_indices(len(ds), d["val_fraction"], d["split_seed"])

    def reduced(a) -> str:
        return Composition(a.get_chemical_formula()).reduced_formula

    train_formulas = {reduced(ds[i]) for i in train_idx}
    seen_all = np.array([reduced(ds[i]) in train_formulas for i in val_idx])
    per = r["per_structure"]
    assert per["val_index"] == [int(i) for i in val_idx[: len(per["val_index"])]], "split differs from the results"
    seen = seen_all[: len(per["val_index"])]
    matched = np.array([x is not None for x in per["rms"]])
    rms = np.array([np.nan if x is None else x for x in per["rms"]], float)
    out = {"definition": "validation structures whose reduced formula also occurs in the training split "
                         "(none of them is a StructureMatcher duplicate, see duplicates)",
           "n_val": len(val_idx), "n_val_formula_in_train": int(seen_all.sum())}
    for key, sel in (("main_row_formula_in_train", seen), ("main_row_formula_not_in_train", ~seen)):
        out[key] = {"n": int(sel.sum()), "n_matched": int(matched[sel].sum()),
                    "match_rate": float(matched[sel].mean()) if sel.any() else float("nan"),
                    "rmse": float(np.nanmean(rms[sel & matched])) if (sel & matched).any() else float("nan")}
    r["polymorphs"] = out
    write_json(path, r)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
