"""Deterministic batch streams over a pre-encoded data set.

Training batches are packed into ONE fixed bucket (a budget of atoms, template edges and
structures), so the train step compiles once for the whole run however the structure sizes
vary: structures are taken in the order of an epoch permutation and a batch is closed when
the next structure would exceed the budget (the jraph "dynamic batching" idea).

Batches are a pure function of ``(seed, step)``: epoch ``k`` visits the structures in the
order of a permutation drawn from ``(seed, k)``. A resumed run therefore sees exactly the
batches a never-stopped run would have seen, without storing any iterator state.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from agedi_jax.batch import AtomsBatch, Bucket, EncodedStructure, collate, common_bucket

__all__ = ["packing_bucket", "pack", "BatchStream", "fixed_batches"]


def packing_bucket(encoded: Sequence[EncodedStructure], batch_size: int, slack: float = 1.15) -> Bucket:
    """The fixed bucket of a training run: room for ``batch_size`` structures of average
    size (× ``slack``), and always for the largest single structure."""
    sizes = np.array([s.num_atoms for s in encoded], float)
    edges = np.array([s.num_edges for s in encoded], float)
    b = min(batch_size, len(encoded))
    n_node = max(int(math.ceil(b * sizes.mean() * slack)), int(sizes.max()))
    n_edge = max(int(math.ceil(b * edges.mean() * slack)), int(edges.max()))
    # exact sizes (not the ladder): one bucket per run, no rounding waste
    return Bucket(n_node + 1, n_edge + 1, b + 1)


def pack(sizes: np.ndarray, edges: np.ndarray, order: np.ndarray, bucket: Bucket) -> list[np.ndarray]:
    """Greedy packing of structures (in ``order``) into batches that fit ``bucket`` (one
    padding atom, edge and graph reserved)."""
    max_nodes, max_edges, max_graphs = bucket.n_node - 1, bucket.n_edge - 1, bucket.n_graph - 1
    out: list[np.ndarray] = []
    cur: list[int] = []
    nodes = n_edges = 0
    for i in order:
        if cur and (nodes + sizes[i] > max_nodes or n_edges + edges[i] > max_edges or len(cur) >= max_graphs):
            out.append(np.asarray(cur))
            cur, nodes, n_edges = [], 0, 0
        cur.append(int(i))
        nodes += sizes[i]
        n_edges += edges[i]
    if cur:
        out.append(np.asarray(cur))
    return out


class BatchStream:
    """Random training batches packed into one fixed bucket.

    Args:
      encoded: the pre-encoded training structures (:func:`agedi_jax.convert.encode_structures`).
      batch_size: the largest number of structures per batch (batches of large structures
        hold fewer, to stay inside the bucket).
      seed: seed of the epoch permutations.
      bucket: the fixed bucket; default :func:`packing_bucket`.
    """

    def __init__(
        self,
        encoded: Sequence[EncodedStructure],
        batch_size: int,
        seed: int = 0,
        bucket: Bucket | None = None,
    ):
        if len(encoded) == 0:
            raise ValueError("BatchStream: the training set is empty")
        self.encoded = list(encoded)
        self.batch_size = int(min(batch_size, len(encoded)))
        self.seed = int(seed)
        self.bucket = bucket or packing_bucket(self.encoded, self.batch_size)
        self._sizes = np.array([s.num_atoms for s in self.encoded])
        self._edges = np.array([s.num_edges for s in self.encoded])
        self._epochs: dict[int, list[np.ndarray]] = {}
        self._starts: list[int] = [0]  # first global step of every epoch computed so far

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """Index arrays of the batches of ``epoch`` (deterministic)."""
        if epoch not in self._epochs:
            if len(self._epochs) > 4:
                self._epochs.pop(min(self._epochs))
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.encoded))
            self._epochs[epoch] = pack(self._sizes, self._edges, order, self.bucket)
        return self._epochs[epoch]

    def _locate(self, step: int) -> tuple[int, int]:
        while self._starts[-1] <= step:
            epoch = len(self._starts) - 1
            self._starts.append(self._starts[-1] + len(self.epoch_batches(epoch)))
        epoch = int(np.searchsorted(self._starts, step, side="right")) - 1
        return epoch, step - self._starts[epoch]

    def indices(self, step: int) -> np.ndarray:
        """Structure indices of the batch of optimisation step ``step``."""
        epoch, k = self._locate(int(step))
        return self.epoch_batches(epoch)[k]

    def batch(self, step: int) -> AtomsBatch:
        """The batch of optimisation step ``step`` (deterministic, always ``self.bucket``)."""
        return collate([self.encoded[i] for i in self.indices(step)], bucket=self.bucket)


def fixed_batches(
    encoded: Sequence[EncodedStructure], batch_size: int, max_batches: int | None = None
) -> list[AtomsBatch]:
    """Consecutive batches of the given structures (validation), all in one bucket."""
    chunks = [encoded[i : i + batch_size] for i in range(0, len(encoded), batch_size)]
    if max_batches is not None:
        chunks = chunks[:max_batches]
    if not chunks:
        return []
    bucket = common_bucket(chunks)
    return [collate(c, bucket) for c in chunks]
