"""Relaxation throughput: ASE's FIRE + ASE's EMT one structure at a time versus
:func:`agedi_jax.relax.relax` with the JAX EMT on the whole set in one batch.

Workload: ``--n`` (default 128) random bimetallic 13-atom clusters, half Pt–Cu and half
Pd–Ag with a random composition each, atoms placed uniformly in a sphere at least
``--min-distance`` (2.0 Å) apart (:func:`agedi_jax.evaluation.energetics.random_cluster`),
relaxed to ``--fmax`` (0.05 eV/Å) with at most ``--max-steps`` FIRE steps and ASE's FIRE
defaults. The JAX run is timed separately for compilation (a ``max_steps=0`` call of the
same compiled loop) and for the relaxation itself, in float32 (the default) and in float64.

Prints the wall times, the speed-up, the median / max |ΔE| per structure between the two
relaxed energies, and the converged fractions; writes them with the settings to
``experiments/benchmarks/results/relaxation.json``.

    python -m experiments.benchmarks.relaxation
    python -m experiments.benchmarks.relaxation --n 32 --no-x64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from agedi_jax.convert import batch_from_atoms
from agedi_jax.evaluation.energetics import random_cluster
from agedi_jax.potentials import emt_cutoff, make_emt
from agedi_jax.relax import FireParams, relax
from agedi_jax.vocab import TypeVocab

RESULTS = Path(__file__).resolve().parent / "results" / "relaxation.json"
PAIRS = (("Pt", "Cu"), ("Pd", "Ag"))


def make_clusters(n: int, n_atoms: int, min_distance: float, seed: int) -> list:
    """``n`` random bimetallic clusters, alternating Pt–Cu / Pd–Ag, random compositions."""
    out = []
    for k in range(n):
        rng = np.random.default_rng([seed, k])
        a, b = PAIRS[k % len(PAIRS)]
        n_a = int(rng.integers(1, n_atoms))
        out.append(random_cluster({a: n_a, b: n_atoms - n_a}, rng, min_distance=min_distance))
    return out


def run_ase(clusters: list, fmax: float, max_steps: int) -> dict:
    from ase.calculators.emt import EMT
    from ase.optimize import FIRE

    energies, converged, steps = [], [], []
    t0 = time.perf_counter()
    for atoms in clusters:
        a = atoms.copy()
        a.calc = EMT()
        opt = FIRE(a, logfile=None)
        converged.append(bool(opt.run(fmax=fmax, steps=max_steps)))
        energies.append(float(a.get_potential_energy()))
        steps.append(int(opt.nsteps))
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "energies": np.array(energies),
        "converged": np.array(converged),
        "steps": np.array(steps),
    }


def run_jax(clusters: list, fmax: float, max_steps: int, x64: bool) -> dict:
    with jax.enable_x64(x64):
        vocab = TypeVocab.from_atoms(clusters)
        energy_fn = make_emt(vocab)
        batch = batch_from_atoms(clusters, vocab, emt_cutoff(vocab.symbols))
        batch = jax.tree.map(jnp.asarray, batch)
        t0 = time.perf_counter()
        _, res0 = relax(energy_fn, batch, fmax=fmax, max_steps=0)  # compile + one evaluation
        jax.block_until_ready(res0)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, res = relax(energy_fn, batch, fmax=fmax, max_steps=max_steps)
        jax.block_until_ready(res)
        wall = time.perf_counter() - t0
        n = len(clusters)
        return {
            "dtype": str(batch.positions.dtype),
            "compile_s": compile_s,
            "wall_s": wall,
            "bucket": {"n_node": batch.num_nodes, "n_edge": batch.num_edges, "n_graph": batch.num_graphs},
            "energies": np.asarray(res.energy, np.float64)[:n],
            "converged": np.asarray(res.converged, bool)[:n],
            "steps": np.asarray(res.steps)[:n],
        }


def compare(ase: dict, jx: dict) -> dict:
    de = np.abs(jx["energies"] - ase["energies"])
    return {
        "dtype": jx["dtype"],
        "compile_s": round(jx["compile_s"], 3),
        "relax_wall_s": round(jx["wall_s"], 3),
        "speedup_vs_ase": round(ase["wall_s"] / jx["wall_s"], 2),
        "speedup_vs_ase_incl_compile": round(ase["wall_s"] / (jx["wall_s"] + jx["compile_s"]), 2),
        "median_abs_dE_eV": float(np.median(de)),
        "max_abs_dE_eV": float(de.max()),
        "fraction_dE_below_1meV": float(np.mean(de < 1e-3)),
        "fraction_converged": float(jx["converged"].mean()),
        "steps_median": float(np.median(jx["steps"])),
        "steps_max": int(jx["steps"].max()),
        "same_step_count_as_ase": float(np.mean(jx["steps"] == ase["steps"])),
        "bucket": jx["bucket"],
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=128, help="number of clusters")
    p.add_argument("--atoms", type=int, default=13, help="atoms per cluster")
    p.add_argument("--min-distance", type=float, default=2.0, help="Å")
    p.add_argument("--fmax", type=float, default=0.05, help="eV/Å")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-x64", action="store_true", help="skip the float64 JAX run")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    clusters = make_clusters(args.n, args.atoms, args.min_distance, args.seed)
    print(f"{len(clusters)} clusters of {args.atoms} atoms (Pt–Cu / Pd–Ag), fmax {args.fmax} eV/Å")

    jax_runs = {"float32": run_jax(clusters, args.fmax, args.max_steps, x64=False)}
    if not args.no_x64:
        jax_runs["float64"] = run_jax(clusters, args.fmax, args.max_steps, x64=True)
    ase = run_ase(clusters, args.fmax, args.max_steps)

    print(
        f"ASE  (FIRE + EMT, one at a time): {ase['wall_s']:8.2f} s, "
        f"converged {ase['converged'].mean():.3f}, median steps {np.median(ase['steps']):.0f}"
    )
    summary = {}
    for name, jx in jax_runs.items():
        c = compare(ase, jx)
        summary[name] = c
        print(
            f"JAX  {name} (one batch):        {c['relax_wall_s']:8.2f} s "
            f"(+ compile {c['compile_s']:.2f} s), speed-up {c['speedup_vs_ase']:.1f}x "
            f"({c['speedup_vs_ase_incl_compile']:.1f}x incl. compile), converged "
            f"{c['fraction_converged']:.3f}, |ΔE| median {c['median_abs_dE_eV']:.2e} eV "
            f"max {c['max_abs_dE_eV']:.2e} eV, same minimum (|ΔE| < 1 meV) "
            f"{c['fraction_dE_below_1meV']:.3f}"
        )

    record = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
        f"({jax.default_backend()})",
        "time": time.strftime("%Y-%m-%d %H:%M"),
        "settings": {
            "n_clusters": args.n,
            "atoms_per_cluster": args.atoms,
            "pairs": ["".join(pair) for pair in PAIRS],
            "composition": "A_k B_(N-k), k uniform in 1..N-1",
            "min_distance_A": args.min_distance,
            "placement": "random_cluster: uniform in a sphere of radius (N/0.3)^(1/3) x mean "
            "covalent radius, connected start (bond_factor 1.3)",
            "fmax_eV_per_A": args.fmax,
            "max_steps": args.max_steps,
            "seed": args.seed,
            "fire": FireParams()._asdict(),
            "emt_cutoff_A": emt_cutoff(),
        },
        "ase": {
            "wall_s": round(ase["wall_s"], 3),
            "fraction_converged": float(ase["converged"].mean()),
            "steps_median": float(np.median(ase["steps"])),
            "steps_max": int(ase["steps"].max()),
        },
        "jax": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
