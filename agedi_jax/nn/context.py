"""Per-graph (global) inputs of the score networks: structure size, pooled context and the
direction to the centre of mass.

At high diffusion noise (VE σ of several Å) the atoms of a cluster are farther apart than
the cutoff, the graph falls apart into isolated atoms, and a purely local network cannot
tell a masked atom which element the rest of the structure is, nor how many atoms it has.
Three invariant (or equivariant) inputs restore that information:

* :func:`graph_size_features` — ``log N`` per graph, added to the time / label condition;
* :class:`GlobalContext` — a "virtual node": the mean of the scalar channels over the real
  atoms of each graph, passed through an MLP and added back to every atom of the graph;
* :func:`com_features` — per atom, the position relative to the graph's centre of mass
  along its zero-centre-of-mass axes (:func:`agedi_jax.geometry.com_axes`), squashed to O(1)
  at a few length scales: ``1o`` vectors and ``0e`` scalars.

All three use masked reductions over the real atoms only, so padding atoms and padding
graphs change nothing, and means are invariant under permutations of the atoms.
"""

from __future__ import annotations

from typing import Any, Sequence

import chex
import flax.linen as nn
import jax.numpy as jnp

from agedi_jax.batch import AtomsBatch
from agedi_jax.geometry import com_axes, graph_mean, graph_sum, remove_com
from agedi_jax.nn.common import MLP

Array = Any


def graph_size_features(batch: AtomsBatch, dtype: Any = jnp.float32) -> Array:
    """``log N`` per graph slot [g, 1] (N = number of real atoms; 0 for empty / padding slots).

    Counted from ``node_mask`` (not ``n_node``, which also counts padding atoms in the
    padding slot), so it is exact for any padding.
    """
    ones = jnp.ones(batch.num_nodes, dtype)
    n = graph_sum(batch, ones)  # [g]
    return jnp.log(jnp.maximum(n, 1.0))[:, None]


def broadcast_graph_mean(batch: AtomsBatch, x: Array) -> Array:
    """Mean of per-atom ``x`` [n, F] over the real atoms of each graph, broadcast back to
    the atoms [n, F] (padding atoms get their padding graph's mean, which is never read)."""
    return graph_mean(batch, x)[jnp.asarray(batch.graph_index)]


class GlobalContext(nn.Module):
    """Virtual-node update of the scalar channels: ``MLP(mean_{j ∈ graph} s_j)`` [n, features].

    Invariant under rotations, translations and permutations of each graph's atoms;
    padding atoms are excluded from the mean. The caller adds the result to the scalar
    channels of every atom (``s_i += GlobalContext(s)_i``).

    Attributes:
      features: output width.
    """

    features: int

    @nn.compact
    def __call__(self, batch: AtomsBatch, s: Array) -> Array:
        chex.assert_rank(s, 2)
        pooled = graph_mean(batch, s)  # [g, F]
        out = MLP((self.features, self.features), activation=nn.silu, name="mlp")(pooled)
        return out[jnp.asarray(batch.graph_index)]


def com_features(
    batch: AtomsBatch, positions: Array, scales: Sequence[float]
) -> tuple[Array, Array]:
    """Position relative to the centre of mass, squashed at ``scales`` (Å).

    With ``d_i = r_i − mean_{j ∈ graph} r_j`` taken along the graph's zero-centre-of-mass
    axes only (:func:`agedi_jax.geometry.com_axes`: every axis of a cluster, z of a 2D
    material; zero on periodic axes, for bulk crystals and for graphs with fixed atoms),
    returns for every scale ``L``

    * vectors ``d / sqrt(|d|² + L²)`` (``1o``; ≈ ``d / L`` near the centre, the unit
      direction far from it; smooth everywhere, |·| < 1),
    * scalars ``|d|² / (|d|² + L²)`` (``0e``, in [0, 1)).

    Translation invariant, rotation (and reflection) equivariant, permutation equivariant.

    Args:
      batch: the batch (masks, graph index, pbc, fixed).
      positions: [n, 3] positions, Å.
      scales: length scales L (Å), each > 0.

    Returns:
      ``(scalars [n, k], vectors [n, 3, k])`` with ``k = len(scales)``; zero on padding atoms.
    """
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise ValueError(f"com scales must be positive lengths in Å, got {scales}")
    chex.assert_shape(positions, (batch.num_nodes, 3))
    gi = jnp.asarray(batch.graph_index)
    axes = com_axes(batch)[gi]  # [n, 3]
    d = jnp.where(axes, remove_com(batch, positions), 0.0)
    d2 = jnp.sum(d * d, axis=-1, keepdims=True)  # [n, 1]
    l2 = jnp.asarray(scales, positions.dtype) ** 2  # [k]
    denom = d2 + l2  # [n, k]
    vectors = d[:, :, None] / jnp.sqrt(denom)[:, None, :]
    scalars = d2 / denom
    mask = jnp.asarray(batch.node_mask)
    return jnp.where(mask[:, None], scalars, 0.0), jnp.where(mask[:, None, None], vectors, 0.0)
