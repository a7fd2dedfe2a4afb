"""GPU figures of the performance issue in one short run (sized for a 15-minute lease).

1. ``headline``: 10,000 13-atom clusters × 500 Euler–Maruyama steps with the QCD GM model
   (``experiments/clusters/runs/cpu_gm``: PaiNN 64×3, positions and types generated), one
   batch through the package's compiled sampler (``generate.make_sampler``): compile time,
   run time, then the same through ``sample_atoms`` (host conversion to ``ase.Atoms``
   included) and a sanity check of the samples (mono-metallic fraction, nearest-neighbour
   distances against the training clusters of the same size).
2. ``jax``: ``run_all.jax_workloads`` — the 64 × Pt13 reference batch: training step, one
   sampling step, the scanned samplers, XLA FLOPs, compile times.
3. ``scaling``: ``scaling.run`` with batches up to 16,384 clusters and 13→55 atoms.

    python -m experiments.benchmarks.gpu --out results/gpu.json     # on the GPU machine

The code is the package's, unchanged: only ``jax[cuda]`` is needed on the machine. The JSON
is rewritten after every section, so a run cut short still reports what it measured.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent

from experiments.benchmarks import run_all as R
from experiments.benchmarks import scaling as S

GM_RUN = HERE.parent / "clusters" / "runs" / "cpu_gm"


def headline(num: int, steps: int, n_atoms: int, res: dict, save: Path | None) -> None:
    import jax
    import jax.numpy as jnp

    from agedi_jax.batch import Bucket
    from agedi_jax.checkpoint import load_model
    from agedi_jax.config import replace
    from agedi_jax.convert import batch_from_atoms
    from agedi_jax.generate import make_sampler, make_templates, sample_atoms

    model, params, cfg = load_model(GM_RUN)
    cfg = replace(cfg, sample=dict(sampler="em", steps=steps, batch_size=num))
    templates, gen = make_templates(model, n_atoms=n_atoms, num_samples=num)
    t0 = time.perf_counter()
    batch = batch_from_atoms(templates, model.vocab, cfg.model.cutoff,
                             bucket=Bucket(num * n_atoms + 1, num * n_atoms * (n_atoms - 1) + 1, num + 1))
    batch = jax.tree.map(jnp.asarray, batch)
    gen_a = jnp.asarray(np.r_[np.ones(num, bool), False])
    out: dict[str, Any] = {"structures": num, "atoms": n_atoms, "steps": steps, "sampler": "em",
                           "batch_build_s": time.perf_counter() - t0, "model": str(GM_RUN.relative_to(HERE.parents[1])),
                           "vocab": list(model.vocab.symbols)}
    res["headline"] = out
    from agedi_jax.model import specialize

    run = make_sampler(specialize(model, batch), config=cfg)  # dense layout for these clusters
    key = jax.random.PRNGKey(0)
    w = jnp.float32(1.0)
    t0 = time.perf_counter()
    run_c = run.lower(params, key, batch, gen_a, w).compile()
    out["compile_s"] = time.perf_counter() - t0
    times = []
    for i in range(3):
        t0 = time.perf_counter()
        r = run_c(params, jax.random.PRNGKey(i), batch, gen_a, w)
        jax.block_until_ready(r.positions)
        times.append(time.perf_counter() - t0)
    out["run_s"] = times
    out["structures_per_s"] = num / float(np.median(times))
    out["ms_per_step"] = 1e3 * float(np.median(times)) / steps
    print(f"[headline] {num} x {n_atoms} atoms x {steps} EM steps: compile {out['compile_s']:.1f} s, "
          f"run {np.median(times):.2f} s (runs {', '.join(f'{t:.2f}' for t in times)}), "
          f"{out['structures_per_s']:.0f} structures/s", flush=True)
    # end to end through the public API (templates, batching, compiled sampler, ase.Atoms)
    t0 = time.perf_counter()
    atoms = sample_atoms(model, params, n_atoms=n_atoms, num_samples=num, steps=steps, seed=7, batch_size=num)
    out["sample_atoms_s"] = time.perf_counter() - t0
    print(f"[headline] sample_atoms end to end (incl. compile cache hit, host conversion): "
          f"{out['sample_atoms_s']:.2f} s for {len(atoms)} structures", flush=True)
    out.update(sanity(atoms, n_atoms))
    print(f"[headline] sanity: {json.dumps({k: out[k] for k in ('mono_metallic', 'min_distance_q', 'elements')})}",
          flush=True)
    if save is not None:
        from ase.io import write

        write(save, atoms[:1000], format="extxyz")
        out["saved"] = save.name


def sanity(atoms: list, n_atoms: int) -> dict:
    """Mono-metallic fraction, shortest-distance quantiles (first 2,000 samples) and the
    elements of the mono-metallic samples (``agedi_jax.evaluation`` statistics)."""
    from collections import Counter

    from agedi_jax.evaluation import composition_stats, validity

    comp = composition_stats(atoms)
    mins = validity(atoms[:2000])["min_distance"]
    el = Counter(a.get_chemical_symbols()[0] for a, k in zip(atoms, comp["n_elements"]) if k == 1)
    return {"mono_metallic": comp["fraction_monoelement"],
            "min_distance_q": [float(x) for x in np.percentile(mins, [5, 50, 95])],
            "elements": dict(el), "finite": bool(all(np.isfinite(a.positions).all() for a in atoms))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=R.RESULTS / "gpu.json")
    ap.add_argument("--sections", nargs="+", default=["headline", "jax", "scaling"])
    ap.add_argument("--num", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batches", nargs="+", type=int, default=[16, 64, 256, 1024, 4096, 16384])
    ap.add_argument("--atoms", nargs="+", type=int, default=[13, 19, 38, 55])
    ap.add_argument("--networks", nargs="+", default=["painn", "nequip"])
    ap.add_argument("--save", type=Path, default=None, help="extxyz of the first 1000 headline samples")
    args = ap.parse_args(argv)

    import jax

    dev = jax.devices()[0]
    res: dict[str, Any] = {"machine": f"jax {jax.__version__}, {jax.default_backend()}: {dev.device_kind}",
                           "time": time.strftime("%Y-%m-%d %H:%M"), "args": {k: str(v) for k, v in vars(args).items()}}
    print(res["machine"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def dump():
        args.out.write_text(json.dumps(res, indent=1, default=float))

    for section in args.sections:
        t0 = time.perf_counter()
        try:
            if section == "headline":
                headline(args.num, args.steps, 13, res, args.save)
            elif section == "jax":
                res["jax"] = R.jax_workloads("painn", args.repeats, 50, compile_sampler=True)
                j = res["jax"]
                print(f"[jax] 64xPt13 PaiNN: train {j['train_step_ms']['median']:.2f} ms, sample step "
                      f"{j['sample_step_ms']['median']:.2f} ms, scan em {j['scan']['em']['ms_per_step']:.2f} ms/step, "
                      f"compile train {j['compile_train_s']:.1f} s, sampler {j.get('compile_sampler_s', 0):.1f} s, "
                      f"train GFLOP {j['train_flops'] / 1e9:.2f}", flush=True)
            elif section == "scaling":
                res["scaling"] = S.run(args.networks, args.batches, args.atoms, 64, 13, max(3, args.repeats // 2),
                                       json_path=args.out.with_name(args.out.stem + "_partial.json"),
                                       log=lambda s: print(s, flush=True))
        except Exception:  # report and go on: the other sections are still worth the lease
            res.setdefault("errors", {})[section] = traceback.format_exc()
            print(f"[{section}] FAILED\n{traceback.format_exc()}", flush=True)
        res.setdefault("section_wall_s", {})[section] = time.perf_counter() - t0
        dump()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
