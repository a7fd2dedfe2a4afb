"""Measure training steps/s of candidate score networks on the QCD cluster subsets (CPU).

Used to choose the network and size of the CPU-budget cluster models (see README.md):

    python experiments/clusters/time_networks.py --subset gm --steps 20 \
        --net painn:64:3 --net nequip:64:3:32:2 --net nequip:32:2:16:1

Each ``--net`` is ``painn:FEATURES:LAYERS`` or ``nequip:FEATURES:LAYERS:VECTOR_FEATURES:LMAX``.
Prints compile time, median seconds per training step (after compilation) and atoms in the
fixed training bucket. Figures are indicative on a shared machine.
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

DATA = SHARED + "/qcd_gap_relaxed"


def parse_net(spec: str) -> dict:
    parts = spec.split(":")
    if parts[0] == "painn" and len(parts) == 3:
        return dict(network="painn", features=int(parts[1]), num_layers=int(parts[2]))
    if parts[0] == "nequip" and len(parts) == 5:
        return dict(network="nequip", features=int(parts[1]), num_layers=int(parts[2]),
                    vector_features=int(parts[3]), l_max=int(parts[4]))
    raise SystemExit(f"bad --net {spec!r}")


def time_one(subset: str, model_fields: dict, batch_size: int, steps: int, data_cache: dict) -> dict:
    cfg = replace(preset(f"qcd_{subset}"), data={"dataset": DATA}, model=model_fields,
                  train={"batch_size": batch_size})
    key = (subset, cfg.model.cutoff)
    if key not in data_cache:
        data_cache[key] = prepare_data(cfg)
    data = data_cache[key]
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
    times = []
    for i in range(1, steps + 1):
        b = stream.batch(i)
        t0 = time.perf_counter()
        state, m = step(state, b, jax.random.PRNGKey(i))
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    return dict(subset=subset, **model_fields, batch_size=batch_size, params=n_params,
                bucket_atoms=stream.bucket.n_node, bucket_edges=stream.bucket.n_edge,
                compile_s=round(compile_s, 1), s_per_step=round(float(np.median(times)), 3),
                steps_per_s=round(1.0 / float(np.median(times)), 2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subset", nargs="+", default=["gm"], choices=["gm", "de200"])
    ap.add_argument("--net", action="append", default=[])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    nets = args.net or ["painn:64:3", "nequip:64:3:32:2"]
    cache: dict = {}
    for subset in args.subset:
        for spec in nets:
            print(json.dumps(time_one(subset, parse_net(spec), args.batch_size, args.steps, cache)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
