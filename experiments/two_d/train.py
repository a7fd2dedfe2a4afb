"""Train the C2DB model on the repaired positions (see ``c2db_fix.py``).

Same arguments as ``agedi-jax train`` (``--preset``, ``--set section.field=value``, ``--out``,
``--restart``); the data are ``data.dataset`` loaded with
:func:`c2db_fix.load_c2db_repaired` (``--raw-positions``: the CSV as the package reads it).
Rerunning the same command resumes from ``OUT/checkpoints/latest``.

    nohup python experiments/two_d/train.py --preset c2db \
        --set data.dataset=/work/shared/data/c2db/train.csv --set model.network=painn \
        --set train.steps=16000 --out experiments/two_d/runs/cpu > train.log 2>&1 &
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from c2db_fix import load_c2db_repaired  # noqa: E402

from agedi_jax.config import PRESETS, override, preset  # noqa: E402
from agedi_jax.data import load_c2db_csv  # noqa: E402
from agedi_jax.train import fit, resolve_data_spec  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="c2db", choices=PRESETS)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    ap.add_argument("--raw-positions", action="store_true", help="train on the CSV positions as written")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    cfg = override(preset(args.preset), args.overrides)
    path = resolve_data_spec(cfg.data.dataset)
    t0 = time.perf_counter()
    dataset = load_c2db_csv(path) if args.raw_positions else load_c2db_repaired(path)
    print(f"loaded {len(dataset)} structures from {path} ({'raw' if args.raw_positions else 'repaired'} "
          f"positions) in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    result = fit(cfg, args.out, resume=not args.restart, progress=not args.quiet, dataset=dataset)
    last = [r for r in result.metrics if r.get("split") == "val"]
    print(f"done: step {int(result.state.step)} in {time.perf_counter() - t0:.0f} s; "
          f"last val loss {last[-1]['loss'] if last else float('nan'):.4f}; run in {result.run_dir}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
