"""Dense per-structure layout of the score networks, for batches of small structures.

The edge path of the networks (:mod:`agedi_jax.edges`) gathers node features onto every
template edge, builds per-edge messages in memory and scatters them back to the atoms. For
small structures (clusters, 2D cells — every case study has at most a few dozen atoms per
structure) the same network can instead be evaluated on a **dense layout**: the atoms of
graph slot ``r`` sit in rows ``[r, 0..P-1]`` (``P`` atom slots per structure, masked), every
pair (× periodic image) of a structure is an entry of a ``[R, P, P, S]`` tensor, and a
message sum is a masked reduction over the neighbour axis that XLA fuses with the
products feeding it: no gather or scatter per layer, and no per-edge message is written to
memory (only the per-pair filter, as on the edge path).

The networks keep only half of that tensor, the **mirror layout**
(:func:`neighbour_columns`, :func:`mirror_pairs`): a pair's filter depends on its length
and its direction flips under ``(i, j, s) → (j, i, −s)``, so row ``i`` holds the neighbours
``(i + d) mod P`` for ``d = 1 .. ⌊P/2⌋`` (and ``d = 0``, the atom's own images) and each
entry also serves as the partner pair of atom ``(i + d) mod P``
(:func:`agedi_jax.nn.painn.mirror_sums`): half the filter products and half the pair-sized
memory.

The layout is static (a :class:`DenseLayout` on the network: ``P``, the rows ``R`` and the
image range), so it is chosen on the host from a concrete batch by :func:`choose_layout`
— dense when the batch's template is complete (every pair × every image the cutoff needs)
and the dense pair tensor is not much larger than the edge template — and the network is
specialised with it (``network.clone(layout=...)``; :func:`agedi_jax.model.specialize`
does it for a model). Parameters and outputs are those of the edge path (float32 rounding
aside); the tests check both on clusters, 2D cells and padded batches.

Conventions follow :mod:`agedi_jax.edges`: the pair ``i ← j`` with image shift ``S`` has
vector ``r_j + S·cell − r_i`` after the minimum-image reduction along periodic axes; pairs
outside the cutoff, padding slots and the self pair ``(i, i, 0)`` are masked and carry the
dummy length ``2·cutoff`` (zero envelope).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from agedi_jax.batch import AtomsBatch
from agedi_jax.geometry import safe_cell

Array = Any

__all__ = [
    "DenseLayout",
    "DenseMap",
    "DensePairs",
    "MAX_DENSE_ATOMS",
    "MAX_PAIR_RATIO",
    "check_layout",
    "choose_layout",
    "dense_batch",
    "dense_map",
    "dense_pairs",
    "from_dense",
    "from_dense_checked",
    "layout_reason",
    "mirror_pairs",
    "neighbour_columns",
    "to_dense",
]

MAX_DENSE_ATOMS = 64
"""Largest number of atoms per structure for which :func:`choose_layout` picks the dense
layout."""

MAX_PAIR_RATIO = 1.5
""":func:`choose_layout` picks the dense layout only while its pair slots
(``R · P² · S``) are at most this many times the batch's edge slots: a batch of clusters of
very different sizes (padded to the largest) or of periodic cells with very different image
ranges stays on the edge path."""


@dataclasses.dataclass(frozen=True)
class DenseLayout:
    """Static shape of the dense layout.

    Attributes:
      atoms: ``P``, atom slots per structure (≥ the largest structure of the batch).
      graphs: ``R``, structure rows: graph slots ``0..R-1`` (every real graph of the batch).
      images: largest image index per axis; the shifts are the grid ``−k..k`` per axis
        (``(0, 0, 0)`` for clusters), restricted per structure to its periodic axes.
      periodic: some structure has a periodic axis (else the minimum-image reduction is
        skipped).
    """

    atoms: int
    graphs: int
    images: tuple[int, int, int] = (0, 0, 0)
    periodic: bool = True

    def __post_init__(self) -> None:
        if self.atoms < 1 or self.graphs < 1:
            raise ValueError(f"DenseLayout needs atoms >= 1 and graphs >= 1, got {self}")
        if len(self.images) != 3 or min(self.images) < 0:
            raise ValueError(f"DenseLayout.images must be three non-negative ints, got {self.images}")
        object.__setattr__(self, "images", tuple(int(k) for k in self.images))

    @property
    def shifts(self) -> np.ndarray:
        """``[S, 3]`` integer image shifts (float), the zero shift first."""
        axes = [range(-k, k + 1) for k in self.images]
        grid = np.array(list(itertools.product(*axes)), np.float64).reshape(-1, 3)
        order = np.argsort(np.abs(grid).sum(1), kind="stable")
        return grid[order]

    @property
    def num_shifts(self) -> int:
        return int(np.prod([2 * k + 1 for k in self.images]))

    @property
    def pair_slots(self) -> int:
        """Entries of the dense pair tensor, ``R · P² · S``."""
        return self.graphs * self.atoms * self.atoms * self.num_shifts


# --------------------------------------------------------------------------------------
# Choosing the layout (host)
# --------------------------------------------------------------------------------------


def _image_ranges(cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> np.ndarray:
    """:func:`agedi_jax.edges.image_range` of many cells ``[g, 3, 3]`` at once -> ``[g, 3]``."""
    out = np.zeros(pbc.shape, np.int64)
    periodic = pbc.any(axis=1)
    if not periodic.any():
        return out
    cells = cell[periodic].astype(np.float64)
    recip = np.transpose(np.linalg.inv(cells), (0, 2, 1))
    spacing = 1.0 / np.linalg.norm(recip, axis=2)
    n_max = np.floor(cutoff / spacing + 0.5 + 1e-6).astype(np.int64)
    out[periodic] = np.where(pbc[periodic], n_max, 0)
    return out


def layout_reason(
    batch: AtomsBatch,
    cutoff: float,
    *,
    max_atoms: int = MAX_DENSE_ATOMS,
    max_ratio: float | None = MAX_PAIR_RATIO,
) -> tuple[DenseLayout | None, str]:
    """:func:`choose_layout` with the reason of its choice (a short phrase)."""
    try:
        n_node = np.asarray(batch.n_node)
        gmask = np.asarray(batch.graph_mask, bool)
        nmask = np.asarray(batch.node_mask, bool)
        gi = np.asarray(batch.graph_index)
    except Exception:  # traced values: no host-side choice possible
        return None, "the batch is not concrete"
    if gi.ndim != 1 or gmask.ndim != 1:
        return None, "stacked (device-sharded) batch"
    real = np.nonzero(gmask)[0]
    if real.size == 0:
        return None, "no real structure"
    n, g = nmask.shape[0], gmask.shape[0]
    if n_node.sum() != n or not np.array_equal(gi, np.repeat(np.arange(g), n_node)):
        return None, "atoms not laid out contiguously by graph slot"
    if not np.array_equal(nmask, gmask[gi]):
        return None, "node mask does not match the graph mask"
    rows = int(real.max()) + 1
    counts = np.where(gmask[:rows], n_node[:rows], 0)
    atoms = int(counts.max())
    if atoms > max_atoms:
        return None, f"{atoms} atoms per structure > {max_atoms}"
    pbc = np.asarray(batch.pbc, bool)[:rows]
    ranges = _image_ranges(np.asarray(batch.cell)[:rows], pbc, cutoff)
    ranges = np.where(gmask[:rows, None], ranges, 0)
    images = tuple(int(k) for k in ranges.max(axis=0))
    # the template must hold every pair x every image the cutoff needs (edge_template does)
    needed = counts**2 * np.prod(2 * ranges + 1, axis=1) - counts
    if np.any(np.asarray(batch.n_edge)[:rows] < needed):
        return None, "incomplete edge template (not every pair x image)"
    periodic = bool(np.any(pbc & gmask[:rows, None]))
    layout = DenseLayout(atoms=atoms, graphs=rows, images=images, periodic=periodic)
    edges = max(int(np.asarray(batch.edge_mask).shape[0]), 1)
    if max_ratio is not None and layout.pair_slots > max_ratio * edges:
        return None, (f"dense pair slots {layout.pair_slots} > {max_ratio} x {edges} edge slots "
                      "(structures of very different sizes or image ranges)")
    return layout, f"dense {atoms} atoms x {rows} structures x {layout.num_shifts} images"


def choose_layout(
    batch: AtomsBatch,
    cutoff: float,
    *,
    max_atoms: int = MAX_DENSE_ATOMS,
    max_ratio: float | None = MAX_PAIR_RATIO,
) -> DenseLayout | None:
    """The dense layout for a concrete batch (host arrays), or None for the edge path.

    Dense when: the atoms of every graph slot are contiguous and in slot order (as
    :func:`agedi_jax.batch.collate` lays them out), no structure has more than
    ``max_atoms`` atoms, the edge template of every structure holds every pair times every
    image shift the ``cutoff`` needs (:func:`agedi_jax.edges.edge_template` does), and the
    dense pair tensor is at most ``max_ratio`` times the edge template (None: no limit).
    """
    return layout_reason(batch, cutoff, max_atoms=max_atoms, max_ratio=max_ratio)[0]


def check_layout(layout: DenseLayout, batch: AtomsBatch, cutoff: float) -> None:
    """Raise ``ValueError`` when a concrete batch does not fit ``layout`` (a network
    specialised to it would give wrong outputs; inside jit such atoms get NaN outputs
    instead). Traced batches are not checked."""
    need, why = layout_reason(batch, cutoff, max_atoms=1 << 30, max_ratio=None)
    if why == "the batch is not concrete":
        return
    if need is None:
        raise ValueError(f"the dense layout {layout} does not apply to this batch: {why}; "
                         "use the network without a layout (the edge path)")
    if (need.atoms > layout.atoms or need.graphs > layout.graphs
            or any(a > b for a, b in zip(need.images, layout.images)) or (need.periodic and not layout.periodic)):
        raise ValueError(f"this batch needs a dense layout of at least {need}; the network is "
                         f"specialised to {layout} (agedi_jax.model.specialize picks one per batch)")


# --------------------------------------------------------------------------------------
# Flat <-> dense (inside jit)
# --------------------------------------------------------------------------------------


class DenseMap(NamedTuple):
    """Index arrays between the flat atom slots ``[n]`` and the dense slots ``[R·P]``.

    Attributes:
      src: [R·P] atom slot of every dense slot (clipped; meaningful where ``valid``).
      valid: [R·P] bool, the dense slot holds a real atom.
      dst: [n] dense slot of every atom (clipped; meaningful where ``ok``).
      ok: [n] bool, the atom is real and has a dense slot.
    """

    src: Array
    valid: Array
    dst: Array
    ok: Array


def dense_map(batch: AtomsBatch, layout: DenseLayout) -> DenseMap:
    """The :class:`DenseMap` of a batch (atoms contiguous by graph slot, as collated)."""
    r, p = layout.graphs, layout.atoms
    n = batch.num_nodes
    n_node = jnp.asarray(batch.n_node, jnp.int32)
    first = jnp.cumsum(n_node) - n_node  # [g]
    gmask = jnp.asarray(batch.graph_mask, bool)
    counts = jnp.where(gmask[:r], n_node[:r], 0)
    slot = jnp.arange(p, dtype=jnp.int32)
    valid = slot[None, :] < counts[:, None]  # [R, P]
    src = jnp.clip(first[:r, None] + slot[None, :], 0, n - 1)
    gi = jnp.asarray(batch.graph_index, jnp.int32)
    local = jnp.arange(n, dtype=jnp.int32) - first[gi]
    ok = jnp.asarray(batch.node_mask, bool) & (gi < r) & (local < p) & (local >= 0)
    dst = jnp.clip(gi, 0, r - 1) * p + jnp.clip(local, 0, p - 1)
    return DenseMap(src.reshape(-1), valid.reshape(-1), dst, ok)


def _masked_take(x: Array, index: Array, mask: Array) -> Array:
    out = jnp.take(x, index, axis=0)
    return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), out, jnp.zeros((), out.dtype))


@jax.custom_vjp
def _permute(x: Array, index: Array, mask: Array, back_index: Array, back_mask: Array) -> Array:
    return _masked_take(x, index, mask)


def _permute_fwd(x, index, mask, back_index, back_mask):
    return _masked_take(x, index, mask), (index, mask, back_index, back_mask)


def _permute_bwd(res, g):
    # the map is a bijection between the masked-in entries of both sides: its transpose is
    # the inverse map (a gather, not a scatter-add)
    index, mask, back_index, back_mask = res
    return _masked_take(g, back_index, back_mask), None, None, None, None


_permute.defvjp(_permute_fwd, _permute_bwd)


def to_dense(x: Array, m: DenseMap) -> Array:
    """Per-atom ``x`` [n, ...] -> dense slots [R·P, ...] (0 on empty slots)."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return _masked_take(x, m.src, m.valid)
    return _permute(x, m.src, m.valid, m.dst, m.ok)


def from_dense(x: Array, m: DenseMap) -> Array:
    """Dense slots [R·P, ...] -> per-atom [n, ...] (0 on padding atoms)."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return _masked_take(x, m.dst, m.ok)
    return _permute(x, m.dst, m.ok, m.src, m.valid)


def from_dense_checked(x: Array, m: DenseMap, batch: AtomsBatch) -> Array:
    """:func:`from_dense`, with NaN for every real atom that has no dense slot (a batch that
    does not fit the layout: a loud failure instead of a silently wrong output)."""
    out = from_dense(x, m)
    lost = jnp.asarray(batch.node_mask, bool) & ~m.ok
    return jnp.where(lost.reshape(lost.shape + (1,) * (out.ndim - 1)), jnp.nan, out)


def dense_batch(batch: AtomsBatch, m: DenseMap, layout: DenseLayout) -> AtomsBatch:
    """The batch in the dense layout: ``R·P`` atom slots (row-major, graph ``r`` in slots
    ``r·P .. r·P+P-1``), ``R`` graph slots, no edge template (empty arrays) and no labels.
    Node-level code of the networks (conditioning, context, centre of mass) runs on it
    unchanged; its graph slots are those of the batch (no trailing padding graph)."""
    r, p = layout.graphs, layout.atoms
    sl = slice(0, r)
    empty_i = jnp.zeros((0,), jnp.int32)
    z_window = None if batch.z_window is None else jnp.asarray(batch.z_window)[sl]
    return AtomsBatch(
        positions=to_dense(batch.positions, m),
        types=to_dense(jnp.asarray(batch.types), m),
        cell=jnp.asarray(batch.cell)[sl],
        pbc=jnp.asarray(batch.pbc)[sl],
        node_mask=m.valid,
        graph_mask=jnp.asarray(batch.graph_mask)[sl],
        graph_index=jnp.repeat(jnp.arange(r, dtype=jnp.int32), p),
        n_node=jnp.sum(m.valid.reshape(r, p), axis=1).astype(jnp.int32),
        label=jnp.asarray(batch.label)[sl],
        fixed=to_dense(jnp.asarray(batch.fixed, bool), m),
        senders=empty_i,
        receivers=empty_i,
        shifts=jnp.zeros((0, 3), batch.positions.dtype),
        edge_mask=jnp.zeros((0,), bool),
        n_edge=jnp.zeros((r,), jnp.int32),
        z_window=z_window,
    )


# --------------------------------------------------------------------------------------
# Pair geometry (inside jit)
# --------------------------------------------------------------------------------------


class DensePairs(NamedTuple):
    """Geometry of every ordered pair (× image) of a dense batch.

    Entry ``[r, i, j, s]`` is the pair ``i ← j`` of structure row ``r`` with image shift
    ``s`` (of :attr:`DenseLayout.shifts`).

    Attributes:
      vectors: [R, P, P, S, 3] ``r_j + S·cell − r_i`` (dummy ``(2c, 0, 0)`` where masked).
      lengths: [R, P, P, S].
      mask: [R, P, P, S] bool, a real pair within the cutoff (never ``(i, i, 0)``).
    """

    vectors: Array
    lengths: Array
    mask: Array


def dense_pairs(dbatch: AtomsBatch, layout: DenseLayout, cutoff: float) -> DensePairs:
    """Pair vectors, lengths and cutoff mask of a dense batch (:func:`dense_batch`), with
    the minimum-image convention of :func:`agedi_jax.edges.edge_vectors`."""
    r, p = layout.graphs, layout.atoms
    pos = dbatch.positions.reshape(r, p, 3)
    dtype = pos.dtype
    valid = dbatch.node_mask.reshape(r, p)
    d = pos[:, None, :, :] - pos[:, :, None, :]  # [R, i, j, 3] = r_j - r_i
    pair_ok = valid[:, :, None] & valid[:, None, :]
    shifts_np = layout.shifts
    pbc = jnp.asarray(dbatch.pbc, bool)
    if not layout.periodic:  # clusters: no minimum image, no shifts
        vec = d[:, :, :, None, :]
        shift_ok = jnp.ones((r, 1), bool)
    elif layout.num_shifts == 1:
        cell, inv_cell = safe_cell(dbatch, dtype)
        wrap = jnp.where(pbc[:, None, None, :], jnp.round(jnp.einsum("rijx,rxy->rijy", d, inv_cell)), 0.0)
        vec = (d - jnp.einsum("rijx,rxy->rijy", wrap, cell))[:, :, :, None, :]  # [R, P, P, 1, 3]
        shift_ok = jnp.ones((r, 1), bool)
    else:
        cell, inv_cell = safe_cell(dbatch, dtype)
        wrap = jnp.where(pbc[:, None, None, :], jnp.round(jnp.einsum("rijx,rxy->rijy", d, inv_cell)), 0.0)
        shifts = jnp.asarray(shifts_np, dtype)  # [S, 3]
        eff = shifts[None, None, None, :, :] - wrap[:, :, :, None, :]  # [R, P, P, S, 3]
        vec = d[:, :, :, None, :] + jnp.einsum("rijsx,rxy->rijsy", eff, cell)
        # a shift along a non-periodic axis of a structure does not exist for it
        nonzero = jnp.asarray(shifts_np != 0)  # [S, 3]
        shift_ok = ~jnp.any(nonzero[None, :, :] & ~pbc[:, None, :], axis=-1)  # [R, S]
    self_pair = np.eye(p, dtype=bool)[:, :, None] & ~np.any(shifts_np != 0, axis=1)[None, None, :]
    r2 = jnp.sum(vec * vec, axis=-1)
    mask = (
        pair_ok[:, :, :, None]
        & shift_ok[:, None, None, :]
        & ~jnp.asarray(self_pair)[None]
        & (r2 < cutoff * cutoff)
    )
    dummy = jnp.zeros((3,), dtype).at[0].set(2.0 * cutoff)
    vec = jnp.where(mask[..., None], vec, dummy)
    r2 = jnp.where(mask, r2, 4.0 * cutoff * cutoff)
    lengths = jnp.sqrt(jnp.maximum(r2, jnp.finfo(dtype).tiny ** 0.5))
    return DensePairs(vectors=vec, lengths=lengths, mask=mask)


# --------------------------------------------------------------------------------------
# Half of the pairs: the mirror (offset) layout
# --------------------------------------------------------------------------------------


def neighbour_columns(atoms: int, images: int) -> tuple[tuple[int, ...], int]:
    """The neighbour offsets kept by the mirror layout and how many of them are mirrored.

    The filter of a pair depends on its length only and its direction flips sign under
    ``(i, j, s) → (j, i, −s)``, so a network needs only one pair of each such couple. Row
    ``i`` keeps the neighbours ``j = (i + d) mod P`` for the offsets ``d`` returned here:
    ``0`` (the atom's own images; only when there are images), then ``1 .. ⌊P/2⌋``. The
    first ``mirrored`` offsets after 0 (``1 ≤ d < P/2``) stand for their partner pair too
    (atom ``j``'s neighbour ``i`` at offset ``P − d``); ``d = 0`` and, for even ``P``,
    ``d = P/2`` already hold both pairs of every couple. About half of the ``P² · S``
    pairs of the full layout are kept: ``P · ⌊P/2⌋ · S`` (plus ``P · S`` with images)."""
    cols = ((0,) if images > 1 else ()) + tuple(range(1, atoms // 2 + 1))
    return cols, (atoms - 1) // 2


def mirror_pairs(pairs: DensePairs, cols: tuple[int, ...]) -> DensePairs:
    """:class:`DensePairs` ``[R, P, P, S]`` restricted to the neighbour offsets ``cols``
    (:func:`neighbour_columns`): entry ``[r, i, c, s]`` is the pair ``i ← (i + cols[c]) mod P``
    -> ``[R, P, D, S]`` (a gather with static indices, once per call)."""
    p = pairs.lengths.shape[1]
    rows = np.arange(p)[:, None]
    nbr = (rows + np.asarray(cols, np.int64)[None, :]) % p  # [P, D]
    return DensePairs(vectors=pairs.vectors[:, rows, nbr], lengths=pairs.lengths[:, rows, nbr],
                      mask=pairs.mask[:, rows, nbr])

