"""Beyond one device: the layout of data-parallel batches over a ``jax.sharding`` mesh
and the ``shard_map`` wrappers that run per-batch functions on it (no ``pmap``).

Training and sampling themselves have one path for one device or many:
:func:`agedi_jax.train.fit` and :func:`agedi_jax.generate.sample_atoms` take ``mesh=``, and
:func:`agedi_jax.model.make_train_step` / :func:`~agedi_jax.model.make_grad_fn` wrap the
single-device loss with :func:`data_parallel_grad` when given one. This module holds only
what is specific to many devices: meshes, shardings, the stacked layout with global graph
slots, and those wrappers.

**Layout.** A parallel batch is ``D`` sub-batches (*shards*) stacked along a new leading
axis, every shard padded to the same :class:`~agedi_jax.batch.Bucket`; the leading axis is
sharded over the mesh axis ``"data"`` (``D`` = a multiple of the number of devices),
parameters and optimiser state are replicated. Each shard is an ordinary
:class:`~agedi_jax.batch.AtomsBatch` (MASK = 0, padding atom and padding graph last) with
one twist, the **global graph slots**: a shard has as many graph slots as the union of all
shards of the step, and its structures sit in the slots they have in that union (shard
``d`` holds structures ``o_d .. o_d + k_d − 1`` with ``o_d = k_0 + … + k_{d−1}``); the
other slots are empty (``graph_mask`` False, no atoms) and the last one is the padding
graph. Graph slots cost a few numbers each; atoms and edges stay per shard.

**Why global slots.** The loss and the samplers draw every random number from keys folded
with the *graph slot* and the atom's index inside its graph (:mod:`agedi_jax.keys`). With
global slots a structure gets exactly the noise, time and label dropout it would get in
the single batch of all the step's structures, whichever device it lands on and however
many devices there are. Hence what holds:

* the parallel loss, gradients and optimiser step equal those of the single-device
  :func:`agedi_jax.model.make_train_step` on the union batch (:func:`union_batch`), up to
  float32 rounding (sums in another order, ~1e-7 relative);
* ``sample_atoms(..., mesh=mesh)`` with ``seed`` and ``batch_size=B`` returns the
  structures of the single-device call with the same ``seed`` and ``batch_size``, up to
  rounding (per-structure arithmetic is the same; compiled code for another padded shape
  may round differently in the last bit, which the reverse SDE can amplify, and a
  categorical type draw sitting on a rounding boundary may flip);
* what does *not* hold: a run on ``D`` devices does not replay a run on one device with
  the same ``train.batch_size`` — :class:`ShardedBatchStream` feeds ``D`` consecutive
  packed batches per step (an effective batch ``D`` times larger, and ``D`` times fewer
  steps per epoch). It replays exactly a one-device run on the union batches.

**The loss.** :func:`agedi_jax.losses.joint_loss` averages over the real, non-fixed atoms
of its batch (both terms over the same atoms), so the union's loss is
``Σ_d c_d L_d / Σ_d c_d`` with ``c_d`` the number of such atoms in shard ``d``; the
per-shard means are recombined with these weights (never a mean of means), inside one
``shard_map`` whose ``psum`` makes the loss — and so its gradient — global.

**Multi-host.** Call :func:`initialize_distributed` first (before any JAX computation) on
every host; :func:`make_mesh` then spans the devices of all hosts (``jax.devices()`` is
global, ordered by process), so each host owns a contiguous block of shards
(:func:`local_shards`) and feeds only those (:meth:`ShardedBatchStream.sharded`,
:func:`shard_batch`). Every host builds the same replicated state from the same seed.

Usage::

    mesh = make_mesh()                                   # all devices, axis "data"
    run = fit(config, "runs/x", mesh=mesh)               # data-parallel training
    atoms = sample_atoms(run.model, run.state.ema_params, n_atoms=13, num_samples=256, mesh=mesh)
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from agedi_jax.batch import AtomsBatch, Bucket, EncodedStructure, collate
from agedi_jax.batching import BatchStream
from agedi_jax.geometry import free_atoms
from agedi_jax.vocab import MASK

Array = jax.Array

DATA_AXIS = "data"
"""Name of the mesh axis the shards are laid along."""

__all__ = [
    "DATA_AXIS",
    "make_mesh",
    "data_sharding",
    "replicated_sharding",
    "initialize_distributed",
    "shard_bucket",
    "stack_shards",
    "union_batch",
    "unstack",
    "local_shards",
    "shard_batch",
    "replicate",
    "ShardedBatchStream",
    "check_stacked",
    "data_parallel_grad",
    "data_parallel_loss",
    "shard_parallel",
    "fetch",
]


# --------------------------------------------------------------------------------------
# Mesh and distributed start-up
# --------------------------------------------------------------------------------------


def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D device mesh with the axis ``"data"`` over ``devices`` (default: every device
    of every process, ``jax.devices()``, in process order).

    The axis type is ``Auto``: arrays that are not yet laid out on the mesh (numpy, or a
    state on one device) are moved by ``jit`` rather than rejected."""
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("make_mesh: no devices given")
    if len({id(d) for d in devs}) != len(devs):
        raise ValueError(f"make_mesh: repeated devices in {devs}")
    return Mesh(np.asarray(devs, dtype=object), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over ``"data"`` (the stacked shards)."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh (parameters, optimiser state)."""
    return NamedSharding(mesh, P())


_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _cluster_detected() -> bool:
    """A multi-process launch JAX can auto-detect (SLURM with several tasks, Open MPI)."""
    env = os.environ
    try:
        slurm = "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1
    except ValueError:
        slurm = False
    return slurm or "OMPI_MCA_orte_hnp_uri" in env


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs: Any,
) -> bool:
    """Start JAX's multi-process runtime (``jax.distributed.initialize``) when asked.

    It is called when an argument is given, when one of the environment variables
    ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID`` is set (missing arguments are read from them), or when the
    process runs under a multi-task SLURM job or Open MPI (JAX then detects all three).
    Otherwise nothing happens (one process). Call it once per process, before any other
    JAX call; afterwards ``jax.devices()`` lists the devices of every process.

    Args:
      coordinator_address: ``"host:port"`` of process 0, reachable from every process.
      num_processes: number of processes (hosts, or one per GPU).
      process_id: this process's index in ``0 .. num_processes − 1``.
      **kwargs: passed on (``local_device_ids``, ``cluster_detection_method``, ...).
    Returns:
      True if the runtime is (now) initialised, False for a single-process run.
    """
    if jax.distributed.is_initialized():
        return True
    env = os.environ
    if coordinator_address is None:
        coordinator_address = env.get("JAX_COORDINATOR_ADDRESS") or None
    for name, value in (("JAX_NUM_PROCESSES", num_processes), ("JAX_PROCESS_ID", process_id)):
        if value is None and env.get(name):
            try:
                int(env[name])
            except ValueError:
                raise ValueError(f"initialize_distributed: {name}={env[name]!r} is not an integer") from None
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    asked = any(v is not None for v in (coordinator_address, num_processes, process_id))
    if not asked and not kwargs and not _cluster_detected():
        return False
    if num_processes is not None and int(num_processes) < 1:
        raise ValueError(f"initialize_distributed: num_processes must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= int(process_id) < int(num_processes):
        raise ValueError(
            f"initialize_distributed: process_id={process_id} outside 0..{int(num_processes) - 1} "
            f"(num_processes={num_processes})"
        )
    if coordinator_address is not None and ":" not in str(coordinator_address):
        raise ValueError(
            f"initialize_distributed: coordinator_address={coordinator_address!r} must be 'host:port'"
        )
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=None if num_processes is None else int(num_processes),
        process_id=None if process_id is None else int(process_id),
        **kwargs,
    )
    return True


# --------------------------------------------------------------------------------------
# Stacked shards with global graph slots (host, numpy)
# --------------------------------------------------------------------------------------


def shard_bucket(bucket: Bucket, num_shards: int) -> Bucket:
    """The bucket of one shard when ``num_shards`` batches of ``bucket`` are stacked:
    the same atom and edge budget, ``num_shards·(g − 1) + 1`` global graph slots."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    return Bucket(bucket.n_node, bucket.n_edge, num_shards * (bucket.n_graph - 1) + 1)


def _empty_shard(bucket: Bucket) -> AtomsBatch:
    """A shard with no structure: every atom, edge and graph slot is padding (label
    fields 0 and masked, as :func:`~agedi_jax.batch.collate` gives them)."""
    n, e, g = bucket.n_node, bucket.n_edge, bucket.n_graph
    n_node = np.zeros(g, np.int32)
    n_node[-1] = n
    n_edge = np.zeros(g, np.int32)
    n_edge[-1] = e
    return AtomsBatch(
        positions=np.zeros((n, 3), np.float64),
        types=np.full(n, MASK, np.int32),
        cell=np.zeros((g, 3, 3), np.float64),
        pbc=np.zeros((g, 3), bool),
        node_mask=np.zeros(n, bool),
        graph_mask=np.zeros(g, bool),
        graph_index=np.full(n, g - 1, np.int32),
        n_node=n_node,
        label=np.zeros(g, np.int32),
        fixed=np.zeros(n, bool),
        senders=np.full(e, n - 1, np.int32),
        receivers=np.full(e, n - 1, np.int32),
        shifts=np.zeros((e, 3), np.float64),
        edge_mask=np.zeros(e, bool),
        n_edge=n_edge,
        **_empty_labels(n, g),
    )


def _empty_labels(n: int, g: int) -> dict:
    return dict(
        energy=np.zeros(g, np.float64),
        forces=np.zeros((n, 3), np.float64),
        energy_mask=np.zeros(g, bool),
        force_mask=np.zeros(n, bool),
    )


def _to_global_slots(local: AtomsBatch, offset: int, num_slots: int) -> AtomsBatch:
    """Move the ``k`` real graphs of a collated batch (slots ``0..k−1``, padding last) to
    slots ``offset..offset+k−1`` of ``num_slots`` slots (padding graph last)."""
    k = local.num_graphs - 1
    last = num_slots - 1

    def slots(x, fill=0):
        x = np.asarray(x)
        out = np.full((num_slots,) + x.shape[1:], fill, x.dtype)
        out[offset : offset + k] = x[:k]
        out[last] = x[k]
        return out

    gi = np.asarray(local.graph_index)
    graph_index = np.where(gi < k, gi + offset, last).astype(np.int32)
    labels = {}
    if local.has_labels:
        labels = dict(energy=slots(local.energy), energy_mask=slots(local.energy_mask, False))
    if local.z_window is not None:
        labels["z_window"] = slots(local.z_window)
    return local._replace(
        cell=slots(local.cell),
        pbc=slots(local.pbc, False),
        graph_mask=slots(local.graph_mask, False),
        graph_index=graph_index,
        n_node=slots(local.n_node),
        label=slots(local.label),
        n_edge=slots(local.n_edge),
        **labels,
    )


def _offsets(chunks: Sequence[Sequence[Any]]) -> np.ndarray:
    sizes = np.array([len(c) for c in chunks], np.int64)
    return np.concatenate([[0], np.cumsum(sizes)])


def stack_shards(
    chunks: Sequence[Sequence[EncodedStructure]],
    bucket: Bucket,
    shards: Sequence[int] | None = None,
) -> AtomsBatch:
    """Stack ``D`` groups of encoded structures into one parallel batch (numpy).

    Shard ``d`` holds ``chunks[d]`` (possibly empty) padded to ``bucket.n_node`` atoms
    and ``bucket.n_edge`` edges, in the global graph slots of the union (module
    docstring): structure ``j`` of ``chunks[d]`` sits in slot ``len(chunks[0]) + … +
    len(chunks[d−1]) + j`` of ``bucket.n_graph`` slots.

    Args:
      chunks: ``D`` sequences of :class:`~agedi_jax.batch.EncodedStructure`.
      bucket: the shard bucket (see :func:`shard_bucket`); ``n_graph`` must exceed the
        total number of structures.
      shards: build only these shards (a host's local part); the slots still follow
        from all ``chunks``.
    Returns:
      an :class:`~agedi_jax.batch.AtomsBatch` whose every array has a leading axis of
      ``len(shards)`` (default ``D``).
    """
    if len(chunks) == 0:
        raise ValueError("stack_shards: no shards given")
    offsets = _offsets(chunks)
    total = int(offsets[-1])
    if total == 0:
        raise ValueError("stack_shards: all shards are empty: nothing to batch")
    if total > bucket.n_graph - 1:
        raise ValueError(
            f"stack_shards: {total} structures in {len(chunks)} shards need at least {total + 1} "
            f"global graph slots (one for padding), the bucket has n_graph={bucket.n_graph}"
        )
    picked = range(len(chunks)) if shards is None else [int(s) for s in shards]
    out = []
    for d in picked:
        if not 0 <= d < len(chunks):
            raise ValueError(f"stack_shards: shard {d} outside 0..{len(chunks) - 1}")
        chunk = list(chunks[d])
        if not chunk:
            out.append(_empty_shard(bucket))
            continue
        local = collate(chunk, Bucket(bucket.n_node, bucket.n_edge, len(chunk) + 1))
        out.append(_to_global_slots(local, int(offsets[d]), bucket.n_graph))
    if any(b.z_window is not None for b in out):  # one pytree structure for every shard
        out = [b if b.z_window is not None else b._replace(z_window=np.zeros((bucket.n_graph, 2))) for b in out]
    return AtomsBatch(*(None if xs[0] is None else np.stack(xs) for xs in zip(*out)))


def union_batch(chunks: Sequence[Sequence[EncodedStructure]], bucket: Bucket) -> AtomsBatch:
    """The single batch of all structures of ``chunks`` in the same graph slots as
    :func:`stack_shards` gives them (the one-device equivalent of a parallel batch):
    ``D·(n − 1) + 1`` atom and ``D·(e − 1) + 1`` edge slots, ``bucket.n_graph`` graphs."""
    structures = [s for c in chunks for s in c]
    d = len(chunks)
    big = Bucket(d * (bucket.n_node - 1) + 1, d * (bucket.n_edge - 1) + 1, bucket.n_graph)
    return collate(structures, big)


def unstack(stacked: AtomsBatch) -> list[AtomsBatch]:
    """The shards of a stacked batch as a list of :class:`AtomsBatch` (host numpy)."""
    arrays = [None if x is None else np.asarray(x) for x in stacked]
    return [AtomsBatch(*(None if a is None else a[d] for a in arrays)) for d in range(arrays[0].shape[0])]


def local_shards(mesh: Mesh, num_shards: int) -> np.ndarray:
    """Indices of the shards this process feeds: shard ``i`` lives on mesh device
    ``i // (num_shards / mesh.size)``; all of them for a single process."""
    ndev = mesh.devices.size
    if num_shards % ndev:
        raise ValueError(f"{num_shards} shards cannot be split over {ndev} devices: use a multiple of {ndev}")
    per = num_shards // ndev
    me = jax.process_index()
    rows = [i for i, dev in enumerate(mesh.devices.flat) if dev.process_index == me]
    return np.array([r * per + j for r in rows for j in range(per)], np.int64)


def shard_batch(local: AtomsBatch, mesh: Mesh, num_shards: int | None = None) -> AtomsBatch:
    """Lay a stacked batch out over the mesh (leading axis over ``"data"``).

    ``local`` holds this process's shards (:func:`local_shards`; every shard for a single
    process); ``num_shards`` is the global count (default: local count × process count).
    Returns an :class:`AtomsBatch` of global ``jax.Array`` s."""
    sharding = data_sharding(mesh)
    leaves = [None if x is None else np.asarray(x) for x in local]
    n_local = leaves[0].shape[0]
    total = n_local * jax.process_count() if num_shards is None else int(num_shards)
    if total % mesh.devices.size:
        raise ValueError(
            f"{total} shards cannot be split over {mesh.devices.size} devices: use a multiple of {mesh.devices.size}"
        )
    return AtomsBatch(
        *(None if x is None else jax.make_array_from_process_local_data(sharding, x, (total,) + x.shape[1:])
          for x in leaves)
    )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """A copy of ``tree`` (parameters, a :class:`~agedi_jax.model.TrainState`) on every
    device of the mesh. Every process must pass the same values."""
    return jax.device_put(tree, replicated_sharding(mesh))


class ShardedBatchStream:
    """Parallel training batches: step ``s`` stacks the ``D`` consecutive packed batches
    ``s·D … s·D + D − 1`` of a :class:`~agedi_jax.batching.BatchStream` (each a shard in
    the stream's bucket, with global graph slots).

    A pure function of ``(seed, step)`` like the stream, so every host computes the same
    slot layout while collating only its own shards, and a resumed run sees the same
    batches.

    Args:
      stream: the single-device batch stream (its bucket is each shard's atom budget).
      num_shards: ``D``, shards per step (a multiple of the number of devices).
    """

    def __init__(self, stream: BatchStream, num_shards: int):
        if int(num_shards) < 1:
            raise ValueError(f"ShardedBatchStream: num_shards must be >= 1, got {num_shards}")
        self.stream = stream
        self.num_shards = int(num_shards)
        self.bucket = shard_bucket(stream.bucket, self.num_shards)

    def indices(self, step: int) -> list[np.ndarray]:
        """Structure indices of the ``D`` shards of parallel step ``step``."""
        d = self.num_shards
        return [self.stream.indices(int(step) * d + k) for k in range(d)]

    def _chunks(self, step: int) -> list[list[EncodedStructure]]:
        enc = self.stream.encoded
        return [[enc[i] for i in idx] for idx in self.indices(step)]

    def batch(self, step: int, shards: Sequence[int] | None = None) -> AtomsBatch:
        """The stacked batch of step ``step`` (numpy, leading axis = shards); ``shards``
        restricts it to a host's local shards."""
        return stack_shards(self._chunks(step), self.bucket, shards)

    def sharded(self, step: int, mesh: Mesh) -> AtomsBatch:
        """The batch of step ``step`` laid out over ``mesh`` (this process's shards only
        are collated)."""
        mine = local_shards(mesh, self.num_shards)
        return shard_batch(self.batch(step, mine), mesh, self.num_shards)

    def union_batch(self, step: int) -> AtomsBatch:
        """The same structures as one single-device batch (same graph slots)."""
        return union_batch(self._chunks(step), self.bucket)


# --------------------------------------------------------------------------------------
# shard_map wrappers
# --------------------------------------------------------------------------------------


def _map_shards(fn: Callable, tree: Any) -> Any:
    """``fn`` over the leading (local shard) axis: a plain call when there is one shard
    per device (the very code of the single-device step), else ``vmap``."""
    k = jax.tree_util.tree_leaves(tree)[0].shape[0]
    if k == 1:
        out = fn(jax.tree.map(lambda x: x[0], tree))
        return jax.tree.map(lambda x: x[None], out)
    return jax.vmap(fn)(tree)


def check_stacked(batch: AtomsBatch, mesh: Mesh, who: str) -> None:
    """Raise naming the problem unless ``batch`` is a stacked batch whose shard count is a
    multiple of the mesh size."""
    if not isinstance(batch, AtomsBatch):
        raise TypeError(f"{who}: expected a stacked agedi_jax.batch.AtomsBatch, got {type(batch).__name__}")
    if np.ndim(batch.positions) != 3:
        raise ValueError(
            f"{who}: expected a stacked batch with positions [D, n, 3] (see stack_shards), "
            f"got shape {np.shape(batch.positions)}"
        )
    d, ndev = np.shape(batch.positions)[0], mesh.devices.size
    leading = {name: np.shape(x)[:1] for name, x in zip(AtomsBatch._fields, batch) if x is not None}
    if set(leading.values()) != {(d,)}:
        raise ValueError(f"{who}: every field of a stacked batch needs the same leading shard axis, got {leading}")
    if d % ndev:
        raise ValueError(f"{who}: {d} shards cannot be split over {ndev} devices: use a multiple of {ndev}")


def _global_mean(loss_fn: Callable) -> Callable:
    """``(params, local_shards, key) -> (loss, metrics)`` inside ``shard_map``: per-shard
    losses (each a mean over the shard's counted atoms — real, non-fixed) recombined with
    their counted-atom weights and summed over the ``"data"`` axis, i.e. the loss of the
    union batch (never a mean of shard means)."""

    def fn(params, block: AtomsBatch, key: Array):
        def one(b: AtomsBatch):
            _, metrics = loss_fn(params, b, key)
            count = jnp.sum(free_atoms(b)).astype(metrics["loss"].dtype)
            return count, {k: v * count for k, v in metrics.items()}

        counts, sums = _map_shards(one, block)
        total = jax.lax.psum(jnp.sum(counts), DATA_AXIS)
        denom = jnp.maximum(total, 1.0)
        metrics = {k: jax.lax.psum(jnp.sum(v), DATA_AXIS) / denom for k, v in sums.items()}
        return metrics["loss"], metrics

    return fn


def data_parallel_grad(loss_fn: Callable, mesh: Mesh) -> Callable:
    """``grad_fn(params, stacked_batch, key) -> (grads, metrics)`` for a per-batch
    ``loss_fn(params, batch, key) -> (loss, metrics)`` whose loss is a mean over the
    batch's counted atoms (as :func:`agedi_jax.losses.joint_loss`): the gradients and
    metrics of the union batch (:func:`union_batch`), replicated; the batch is stacked
    (leading shard axis over ``"data"``), parameters replicated, the key the same on every
    device (noise is keyed by global graph slot)."""
    loss = _global_mean(loss_fn)

    def local(params, block, key):
        (_, metrics), g = jax.value_and_grad(loss, has_aux=True)(params, block, key)
        return g, metrics

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()), out_specs=(P(), P()))

    def grad_fn(params, batch: AtomsBatch, key: Array):
        check_stacked(batch, mesh, "data-parallel gradient")
        return sharded(params, batch, key)

    return grad_fn


def data_parallel_loss(loss_fn: Callable, mesh: Mesh) -> Callable:
    """``metrics_fn(params, stacked_batch, key) -> metrics``: the metrics of ``loss_fn``
    (as in :func:`data_parallel_grad`) on the union of the shards, without gradients."""
    loss = _global_mean(loss_fn)
    sharded = jax.shard_map(
        lambda p, b, k: loss(p, b, k)[1], mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()), out_specs=P()
    )

    def metrics_fn(params, batch: AtomsBatch, key: Array):
        check_stacked(batch, mesh, "data-parallel loss")
        return sharded(params, batch, key)

    return metrics_fn


def shard_parallel(fn: Callable, mesh: Mesh, stacked: Sequence[bool]) -> Callable:
    """``fn`` applied shard by shard on every device of ``mesh``: the arguments flagged in
    ``stacked`` carry a leading shard axis laid over ``"data"`` (each device runs ``fn`` on
    each of its shards — a plain call with one shard per device, ``vmap`` with more), the
    others are replicated; the result is stacked along the shard axis. Used by the
    sampler (:func:`agedi_jax.generate.make_sampler` with a mesh)."""
    flags = tuple(bool(x) for x in stacked)
    specs = tuple(P(DATA_AXIS) if f else P() for f in flags)

    def local(*args):
        shards = tuple(a for a, f in zip(args, flags) if f)

        def one(shard_args):
            it = iter(shard_args)
            return fn(*(next(it) if f else a for a, f in zip(args, flags)))

        return _map_shards(one, shards)

    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P(DATA_AXIS))


def fetch(x: AtomsBatch) -> AtomsBatch:
    """Bring a (possibly multi-host) stacked result to the host as numpy arrays."""
    leaves = list(x)
    present = [a for a in leaves if a is not None]
    if all(getattr(a, "is_fully_addressable", True) for a in present):
        got = iter(jax.device_get(present))
    else:
        from jax.experimental import multihost_utils

        got = iter(multihost_utils.process_allgather(present, tiled=True))
    return AtomsBatch(*(None if a is None else np.asarray(next(got)) for a in leaves))
