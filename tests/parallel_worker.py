"""Checks of agedi_jax.parallel on several fake CPU devices, run in a subprocess by
tests/test_parallel.py (XLA_FLAGS must be set before JAX is imported).

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/parallel_worker.py main
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/parallel_worker.py multihost PID PORT

Prints one line ``RESULT {json}`` with the measured quantities; the test asserts on them.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def clusters(num: int, seed: int = 0):
    """Small random Cu/Pt clusters (3–5 atoms, min distance ~1.5 Å, not physical)."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    out = []
    while len(out) < num:
        n = int(rng.integers(3, 6))
        pos = rng.normal(scale=1.3, size=(n, 3))
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + 10 * np.eye(n)
        if d.min() < 1.5:
            continue
        out.append(Atoms(list(rng.choice(["Cu", "Pt"], size=n)), positions=pos))
    return out


def _maxabs(a, b) -> float:
    import jax

    diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))), a, b)
    return max(jax.tree.leaves(diffs))


def _scale(a) -> float:
    import jax

    return max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(a))


def _tick(label: str, t0=[None]) -> None:
    import time

    now = time.process_time()
    if t0[0] is not None:
        print(f"[worker] {label}: {now - t0[0]:.1f} s", file=sys.stderr, flush=True)
    t0[0] = now


def main() -> dict:
    _tick("start")
    import jax
    import jax.numpy as jnp

    from agedi_jax import config as C
    from agedi_jax import losses, parallel
    from agedi_jax.batching import BatchStream
    from agedi_jax.convert import encode_structures
    from agedi_jax.vocab import TypeVocab
    from agedi_jax.model import build_model, init_state, make_grad_fn, make_train_step
    from agedi_jax.generate import sample_atoms

    res: dict = {"devices": jax.device_count()}
    structs = clusters(14)
    cfg = C.replace(
        C.preset("quickstart"),
        model=dict(network="painn", features=8, num_layers=1, avg_num_neighbors=3.0),
        train=dict(warmup_steps=0, batch_size=3, learning_rate=1e-3),
        sample=dict(steps=4),
    )
    vocab = TypeVocab.from_atoms(structs)
    model = build_model(cfg, vocab)
    enc = encode_structures(structs, vocab, cfg.model.cutoff)
    mesh = parallel.make_mesh()
    stream = parallel.ShardedBatchStream(BatchStream(enc, 3, seed=0), mesh.size)
    res["shard_sizes"] = [len(i) for i in stream.indices(0)]
    try:
        parallel.local_shards(mesh, 6)
        res["local_shards_error"] = False
    except ValueError:
        res["local_shards_error"] = True
    union = stream.union_batch(0)
    state0 = init_state(model, jax.random.PRNGKey(0), union)
    key = jax.random.PRNGKey(1)
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731

    single_step = make_train_step(model, jit=False)

    @jax.jit
    def reference(state, batch, k):
        (loss, metrics), grads = jax.value_and_grad(
            lambda p: losses.joint_loss(p, model.apply, batch, k, model.loss_config), has_aux=True
        )(state.params)
        return metrics, grads, single_step(state, batch, k)

    grad_fn = make_grad_fn(model, mesh)
    par_step = make_train_step(model, mesh, jit=False)

    @jax.jit
    def data_parallel(state, batch, k):
        grads, metrics = grad_fn(state.params, batch, k)
        return metrics, grads, par_step(state, batch, k)

    def compare(tag, stacked, union_b):
        m1, g1, (s1, sm1) = reference(copy(state0), union_b, key)
        m4, g4, (s4, sm4) = data_parallel(parallel.replicate(copy(state0), mesh), stacked, key)
        res[tag] = {
            "loss": [float(m1[k]) for k in ("loss", "loss_positions", "loss_types")],
            "loss_parallel": [float(m4[k]) for k in ("loss", "loss_positions", "loss_types")],
            "step_metrics": {k: [float(sm1[k]), float(sm4[k])] for k in sm1},
            "grad_diff": _maxabs(g1, g4),
            "grad_scale": _scale(g1),
            "param_diff": _maxabs(s1.params, s4.params),
            "ema_diff": _maxabs(s1.ema_params, s4.ema_params),
            "param_change": _maxabs(s1.params, state0.params),
            "steps": [int(s1.step), int(s4.step)],
            "replicated": bool(s4.params is not None and all(
                x.sharding.is_fully_replicated for x in jax.tree.leaves(s4.params))),
        }

    _tick("setup")
    compare("train", stream.sharded(0, mesh), union)
    # The structures of shards 0-2 moved one device up, device 0 left empty: the union
    # batch is that of [c0, c1, c2, []], so the loss must not change with the layout.
    c = [[enc[i] for i in idx] for idx in stream.indices(0)]
    moved = [[], c[0], c[1], c[2]]
    _tick("train compare (2 compiles)")
    compare("moved", parallel.shard_batch(parallel.stack_shards(moved, stream.bucket), mesh),
            parallel.union_batch([c[0], c[1], c[2], []], stream.bucket))

    _tick("moved compare")
    # Sharded sampling: 6 structures in batches of 4 over 8 shards (2 per device, vmap
    # path; some shards empty).
    params = state0.params
    kw = dict(n_atoms=[3, 5], num_samples=3, batch_size=4)
    a1 = sample_atoms(model, params, mesh=mesh, seed=5, shards_per_device=2, **kw)
    _tick("sharded sampling first call")
    a2 = sample_atoms(model, params, mesh=mesh, seed=5, shards_per_device=2, **kw)
    a3 = sample_atoms(model, params, mesh=mesh, seed=6, shards_per_device=2, **kw)
    _tick("sharded sampling 2 more calls")
    ref = sample_atoms(model, params, seed=5, **kw)
    _tick("single-device sampling")
    res["sample"] = {
        "num": len(a1),
        "sizes": [len(a) for a in a1],
        "symbols": sorted({s for a in a1 for s in a.get_chemical_symbols()}),
        "finite": bool(all(np.all(np.isfinite(a.positions)) for a in a1)),
        "repeat_identical": all(
            np.array_equal(x.positions, y.positions) and x.get_chemical_symbols() == y.get_chemical_symbols()
            for x, y in zip(a1, a2)
        ),
        "other_seed_diff": float(max(np.max(np.abs(x.positions - y.positions)) for x, y in zip(a1, a3))),
        "ref_num": len(ref),
        "ref_pos_diff": float(max(np.max(np.abs(x.positions - y.positions)) for x, y in zip(a1, ref))),
        "ref_symbols_equal": [x.get_chemical_symbols() == y.get_chemical_symbols() for x, y in zip(a1, ref)],
        "ref_info_equal": all(x.info == y.info for x, y in zip(a1, ref)),
        "spread": float(max(np.ptp(a.positions, axis=0).max() for a in a1)),
    }
    _tick("sample compare")
    res["fit"] = check_fit(cfg, structs, mesh)
    _tick("fit")
    return res


def check_fit(cfg, structs, mesh) -> dict:
    """fit(mesh=...) stopped at step 2 and resumed to step 4, against four single-device
    steps on the union batches of the same ShardedBatchStream."""
    import tempfile

    import jax

    from agedi_jax import config as C
    from agedi_jax.batching import BatchStream
    from agedi_jax.data import Dataset
    from agedi_jax.model import init_state, make_train_step
    from agedi_jax.parallel import ShardedBatchStream
    from agedi_jax.train import fit, prepare_data, run_keys

    cfg = C.replace(cfg, train=dict(steps=4, log_every=1, val_every=100, checkpoint_every=2, ema_decay=0.9),
                    data=dict(val_fraction=0.0))
    ds = Dataset(structures=structs, name="toy")
    with tempfile.TemporaryDirectory() as tmp:
        fit(cfg, tmp, dataset=ds, mesh=mesh, progress=False, stop_at=2)
        run = fit(cfg, tmp, dataset=ds, mesh=mesh, progress=False)
        lines = len(open(f"{tmp}/metrics.jsonl").read().splitlines())
        ckpt = os.path.isdir(f"{tmp}/checkpoints/latest")
    data = prepare_data(cfg, ds)
    from agedi_jax.model import build_model

    model = build_model(data.config, data.vocab)
    pstream = ShardedBatchStream(BatchStream(data.train, cfg.train.batch_size, seed=cfg.train.seed), mesh.size)
    init_key, step_key, _ = run_keys(cfg.train.seed)
    state = init_state(model, init_key, pstream.union_batch(0))
    p0 = state.params
    step = make_train_step(model, jit=False)
    single = jax.jit(step)
    for s in range(4):
        state, _ = single(state, pstream.union_batch(s), jax.random.fold_in(step_key, s))
    return {
        "steps": int(run.state.step),
        "replicated": all(x.sharding.is_fully_replicated for x in jax.tree.leaves(run.state.params)),
        "param_change": _maxabs(state.params, p0),
        "param_diff": _maxabs(state.params, run.state.params),
        "ema_diff": _maxabs(state.ema_params, run.state.ema_params),
        "param_scale": _scale(state.params),
        "metrics_lines": lines,
        "checkpoint": ckpt,
    }


def multihost(pid: int, port: int) -> dict:
    """Process ``pid`` of 2, each with 2 CPU devices: start-up (from arguments or from
    the environment), a mesh over both processes, every process feeding its own shards."""
    from agedi_jax import parallel

    if pid == 0:  # process 0 passes arguments, process 1 the standard environment variables
        started = parallel.initialize_distributed(f"localhost:{port}", 2, pid)
    else:
        import os

        os.environ.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid))
        started = parallel.initialize_distributed()
    import jax
    from jax.sharding import PartitionSpec as P

    from agedi_jax.batch import Bucket
    from agedi_jax.convert import encode_structures
    from agedi_jax.vocab import TypeVocab

    mesh = parallel.make_mesh()
    structs = clusters(6, seed=1)
    enc = encode_structures(structs, TypeVocab.from_atoms(structs), 4.0)
    chunks = [enc[0:1], enc[1:3], enc[3:4], enc[4:6]]
    bucket = Bucket(24, 100, 7)
    mine = parallel.local_shards(mesh, 4)
    batch = parallel.shard_batch(parallel.stack_shards(chunks, bucket, mine), mesh, 4)

    def per_shard(b):
        atoms = jax.numpy.sum(b.node_mask, axis=1)
        first_slot = jax.numpy.min(jax.numpy.where(b.graph_mask, jax.numpy.arange(b.graph_mask.shape[1]), 99), axis=1)
        return atoms, first_slot, jax.lax.psum(jax.numpy.sum(b.graph_mask), "data")

    f = jax.jit(jax.shard_map(per_shard, mesh=mesh, in_specs=(P("data"),), out_specs=(P("data"), P("data"), P())))
    atoms, first, total = f(batch)
    from jax.experimental import multihost_utils

    atoms, first = multihost_utils.process_allgather((atoms, first), tiled=True)
    return {
        "started": started,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "local_shards": mine.tolist(),
        "atoms_per_shard": np.asarray(atoms).tolist(),
        "expected_atoms": [sum(s.num_atoms for s in c) for c in chunks],
        "first_slot": np.asarray(first).tolist(),
        "structures": int(total),
    }


if __name__ == "__main__":
    mode = sys.argv[1]
    out = main() if mode == "main" else multihost(int(sys.argv[2]), int(sys.argv[3]))
    print("RESULT " + json.dumps(out), flush=True)
