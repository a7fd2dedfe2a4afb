"""Training steps/s of candidate score networks on the C2DB 2D cells (CPU), and the cost of
one guided sampling step, to choose the CPU-budget model (see README.md).

    python experiments/two_d/time_networks.py --net painn:64:3 --net nequip:64:3:32:2 \
        --cutoff 5 --batch-size 32 --steps 15

Each ``--net`` is ``painn:FEATURES:LAYERS`` or ``nequip:FEATURES:LAYERS:VECTOR_FEATURES:LMAX``.
Prints, per network: parameters, the fixed training bucket (atoms / template edges /
graphs), compile time, median seconds per training step and, with ``--sample``, seconds per
guided reverse step (two network calls) on a batch of 64 validation templates. Figures are
indicative on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from agedi_jax.batching import BatchStream
from agedi_jax.config import preset, replace
from agedi_jax.model import build_model, init_state, make_train_step
from agedi_jax.train import prepare_data

SHARED = os.environ.get("AGEDI_JAX_DATA", "../shared/data")  # the shared data (run from the repository root)

DATA = SHARED + "/c2db/train.csv"
VAL = SHARED + "/c2db/val.csv"


def parse_net(spec: str) -> dict:
    parts = spec.split(":")
    if parts[0] == "painn" and len(parts) == 3:
        return dict(network="painn", features=int(parts[1]), num_layers=int(parts[2]))
    if parts[0] == "nequip" and len(parts) == 5:
        return dict(network="nequip", features=int(parts[1]), num_layers=int(parts[2]),
                    vector_features=int(parts[3]), l_max=int(parts[4]))
    raise SystemExit(f"bad --net {spec!r}")


def _median_time(fn, n: int) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(i))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def time_one(fields: dict, cutoff: float, batch_size: int, steps: int, cache: dict, sample: bool) -> dict:
    cfg = replace(preset("c2db"), data={"dataset": DATA}, model=dict(fields, cutoff=cutoff),
                  train={"batch_size": batch_size})
    if cutoff not in cache:
        cache[cutoff] = prepare_data(cfg)
    data = cache[cutoff]
    cfg = replace(cfg, model={"avg_num_neighbors": data.config.model.avg_num_neighbors},
                  process={"data_scale": data.config.process.data_scale})
    model = build_model(cfg, data.vocab)
    stream = BatchStream(data.train, batch_size, seed=0)
    state = init_state(model, jax.random.PRNGKey(0), stream.batch(0))
    step = make_train_step(model)
    t0 = time.perf_counter()
    state, m = step(state, stream.batch(0), jax.random.PRNGKey(1))
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def one(i):
        holder["state"], met = step(holder["state"], stream.batch(i + 1), jax.random.PRNGKey(i + 2))
        return met

    s_per_step = _median_time(one, steps)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(holder["state"].params))
    out = dict(**fields, cutoff=cutoff, batch_size=batch_size, params=n_params,
               bucket_atoms=stream.bucket.n_node, bucket_edges=stream.bucket.n_edge,
               bucket_graphs=stream.bucket.n_graph, compile_s=round(compile_s, 1),
               s_per_step=round(s_per_step, 3), steps_per_s=round(1.0 / s_per_step, 2),
               structures_per_s=round(float(np.mean([len(stream.indices(i)) for i in range(20)])) / s_per_step, 1))
    if sample:
        out.update(time_sampling(model, holder["state"].ema_params))
    return out


def time_sampling(model, params) -> dict:
    """Seconds per guided reverse step on 64 validation templates (guided score = 2 calls)."""
    import jax.numpy as jnp

    from agedi_jax import samplers
    from agedi_jax.batch import common_bucket
    from agedi_jax.data import load_c2db_csv
    from agedi_jax.batch import collate
    from agedi_jax.convert import encode_structures

    val = load_c2db_csv(VAL)
    structures = val.structures[:64]
    enc = encode_structures(structures, model.vocab, model.config.model.cutoff,
                            labels=[int(x) for x in val.labels[:64]], max_atoms=model.config.data.max_atoms)
    bucket = common_bucket([enc])
    batch = jax.tree.map(jnp.asarray, collate(enc, bucket))
    step = samplers.euler_maruyama(model.sde)

    @jax.jit
    def one(key, state, w):
        score_fn = samplers.guided(model.score_fn(params), w)
        return step(key, state, jnp.float32(0.5), jnp.float32(0.49), score_fn)

    t0 = time.perf_counter()
    jax.block_until_ready(one(jax.random.PRNGKey(0), batch, jnp.float32(0.5)))
    compile_s = time.perf_counter() - t0
    s = _median_time(lambda i: one(jax.random.PRNGKey(i), batch, jnp.float32(0.5)), 5)
    return dict(sample_bucket_atoms=bucket.n_node, sample_bucket_edges=bucket.n_edge,
                sample_compile_s=round(compile_s, 1), s_per_guided_step_64=round(s, 3))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", action="append", default=[])
    ap.add_argument("--cutoff", type=float, nargs="+", default=[5.0])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--sample", action="store_true", help="also time one guided sampling step")
    args = ap.parse_args(argv)
    nets = args.net or ["painn:64:3", "nequip:64:3:32:2"]
    cache: dict = {}
    for cutoff in args.cutoff:
        for spec in nets:
            print(json.dumps(time_one(parse_net(spec), cutoff, args.batch_size, args.steps, cache, args.sample)),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
