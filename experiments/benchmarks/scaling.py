"""Scaling: training-step and sampling-step time versus batch size and atoms per system,
for both networks (performance issue, "Scaling").

Workload: rattled metal clusters cut from a 55-atom Pt icosahedron (the N atoms nearest to
its centre; N = 13 is the full 13-atom icosahedron), each batch padded to its exact size
(one spare atom, edge and graph slot), the benchmark model of ``run_all.py`` (qcd_gm preset:
VE SDE + absorbing types, cutoff 6 Å; PaiNN 64×3 or the default NequIP). For every point:
the jitted training step (``model.make_train_step``) and one joint sampling step
(``samplers.make_step`` at t = 0.05, jitted alone), median of ``--repeats`` calls.

    python -m experiments.benchmarks.scaling                   # CPU: batch 16→512, atoms 13→55
    python -m experiments.benchmarks.scaling --networks painn --batches 16 64 256

Process settings as ``run_all.py`` (``--no-tuning`` leaves them out). Writes ``results/scaling.json`` and ``scaling.png`` (time per structure against batch size
and atoms; flat lines = linear cost).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent

from experiments.benchmarks import run_all as R


def clusters(num: int, n_atoms: int, seed: int = 0) -> list:
    """``num`` rattled clusters of ``n_atoms`` Pt atoms (the atoms of a 55-atom icosahedron
    nearest to its centre, centred, Gaussian rattle 0.1 Å)."""
    from ase import Atoms
    from ase.cluster import Icosahedron

    if not 1 <= n_atoms <= 55:
        raise ValueError(f"n_atoms must be in 1..55, got {n_atoms}")
    base = Icosahedron("Pt", 3).positions
    base = base - base.mean(axis=0)
    base = base[np.argsort(np.linalg.norm(base, axis=1), kind="stable")[:n_atoms]]
    rng = np.random.default_rng(seed)
    pos = base[None] + rng.normal(scale=0.1, size=(num,) + base.shape)
    pos -= pos.mean(axis=1, keepdims=True)
    return [Atoms(f"Pt{n_atoms}", positions=p) for p in pos]


def measure(network: str, atoms: list, repeats: int, train: bool = True) -> dict:
    """Median training-step and sampling-step time (ms) on the exact batch of ``atoms``."""
    import jax

    from agedi_jax.model import build_model, init_state
    from agedi_jax.vocab import TypeVocab

    vocab = TypeVocab(("Ni", "Cu", "Pd", "Ag", "Pt", "Au"))
    cfg = R.benchmark_config(network)
    model = build_model(cfg, vocab)
    batch = R.exact_batch(atoms, vocab)
    state = init_state(model, jax.random.PRNGKey(0), batch)
    out: dict[str, Any] = {"network": network, "structures": len(atoms), "atoms_per_structure": len(atoms[0]),
                           "edges": int(batch.edge_mask.sum())}
    R.step_timings(model, cfg, state, batch, R.near_data_state(model, batch, R.T_LATE), repeats, out,
                   train=train, warmup=1)
    return out


def run(networks: list[str], batches: list[int], atoms: list[int], base_batch: int, base_atoms: int,
        repeats: int, json_path: Path | None = None, log=print) -> dict:
    import jax

    res: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                                      f"jax {jax.__version__} ({jax.default_backend()}: {jax.devices()[0].device_kind})",
                           "time": time.strftime("%Y-%m-%d %H:%M"), "repeats": repeats,
                           "base_batch": base_batch, "base_atoms": base_atoms, "batch": {}, "atoms": {}}
    for net in networks:
        res["batch"][net], res["atoms"][net] = [], []
        points = [("batch", b, base_atoms) for b in batches] + [("atoms", base_batch, n) for n in atoms]
        for axis, b, n in points:
            r = measure(net, clusters(b, n), repeats)
            res[axis][net].append(r)
            log(f"[{net}] batch {b:5d} x {n:3d} atoms: train {r['train_step_ms']['median']:9.1f} ms  "
                f"sample step {r['sample_step_ms']['median']:8.1f} ms  (load {R.load()})")
            if json_path:
                json_path.write_text(json.dumps(res, indent=1))
    res["linearity"] = linearity(res)
    if json_path:
        json_path.write_text(json.dumps(res, indent=1))
    return res


def linearity(res: dict) -> dict:
    """Exponent p of time ∝ batch^p (least squares in log-log, the two largest batches and
    the whole range) per network and step; p ≈ 1 is linear cost."""
    out = {}
    for net, rows in res["batch"].items():
        if len(rows) < 2:
            continue
        b = np.log([r["structures"] for r in rows])
        for kind in ("train_step_ms", "sample_step_ms"):
            t = np.log([r[kind]["median"] for r in rows])
            out[f"{net}/{kind}"] = {"all": float(np.polyfit(b, t, 1)[0]),
                                    "top": float((t[-1] - t[-2]) / (b[-1] - b[-2]))}
    return out


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for net, rows in res["batch"].items():
        b = [r["structures"] for r in rows]
        for kind, ls in (("train_step_ms", "-"), ("sample_step_ms", "--")):
            axes[0].loglog(b, [r[kind]["median"] / r["structures"] for r in rows], ls, marker="o",
                           label=f"{net} {kind.split('_')[0]}")
    axes[0].set_xlabel("structures per batch")
    axes[0].set_ylabel(f"ms per structure ({res['base_atoms']}-atom clusters)")
    for net, rows in res["atoms"].items():
        n = [r["atoms_per_structure"] for r in rows]
        for kind, ls in (("train_step_ms", "-"), ("sample_step_ms", "--")):
            axes[1].loglog(n, [r[kind]["median"] for r in rows], ls, marker="o", label=f"{net} {kind.split('_')[0]}")
    axes[1].set_xlabel("atoms per structure")
    axes[1].set_ylabel(f"ms per step (batch {res['base_batch']})")
    for ax, key, field in ((axes[0], "batch", "structures"), (axes[1], "atoms", "atoms_per_structure")):
        ticks = sorted({r[field] for rows in res[key].values() for r in rows})
        ax.set_xticks(ticks, [str(x) for x in ticks])
        ax.minorticks_off()
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(res["machine"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", nargs="+", default=["painn", "nequip"])
    ap.add_argument("--batches", nargs="+", type=int, default=[16, 32, 64, 128, 256, 512])
    ap.add_argument("--atoms", nargs="+", type=int, default=[13, 19, 38, 55])
    ap.add_argument("--base-batch", type=int, default=64)
    ap.add_argument("--base-atoms", type=int, default=13)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=R.RESULTS / "scaling.json")
    ap.add_argument("--plot", type=Path, default=HERE / "scaling.png")
    ap.add_argument("--no-tuning", action="store_true", help="default glibc heap and XLA fusions")
    args = ap.parse_args(argv)
    if not args.no_tuning and "jax" not in sys.modules:  # run_all.py's process settings
        R._process_settings()
    elif args.no_tuning and "jax" not in sys.modules:  # XLA's default: drop what importing agedi_jax set
        from agedi_jax.runtime import XLA_CPU_FLAG

        os.environ["XLA_FLAGS"] = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if f != XLA_CPU_FLAG)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    res = run(args.networks, args.batches, args.atoms, args.base_batch, args.base_atoms, args.repeats, args.json)
    for k, v in res["linearity"].items():
        print(f"{k}: time ∝ batch^{v['all']:.2f} over the range, ^{v['top']:.2f} between the two largest")
    plot(res, args.plot)
    print(f"wrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
