"""Batch geometry inside jit: masked per-graph reductions, the centre-of-mass frame, the
cell inverse, wrapping into the cell and the one way atoms are moved (:func:`displace`).

Every function takes an :class:`~agedi_jax.batch.AtomsBatch` and per-atom arrays
``[n, ...]`` (positions and displacements in Å) and is pure and jittable. Conventions:

* only real atoms (``node_mask``) count in reductions; padding atoms come out as 0;
* **free** atoms are the real atoms that are not fixed: the ones noised and sampled;
* **zero-CoM axes** (:func:`com_axes`): the non-periodic axes of graphs without fixed
  atoms. Along them noise, prior samples and scores live in the zero-centre-of-mass
  subspace (translation invariance of clusters and of z in a 2D material); fixed atoms
  anchor the frame of their graph instead;
* **confined graphs** (:func:`confined`): graphs with a z window (``batch.z_window``,
  slabs); the z of their free atoms lives in ``[z_lo, z_hi]`` and is brought back into it
  by reflection at the walls (:func:`reflect_into`, :func:`confine_positions`); z is never
  a zero-CoM axis of a confined graph.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from agedi_jax.batch import AtomsBatch

Array = jax.Array

__all__ = [
    "graph_sum",
    "graph_mean",
    "free_atoms",
    "has_fixed",
    "com_axes",
    "remove_com",
    "centre",
    "inv3",
    "safe_cell",
    "wrap_positions",
    "confined",
    "reflect_into",
    "confine_positions",
    "displace",
]


def graph_sum(batch: AtomsBatch, values: Any) -> Array:
    """Sum of per-atom ``values`` [n, ...] over the real atoms of each graph -> [g, ...]."""
    mask = batch.node_mask.reshape((-1,) + (1,) * (values.ndim - 1))
    vals = jnp.where(mask, values, 0)
    return jax.ops.segment_sum(vals, batch.graph_index, num_segments=batch.num_graphs)


def graph_mean(batch: AtomsBatch, values: Any, weights: Any | None = None) -> Array:
    """Mean of per-atom ``values`` over the real (and ``weights``-selected) atoms of each
    graph -> [g, ...]; zero for graphs with no selected atoms."""
    w = batch.node_mask if weights is None else (batch.node_mask & weights)
    w = w.astype(values.dtype)
    shape = (-1,) + (1,) * (values.ndim - 1)
    total = graph_sum(batch, values * w.reshape(shape))
    count = graph_sum(batch, w)
    count = count.reshape((-1,) + (1,) * (values.ndim - 1))
    return total / jnp.maximum(count, 1)


def free_atoms(batch: AtomsBatch) -> Array:
    """[n] bool: real atoms that are not fixed (the ones that are noised and sampled)."""
    return jnp.asarray(batch.node_mask, bool) & ~jnp.asarray(batch.fixed, bool)


def has_fixed(batch: AtomsBatch) -> Array:
    """[g] bool: graphs with at least one fixed real atom."""
    f = (jnp.asarray(batch.fixed, bool) & jnp.asarray(batch.node_mask, bool)).astype(jnp.int32)
    return jax.ops.segment_max(f, batch.graph_index, num_segments=batch.num_graphs) > 0


def com_axes(batch: AtomsBatch) -> Array:
    """[g, 3] bool: the axes along which a graph's positions live in the zero-centre-of-mass
    subspace — non-periodic axes of real graphs that have no fixed atoms (fixed atoms
    anchor the frame, so such graphs are not projected) — except z of a confined graph
    (:func:`confined`), whose walls fix the frame along z."""
    axes = (~batch.pbc.astype(bool)) & (batch.graph_mask & ~has_fixed(batch))[:, None]
    if batch.z_window is None:
        return axes
    return axes & ~(confined(batch)[:, None] & (jnp.arange(3) == 2)[None, :])


def remove_com(batch: AtomsBatch, x: Any) -> Array:
    """Project per-atom vectors ``x`` [n, 3] onto the zero-centre-of-mass subspace along
    :func:`com_axes` (subtract the per-graph mean over real atoms); padding atoms -> 0.

    Used for noise, prior samples and predicted scores of translation-invariant systems
    (clusters; z of a 2D material)."""
    mean = graph_mean(batch, x)  # [g, 3]
    axes = com_axes(batch)
    shift = jnp.where(axes, mean, 0.0)[batch.graph_index]
    return jnp.where(batch.node_mask[:, None], x - shift, 0.0)


def centre(batch: AtomsBatch, positions: Any = None) -> Array:
    """Per-graph centre ``[g, 3]`` (Å) that VP contracts towards and priors are drawn
    around: the centroid of the fixed atoms of graphs that have some, else the centre of
    mass (unweighted mean) of the real atoms. Zero along periodic axes (unused there)."""
    x = jnp.asarray(batch.positions if positions is None else positions)
    com = graph_mean(batch, x)
    fixed_c = graph_mean(batch, x, weights=jnp.asarray(batch.fixed, bool))
    c = jnp.where(has_fixed(batch)[:, None], fixed_c, com)
    return jnp.where(jnp.asarray(batch.pbc, bool), 0.0, c)


def inv3(m: Array) -> Array:
    """Inverse of a batch of 3×3 matrices ``[..., 3, 3]`` by the adjugate (cheap to compile
    compared with an LU solve; the matrices here are cells and Gram matrices, well
    conditioned)."""
    a, b, c = m[..., 0, :], m[..., 1, :], m[..., 2, :]
    r0, r1, r2 = jnp.cross(b, c), jnp.cross(c, a), jnp.cross(a, b)
    det = jnp.sum(a * r0, axis=-1)[..., None, None]
    return jnp.stack([r0, r1, r2], axis=-1) / det


def safe_cell(batch: AtomsBatch, dtype: Any) -> tuple[Array, Array]:
    """``(cell, inverse)`` ``[g, 3, 3]``: the cell, and the inverse of the cell for graphs
    with some periodic axis (identity elsewhere: clusters and padding graphs have zero
    cells)."""
    cell = jnp.asarray(batch.cell, dtype)
    any_pbc = jnp.any(jnp.asarray(batch.pbc, bool), axis=-1)
    safe = jnp.where(any_pbc[:, None, None], cell, jnp.eye(3, dtype=dtype))
    return cell, inv3(safe)


def wrap_positions(batch: AtomsBatch, positions: Any) -> Array:
    """Wrap positions ``[n, 3]`` (Å) into the cell along periodic axes, as ASE's ``wrap``:
    subtract the whole lattice vectors ``⌊f_a⌋ a_a`` (fractional coordinates
    ``f = x · cell⁻¹``), so periodic ``f_a ∈ [0, 1)`` afterwards. Atoms already inside are
    returned bit-identical; graphs without periodic axes are untouched."""
    x = jnp.asarray(positions)
    pbc = jnp.asarray(batch.pbc, bool)
    cell, inv = safe_cell(batch, x.dtype)
    gi = batch.graph_index
    frac = jnp.einsum("ni,nij->nj", x, inv[gi])
    shift = jnp.where(pbc[gi], jnp.floor(frac), 0.0)
    return x - jnp.einsum("ni,nij->nj", shift, cell[gi])


def confined(batch: AtomsBatch) -> Array:
    """[g] bool: real graphs with a z window (``z_hi > z_lo`` in ``batch.z_window``); all
    False when the batch has no ``z_window``."""
    gm = jnp.asarray(batch.graph_mask, bool)
    if batch.z_window is None:
        return jnp.zeros_like(gm)
    w = jnp.asarray(batch.z_window)
    return gm & (w[:, 1] > w[:, 0])


def reflect_into(z: Any, lo: Any, hi: Any) -> Array:
    """Fold ``z`` into ``[lo, hi]`` by reflection at both walls (elementwise, Å): the
    triangle wave ``lo + L − |((z − lo) mod 2L) − L|`` with ``L = hi − lo``, i.e. where a
    point that moved from inside the window to ``z`` ends up when it bounces off the
    walls. Values already inside come back bit-identical; where ``hi <= lo`` (no window)
    ``z`` is returned unchanged."""
    z = jnp.asarray(z)
    lo = jnp.asarray(lo, z.dtype)
    hi = jnp.asarray(hi, z.dtype)
    width = hi - lo
    ok = width > 0
    safe = jnp.where(ok, width, 1.0)
    u = jnp.mod(z - lo, 2.0 * safe)
    folded = jnp.clip(lo + jnp.where(u > safe, 2.0 * safe - u, u), lo, hi)  # rounding never leaves
    inside = (z >= lo) & (z <= hi)
    return jnp.where(ok & ~inside, folded, z)


def confine_positions(batch: AtomsBatch, positions: Any) -> Array:
    """Positions ``[n, 3]`` with the z of every free atom of a confined graph reflected
    into its window (:func:`reflect_into`); other atoms, and atoms already inside, are
    returned bit-identical. The identity when the batch has no ``z_window``."""
    x = jnp.asarray(positions)
    if batch.z_window is None:
        return x
    w = jnp.asarray(batch.z_window, x.dtype)[batch.graph_index]
    sel = confined(batch)[batch.graph_index] & free_atoms(batch)
    z = jnp.where(sel, reflect_into(x[:, 2], w[:, 0], w[:, 1]), x[:, 2])
    return x.at[:, 2].set(z)


def displace(batch: AtomsBatch, positions: Any, dx: Any) -> Array:
    """``positions + dx`` for free atoms only, with ``dx`` projected onto the zero-CoM
    subspace along :func:`com_axes` (the centre of mass is kept exactly), the result
    wrapped along periodic axes and, in confined graphs, reflected back into the z window
    (:func:`confine_positions`); fixed and padding atoms keep their positions. Shapes
    ``[n, 3]``, Å. Every sampler step moves atoms through this function."""
    x = jnp.asarray(positions)
    dx = jnp.where(free_atoms(batch)[:, None], dx, 0.0)
    dx = remove_com(batch, dx)
    out = wrap_positions(batch, x + dx)
    if batch.z_window is None:
        return out
    return confine_positions(batch, out)
