"""Print the markdown tables of the bulk case-study page from ``results/<name>.json``
(so that every number on the page can be regenerated from the results file)::

    python -m experiments.bulk.table            # perov5
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

PUBLISHED = {  # quoted in $AGEDI_JAX_DATA/README.md (test splits, trained on the full training splits)
    "perov5": [("CDVAE", 45.3, 0.114), ("DiffCSP", 52.0, 0.076), ("FlowMM", 53.2, 0.099)],
    "carbon24": [("CDVAE", 17.1, 0.297), ("DiffCSP", 17.5, 0.276), ("FlowMM", 23.5, 0.412)],
}


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def main(name: str = "perov5") -> None:
    r = json.loads((HERE / "results" / f"{name}.json").read_text())
    print("| model | eval structures | sampler steps | match rate | RMSE | validity |")
    print("|---|---|---|---|---|---|")
    for row in r["rows"]:
        print(f"| agedi_jax CPU (this page) | {row['n']} (own val split) | {row['steps']} | "
              f"{_pct(row['match_rate'])} ({row['n_matched']}/{row['n']}) | {row['rmse']:.3f} | {_pct(row['validity'])} |")
    if "best_of_k" in r:
        b = r["best_of_k"]
        print(f"| agedi_jax CPU, best of {b['k']} | {b['n']} (own val split) | {b['steps']} | "
              f"{_pct(b['match_rate'])} ({b['n_matched']}/{b['n']}) | {b['rmse']:.3f} | |")
    for model, mr, rmse in PUBLISHED.get(name, []):
        print(f"| {model} (published) | test split | | {mr:.1f} % | {rmse:.3f} | |")
    print()
    print("| sampler steps | structures | match rate | RMSE |")
    print("|---|---|---|---|")
    for s in r.get("sweep", []):
        print(f"| {s['steps']} | {s['n']} | {_pct(s['match_rate'])} ({s.get('n_matched', round(s['match_rate'] * s['n']))}/{s['n']}) | {s['rmse']:.3f} |")
    print()
    print("| sampler steps | structures | batch | batch wall times (s) | s per structure (compilation excluded) |")
    print("|---|---|---|---|---|")
    for row in r["rows"]:
        spp = row["seconds_per_structure"]
        print(f"| {row['steps']} | {row['n']} | {row['batch_size']} | {', '.join(str(t) for t in row['batch_seconds'])} | "
              f"{'' if spp is None else f'{spp:.3f}'} |")
    if "duplicates" in r:
        d = r["duplicates"]
        print(f"\nduplicates: {d['n_val_with_train_duplicate']}/{d['n']} validation structures match a training one")
    if "de_novo" in r:
        d = r["de_novo"]
        print(f"de novo: {d['n']} samples, validity {_pct(d['validity'])}, W1 density {d['wdist_density']:.3f} g/cm3, "
              f"W1 #elements {d['wdist_num_elements']:.3f}, reasons {d['reason_counts']}")
        if "coverage_cutoffs" in d:
            c, b = d["coverage_cutoffs"], d["coverage_baseline"]
            print(f"\ncoverage (cutoffs: structure {c['struct_cutoff']:.4f}, composition {c['comp_cutoff']:.3f}, "
                  f"calibrated on {c['calibrated_on']})\n")
            print("| set | COV-R | COV-P | structure only: R / P | composition only: R / P |")
            print("|---|---|---|---|---|")
            for label, x in ((f"agedi_jax de novo ({d['n_valid']} valid)", d), (b["what"], b)):
                f = x["by_fingerprint"]
                so, co = f["structure_only"], f["composition_only"]
                print(f"| {label} | {_pct(x['cov_recall'])} | {_pct(x['cov_precision'])} | "
                      f"{_pct(so['cov_recall'])} / {_pct(so['cov_precision'])} | "
                      f"{_pct(co['cov_recall'])} / {_pct(co['cov_precision'])} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
