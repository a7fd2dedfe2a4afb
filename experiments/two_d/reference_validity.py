"""Validity of the reference data themselves (repaired and raw positions), to read the
samples' validity against: python -m experiments.two_d.reference_validity"""

from __future__ import annotations

import json
from pathlib import Path

from agedi_jax.data import load_c2db_csv
from experiments.common import data_path
from experiments.two_d.guided_sampling import validity_summary

if __name__ == "__main__":
    out = {}
    for split in ("train", "val"):
        path = data_path(f"c2db/{split}.csv")
        out[f"{split} repaired"] = validity_summary(load_c2db_csv(path, with_labels=False).structures)
        out[f"{split} raw"] = validity_summary(load_c2db_csv(path, with_labels=False).structures)
        print(split, json.dumps(out[f"{split} repaired"]), "\n raw", json.dumps(out[f"{split} raw"]), flush=True)
    dest = Path(__file__).with_name("results") / "reference_validity.json"
    dest.write_text(json.dumps(out, indent=1))
