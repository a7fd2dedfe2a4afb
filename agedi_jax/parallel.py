"""Beyond one device: data-parallel training and sharded sampling with ``jax.sharding``
(DESIGN.md §5; no ``pmap``).

**Layout.** A parallel batch is ``D`` sub-batches (*shards*) stacked along a new leading
axis, every shard padded to the same :class:`~agedi_jax.graph.Bucket`; the leading axis is
sharded over the mesh axis ``"data"`` (``D`` = a multiple of the number of devices),
parameters and optimiser state are replicated. Each shard is an ordinary
:class:`~agedi_jax.graph.AtomsBatch` (MASK = 0, padding atom and padding graph last) with
one twist, the **global graph slots**: a shard has as many graph slots as the union of all
shards of the step, and its structures sit in the slots they have in that union (shard
``d`` holds structures ``o_d .. o_d + k_d − 1`` with ``o_d = k_0 + … + k_{d−1}``); the
other slots are empty (``graph_mask`` False, no atoms) and the last one is the padding
graph. Graph slots cost a few numbers each; atoms and edges stay per shard.

**Why global slots.** The loss and the samplers draw every random number from keys folded
with the *graph slot* and the atom's index inside its graph
(:func:`agedi_jax.sde.atom_keys`, :func:`agedi_jax.sde.graph_uniform`). With global slots
a structure gets exactly the noise, time and label dropout it would get in the single
batch of all the step's structures, whichever device it lands on and however many devices
there are. Hence what holds:

* the parallel loss, gradients and optimiser step equal those of
  :func:`agedi_jax.model.make_train_step` on the union batch (:func:`union_batch`), up to
  float32 rounding (sums in another order, ~1e-7 relative);
* :func:`sample_sharded` with ``seed`` and ``batch_size=B`` returns the structures of
  :func:`agedi_jax.sampling.sample_atoms` with the same ``seed`` and ``batch_size``, up to
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
    stream = ShardedBatchStream(BatchStream(encoded, batch_size), num_shards=mesh.size)
    state = replicate(init_state(model, key, stream.union_batch(0)), mesh)
    step = make_parallel_train_step(model, mesh)
    for s in range(steps):
        state, metrics = step(state, stream.sharded(s, mesh), jax.random.fold_in(key, s))
    atoms = sample_sharded(model, state.ema_params, mesh, n_atoms=13, num_samples=256)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from . import losses
from .batching import BatchStream
from .graph import MASK, AtomsBatch, Bucket, EncodedStructure, atoms_from_batch, bucket_for, collate
from .sde import check_batch, free_atoms

if TYPE_CHECKING:  # the network stack (e3nn, flax) is imported only when a model is used
    from .model import DiffusionModel, TrainState

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
    "make_parallel_grad_fn",
    "make_parallel_train_step",
    "make_parallel_eval_step",
    "make_sharded_sampler",
    "sample_sharded",
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
    """A shard with no structure: every atom, edge and graph slot is padding."""
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
    return local._replace(
        cell=slots(local.cell),
        pbc=slots(local.pbc, False),
        graph_mask=slots(local.graph_mask, False),
        graph_index=graph_index,
        n_node=slots(local.n_node),
        label=slots(local.label),
        n_edge=slots(local.n_edge),
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
      chunks: ``D`` sequences of :class:`~agedi_jax.graph.EncodedStructure`.
      bucket: the shard bucket (see :func:`shard_bucket`); ``n_graph`` must exceed the
        total number of structures.
      shards: build only these shards (a host's local part); the slots still follow
        from all ``chunks``.
    Returns:
      an :class:`~agedi_jax.graph.AtomsBatch` whose every array has a leading axis of
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
    return AtomsBatch(*(np.stack(xs) for xs in zip(*out)))


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
    arrays = [np.asarray(x) for x in stacked]
    return [AtomsBatch(*(a[d] for a in arrays)) for d in range(arrays[0].shape[0])]


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
    leaves = [np.asarray(x) for x in local]
    n_local = leaves[0].shape[0]
    total = n_local * jax.process_count() if num_shards is None else int(num_shards)
    if total % mesh.devices.size:
        raise ValueError(
            f"{total} shards cannot be split over {mesh.devices.size} devices: use a multiple of {mesh.devices.size}"
        )
    return AtomsBatch(
        *(jax.make_array_from_process_local_data(sharding, x, (total,) + x.shape[1:]) for x in leaves)
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
# Data-parallel training
# --------------------------------------------------------------------------------------


def _map_shards(fn: Callable, tree: Any) -> Any:
    """``fn`` over the leading (local shard) axis: a plain call when there is one shard
    per device (the very code of the single-device step), else ``vmap``."""
    k = jax.tree_util.tree_leaves(tree)[0].shape[0]
    if k == 1:
        out = fn(jax.tree.map(lambda x: x[0], tree))
        return jax.tree.map(lambda x: x[None], out)
    return jax.vmap(fn)(tree)


def _check_stacked(batch: AtomsBatch, mesh: Mesh, who: str) -> None:
    if not isinstance(batch, AtomsBatch):
        raise TypeError(f"{who}: expected a stacked agedi_jax.graph.AtomsBatch, got {type(batch).__name__}")
    if np.ndim(batch.positions) != 3:
        raise ValueError(
            f"{who}: expected a stacked batch with positions [D, n, 3] (see stack_shards), "
            f"got shape {np.shape(batch.positions)}"
        )
    d, ndev = np.shape(batch.positions)[0], mesh.devices.size
    leading = {name: np.shape(x)[:1] for name, x in zip(AtomsBatch._fields, batch)}
    if set(leading.values()) != {(d,)}:
        raise ValueError(f"{who}: every field of a stacked batch needs the same leading shard axis, got {leading}")
    if d % ndev:
        raise ValueError(f"{who}: {d} shards cannot be split over {ndev} devices: use a multiple of {ndev}")


def _global_loss(model: DiffusionModel):
    """``(params, local_shards, key) -> (loss, metrics)`` inside ``shard_map``: per-shard
    joint losses (Eq. 18) recombined with their counted-atom weights and summed over the
    ``"data"`` axis, i.e. the joint loss of the union batch."""
    loss_config = model.loss_config

    def fn(params, block: AtomsBatch, key: Array):
        def one(b: AtomsBatch):
            _, metrics = losses.joint_loss(params, model.apply, b, key, loss_config)
            count = jnp.sum(free_atoms(b)).astype(metrics["loss"].dtype)
            return count, {k: v * count for k, v in metrics.items()}

        counts, sums = _map_shards(one, block)
        total = jax.lax.psum(jnp.sum(counts), DATA_AXIS)
        denom = jnp.maximum(total, 1.0)
        metrics = {k: jax.lax.psum(jnp.sum(v), DATA_AXIS) / denom for k, v in sums.items()}
        return metrics["loss"], metrics

    return fn


def make_parallel_grad_fn(model: DiffusionModel, mesh: Mesh, *, jit: bool = True):
    """``grad_fn(params, stacked_batch, key) -> (grads, metrics)``: gradients of the joint
    loss (Eq. 18) of all shards — those of the union batch (:func:`union_batch`) — and
    its metrics (``loss``, ``loss_positions``, ``loss_types``), replicated. For custom
    optimisers or gradient accumulation; :func:`make_parallel_train_step` uses it."""
    loss_fn = _global_loss(model)

    def local(params, block, key):
        (_, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(params, block, key)
        return g, metrics

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()), out_specs=(P(), P()))

    def grad_fn(params, batch: AtomsBatch, key: Array):
        _check_stacked(batch, mesh, "parallel gradient")
        return sharded(params, batch, key)

    return jax.jit(grad_fn) if jit else grad_fn


def make_parallel_train_step(model: DiffusionModel, mesh: Mesh, *, jit: bool = True):
    """``step(state, stacked_batch, key) -> (state, metrics)``: one data-parallel optimiser
    step on the joint loss (Eq. 18) of all shards, with EMA — the same update as
    :func:`agedi_jax.model.make_train_step` on :func:`union_batch` of the shards.

    ``state`` is replicated (:func:`replicate`), ``stacked_batch`` an :class:`AtomsBatch`
    with a leading shard axis ``D`` (a multiple of ``mesh.size``; :func:`stack_shards`,
    :meth:`ShardedBatchStream.sharded`), ``key`` the step's key (the same on every
    device: noise is keyed by global graph slot). Metrics: ``loss``, ``loss_positions``,
    ``loss_types`` of the union and ``grad_norm``. Jitted with the state donated unless
    ``jit=False``.
    """
    from .model import TrainState, apply_gradients

    grad_fn = make_parallel_grad_fn(model, mesh, jit=False)

    def step(state: TrainState, batch: AtomsBatch, key: Array):
        _check_stacked(batch, mesh, "parallel train step")
        g, metrics = grad_fn(state.params, batch, key)
        # The update of model.make_train_step, on the global gradients.
        return apply_gradients(model, state, g), dict(metrics, grad_norm=optax.tree.norm(g))

    return jax.jit(step, donate_argnums=0) if jit else step


def make_parallel_eval_step(model: DiffusionModel, mesh: Mesh, *, jit: bool = True):
    """``eval_step(params, stacked_batch, key) -> metrics``: the joint loss of all shards
    without gradients (as :func:`agedi_jax.model.make_eval_step` on the union batch)."""
    loss_fn = _global_loss(model)
    sharded = jax.shard_map(
        lambda p, b, k: loss_fn(p, b, k)[1], mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()), out_specs=P()
    )

    def eval_step(params, batch: AtomsBatch, key: Array):
        _check_stacked(batch, mesh, "parallel eval step")
        return sharded(params, batch, key)

    return jax.jit(eval_step) if jit else eval_step


# --------------------------------------------------------------------------------------
# Sharded sampling
# --------------------------------------------------------------------------------------

_SAMPLERS: dict = {}


def make_sharded_sampler(
    model: DiffusionModel,
    mesh: Mesh,
    *,
    guided: bool = False,
    interpolate: tuple[int, int] | None = None,
    config: Any = None,
):
    """``run(params, key, stacked_template, generate_types[D, g], w) -> stacked AtomsBatch``:
    every device runs the compiled sampler of :func:`agedi_jax.sampling.make_sampler`
    (prior → ``lax.scan`` over the time grid → final step; classifier-free guidance with
    weight ``w`` when ``guided``, Eq. 19) on its shards, with the same key (randomness is
    keyed by global graph slot). Cached per (model, mesh, guided, interpolation, config)."""
    from .sampling import make_sampler

    cache_key = (model, mesh, guided, interpolate, config)
    if cache_key not in _SAMPLERS:
        if len(_SAMPLERS) > 16:
            _SAMPLERS.clear()
        run = make_sampler(model, guided=guided, interpolate=interpolate, config=config)

        def local(params, key, block, gen, w):
            return _map_shards(lambda bg: run(params, key, bg[0], bg[1], w), (block, gen))

        sharded = jax.shard_map(
            local, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS), P(DATA_AXIS), P()), out_specs=P(DATA_AXIS)
        )

        def run_sharded(params, key, template: AtomsBatch, generate_types: Array, w: Array) -> AtomsBatch:
            _check_stacked(template, mesh, "sharded sampler")
            chex.assert_shape(generate_types, (template.cell.shape[0], template.cell.shape[1]))
            return sharded(params, key, template, generate_types, jnp.asarray(w, jnp.float32))

        _SAMPLERS[cache_key] = jax.jit(run_sharded)
    return _SAMPLERS[cache_key]


def _fetch(x: AtomsBatch) -> AtomsBatch:
    """Bring a (possibly multi-host) stacked result to the host."""
    leaves = list(x)
    if all(getattr(a, "is_fully_addressable", True) for a in leaves):
        return AtomsBatch(*(np.asarray(a) for a in jax.device_get(leaves)))
    from jax.experimental import multihost_utils

    return AtomsBatch(*(np.asarray(a) for a in multihost_utils.process_allgather(leaves, tiled=True)))


def sample_sharded(
    model: DiffusionModel,
    params: Any,
    mesh: Mesh,
    *,
    n_atoms: int | Sequence[int] | None = None,
    compositions: str | Sequence[str] | None = None,
    templates: Any = None,
    num_samples: int | None = None,
    generate_types: bool | None = None,
    label: int | Sequence[int] | None = None,
    guidance: float | None = None,
    interpolate: tuple[str, str] | None = None,
    sampler: str | None = None,
    type_sampler: str | None = None,
    steps: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    shards_per_device: int = 1,
) -> list:
    """Generate structures over all devices of ``mesh``; arguments and the returned
    ``list[ase.Atoms]`` (same order, same ``info``) as
    :func:`agedi_jax.sampling.sample_atoms`.

    Templates are taken in batches of ``batch_size`` structures (default
    ``sample.batch_size``); batch ``i`` uses the key ``fold_in(PRNGKey(seed), i)`` and is
    split into ``mesh.size × shards_per_device`` contiguous shards, one per device (a
    shard may be empty), all in one bucket, so the sampler compiles once. Same ``seed``
    and ``batch_size`` give the structures of ``sample_atoms`` (module docstring).
    """
    from .batching import common_bucket
    from .config import replace
    from .sampling import prepare_request

    if int(shards_per_device) < 1:
        raise ValueError(f"sample_sharded: shards_per_device must be >= 1, got {shards_per_device}")
    req = prepare_request(
        model, n_atoms=n_atoms, compositions=compositions, templates=templates, num_samples=num_samples,
        generate_types=generate_types, label=label, guidance=guidance, interpolate=interpolate,
        sampler=sampler, type_sampler=type_sampler, steps=steps, seed=seed, batch_size=batch_size,
    )
    cfg, s, encoded = req.config, req.config.sample, req.encoded
    n = len(req.structures)
    num_shards = mesh.devices.size * int(shards_per_device)
    batches = [list(range(i, min(i + s.batch_size, n))) for i in range(0, n, s.batch_size)]
    parts = [[list(p) for p in np.array_split(np.asarray(b), num_shards)] for b in batches]
    nonempty = [[encoded[i] for i in p] for ps in parts for p in ps if p]
    small = common_bucket(nonempty)
    bucket = Bucket(small.n_node, small.n_edge, bucket_for(0, 0, s.batch_size).n_graph)
    # seed and batch size do not enter the compiled sampler: keep them out of its cache key
    base = model.config.sample
    compiled_cfg = replace(cfg, sample=dict(seed=base.seed, batch_size=base.batch_size))
    run = make_sharded_sampler(model, mesh, guided=req.guided, interpolate=req.interpolate, config=compiled_cfg)
    mine = local_shards(mesh, num_shards)
    params = replicate(params, mesh)  # a no-op when they already are
    root = jax.random.PRNGKey(s.seed)
    out: list = []
    for bi, (idx, ps) in enumerate(zip(batches, parts)):
        stacked = stack_shards([[encoded[i] for i in p] for p in ps], bucket, mine)
        if model.sde is not None:  # as sample_atoms: VP on a periodic template is an error, not NaN
            for shard in unstack(stacked):
                check_batch(model.sde, shard)
        gen_mask = np.zeros(bucket.n_graph, bool)
        gen_mask[: len(idx)] = [req.generate[i] for i in idx]
        gen_mask = np.broadcast_to(gen_mask, (len(mine), bucket.n_graph)).copy()
        result = run(
            params,
            jax.random.fold_in(root, bi),
            shard_batch(stacked, mesh, num_shards),
            jax.make_array_from_process_local_data(data_sharding(mesh), gen_mask, (num_shards, bucket.n_graph)),
            jnp.float32(req.w),
        )
        for shard, p in zip(unstack(_fetch(result)), ps):
            if not p:
                continue
            atoms = req.to_atoms(model, shard, p)
            out += atoms
    return out
