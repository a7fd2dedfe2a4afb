"""Sampling throughput: one compiled ``lax.scan`` over the whole time grid
(:func:`agedi_jax.samplers.sample`) versus the same step function jitted once and called
from a Python loop (one dispatch and one host round of Python per step).

Workload: ``--particles`` atoms (default 10⁵) in free clusters of ``--atoms`` atoms (zero
centre of mass, so the batch conventions are exercised), a toy analytic score (the exact
score of zero-CoM Gaussian clusters, no network), ``--steps`` reverse steps of the VE SDE
from the prior. ``--sampler`` picks the step: "em" (Euler–Maruyama), "heun"
(probability-flow ODE, two score calls per step), "pc" (EM + one Langevin corrector) or
"joint" (EM + τ-leaping of 3 types from the exact concrete score of independent atoms).

Prints compile times, the median run time over ``--repeats`` runs (after a warm-up run),
steps/s, particle-steps/s, structures/s for the full sample, and the loop/scan time ratio.

    python -m experiments.benchmarks.bench_samplers
    python -m experiments.benchmarks.bench_samplers --sampler joint --particles 20000
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from agedi_jax import discrete
from agedi_jax import samplers as SM
from agedi_jax import sde as S
from agedi_jax.batch import AtomsBatch
from agedi_jax.geometry import graph_mean
from agedi_jax.scores import Scores
from agedi_jax.vocab import MASK

S0 = 1.0  # toy data: zero-CoM Gaussian clusters of per-atom std 1 Å
P0 = np.array([0.5, 0.3, 0.2])


def cluster_batch(n_particles: int, atoms: int) -> AtomsBatch:
    n_graphs = n_particles // atoms
    n_real = n_graphs * atoms
    n, g = n_real + 1, n_graphs + 1
    gi = np.full(n, g - 1, np.int32)
    gi[:n_real] = np.repeat(np.arange(n_graphs), atoms)
    n_node = np.full(g, atoms, np.int32)
    n_node[-1] = 1
    return AtomsBatch(
        positions=np.zeros((n, 3), np.float32), types=np.zeros(n, np.int32), cell=np.zeros((g, 3, 3), np.float32),
        pbc=np.zeros((g, 3), bool), node_mask=np.arange(n) < n_real, graph_mask=np.arange(g) < n_graphs,
        graph_index=gi, n_node=n_node, label=np.zeros(g, np.int32), fixed=np.zeros(n, bool),
        senders=np.full(1, n - 1, np.int32), receivers=np.full(1, n - 1, np.int32),
        shifts=np.zeros((1, 3), np.float32), edge_mask=np.zeros(1, bool),
        n_edge=np.array([0] * (g - 1) + [1], np.int32),
    )


def toy_score_fn(sde, process):
    def fn(state, t, key, type_weights=None):
        tt = t[state.graph_index]
        v = sde.mean_coeff(tt) ** 2 * S0**2 + sde.std(tt) ** 2
        c = graph_mean(state, state.positions)[state.graph_index]
        pos = -(state.positions - c) / v[:, None]
        types = discrete.independent_log_score(jnp.log(jnp.asarray(P0, pos.dtype)), process.total(tt))
        return Scores(positions=pos, types=types)

    return fn


def block(state):
    jax.block_until_ready(state.positions)
    return state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--particles", type=int, default=100_000)
    ap.add_argument("--atoms", type=int, default=100, help="atoms per cluster")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sampler", choices=("em", "heun", "pc", "joint"), default="em")
    ap.add_argument("--prng", choices=("threefry2x32", "rbg", "unsafe_rbg"), default="threefry2x32",
                    help="PRNG implementation of the keys (the samplers work with any)")
    args = ap.parse_args()
    key = lambda seed: jax.random.key(seed, impl=args.prng)  # noqa: E731

    sde = S.VESDE(S.VELinearSchedule(0.01, 8.0))
    process = discrete.AbsorbingProcess(3)
    step = {
        "em": SM.euler_maruyama(sde),
        "heun": SM.heun_ode(sde),
        "pc": SM.predictor_corrector(sde),
        "joint": SM.joint(SM.euler_maruyama(sde), SM.tau_leaping(process)),
    }[args.sampler]
    score_fn = toy_score_fn(sde, process)
    template = cluster_batch(args.particles, args.atoms)
    state0 = block(jax.jit(SM.prior_state, static_argnames="mask_types")(key(0), template, sde))
    grid = SM.time_grid(args.steps, 1e-3)
    grid_np = np.asarray(grid)
    n_real = int(template.node_mask.sum())
    n_graphs = int(template.graph_mask.sum())

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}: {n_real} particles in {n_graphs} clusters of "
          f"{args.atoms}, {args.steps} steps, sampler {args.sampler}, PRNG {args.prng}, final MASK resolution on")

    # compiled scan
    scan = jax.jit(lambda k, s: SM.sample(k, s, score_fn, step, grid))
    t0 = time.perf_counter()
    compiled = scan.lower(key(1), state0).compile()
    t_compile_scan = time.perf_counter() - t0
    block(compiled(key(1), state0))
    scan_times = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        out = block(compiled(key(2 + r), state0))
        scan_times.append(time.perf_counter() - t0)
    assert np.all(np.isfinite(np.asarray(out.positions)))
    assert not np.any(np.asarray(out.types)[template.node_mask] == MASK) or args.sampler != "joint"

    # Python loop over the same jitted step
    step_jit = jax.jit(lambda k, s, t, tn: step(k, s, t, tn, score_fn))
    final_jit = jax.jit(lambda k, s: SM.Finalize()(k, s, grid[-1], score_fn))
    t0 = time.perf_counter()
    step_c = step_jit.lower(key(0), state0, grid_np[0], grid_np[1]).compile()
    final_c = final_jit.lower(key(0), state0).compile()
    t_compile_loop = time.perf_counter() - t0

    def run_loop(key):
        s = state0
        for i in range(args.steps):
            s = step_c(jax.random.fold_in(key, i), s, grid_np[i], grid_np[i + 1])
        return block(final_c(jax.random.fold_in(key, args.steps), s))

    run_loop(key(1))
    loop_times = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        ref = run_loop(key(2 + r))
        loop_times.append(time.perf_counter() - t0)
    diff = float(np.max(np.abs(np.asarray(ref.positions) - np.asarray(out.positions))))

    ts, tl = statistics.median(scan_times), statistics.median(loop_times)
    for name, tc, tr in (("scan (one jit)", t_compile_scan, ts), ("python loop (jit per step)", t_compile_loop, tl)):
        print(f"{name:28s} compile {tc:6.2f} s   run {tr:7.3f} s   {args.steps / tr:8.1f} steps/s   "
              f"{n_real * args.steps / tr:10.3e} particle-steps/s   {n_graphs / tr:8.1f} structures/s")
    print(f"loop / scan time ratio: {tl / ts:.2f}   (max |scan − loop| position difference {diff:.1e} Å)")


if __name__ == "__main__":
    main()
