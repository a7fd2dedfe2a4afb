"""Lattice head: a symmetric, rotation-equivariant 3×3 tensor per graph read out of a
network's invariant node features and the batch's edge vectors — the prediction of the
cell's noise (or score) for the lattice process of :mod:`agedi_jax.lattice`.

For graph ``G`` with ``N_G`` real atoms, invariant features ``h_i`` and edges
``r_ij = r_j + S·cell − r_i`` inside the cutoff (:func:`agedi_jax.edges.edge_vectors`)::

    T_G = (1/N_G) [ (1/ν) Σ_{(i,j) ∈ G} w(h_i, h_j, |r_ij|) r̂_ij ⊗ r̂_ij  +  Σ_{i ∈ G} ψ(h_i) I ]

with ``w`` a learned pair weight (symmetric in ``i, j``; a radial filter on a Bessel basis
times the polynomial envelope, so it vanishes smoothly at the cutoff), ``ψ`` a learned
isotropic term and ``ν`` the average number of neighbours (an output of order 1 at
initialisation). Then, exactly (up to float rounding):

* **rotations** of the whole crystal (positions ``x ↦ x Qᵀ``, cell ``L ↦ L Qᵀ``):
  ``T ↦ Q T Qᵀ``, because every ``r̂_ij`` rotates and ``w``, ``ψ`` see only invariants;
* **the choice of cell** (``L ↦ M L`` with ``M`` unimodular, same atoms): ``T`` is
  unchanged, because the set of edge vectors within the cutoff is a property of the
  periodic point set, not of its basis (the edge template of each cell enumerates the
  images it needs, :func:`agedi_jax.edges.image_range`);
* **lattice-vector moves** of atoms (``r_i ↦ r_i + n L``): unchanged, because edge
  vectors are built from minimum-image fractional differences;
* **supercells**: unchanged (an intensive quantity: the edge sum and ``N_G`` both scale);
* **padding**: padding atoms, edges and graphs contribute nothing; padding graphs give 0;
* **layers** (pbc T, T, F): the rows and columns of non-periodic axes are 0
  (:func:`agedi_jax.lattice.lattice_mask`), so only the in-plane 2×2 block is predicted;
  equivariance holds for rotations about the layer normal.

The head expects the crystal in the frame its lattice coordinates refer to — the
canonical frame of :func:`agedi_jax.lattice.canonicalize` during training and sampling —
and its output is read as the ε-prediction of :func:`agedi_jax.lattice.noise_cell`.
``h`` comes from a network's final invariant (scalar) features, which already carry the
diffusion time, label and types.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from agedi_jax.batch import AtomsBatch
from agedi_jax.edges import Edges, edge_vectors
from agedi_jax.lattice import graph_lattice_mask
from agedi_jax.nn.common import MLP, bessel_basis, polynomial_envelope, unit_vectors

Array = Any

__all__ = ["LatticeHead", "edge_outer_products"]


def edge_outer_products(vectors: Array) -> Array:
    """``r̂ ⊗ r̂`` ``[e, 3, 3]`` of edge vectors ``[e, 3]`` (Å), smooth at zero length
    (:func:`agedi_jax.nn.common.unit_vectors`)."""
    u = unit_vectors(jnp.asarray(vectors))
    return u[:, :, None] * u[:, None, :]


class LatticeHead(nn.Module):
    """Equivariant symmetric 3×3 readout per graph (module docstring).

    Attributes:
      features: width of the pair and node MLPs.
      num_basis: Bessel functions of the radial filter.
      cutoff: radial cutoff (Å); at most the cutoff the batch's edge template was built for.
      envelope_p: exponent of the polynomial envelope.
      avg_num_neighbors: ``ν``, normalises the edge sum.
    """

    features: int = 64
    num_basis: int = 8
    cutoff: float = 6.0
    envelope_p: int = 6
    avg_num_neighbors: float = 12.0

    @nn.compact
    def __call__(self, h: Array, batch: AtomsBatch, edges: Edges | None = None) -> Array:
        """Lattice output of every graph slot.

        Args:
          h: ``[n, F]`` invariant node features.
          batch: the batch the features belong to (positions Å, cell rows Å).
          edges: precomputed :func:`agedi_jax.edges.edge_vectors` with this cutoff; None ->
            computed here.
        Returns:
          ``[g, 3, 3]`` symmetric tensors; 0 on padding graphs, on graphs without periodic
          axes and in the rows/columns of non-periodic axes.
        """
        h = jnp.asarray(h)
        chex.assert_rank(h, 2)
        chex.assert_axis_dimension(h, 0, batch.num_nodes)
        if edges is None:
            edges = edge_vectors(batch, self.cutoff)
        chex.assert_shape(edges.vectors, (batch.num_edges, 3))
        dtype = h.dtype
        g = batch.num_graphs
        node_mask = jnp.asarray(batch.node_mask, bool)
        h = jnp.where(node_mask[:, None], h, 0.0)

        r = jnp.asarray(edges.lengths, dtype)
        env = polynomial_envelope(r, self.cutoff, self.envelope_p)
        radial = bessel_basis(r, self.num_basis, self.cutoff) * env[:, None]
        hi, hj = h[batch.receivers], h[batch.senders]
        pair = jnp.concatenate([hi + hj, hi * hj], axis=-1)  # symmetric in i, j
        pair = nn.silu(nn.Dense(self.features, name="pair_in")(pair))
        filt = nn.Dense(self.features, name="radial_filter")(radial)
        w = MLP((self.features, 1), name="pair_mlp")(pair * filt)[:, 0]
        w = jnp.where(jnp.asarray(edges.mask, bool), w * env, 0.0)

        g_edge = batch.graph_index[batch.receivers]
        t_edge = w[:, None, None] * edge_outer_products(jnp.asarray(edges.vectors, dtype))
        t = jax.ops.segment_sum(t_edge, g_edge, num_segments=g) / self.avg_num_neighbors

        iso = MLP((self.features, 1), name="isotropic")(h)[:, 0]
        iso = jnp.where(node_mask, iso, 0.0)
        iso = jax.ops.segment_sum(iso, batch.graph_index, num_segments=g)
        t = t + iso[:, None, None] * jnp.eye(3, dtype=dtype)

        n_atoms = jax.ops.segment_sum(node_mask.astype(dtype), batch.graph_index, num_segments=g)
        t = t / jnp.maximum(n_atoms, 1.0)[:, None, None]
        t = 0.5 * (t + jnp.swapaxes(t, -1, -2))
        return jnp.where(graph_lattice_mask(batch), t, 0.0)
