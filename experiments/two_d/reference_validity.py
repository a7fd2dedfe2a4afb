"""Validity of the reference data themselves (repaired and raw positions), to read the
samples' validity against: python experiments/two_d/reference_validity.py"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from c2db_fix import load_c2db_repaired  # noqa: E402
from guided_sampling import validity_summary  # noqa: E402

from agedi_jax.data import load_c2db_csv  # noqa: E402

SHARED = os.environ.get("AGEDI_JAX_DATA", "../shared/data")  # the shared data (run from the repository root)

if __name__ == "__main__":
    out = {}
    for split in ("train", "val"):
        path = f"{SHARED}/c2db/{split}.csv"
        out[f"{split} repaired"] = validity_summary(load_c2db_repaired(path, with_labels=False).structures)
        out[f"{split} raw"] = validity_summary(load_c2db_csv(path, with_labels=False).structures)
        print(split, json.dumps(out[f"{split} repaired"]), "\n raw", json.dumps(out[f"{split} raw"]), flush=True)
    dest = Path(__file__).with_name("results") / "reference_validity.json"
    dest.write_text(json.dumps(out, indent=1))
