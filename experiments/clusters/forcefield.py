"""Learned force field on the QCD GM clusters (issue 17 items 2–3): a joint diffusion model
with an energy head trained on the GAP energies and forces, held-out errors, shared
backbone vs a separate energy network, and force-field guidance of Pt13 sampling.

    python -m experiments.clusters.forcefield                     # ~20 min on 2 shared cores
    python -m experiments.clusters.forcefield --steps 30 --quick  # smoke run

Three models with the same score network (PaiNN, ``--features`` × ``--layers``) and the
same batches, seeds and step count are trained on the training split of the GM subset
(the package's split, ``data.val_fraction = 0.1``):

* ``none`` — the diffusion model alone (for the diffusion loss it is compared with);
* ``shared`` — ``model.energy_head`` on the score network's final invariant features,
  evaluated at t = 0 on the clean structure;
* ``separate`` — a second PaiNN of the same size with only an energy head.

Reported on the held-out split: energy MAE / RMSE (meV/atom) against the GAP energies,
the same of the per-element linear reference alone, force MAE / RMSE (meV/Å) against the
GAP forces and the MAE of predicting zero forces (the GM clusters are GAP-relaxed, so their
forces are ~0.2 meV/Å and test only that the model keeps minima at the data), the
validation diffusion losses of every model, and training time.

Guidance (``--guidance``, default on): 32 Pt13 clusters (composition given) from the
``shared`` model with Euler–Maruyama, unguided and with ``energy_guided`` from EMT or
the learned head, evaluated on the noisy state (``xt``) or on Tweedie's estimate
(``x0``), same seed; EMT energies of the samples (eV/atom).

Writes ``experiments/clusters/results/cpu/forcefield.json``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import REPO, write_json


def _config(args, variant: str):
    from agedi_jax.config import override, preset
    from experiments.clusters import settings

    sets = [
        f"data.dataset={settings.data_dir()}",
        "model.network=painn",
        f"model.features={args.features}",
        f"model.num_layers={args.layers}",
        f"train.batch_size={args.batch}",
        f"train.steps={args.steps}",
        "train.learning_rate=2e-3",
        "train.warmup_steps=100",
        "train.ema_decay=0.995",
        f"train.lambda_energy={args.lambda_energy}",
        f"train.lambda_forces={args.lambda_forces}",
    ]
    if variant != "none":
        sets += ["model.energy_head=true", f"model.energy_network={variant}"]
    return override(preset("qcd_gm"), sets)


def train_variant(args, variant: str, data) -> dict:
    from agedi_jax import forcefield
    from agedi_jax.batching import BatchStream, fixed_batches
    from agedi_jax.config import replace
    from agedi_jax.model import build_model, init_state, make_eval_step, make_train_step

    cfg = _config(args, variant)
    # the data-derived fields of the shared split (avg_num_neighbors, data_scale)
    cfg = replace(cfg, model=dict(avg_num_neighbors=data.config.model.avg_num_neighbors),
                  process=dict(data_scale=data.config.process.data_scale))
    cfg = forcefield.prepare_config(cfg, data.vocab, data.train)
    model = build_model(cfg, data.vocab)
    stream = BatchStream(data.train, cfg.train.batch_size, seed=cfg.train.seed)
    key = jax.random.PRNGKey(cfg.train.seed)
    state = init_state(model, jax.random.fold_in(key, 0), stream.batch(0))
    step = make_train_step(model)
    t0, c0 = time.perf_counter(), time.process_time()
    state, m = step(state, stream.batch(0), jax.random.fold_in(key, 1_000_000))
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    log = []
    t1 = time.perf_counter()
    for s in range(1, cfg.train.steps):
        state, m = step(state, stream.batch(s), jax.random.fold_in(key, 1_000_000 + s))
        if (s + 1) % max(cfg.train.steps // 10, 1) == 0:
            rec = {k: float(v) for k, v in jax.device_get(m).items()}
            log.append({"step": s + 1, **rec})
            print(f"  [{variant}] step {s + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in rec.items()), flush=True)
    jax.block_until_ready(state.params)
    train_s = time.perf_counter() - t1
    cpu_s = time.process_time() - c0

    params = state.ema_params
    val_batches = fixed_batches(data.val, 32)
    eval_step = make_eval_step(model)
    recs = [jax.device_get(eval_step(params, b, jax.random.PRNGKey(100 + i))) for i, b in enumerate(val_batches)]
    val = {k: float(np.mean([float(r[k]) for r in recs])) for k in recs[0]}
    out = {
        "variant": variant,
        "config": {"features": cfg.model.features, "layers": cfg.model.num_layers, "batch": cfg.train.batch_size,
                   "steps": cfg.train.steps, "lambda_energy": cfg.train.lambda_energy,
                   "lambda_forces": cfg.train.lambda_forces, "energy_scale_eV": cfg.model.energy_scale},
        "compile_s": round(compile_s, 1),
        "train_s": round(train_s, 1),
        "train_cpu_s": round(cpu_s, 1),
        "ms_per_step": round(1e3 * train_s / max(cfg.train.steps - 1, 1), 1),
        "val_eval_step": val,
        "train_log": log,
    }
    if variant != "none":
        ev_val = forcefield.evaluate_atoms(model, params, data.val_atoms)
        ev_train = forcefield.evaluate_atoms(model, params, data.train_atoms[: len(data.val_atoms)])
        out["held_out"] = _mev(ev_val)
        out["train_subset"] = _mev(ev_train)
        print(f"  [{variant}] held-out: " + ", ".join(f"{k} {v}" for k, v in out["held_out"].items()), flush=True)
    return {"summary": out, "model": model, "params": params}


def _mev(ev: dict) -> dict:
    """Errors in meV/atom and meV/Å."""
    out = {}
    for k, v in ev.items():
        out[k + ("_meV_per_atom" if k.startswith("energy") else "_meV_per_A" if k.startswith("force") else "")] = (
            round(1e3 * v, 3) if k.startswith(("energy", "force")) else v
        )
    return out


def pt13_emt_minima() -> dict:
    """EMT energies (eV/atom) of the relaxed Pt13 icosahedron and cuboctahedron (ASE EMT,
    FIRE to 0.01 eV/Å): the scale against which the samples' EMT energies are read."""
    from ase.calculators.emt import EMT
    from ase.cluster import Icosahedron, Octahedron
    from ase.optimize import FIRE

    out = {}
    for name, atoms in (("icosahedron", Icosahedron("Pt", 2)), ("cuboctahedron", Octahedron("Pt", 3, 1))):
        atoms.calc = EMT()
        FIRE(atoms, logfile=None).run(fmax=0.01, steps=500)
        out[name] = round(float(atoms.get_potential_energy()) / len(atoms), 4)
    return out


def guidance_study(args, model, params, num: int = 32) -> dict:
    """Pt13 from the shared model: unguided vs EMT- / learned-force guidance, x0 vs xt."""
    from ase import Atoms

    from agedi_jax import samplers
    from agedi_jax.convert import batch_from_atoms
    from agedi_jax.forcefield import model_energy_fn
    from agedi_jax.potentials import make_emt

    emt = make_emt(model.vocab, allow_unsupported=True, check=False)
    learned = model_energy_fn(model, params)
    tmpl = batch_from_atoms([Atoms("Pt13", positions=np.zeros((13, 3)))] * num, model.vocab, model.config.model.cutoff,
                            read_labels=False)
    grid = samplers.time_grid(args.sample_steps, model.config.process.t_eps)
    step = samplers.euler_maruyama(model.sde)
    final = samplers.finalize(model.sde)
    results = {}

    def runner(potential, on):
        def run(params, key, scale):
            score_fn = model.score_fn(params)
            if potential != "none":
                fn = emt if potential == "emt" else model_energy_fn(model, params)
                score_fn = samplers.energy_guided(score_fn, fn, scale, zeta=args.zeta, on=on, sde=model.sde,
                                                  max_force=args.max_force)
            st = samplers.prior_state(jax.random.fold_in(key, 0), tmpl, model.sde, mask_types=False)
            out = samplers.sample(jax.random.fold_in(key, 1), st, score_fn, step, grid, final)
            return out, emt(out), learned(out)

        return jax.jit(run)

    def summarize(out, e_emt, e_ml):
        x = np.asarray(out.positions)[: num * 13].reshape(num, 13, 3)
        d = np.linalg.norm(x[:, :, None] - x[:, None], axis=-1) + np.eye(13) * 99
        e = np.asarray(e_emt)[:num] / 13
        ml = np.asarray(e_ml)[:num] / 13
        return {"emt_eV_per_atom_median": round(float(np.median(e)), 4),
                "emt_eV_per_atom_mean": round(float(np.mean(e)), 4),
                "emt_eV_per_atom_q25_q75": [round(float(q), 4) for q in np.percentile(e, [25, 75])],
                "learned_eV_per_atom_median": round(float(np.median(ml)), 4),
                "min_distance_A_median": round(float(np.median(d.min(axis=(1, 2)))), 3),
                "frac_min_distance_below_2A": round(float(np.mean(d.min(axis=(1, 2)) < 2.0)), 3)}

    key = jax.random.PRNGKey(args.seed)
    t0 = time.perf_counter()
    results["unguided"] = summarize(*runner("none", "x0")(params, key, jnp.float32(0.0)))
    print(f"  guidance unguided: {results['unguided']}", flush=True)
    for potential in ("emt", "model"):
        for on in ("x0", "xt"):
            run = runner(potential, on)
            for scale in args.scales:
                name = f"{potential}_{on}_scale{scale:g}"
                results[name] = summarize(*run(params, key, jnp.float32(scale)))
                print(f"  guidance {name}: {results[name]}", flush=True)
    return {"num_samples": num, "steps": args.sample_steps, "zeta": args.zeta, "max_force_eV_per_A": args.max_force,
            "seconds": round(time.perf_counter() - t0, 1), "emt_minima_eV_per_atom": pt13_emt_minima(),
            "results": results}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lambda-energy", type=float, default=1.0)
    ap.add_argument("--lambda-forces", type=float, default=1.0)
    ap.add_argument("--variants", default="none,shared,separate")
    ap.add_argument("--no-guidance", dest="guidance", action="store_false")
    ap.add_argument("--sample-steps", type=int, default=200)
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 4.0])
    ap.add_argument("--zeta", type=float, default=1.0)
    ap.add_argument("--max-force", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: no results file unless --out")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from agedi_jax.train import prepare_data

    t_start = time.perf_counter()
    data = prepare_data(_config(args, "none"))
    print(f"QCD GM: {len(data.train)} training / {len(data.val)} held-out clusters, "
          f"{data.vocab.num_types} elements", flush=True)
    runs = {}
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        print(f"training {variant} ({args.steps} steps)", flush=True)
        runs[variant] = train_variant(args, variant, data)
    report = {
        "data": {"subset": "gm", "train": len(data.train), "held_out": len(data.val),
                 "elements": data.vocab.num_types, "split_seed": data.config.data.split_seed},
        "variants": {k: v["summary"] for k, v in runs.items()},
    }
    if args.guidance and "shared" in runs:
        print("guidance study (shared model)", flush=True)
        report["guidance_pt13"] = guidance_study(args, runs["shared"]["model"], runs["shared"]["params"])
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    report["jax"] = {"version": jax.__version__, "backend": jax.default_backend()}
    if args.out or not args.quick:
        path = args.out or REPO / "experiments" / "clusters" / "results" / "cpu" / "forcefield.json"
        print(f"wrote {write_json(path, report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
