"""Deterministic batch streams over a pre-encoded data set.

Batches are a pure function of ``(seed, step)``: epoch ``k`` visits the structures in the
order of a permutation drawn from ``(seed, k)``. A resumed run therefore sees exactly the
batches a never-stopped run would have seen, without storing any iterator state.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .graph import AtomsBatch, Bucket, EncodedStructure, bucket_for, collate


class BatchStream:
    """Random training batches of ``batch_size`` structures, padded to ladder buckets.

    Args:
      encoded: the pre-encoded training structures (:func:`agedi_jax.graph.encode_structures`).
      batch_size: structures per batch (the last incomplete part of an epoch is dropped
        when the data set is larger than one batch).
      seed: seed of the epoch permutations.
    """

    def __init__(self, encoded: Sequence[EncodedStructure], batch_size: int, seed: int = 0):
        if len(encoded) == 0:
            raise ValueError("BatchStream: the training set is empty")
        self.encoded = list(encoded)
        self.batch_size = int(min(batch_size, len(encoded)))
        self.seed = int(seed)
        self.batches_per_epoch = max(1, len(encoded) // self.batch_size)
        self._perm_cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            rng = np.random.default_rng([self.seed, epoch])
            self._perm_cache[epoch] = rng.permutation(len(self.encoded))
        return self._perm_cache[epoch]

    def indices(self, step: int) -> np.ndarray:
        epoch, k = divmod(int(step), self.batches_per_epoch)
        return self._perm(epoch)[k * self.batch_size : (k + 1) * self.batch_size]

    def batch(self, step: int) -> AtomsBatch:
        """The batch of optimisation step ``step`` (deterministic)."""
        return collate([self.encoded[i] for i in self.indices(step)], bucket=None)


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


def common_bucket(chunks: Sequence[Sequence[EncodedStructure]]) -> Bucket:
    """One bucket large enough for every chunk (so a list of batches compiles once)."""
    nodes = max(sum(s.num_atoms for s in c) for c in chunks)
    edges = max(sum(s.num_edges for s in c) for c in chunks)
    graphs = max(len(c) for c in chunks)
    return bucket_for(nodes, edges, graphs)
