"""Sample clusters from a trained cluster model with the atom-count distribution of its
training data (paper Fig. 4b/c: "an equal number of samples"). Only the number of atoms is
given; positions and types are generated (joint model).

    python -m experiments.clusters.sample --subset gm --budget cpu
    python -m experiments.clusters.sample --subset de200 --budget cpu     # 500 of the training split on the CPU budget
    python -m experiments.clusters.sample --subset gm --quick             # 16 samples, 20 steps

Writes ``results/<budget>/samples_<subset>.extxyz`` (+ ``.config.json``) and
``samples_<subset>.json`` (wall time, sizes, sampler). The reference set is rebuilt by
:func:`settings.reference_set` (same seed) in ``evaluate.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from experiments.clusters import settings


def size_bands(sizes, batch_size: int, max_ratio: float = 1.6) -> list[list[int]]:
    """Split sorted atom counts into calls of the sampler: within a call the all-pairs edge
    count n(n − 1) of the largest structure is at most ``max_ratio`` × that of the smallest
    (every call pads its batches to one bucket and compiles once), and a call is closed at
    a multiple of ``batch_size`` when the band is full."""
    sizes = sorted(int(n) for n in sizes)
    bands: list[list[int]] = []
    cur: list[int] = []
    for n in sizes:
        if cur and n * (n - 1) > max_ratio * max(cur[0] * (cur[0] - 1), 2) and len(cur) >= batch_size // 2:
            bands.append(cur)
            cur = []
        cur.append(n)
    if cur:
        bands.append(cur)
    return bands


def sample_like(model, params, sizes, *, steps: int, seed: int, batch_size: int, log=print) -> tuple[list, dict]:
    """Samples with exactly the given atom counts (one per entry), in size bands."""
    from agedi_jax.generate import sample_atoms

    out: list = []
    timing = []
    for k, band in enumerate(size_bands(sizes, batch_size)):
        t0 = time.perf_counter()
        got = sample_atoms(model, params, n_atoms=band, num_samples=1, steps=steps,
                           seed=seed + 1000 * k, batch_size=batch_size)
        dt = time.perf_counter() - t0
        timing.append(dict(sizes=f"{band[0]}-{band[-1]}", n=len(band), seconds=round(dt, 1)))
        log(f"  band {k}: {len(band)} clusters of {band[0]}-{band[-1]} atoms in {dt:.0f} s", flush=True)
        out += got
    return out, dict(bands=timing)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subset", choices=settings.SUBSETS, required=True)
    settings.add_study_arguments(ap, seed=1, quick="16 samples, 20 steps", steps=True, results=False)
    ap.add_argument("--max-reference", type=int, default=-1,
                    help="reference structures (and samples); default settings.MAX_REFERENCE, 0 = all")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None, help="output directory (default results/<budget>)")
    args = ap.parse_args(argv)

    from agedi_jax.checkpoint import load_model
    from agedi_jax.results import write_extxyz

    run = args.run or settings.run_dir(args.budget, args.subset)
    out_dir = args.out or settings.results_dir(args.budget)
    steps = args.steps or settings.SAMPLE_STEPS[args.budget]
    max_ref = settings.MAX_REFERENCE[(args.budget, args.subset)] if args.max_reference < 0 else (args.max_reference or None)
    if args.quick:
        max_ref, steps = 16, 20
    model, params, config = load_model(run)
    reference = settings.reference_set(config, max_ref)
    sizes = [len(a) for a in reference]
    print(f"{run}: {len(sizes)} samples, {steps} EM steps, sizes {min(sizes)}-{max(sizes)}", flush=True)
    t0 = time.perf_counter()
    samples, timing = sample_like(model, params, sizes, steps=steps, seed=args.seed, batch_size=args.batch_size)
    wall = time.perf_counter() - t0
    path = write_extxyz(out_dir / f"samples_{args.subset}.extxyz", samples, model.config)
    meta = dict(run=str(run), n_samples=len(samples), steps=steps, sampler=config.sample.sampler,
                type_sampler=config.sample.type_sampler, denoise=config.sample.denoise, seed=args.seed,
                max_reference=max_ref, wall_s=round(wall, 1), **timing)
    (out_dir / f"samples_{args.subset}.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {path} ({len(samples)} clusters) in {wall:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
