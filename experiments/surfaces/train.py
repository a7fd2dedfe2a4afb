"""Train the surface model: adsorbate positions on a fixed substrate, confined to a z window.

    nice -n 5 python -m experiments.surfaces.train                       # ~60 min on 2 shared cores
    python -m experiments.surfaces.train --quick --out /tmp/surf_quick    # 20-step smoke run

The train split of ``data/surfaces.extxyz`` (held-out pairs excluded), every substrate atom
fixed, the adsorbate confined to ``settings.WINDOW`` Å above the top substrate atom
(:func:`experiments.surfaces.settings.training_set`), the config of
``settings.OVERRIDES``. Edge templates are pruned of the substrate–substrate pairs that
can never come within the cutoff (:func:`agedi_jax.surfaces.prune_fixed_pairs`: exact,
about 3.3× fewer edges for these 49–56-atom slabs). A run directory with a checkpoint is
resumed (rerun the same command after an interruption). Writes ``results/train.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from experiments.common import write_json
from experiments.surfaces import settings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 steps (smoke test)")
    ap.add_argument("--out", type=Path, default=None, help="run directory (default runs/cpu)")
    args = ap.parse_args(argv)
    out = args.out or settings.RUN

    from agedi_jax.runlog import RunLock, check_writable
    from agedi_jax.surfaces import prune_all
    from agedi_jax.train import _fit_locked, prepare_data

    cfg = settings.config(args.quick)
    check_writable(out, "run directory")
    t0 = time.perf_counter()
    dataset, counts = settings.training_set()
    data = prepare_data(cfg, dataset)
    cut = data.config.model.cutoff
    edges_before = sum(e.num_edges for e in data.train)
    data = data._replace(train=prune_all(data.train, cut), val=prune_all(data.val, cut))
    edges_after = sum(e.num_edges for e in data.train)
    print(f"{counts['used']} training structures ({counts['outside_window']} left out: an adsorbate atom outside "
          f"the window {settings.WINDOW} Å); template edges {edges_before:,} -> {edges_after:,} after pruning",
          flush=True)
    prep_s = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    with RunLock(out):  # fit() without its data preparation, which cannot prune (agedi_jax.train)
        result = _fit_locked(data, out, resume=True, progress=True, stop_at=None, mesh=None)
    train_s = time.perf_counter() - t1
    last = [r for r in result.metrics if r.get("split") == "train"][-1:]
    vals = [r for r in result.metrics if r.get("split") == "val"]
    if not args.quick:
        write_json(settings.RESULTS / "train.json", {
            "command": "nice -n 5 python -m experiments.surfaces.train",
            "run": str(out.resolve().relative_to(settings.HERE.parents[1])) if settings.HERE.parents[1] in out.resolve().parents else str(out),
            "window_above_top": settings.WINDOW,
            "structures": counts | {"train": len(data.train), "val": len(data.val)},
            "template_edges": {"before_pruning": edges_before, "after_pruning": edges_after},
            "steps": cfg.train.steps, "batch_size": cfg.train.batch_size,
            "wall_s_this_invocation": round(train_s, 1), "prepare_s": round(prep_s, 1),
            "final_train": last[0] if last else None,
            "val": [{"step": r["step"], "loss": r["loss"]} for r in vals],
        })
    print(f"run directory: {out} ({train_s / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
