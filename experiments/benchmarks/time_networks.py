"""Training steps/s of candidate score networks on the case studies' data (CPU), to choose
the CPU-budget models (see ``experiments/clusters/README.md``,
``experiments/two_d/README.md``):

    python -m experiments.benchmarks.time_networks --case clusters --subset gm \
        --net painn:64:3 --net nequip:64:3:32:2 --steps 20
    python -m experiments.benchmarks.time_networks --case c2db --cutoff 5 --sample \
        --net painn:64:3 --net nequip:64:3:32:2 --steps 15

Each ``--net`` is ``painn:FEATURES:LAYERS`` or ``nequip:FEATURES:LAYERS:VECTOR_FEATURES:LMAX``.
Prints one JSON line per network: parameters, the fixed training bucket (atoms / template
edges / graphs), compile time, median seconds per training step and structures/s and, for
C2DB with ``--sample``, seconds per guided reverse step (two network calls) on 64 validation
templates. Figures are indicative on a shared machine.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from agedi_jax.batching import BatchStream
from agedi_jax.config import preset, replace
from agedi_jax.model import build_model, init_state, make_train_step
from agedi_jax.train import prepare_data
from experiments.common import data_path, timed


def parse_net(spec: str) -> dict:
    parts = spec.split(":")
    if parts[0] == "painn" and len(parts) == 3:
        return dict(network="painn", features=int(parts[1]), num_layers=int(parts[2]))
    if parts[0] == "nequip" and len(parts) == 5:
        return dict(network="nequip", features=int(parts[1]), num_layers=int(parts[2]),
                    vector_features=int(parts[3]), l_max=int(parts[4]))
    raise SystemExit(f"bad --net {spec!r}")


def case_config(case: str, subset: str, fields: dict, cutoff: float | None, batch_size: int):
    """The preset of a case study with the data path and the network fields to time."""
    if case == "clusters":
        cfg = replace(preset(f"qcd_{subset}"), data={"dataset": data_path("qcd_gap_relaxed")}, model=fields)
    else:
        cfg = replace(preset("c2db"), data={"dataset": data_path("c2db/train.csv")}, model=fields)
    if cutoff is not None:
        cfg = replace(cfg, model={"cutoff": cutoff})
    return replace(cfg, train={"batch_size": batch_size})


def time_one(cfg, steps: int, cache: dict, sample: bool) -> dict:
    key = (cfg.data.dataset, cfg.data.subset, cfg.model.cutoff)
    if key not in cache:
        cache[key] = prepare_data(cfg)
    data = cache[key]
    cfg = replace(cfg, model={"avg_num_neighbors": data.config.model.avg_num_neighbors},
                  process={"data_scale": data.config.process.data_scale})
    model = build_model(cfg, data.vocab)
    bs = cfg.train.batch_size
    stream = BatchStream(data.train, bs, seed=0)
    holder = {"state": init_state(model, jax.random.PRNGKey(0), stream.batch(0)), "i": 0}
    step = make_train_step(model)

    def one():
        i = holder["i"]
        holder["i"] += 1
        holder["state"], met = step(holder["state"], stream.batch(i), jax.random.PRNGKey(i + 1))
        jax.block_until_ready(met)

    r = timed(one, steps, warmup=1)
    s_per_step = r["median"] / 1e3
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(holder["state"].params))
    m = cfg.model
    out = dict(network=m.network, features=m.features, num_layers=m.num_layers, cutoff=m.cutoff, batch_size=bs,
               params=n_params, bucket_atoms=stream.bucket.n_node, bucket_edges=stream.bucket.n_edge,
               bucket_graphs=stream.bucket.n_graph, compile_s=round(r["first_ms"] / 1e3, 1),
               s_per_step=round(s_per_step, 3), steps_per_s=round(1.0 / s_per_step, 2),
               structures_per_s=round(float(np.mean([len(stream.indices(i)) for i in range(20)])) / s_per_step, 1))
    if m.network == "nequip":
        out.update(vector_features=m.vector_features, l_max=m.l_max)
    if sample:
        out.update(time_guided_step(model, holder["state"].ema_params))
    return out


def time_guided_step(model, params) -> dict:
    """Seconds per guided reverse step on 64 C2DB validation templates (guided score = 2 calls)."""
    from agedi_jax import samplers
    from agedi_jax.batch import collate, common_bucket
    from agedi_jax.convert import encode_structures
    from agedi_jax.data import load_c2db_csv

    val = load_c2db_csv(data_path("c2db/val.csv"))
    enc = encode_structures(val.structures[:64], model.vocab, model.config.model.cutoff,
                            labels=[int(x) for x in val.labels[:64]], max_atoms=model.config.data.max_atoms)
    bucket = common_bucket([enc])
    batch = jax.tree.map(jnp.asarray, collate(enc, bucket))
    step = samplers.euler_maruyama(model.sde)

    @jax.jit
    def one(key, state, w):
        score_fn = samplers.guided(model.score_fn(params), w)
        return step(key, state, jnp.float32(0.5), jnp.float32(0.49), score_fn)

    r = timed(lambda: jax.block_until_ready(one(jax.random.PRNGKey(0), batch, jnp.float32(0.5))), 5)
    return dict(sample_bucket_atoms=bucket.n_node, sample_bucket_edges=bucket.n_edge,
                sample_compile_s=round(r["first_ms"] / 1e3, 1), s_per_guided_step_64=round(r["median"] / 1e3, 3))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=["clusters", "c2db"], default="clusters")
    ap.add_argument("--subset", nargs="+", default=["gm"], choices=["gm", "de200"], help="QCD subsets (clusters)")
    ap.add_argument("--net", action="append", default=[])
    ap.add_argument("--cutoff", type=float, nargs="+", default=[None], help="cutoffs to time (default: the preset's)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sample", action="store_true", help="C2DB: also time one guided sampling step")
    args = ap.parse_args(argv)
    nets = args.net or ["painn:64:3", "nequip:64:3:32:2"]
    subsets = args.subset if args.case == "clusters" else [""]
    cache: dict = {}
    for subset in subsets:
        for cutoff in args.cutoff:
            for spec in nets:
                cfg = case_config(args.case, subset, parse_net(spec), cutoff, args.batch_size)
                row = time_one(cfg, args.steps, cache, args.sample and args.case == "c2db")
                print(json.dumps(dict(case=args.case, subset=subset or None, **row)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
