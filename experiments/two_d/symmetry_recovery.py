"""At which noise level does a 2D model lose the symmetry? (a diagnostic for Fig. 7a)

The structures of a CSV are noised with the forward kernel to a time ``t0`` (chosen so that
the kernel std is each of ``--stds`` Å, whatever the schedule) and then denoised by the
model with its own label (w = 1): the reverse SDE from ``t0`` to ``t_eps`` (Euler–Maruyama
on a grid geometric in the kernel std, so that linear and geometric schedules are
discretised alike; ``--steps`` steps from the prior, fewer in proportion to log std for
smaller ``t0``, at least 5) and the final Tweedie step. The layer group (spglib, symprec
0.1 Å) of the noised input and of the result is compared with the label.
``t0 = 1`` is ordinary sampling from the prior. A model that has learned the data's
symmetric arrangements recovers them from small noise; where the recovery falls to the
prior's value the model no longer knows the registry.

    python -m experiments.two_d.symmetry_recovery experiments/two_d/runs/cpu \\
        --out experiments/two_d/results/cpu/symmetry_recovery.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from agedi_jax import samplers
from agedi_jax import sde as S
from agedi_jax.checkpoint import load_model
from agedi_jax.convert import atoms_from_batch, batch_from_atoms
from agedi_jax.data import load_c2db_csv
from agedi_jax.samplers import make_step
from experiments.common import data_path
from experiments.two_d.guided_sampling import layer_groups, schedule_inverse

STDS = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", default=data_path("c2db/val.csv"))
    ap.add_argument("--num", type=int, default=96, help="first NUM structures (one batch)")
    ap.add_argument("--stds", type=float, nargs="+", default=list(STDS), help="kernel stds (Å); the prior is added")
    ap.add_argument("--times", type=float, nargs="+", default=None, help="times t0 instead of --stds")
    ap.add_argument("--steps", type=int, default=100, help="EM steps from the prior (t0 = 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    model, params, cfg = load_model(args.checkpoint)
    data = load_c2db_csv(args.data)
    keep = [i for i in range(len(data)) if int(data.labels[i]) > 0][: args.num]
    atoms = [data.structures[i] for i in keep]
    labels = np.asarray([int(data.labels[i]) for i in keep])
    batch = jax.tree.map(jnp.asarray, batch_from_atoms(atoms, model.vocab, cfg.model.cutoff, labels=labels))
    step = make_step(model.sde, model.process, cfg.sample)
    final = samplers.finalize(model.sde)
    score_fn = model.score_fn(params)
    t_eps = cfg.process.t_eps

    def accuracy(state) -> float:
        return float(np.mean(layer_groups(atoms_from_batch(jax.device_get(state), model.vocab)) == labels))

    t_of, std_of = schedule_inverse(model.sde, t_eps)
    std_lo = float(std_of(t_eps))
    if args.times is None:
        args.times = [float(t_of(s)) for s in args.stds] + [1.0]
    decades = np.log(float(std_of(1.0)) / std_lo)
    rows = []
    print(f"{len(atoms)} structures of {args.data}; {model.config.process.sde} {model.config.process.schedule} "
          f"schedule; EM, {args.steps} steps from the prior, grid geometric in the kernel std")
    for t0 in args.times:
        tic = time.perf_counter()
        s0 = float(std_of(t0))
        n = max(5, int(round(args.steps * np.log(s0 / std_lo) / decades)))
        key = jax.random.PRNGKey(args.seed)
        if t0 >= 1.0:
            start = samplers.prior_state(key, batch, model.sde, mask_types=False)
        else:
            start, _, _ = S.noise_positions(key, model.sde, batch, jnp.full((batch.num_graphs,), t0, jnp.float32))
        grid = t_of(np.geomspace(s0, std_lo, n + 1))
        grid[0], grid[-1] = t0, t_eps
        grid = jnp.asarray(grid, jnp.float32)
        run = jax.jit(lambda k, s, grid=grid: samplers.sample(k, s, score_fn, step, grid, final))
        out = run(jax.random.PRNGKey(args.seed + 1), start)
        row = dict(t0=t0, std_A=float(model.sde.std(jnp.float32(t0))), steps=n,
                   noised=accuracy(start), denoised=accuracy(out))
        rows.append(row)
        print(f"t0={t0:<8.4g} std {row['std_A']:6.3f} Å  {n:4d} steps: layer group kept by the noised input "
              f"{row['noised']:.3f}, recovered by the model {row['denoised']:.3f}  ({time.perf_counter() - tic:.0f} s)",
              flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(checkpoint=str(args.checkpoint), data=args.data, num=len(atoms),
                                            steps_from_prior=args.steps, seed=args.seed,
                                            config=json.loads(cfg.to_json()), rows=rows), indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
