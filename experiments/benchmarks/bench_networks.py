"""Benchmark the score networks on a batch of rattled Pt13 icosahedra.

Prints, per network: parameter count, compile time (forward and forward+backward), median
forward and forward+backward time over repeats after warm-up, and structures per second.
With ``--compare-plain`` each network is also timed with its global inputs and
normalisation switched off (``global_context``, ``com_vector``, ``normalize`` = False), the
cost of those features.

    python -m experiments.benchmarks.bench_networks [--batch 64] [--repeats 20] [--compare-plain]

Figures on a shared CPU are indicative only.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from ase.cluster import Icosahedron

from agedi_jax.convert import batch_from_atoms
from agedi_jax.nn import average_num_neighbors, make_network
from agedi_jax.vocab import TypeVocab
from experiments.common import timed

CUTOFF = 6.0


def pt13_batch(num: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    atoms = []
    for _ in range(num):
        a = Icosahedron("Pt", 2)
        a.positions += rng.normal(scale=0.1, size=a.positions.shape)
        atoms.append(a)
    vocab = TypeVocab(("Pt",))
    return atoms, batch_from_atoms(atoms, vocab, CUTOFF, labels=[0] * num), vocab


def compile_time(fn, *args) -> float:
    t0 = time.perf_counter()
    fn.lower(*args).compile()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="number of Pt13 clusters")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--networks", nargs="+", default=["painn", "nequip"])
    ap.add_argument("--compare-plain", action="store_true",
                    help="also time each network without global context, CoM input and normalisation")
    args = ap.parse_args()

    atoms, batch, vocab = pt13_batch(args.batch)
    avg = average_num_neighbors(atoms, CUTOFF)
    batch = jax.tree.map(jnp.asarray, batch)
    g = batch.num_graphs
    t = jnp.linspace(0.05, 0.95, g).astype(jnp.float32)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({platform.processor() or platform.machine()}), "
          f"{args.batch} x Pt13, bucket {batch.bucket}, cutoff {CUTOFF} Å, avg neighbours {avg:.2f}")
    configs = {
        "painn": dict(features=64, num_layers=3),  # the original package's size
        "nequip": dict(),  # the defaults: 64x0e + 32x(1o+2e), l_max 2, 3 layers
    }
    plain = dict(global_context=False, com_vector=False, normalize=False)
    variants = [(name, {}) for name in args.networks]
    if args.compare_plain:
        variants = [v for name in args.networks for v in ((name, {}), (name + "-plain", plain))]
    header = f"{'network':13s} {'params':>8s} {'compile fwd':>12s} {'compile f+b':>12s} {'fwd ms':>8s} {'f+b ms':>8s} {'fwd str/s':>10s} {'f+b str/s':>10s}"
    rows = []
    for label, extra in variants:
        name = label.split("-")[0]
        model = make_network(name, num_types=vocab.num_types, cutoff=CUTOFF, avg_num_neighbors=avg,
                             **configs[name], **extra)
        params = jax.jit(model.init)(jax.random.PRNGKey(0), batch, t)
        n_params = sum(x.size for x in jax.tree.leaves(params))

        fwd = jax.jit(lambda p, b, t: model.apply(p, b, t))

        def loss(p, b, t):
            out = model.apply(p, b, t)
            return jnp.sum(out.positions**2) + jnp.sum(out.types**2)

        fwd_bwd = jax.jit(jax.value_and_grad(loss))
        c_fwd = compile_time(fwd, params, batch, t)
        c_fb = compile_time(fwd_bwd, params, batch, t)
        t_fwd = timed(lambda: jax.block_until_ready(fwd(params, batch, t)), args.repeats)["median"] / 1e3
        t_fb = timed(lambda: jax.block_until_ready(fwd_bwd(params, batch, t)), args.repeats)["median"] / 1e3
        rows.append(f"{label:13s} {n_params:8d} {c_fwd:11.1f}s {c_fb:11.1f}s {1e3 * t_fwd:8.1f} "
                    f"{1e3 * t_fb:8.1f} {args.batch / t_fwd:10.0f} {args.batch / t_fb:10.0f}")
        print(header if len(rows) == 1 else "", rows[-1], sep="\n" if len(rows) == 1 else "")


if __name__ == "__main__":
    main()
