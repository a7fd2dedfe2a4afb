"""Neighbour edges: the static edge template (host) and edge vectors inside jit.

The batch carries a static-shaped *edge template*: every ordered pair of atoms inside each
structure times every periodic image shift that can come within the cutoff
(:func:`edge_template`, built once per structure on the host). :func:`edge_vectors` turns
it, inside jit, into edge vectors for the current positions and a cutoff mask, so the
neighbour list never leaves the compiled program. Edge ``k`` points from the receiver
(centre) ``i`` to the sender (neighbour) ``j``: ``r_j + S·cell − r_i`` (ASE's
``neighbor_list`` convention for ``D``). Lengths in Å.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from agedi_jax.batch import AtomsBatch
from agedi_jax.geometry import safe_cell

__all__ = ["image_range", "image_shifts", "edge_template", "Edges", "edge_vectors", "edge_budget", "compact_edges"]


def image_range(cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> np.ndarray:
    """Largest image index per axis ``[3]`` needed to find every neighbour within ``cutoff``.

    Edge vectors are built from minimum-image fractional differences (|Δf| ≤ 1/2 along each
    periodic axis), so an image ``n`` along axis ``a`` is needed only while
    ``(|n| − 1/2)·d_a < cutoff``, with ``d_a = 1/|b_a|`` the interplanar spacing of the
    lattice planes normal to reciprocal vector ``b_a``. Hence ``n_max = ⌊cutoff/d_a + 1/2⌋``
    — derived from the cell, not a fixed 3×3.
    """
    pbc = np.asarray(pbc, bool)
    out = np.zeros(3, np.int64)
    if not pbc.any():
        return out
    recip = np.linalg.inv(np.asarray(cell, np.float64)).T  # rows b_a with a_i·b_j = δ_ij
    spacing = 1.0 / np.linalg.norm(recip, axis=1)
    n_max = np.floor(cutoff / spacing + 0.5 + 1e-6).astype(np.int64)
    return np.where(pbc, n_max, 0)


def image_shifts(cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> np.ndarray:
    """All integer shifts ``[s, 3]`` within :func:`image_range`, the zero shift first."""
    r = image_range(cell, pbc, cutoff)
    axes = [np.arange(-k, k + 1) for k in r]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    order = np.argsort(np.abs(grid).sum(1), kind="stable")
    return grid[order].astype(np.float64)


def edge_template(
    n_atoms: int, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template edges of one structure: every ordered pair (i, j) times every image shift,
    without the (i, i, 0) self pair. Returns (senders j, receivers i, shifts) for local
    atom indices."""
    shifts = image_shifts(cell, pbc, cutoff)
    i, j, s = np.meshgrid(
        np.arange(n_atoms), np.arange(n_atoms), np.arange(len(shifts)), indexing="ij"
    )
    i, j, s = i.ravel(), j.ravel(), s.ravel()
    keep = ~((i == j) & (s == 0))
    return j[keep].astype(np.int32), i[keep].astype(np.int32), shifts[s[keep]]


class Edges(NamedTuple):
    """Edge geometry for the current positions (inside jit).

    Attributes:
      vectors: [e, 3] ``r_j + S·cell − r_i`` (Å) for masked-in edges; edges outside the
        cutoff or padding hold the dummy vector ``(2·cutoff, 0, 0)`` so that every norm,
        envelope and spherical harmonic stays finite and radial envelopes vanish.
      lengths: [e] |vectors| (Å), safe at zero length (finite gradients).
      mask: [e] bool, real template edge within the cutoff.
      shifts: [e, 3] the effective integer lattice shift S of the edge, comparable with
        ``ase.neighborlist.neighbor_list``'s ``S`` for the given positions.
    """

    vectors: Any
    lengths: Any
    mask: Any
    shifts: Any


def edge_vectors(batch: AtomsBatch, cutoff: float) -> Edges:
    """Edge vectors, lengths and cutoff mask from the batch's edge template (jittable).

    The neighbour's fractional difference is reduced to the minimum image along periodic
    axes before the template shift is added, so the result does not depend on whether
    positions are wrapped into the cell. ``cutoff`` (Å) must not exceed the cutoff the
    template was built with.
    """
    pos = batch.positions
    dtype = pos.dtype
    g_of_edge = batch.graph_index[batch.receivers]
    pbc = batch.pbc.astype(bool)
    cell, inv_cell = safe_cell(batch, dtype)

    d = pos[batch.senders] - pos[batch.receivers]
    frac = jnp.einsum("ei,eij->ej", d, inv_cell[g_of_edge])
    wrap = jnp.where(pbc[g_of_edge], jnp.round(frac), 0.0)
    eff_shift = batch.shifts.astype(dtype) - wrap
    vec = d + jnp.einsum("ei,eij->ej", eff_shift, cell[g_of_edge])
    r2 = jnp.sum(vec * vec, axis=-1)
    mask = batch.edge_mask.astype(bool) & (r2 < cutoff * cutoff)
    dummy = jnp.zeros_like(vec).at[:, 0].set(2.0 * cutoff)
    vec = jnp.where(mask[:, None], vec, dummy)
    r2 = jnp.where(mask, r2, 4.0 * cutoff * cutoff)
    lengths = jnp.sqrt(jnp.maximum(r2, jnp.finfo(dtype).tiny ** 0.5))
    return Edges(vectors=vec, lengths=lengths, mask=mask, shifts=eff_shift)


def edge_budget(edges_per_atom: float, num_nodes: int) -> int:
    """Static size of a compacted edge list: ``ceil(edges_per_atom · num_nodes)`` slots for a
    batch of ``num_nodes`` atom slots (padding included)."""
    if not edges_per_atom > 0:
        raise ValueError(f"edges_per_atom must be > 0, got {edges_per_atom}")
    return max(int(np.ceil(float(edges_per_atom) * int(num_nodes))), 1)


def compact_edges(batch: AtomsBatch, cutoff: float, budget: int) -> tuple[AtomsBatch, Any]:
    """Keep only the template edges inside the cutoff, in a static list of ``budget`` slots
    (jittable).

    Where the cell itself diffuses, the template must hold every image that the most
    compressed allowed cell can bring within the cutoff — for a 24-atom carbon cell ~50,000
    candidates against ~700 real neighbours at the data's density. Distances are cheap; the
    network is not. This selects the real edges of the current geometry (template order is
    kept, so receivers stay sorted) into ``budget`` slots, padded like :func:`collate` pads
    (sender = receiver = the last atom slot, ``edge_mask`` False); the network then runs on
    ``budget`` edges instead of the whole template.

    Graphs are contiguous in the template, so when the real edges of the batch exceed
    ``budget`` the edges dropped are those of the last graphs: ``complete[g]`` says which
    graphs kept every edge (train on those only; :func:`agedi_jax.losses.joint_loss` does).

    Args:
      batch: padded batch whose ``senders/receivers/shifts/edge_mask`` are an edge template
        built with a cutoff ≥ ``cutoff`` (Å).
      cutoff: Å.
      budget: number of edge slots (static; e.g. :func:`edge_budget`).
    Returns:
      ``(batch with the compacted template [budget], complete [g] bool)``. Its
      :func:`edge_vectors` equal those of the real edges of the full template.
    """
    e = edge_vectors(batch, cutoff)
    mask = e.mask
    n_pad = batch.num_nodes - 1
    g = batch.num_graphs
    (idx,) = jnp.nonzero(mask, size=budget, fill_value=0)
    kept = jnp.arange(budget) < jnp.sum(mask)
    g_edge = batch.graph_index[batch.receivers]
    per_graph = jax.ops.segment_sum(mask.astype(jnp.int32), g_edge, num_segments=g)
    complete = jnp.cumsum(per_graph) <= budget
    kept_per_graph = jnp.minimum(per_graph, jnp.maximum(budget - (jnp.cumsum(per_graph) - per_graph), 0))
    n_edge = kept_per_graph.at[g - 1].add(budget - jnp.sum(kept_per_graph))
    compact = batch._replace(
        senders=jnp.where(kept, jnp.asarray(batch.senders)[idx], n_pad).astype(jnp.asarray(batch.senders).dtype),
        receivers=jnp.where(kept, jnp.asarray(batch.receivers)[idx], n_pad).astype(jnp.asarray(batch.receivers).dtype),
        shifts=jnp.where(kept[:, None], jnp.asarray(batch.shifts)[idx], 0.0).astype(jnp.asarray(batch.shifts).dtype),
        edge_mask=kept,
        n_edge=n_edge.astype(jnp.asarray(batch.n_edge).dtype),
    )
    return compact, complete
