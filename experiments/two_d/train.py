"""Train the C2DB model on the repaired positions (see ``c2db_fix.py``).

Same arguments as ``agedi-jax train`` (``--preset``, ``--set section.field=value``, ``--out``,
``--restart``); the data are ``data.dataset`` loaded with
:func:`agedi_jax.data.load_c2db_csv` (which repairs them by default; ``--raw-positions``: the CSV as written).
Rerunning the same command resumes from ``OUT/checkpoints/latest``.

    nohup python -m experiments.two_d.train --preset c2db \
        --set data.dataset=../shared/data/c2db/train.csv --set model.network=painn \
        --set train.steps=16000 --out experiments/two_d/runs/cpu > train.log 2>&1 &
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from agedi_jax.config import PRESETS, override, preset
from agedi_jax.data import load_c2db_csv, resolve_data_spec
from agedi_jax.train import fit


def budget_steps(cfg, args, dataset, t_start: float):
    """``cfg`` with ``train.steps`` set so that training ends within ``args.seconds`` of
    ``t_start``. Two chunks of ``warmup_steps // 4`` steps are run first (the second is
    timed: compiled, data loaded); both lie inside the warm-up, where the schedule does not
    depend on ``train.steps``, so the result equals a run started with the final value."""
    from agedi_jax.config import replace

    chunk = max(1, cfg.train.warmup_steps // 4)
    # log often inside the probe chunks (logging does not change the numbers), so that the
    # step rate comes from logged intervals and not from a wall time that holds the restart
    log_every = max(1, min(cfg.train.log_every, chunk // 5))
    probe = replace(cfg, train=dict(log_every=log_every))
    fit(probe, args.out, resume=not args.restart, progress=False, dataset=dataset, stop_at=chunk)
    t1 = time.perf_counter()
    res = fit(probe, args.out, resume=True, progress=False, dataset=dataset, stop_at=2 * chunk)
    wall = (time.perf_counter() - t1) / chunk  # includes the restart overhead: an upper bound
    # the first log interval after the restart holds the restart's warm-up: leave it out
    rates = [r["steps_per_s"] for r in res.metrics
             if r.get("split") == "train" and chunk + log_every < r["step"] <= 2 * chunk]
    per_step = min(wall, 1.0 / float(np.median(rates))) if rates else wall
    left = args.seconds - (time.perf_counter() - t_start)
    # validation and checkpoints cost extra: keep 15 % in hand
    steps = max(2 * chunk + 1, int(2 * chunk + 0.85 * left / per_step))
    print(f"budget {args.seconds:.0f} s: {1e3 * per_step:.1f} ms per step -> train.steps={steps}", flush=True)
    return replace(cfg, train=dict(steps=steps))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="c2db", choices=PRESETS)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    ap.add_argument("--raw-positions", action="store_true", help="train on the CSV positions as written")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--seconds", type=float, default=None,
                    help="wall-time budget: time two short chunks inside the warm-up, then set train.steps "
                         "to what fits (the learning-rate schedule then runs to completion)")
    args = ap.parse_args(argv)
    cfg = override(preset(args.preset), args.overrides)
    path = resolve_data_spec(cfg.data.dataset)
    t0 = time.perf_counter()
    dataset = load_c2db_csv(path, repair_positions=not args.raw_positions)
    print(f"loaded {len(dataset)} structures from {path} ({'raw' if args.raw_positions else 'repaired'} "
          f"positions) in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    if args.seconds:
        cfg = budget_steps(cfg, args, dataset, t0)
    result = fit(cfg, args.out, resume=bool(args.seconds) or not args.restart,
                 progress=not args.quiet, dataset=dataset)
    last = [r for r in result.metrics if r.get("split") == "val"]
    print(f"done: step {int(result.state.step)} in {time.perf_counter() - t0:.0f} s; "
          f"last val loss {last[-1]['loss'] if last else float('nan'):.4f}; run in {result.run_dir}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
