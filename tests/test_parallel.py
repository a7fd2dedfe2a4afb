"""Tests of data-parallel training (``fit(mesh=...)``, ``make_train_step(model, mesh)``)
and sharded sampling (``sample_atoms(mesh=...)``), and of the layout in agedi_jax.parallel.

The multi-device checks need ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before
JAX starts, so they run in subprocesses (``tests/parallel_worker.py``) that print their
measurements as JSON; the oracle everywhere is the single-device computation on the
union batch of the same structures. Host-side layout and argument checks run here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from ase import Atoms

from agedi_jax import parallel
from agedi_jax.batching import BatchStream
from agedi_jax.batch import Bucket, StructureError, collate
from agedi_jax.convert import atoms_from_batch, encode_structures
from agedi_jax.vocab import MASK, TypeVocab

WORKER = Path(__file__).with_name("parallel_worker.py")
REPO = WORKER.parents[1]


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cache = jax.config.jax_compilation_cache_dir  # conftest's persistent cache, shared
    if cache:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    return env


def _parse(proc_out: str, proc_err: str, what: str) -> dict:
    for line in proc_out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(f"{what} printed no result; stderr tail:\n{proc_err[-4000:]}")


@pytest.fixture(scope="module")
def four_devices() -> dict:
    """Training and sampling checks on 4 fake CPU devices (one subprocess)."""
    proc = subprocess.run(
        [sys.executable, str(WORKER), "main"], env=_env(4), capture_output=True, text=True, timeout=900, cwd=REPO
    )
    return _parse(proc.stdout, proc.stderr, "the 4-device worker")


# --------------------------------------------------------------------------------------
# Data-parallel training (4 devices) against the single-device step on the union batch
# --------------------------------------------------------------------------------------


def test_worker_sees_four_devices(four_devices):
    assert four_devices["devices"] == 4
    sizes = four_devices["shard_sizes"]
    assert len(sizes) == 4 and min(sizes) >= 1
    assert four_devices["local_shards_error"], "6 shards over 4 devices must be refused"


@pytest.mark.parametrize("case", ["train", "moved"])
def test_parallel_loss_equals_union_loss(four_devices, case):
    r = four_devices[case]
    # loss, loss_positions, loss_types: counted-atom weights, not a mean of shard means
    np.testing.assert_allclose(r["loss_parallel"], r["loss"], rtol=2e-6, atol=1e-7)
    assert r["loss"][1] > 0 and r["loss"][2] > 0


@pytest.mark.parametrize("case", ["train", "moved"])
def test_parallel_gradients_equal_union_gradients(four_devices, case):
    r = four_devices[case]
    assert r["grad_scale"] > 1e-3
    assert r["grad_diff"] <= 1e-5 * r["grad_scale"], r


@pytest.mark.parametrize("case", ["train", "moved"])
def test_parallel_step_equals_single_device_step(four_devices, case):
    r = four_devices[case]
    assert r["steps"] == [1, 1]
    assert r["param_change"] > 5e-4  # the step did move the parameters (lr = 1e-3)
    assert r["param_diff"] <= 1e-6 and r["ema_diff"] <= 1e-6, r
    for name, (single, par) in r["step_metrics"].items():
        assert par == pytest.approx(single, rel=2e-6, abs=1e-7), name
    assert r["replicated"]


# --------------------------------------------------------------------------------------
# Sharded sampling (8 shards on 4 devices, some empty)
# --------------------------------------------------------------------------------------


def test_fit_on_four_devices_replays_union_batches_and_resumes(four_devices):
    """``fit(mesh=...)`` trains data-parallel: stopped at step 2 and resumed to step 4 it
    ends with the parameters of four single-device steps on the union batches."""
    f = four_devices["fit"]
    assert f["steps"] == 4 and f["replicated"]
    assert f["param_change"] > 1e-4
    assert f["param_diff"] <= 2e-6 * max(1.0, f["param_scale"]), f
    assert f["ema_diff"] <= 2e-6 * max(1.0, f["param_scale"]), f
    assert f["metrics_lines"] >= 2 and f["checkpoint"]


def test_sharded_sampling_returns_complete_structures(four_devices):
    s = four_devices["sample"]
    assert s["num"] == 6
    assert s["sizes"] == [3, 3, 3, 5, 5, 5]
    assert set(s["symbols"]) <= {"Cu", "Pt"}  # no MASK ('X') left
    assert s["finite"]


def test_sharded_sampling_is_deterministic(four_devices):
    s = four_devices["sample"]
    assert s["repeat_identical"]
    assert s["other_seed_diff"] > 1e-2


def test_sharded_sampling_matches_single_device_sampler(four_devices):
    s = four_devices["sample"]
    assert s["ref_num"] == s["num"]
    assert all(s["ref_symbols_equal"])
    assert s["ref_pos_diff"] < 1e-3 * max(1.0, s["spread"])
    assert s["ref_info_equal"]


# --------------------------------------------------------------------------------------
# Multi-host start-up: 2 processes x 2 devices, each feeding its own shards
# --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_processes_feed_their_own_shards():
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "multihost", str(pid), str(port)],
            env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )
        for pid in range(2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        results.append(_parse(out, err, "a multi-host worker"))
    for pid, r in enumerate(results):
        assert r["started"] and r["process_index"] == pid
        assert (r["process_count"], r["device_count"], r["local_device_count"]) == (2, 4, 2)
        assert r["local_shards"] == [2 * pid, 2 * pid + 1]
        assert r["atoms_per_shard"] == r["expected_atoms"]
        assert r["first_slot"] == [0, 1, 3, 4]  # global slots: offsets of 1, 2, 1, 2 structures
        assert r["structures"] == 6


# --------------------------------------------------------------------------------------
# Host-side layout (no devices needed)
# --------------------------------------------------------------------------------------

VOCAB = TypeVocab(("Cu", "Pt"))


def _structures(sizes, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k, n in enumerate(sizes):
        pos = np.arange(n)[:, None] * np.array([2.0, 0.0, 0.0]) + rng.normal(scale=0.05, size=(n, 3))
        out.append(Atoms(["Cu", "Pt"] * (n // 2) + ["Cu"] * (n % 2), positions=pos))
    return encode_structures(out, VOCAB, 3.0, labels=[k + 1 for k in range(len(sizes))])


def test_stack_shards_uses_global_graph_slots():
    enc = _structures([2, 3, 2, 4, 3])
    chunks = [enc[0:2], [], enc[2:3], enc[3:5]]
    bucket = Bucket(8, 24, 7)
    stacked = parallel.stack_shards(chunks, bucket)
    assert stacked.positions.shape == (4, 8, 3) and stacked.cell.shape == (4, 7, 3, 3)
    offsets = [0, 2, 2, 3]
    for d, shard in enumerate(parallel.unstack(stacked)):
        k = len(chunks[d])
        real = np.where(shard.graph_mask)[0]
        assert real.tolist() == list(range(offsets[d], offsets[d] + k))
        assert shard.label[real].tolist() == [offsets[d] + j + 1 for j in range(k)]
        # padding atoms belong to the last slot, real atoms to their global slot
        assert np.all(shard.graph_index[~shard.node_mask] == bucket.n_graph - 1)
        assert set(shard.graph_index[shard.node_mask].tolist()) == set(real.tolist())
        assert shard.n_node.sum() == bucket.n_node and shard.n_edge.sum() == bucket.n_edge
        assert np.all(shard.types[~shard.node_mask] == MASK)
        if k == 0:
            assert not shard.node_mask.any() and not shard.edge_mask.any()
    # the union batch holds the same structures in the same slots
    union = parallel.union_batch(chunks, bucket)
    assert union.num_graphs == bucket.n_graph
    assert np.where(union.graph_mask)[0].tolist() == list(range(5))
    from_shards = [a for shard in parallel.unstack(stacked) for a in atoms_from_batch(shard, VOCAB)]
    from_union = atoms_from_batch(union, VOCAB)
    assert [a.get_chemical_symbols() for a in from_shards] == [a.get_chemical_symbols() for a in from_union]
    for a, b in zip(from_shards, from_union):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.info["label"] == b.info["label"]
    # the edges of each shard join its own atoms, as in a plain collate
    plain = collate(chunks[3], Bucket(8, 24, 3))
    np.testing.assert_array_equal(stacked.senders[3], plain.senders)
    np.testing.assert_array_equal(stacked.positions[3], plain.positions)


def test_stack_shards_refuses_what_does_not_fit():
    enc = _structures([2, 3, 2, 4, 3])
    with pytest.raises(ValueError, match="global graph slots"):
        parallel.stack_shards([enc[:3], enc[3:]], Bucket(16, 60, 5))
    with pytest.raises(StructureError, match="does not fit"):
        parallel.stack_shards([enc[:1], enc[1:]], Bucket(8, 24, 7))
    with pytest.raises(ValueError, match="empty"):
        parallel.stack_shards([[], []], Bucket(8, 24, 7))
    with pytest.raises(ValueError, match="shard 5"):
        parallel.stack_shards([enc[:1], enc[1:2]], Bucket(8, 24, 7), shards=[5])


def test_sharded_batch_stream_takes_consecutive_batches():
    enc = _structures([2, 3, 2, 4, 3, 2, 3, 4, 2, 3])
    stream = BatchStream(enc, 2, seed=3)
    sharded = parallel.ShardedBatchStream(stream, 3)
    assert sharded.bucket == parallel.shard_bucket(stream.bucket, 3)
    assert sharded.bucket.n_graph == 3 * (stream.bucket.n_graph - 1) + 1
    for step in (0, 4):
        idx = sharded.indices(step)
        assert [i.tolist() for i in idx] == [stream.indices(3 * step + k).tolist() for k in range(3)]
        full = sharded.batch(step)
        # a host's local part has the same global layout as the full batch
        part = sharded.batch(step, shards=[1])
        for a, b in zip(part, full):
            assert (a is None) == (b is None)
            if a is not None:  # optional fields (z_window) stay None for batches without them
                np.testing.assert_array_equal(np.asarray(a)[0], np.asarray(b)[1])
        union = sharded.union_batch(step)
        assert int(union.graph_mask.sum()) == sum(len(i) for i in idx)
    np.testing.assert_array_equal(sharded.batch(2).positions, sharded.batch(2).positions)


def test_mesh_and_local_shards_on_this_process():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == (parallel.DATA_AXIS,)
    assert mesh.devices.size == jax.device_count()
    n = 2 * mesh.devices.size
    assert parallel.local_shards(mesh, n).tolist() == list(range(n))
    with pytest.raises(ValueError, match="no devices"):
        parallel.make_mesh([])


def test_parallel_step_refuses_unstacked_batch():
    from agedi_jax import config as C
    from agedi_jax.model import build_model, make_train_step

    cfg = C.replace(C.preset("quickstart"), model=dict(network="painn", features=8, num_layers=1, avg_num_neighbors=3.0))
    model = build_model(cfg, VOCAB)
    mesh = parallel.make_mesh()
    flat = collate(_structures([2, 3]))
    step = make_train_step(model, mesh)
    with pytest.raises(ValueError, match="stacked batch"):
        step(None, flat, jax.random.PRNGKey(0))


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID",
                 "SLURM_NTASKS", "OMPI_MCA_orte_hnp_uri"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_initialize_distributed_is_a_no_op_for_one_process(clean_env):
    assert parallel.initialize_distributed() is False
    assert not jax.distributed.is_initialized()


def test_initialize_distributed_names_bad_settings(clean_env):
    with pytest.raises(ValueError, match="process_id=2"):
        parallel.initialize_distributed("localhost:1234", num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="host:port"):
        parallel.initialize_distributed("localhost", num_processes=2, process_id=0)
    clean_env.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
        parallel.initialize_distributed()
    assert not jax.distributed.is_initialized()
