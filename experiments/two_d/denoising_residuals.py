"""How well a 2D model predicts the noise, per axis and noise level: a diagnostic of
under-training (in-plane registry vs out-of-plane z).

For the first ``--num`` structures of a CSV (their layer-group labels as the condition), the
positions are noised with the forward kernel at each kernel std of ``--stds`` Å (the time
follows from the schedule, so models with different schedules are compared at equal noise;
``sde.noise_positions``: wrapped normal in x, y, Gaussian in z) and the model's
ε-prediction is compared with the true ε: the mean squared target and the mean squared
residual, separately for the in-plane (x, y) and out-of-plane (z) components, and in-plane
also without the global translation. A residual close to the target variance means the
model has learned nothing at that noise level.

    python -m experiments.two_d.denoising_residuals experiments/two_d/runs/gpu \\
        --out experiments/two_d/results/gpu/denoising_residuals.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from agedi_jax import sde as S
from agedi_jax.checkpoint import load_model
from agedi_jax.convert import batch_from_atoms
from agedi_jax.data import load_c2db_csv
from experiments.common import data_path
from experiments.two_d.guided_sampling import schedule_inverse


def graph_centred(x: np.ndarray, graph: np.ndarray) -> np.ndarray:
    """``x`` [n, k] minus the mean over the atoms of each atom's graph."""
    sums = np.zeros((graph.max() + 1, x.shape[1]))
    np.add.at(sums, graph, x)
    counts = np.bincount(graph, minlength=graph.max() + 1)[:, None]
    return x - (sums / np.maximum(counts, 1))[graph]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", default=data_path("c2db/val.csv"))
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--stds", type=float, nargs="+", default=[0.06, 0.26, 0.51, 1.01, 2.0],
                    help="kernel stds (Å) at which to compare (the times follow from the schedule)")
    ap.add_argument("--times", type=float, nargs="+", default=None, help="times instead of --stds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    model, params, cfg = load_model(args.checkpoint)
    data = load_c2db_csv(args.data)
    atoms = list(data.structures[: args.num])
    labels = np.asarray(data.labels[: args.num])
    batch = jax.tree.map(jnp.asarray, batch_from_atoms(atoms, model.vocab, cfg.model.cutoff, labels=labels))
    mask = np.asarray(batch.node_mask)
    gi = np.asarray(batch.graph_index)[mask]
    if args.times is None:
        t_of, _ = schedule_inverse(model.sde, cfg.process.t_eps)
        args.times = [float(t_of(s)) for s in args.stds]
    rows = []
    for t in args.times:
        tt = jnp.full((batch.num_graphs,), t, jnp.float32)
        noised, eps, std = S.noise_positions(jax.random.PRNGKey(args.seed), model.sde, batch, tt)
        pred = model.apply(params, noised, tt, noised.label).positions
        e, p = np.asarray(eps)[mask], np.asarray(pred)[mask]
        row = {"t": t, "std_A": float(np.asarray(std)[mask].mean())}
        for name, ax in (("xy", [0, 1]), ("z", [2])):
            row[f"{name}_target"] = float(np.mean(e[:, ax] ** 2))
            row[f"{name}_residual"] = float(np.mean((e[:, ax] - p[:, ax]) ** 2))
        # the in-plane mean of the noise over a graph's atoms is a global translation, which a
        # translation-invariant model cannot predict (z has it projected out): report also
        # the residual without it, the part the model can learn
        e_c, r_c = graph_centred(e[:, :2], gi), graph_centred((e - p)[:, :2], gi)
        row["xy_target_centred"] = float(np.mean(e_c**2))
        row["xy_residual_centred"] = float(np.mean(r_c**2))
        rows.append(row)
        print(f"t={t:<7.4g} std {row['std_A']:6.3f} Å   xy: residual {row['xy_residual']:.3f} of {row['xy_target']:.3f}"
              f" (without the global translation {row['xy_residual_centred']:.3f} of {row['xy_target_centred']:.3f})"
              f"   z: residual {row['z_residual']:.3f} of {row['z_target']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "data": args.data, "num": len(atoms),
                                        "rows": rows}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
