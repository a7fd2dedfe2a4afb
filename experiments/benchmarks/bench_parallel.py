"""Benchmark data-parallel training and sharded sampling (agedi_jax.parallel).

Trains the quick-start joint model on rattled 13-atom Cu/Pt icosahedra and prints, for the
plain single-device step on the union batch and for the data-parallel step on meshes of
1 and D devices: compile time, median step time, structures per second, and the loss
difference to the single-device step (the correctness check). Then samples the same
structures with ``sample_atoms`` on one device and with ``mesh=``.

On a CPU the devices are fake (``--cpu-devices D`` sets
``XLA_FLAGS=--xla_force_host_platform_device_count=D``): they share the same cores, so the
parallel step is NOT faster here — the point is that it runs and matches. On a machine with
D GPUs the same command without ``--cpu-devices`` uses them all:

    python -m experiments.benchmarks.bench_parallel --cpu-devices 4          # CPU, 4 fake devices
    python -m experiments.benchmarks.bench_parallel --batch 64 --repeats 50  # every GPU of the host
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-devices", type=int, default=0, help="fake CPU devices (0: use the real devices)")
    ap.add_argument("--batch", type=int, default=8, help="structures per shard (per device)")
    ap.add_argument("--repeats", type=int, default=10, help="timed steps after warm-up")
    ap.add_argument("--network", default="nequip", choices=["nequip", "painn"])
    ap.add_argument("--sample-steps", type=int, default=20, help="sampling steps (0: skip sampling)")
    return ap.parse_args()


ARGS = parse()
if ARGS.cpu_devices:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ARGS.cpu_devices}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from ase.cluster import Icosahedron  # noqa: E402

from agedi_jax import config as C  # noqa: E402
from agedi_jax import parallel  # noqa: E402
from agedi_jax.batching import BatchStream  # noqa: E402
from agedi_jax.convert import encode_structures
from agedi_jax.generate import sample_atoms  # noqa: E402
from agedi_jax.model import build_model, init_state, make_train_step  # noqa: E402
from agedi_jax.nn import average_num_neighbors  # noqa: E402
from agedi_jax.vocab import TypeVocab  # noqa: E402
from experiments.common import timed  # noqa: E402


def clusters(num: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
        a = Icosahedron("Cu", 2)
        a.symbols[rng.random(len(a)) < 0.5] = "Pt"
        a.positions += rng.normal(scale=0.1, size=a.positions.shape)
        out.append(a)
    return out


def main() -> None:
    devices = jax.devices()
    d = len(devices)
    print(f"backend {jax.default_backend()}, {d} devices ({devices[0].device_kind}), jax {jax.__version__}")
    if jax.default_backend() == "cpu":
        print("CPU: the devices share the same cores; parallel steps are not expected to be faster here.")
    structs = clusters(4 * d * ARGS.batch)
    cutoff = 5.0
    cfg = C.replace(
        C.preset("quickstart"),
        model=dict(network=ARGS.network, avg_num_neighbors=round(float(average_num_neighbors(structs[:50], cutoff)), 4)),
        train=dict(batch_size=ARGS.batch, warmup_steps=0),
        sample=dict(steps=max(ARGS.sample_steps, 1)),
    )
    vocab = TypeVocab.from_atoms(structs)
    model = build_model(cfg, vocab)
    enc = encode_structures(structs, vocab, cfg.model.cutoff)
    stream = BatchStream(enc, ARGS.batch, seed=0)
    key = jax.random.PRNGKey(1)
    rows = []
    d_shards = parallel.ShardedBatchStream(stream, d)
    unions = [d_shards.union_batch(s) for s in range(ARGS.repeats + 1)]
    n_struct = float(np.mean([np.sum(u.graph_mask) for u in unions]))
    state0 = init_state(model, jax.random.PRNGKey(0), unions[0])
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731  (steps donate their state)

    def bench(label, n_dev, n_shards, step, state, batches):
        holder = {"s": state}
        first_loss = []

        calls = {"i": 0}

        def one():
            i = calls["i"]
            calls["i"] += 1
            holder["s"], m = step(holder["s"], batches[i], jax.random.fold_in(key, i))
            if i == 0:
                first_loss.append(float(m["loss"]))
            jax.block_until_ready(m["loss"])

        r = timed(one, ARGS.repeats)
        first, med = r["first_ms"] / 1e3, r["median"] / 1e3
        rows.append((label, n_dev, n_shards, first, med, n_struct / med, first_loss[0]))

    # the plain single-device step on the union of the D shards of every step
    bench("make_train_step on the union batch", 1, 1, make_train_step(model), copy(state0), unions)
    for mesh, label in ((parallel.make_mesh(devices[:1]), f"parallel, 1 device, {d} shards"),
                        (parallel.make_mesh(), f"parallel, {d} devices")):
        if label.startswith("parallel, 1 device") and d == 1:
            continue
        batches = [d_shards.sharded(s, mesh) for s in range(ARGS.repeats + 1)]
        step = make_train_step(model, mesh)
        bench(label, mesh.devices.size, d, step, parallel.replicate(copy(state0), mesh), batches)
    ref_loss = rows[0][-1]
    rows = [r[:-1] + (abs(r[-1] - ref_loss),) for r in rows]

    print(f"\ntrain step, quickstart {ARGS.network}, {ARGS.batch} Cu/Pt 13-atom clusters per shard "
          f"(~{n_struct:.0f} structures per step); |Δloss|: first-step loss vs the single-device step")
    print(f"{'':40s} {'devices':>7s} {'shards':>6s} {'1st call s':>10s} {'median s':>9s} {'struct/s':>9s} {'|Δloss|':>9s}")
    for label, nd, ns, first, med, rate, diff in rows:
        print(f"{label:40s} {nd:7d} {ns:6d} {first:10.2f} {med:9.4f} {rate:9.1f} {diff:9.2e}")

    if ARGS.sample_steps:
        params = state0.params
        n = 2 * d * ARGS.batch
        kw = dict(n_atoms=13, num_samples=n, batch_size=d * ARGS.batch, seed=0)
        out = {}
        for label, fn in (
            ("sample_atoms (one device)", lambda: sample_atoms(model, params, **kw)),
            (f"sample_atoms(mesh=...) ({d} devices)", lambda: sample_atoms(model, params, mesh=parallel.make_mesh(), **kw)),
        ):
            t0 = time.perf_counter()
            fn()
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            out[label] = fn()
            again = time.perf_counter() - t0
            print(f"{label:40s} {n} structures, {ARGS.sample_steps} steps: 1st call {first:.2f} s, "
                  f"again {again:.2f} s ({n / again:.1f} structures/s)")
        a, b = out.values()
        diff = max(float(np.max(np.abs(x.positions - y.positions))) for x, y in zip(a, b))
        same = np.mean([x.get_chemical_symbols() == y.get_chemical_symbols() for x, y in zip(a, b)])
        print(f"sharded vs one device: max |Δposition| {diff:.2e} Å, identical compositions {100 * same:.0f} %")


if __name__ == "__main__":
    sys.exit(main())
