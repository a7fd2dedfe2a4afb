"""The atomistic batch: one padded, fixed-shape container for the whole package.

A batch holds ``g`` graph slots (structures) and ``n`` node slots (atoms), padded to a
:class:`Bucket` so that batches of similar size share one compiled function. Conventions
(used everywhere in the package):

* positions are Cartesian, in Å, shape ``[n, 3]``; ``cell`` rows are lattice vectors
  (ASE convention), shape ``[g, 3, 3]``; ``pbc`` is ``[g, 3]``.
* ``types`` are integer indices ``[n]``: ``MASK = 0`` is the absorbing state of the type
  process, physical types are ``1..K`` through a :class:`TypeVocab`.
* The last graph slot is always a padding graph and the last node slot always a padding
  atom (as in jraph); padding atoms belong to the padding graph, padding edges join the
  padding atom to itself. ``node_mask`` / ``graph_mask`` / ``edge_mask`` mark real entries.
* ``label`` is a per-graph integer condition with ``0`` meaning "no label" (the null label
  of classifier-free guidance); ``fixed`` marks atoms that are never noised.
* Edges: the batch carries a static-shaped *edge template* — every ordered pair of atoms
  inside each structure times every periodic image shift that can come within the cutoff
  (``senders``, ``receivers``, ``shifts``). :func:`edge_vectors` turns it, inside jit, into
  edge vectors for the current positions and a cutoff mask. Edge ``k`` points from the
  receiver (centre) ``i`` to the sender (neighbour) ``j``:
  ``r_j + S·cell − r_i`` (ASE's ``neighbor_list`` convention for ``D``).

Nothing here touches ASE inside jit; ASE is only used on the host to build and unbuild.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

MASK = 0
"""Index of the absorbing MASK state of the type process."""


class StructureError(ValueError):
    """A structure cannot be turned into a batch; the message names it and the problem."""


# --------------------------------------------------------------------------------------
# Type vocabulary
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TypeVocab:
    """Maps chemical symbols to type indices ``1..K`` (``0`` is MASK) and back.

    The vocabulary is saved with every model: the order of ``symbols`` is the order of the
    type-score columns (column ``k`` is type ``k + 1``).
    """

    symbols: tuple[str, ...]

    def __post_init__(self) -> None:
        from ase.data import atomic_numbers

        symbols = tuple(self.symbols)
        object.__setattr__(self, "symbols", symbols)
        if not symbols:
            raise ValueError("TypeVocab needs at least one element")
        bad = [s for s in symbols if s not in atomic_numbers or s == "X"]
        if bad:
            raise ValueError(f"TypeVocab: not chemical symbols: {bad}")
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"TypeVocab: repeated symbols in {symbols}")

    @classmethod
    def from_atoms(cls, atoms_list: Iterable[Any]) -> "TypeVocab":
        """Vocabulary of every element in ``atoms_list``, ordered by atomic number."""
        from ase.data import atomic_numbers

        found = set()
        for atoms in atoms_list:
            found.update(atoms.get_chemical_symbols())
        return cls(tuple(sorted(found, key=lambda s: atomic_numbers[s])))

    @property
    def num_types(self) -> int:
        """K, the number of physical types (MASK not counted)."""
        return len(self.symbols)

    def index(self, symbol: str) -> int:
        """Type index (1..K) of ``symbol``; raises ``KeyError`` naming unknown elements."""
        try:
            return self.symbols.index(symbol) + 1
        except ValueError:
            raise KeyError(
                f"element {symbol!r} is not in the type vocabulary {list(self.symbols)}"
            ) from None

    def encode(self, symbols: Sequence[str]) -> np.ndarray:
        """Symbols -> int32 indices ``[len(symbols)]``."""
        lookup = {s: i + 1 for i, s in enumerate(self.symbols)}
        out = np.empty(len(symbols), np.int32)
        for k, s in enumerate(symbols):
            if s not in lookup:
                raise KeyError(
                    f"element {s!r} is not in the type vocabulary {list(self.symbols)}"
                )
            out[k] = lookup[s]
        return out

    def decode(self, indices: Sequence[int]) -> list[str]:
        """Indices -> symbols; MASK (0) decodes to ``'X'``."""
        table = ("X",) + self.symbols
        out = []
        for i in np.asarray(indices).tolist():
            if not 0 <= i <= self.num_types:
                raise ValueError(f"type index {i} outside 0..{self.num_types}")
            out.append(table[i])
        return out

    def to_dict(self) -> dict:
        return {"symbols": list(self.symbols)}

    @classmethod
    def from_dict(cls, d: dict) -> "TypeVocab":
        return cls(tuple(d["symbols"]))


# --------------------------------------------------------------------------------------
# The batch
# --------------------------------------------------------------------------------------


class AtomsBatch(NamedTuple):
    """A padded batch of atomistic systems (a pytree of arrays).

    Shapes: ``n`` node slots, ``g`` graph slots, ``e`` edge slots (all static per bucket).

    Attributes:
      positions: [n, 3] Cartesian positions, Å.
      types: [n] int32 type indices (MASK = 0, physical 1..K).
      cell: [g, 3, 3] lattice vectors as rows, Å (zeros for clusters).
      pbc: [g, 3] bool periodicity per axis.
      node_mask: [n] bool, True for real atoms.
      graph_mask: [g] bool, True for real structures.
      graph_index: [n] int32 graph slot of every atom (padding atoms -> last slot).
      n_node: [g] int32 atoms per graph slot (the padding slot counts the padding atoms).
      label: [g] int32 condition label, 0 = none / null.
      fixed: [n] bool atoms held fixed (never noised, never counted in losses).
      senders: [e] int32 neighbour atom j of every template edge.
      receivers: [e] int32 centre atom i of every template edge.
      shifts: [e, 3] float integer-valued lattice shift S of every template edge.
      edge_mask: [e] bool, True for real template edges.
      n_edge: [g] int32 template edges per graph slot.
    """

    positions: Any
    types: Any
    cell: Any
    pbc: Any
    node_mask: Any
    graph_mask: Any
    graph_index: Any
    n_node: Any
    label: Any
    fixed: Any
    senders: Any
    receivers: Any
    shifts: Any
    edge_mask: Any
    n_edge: Any

    @property
    def num_nodes(self) -> int:
        return self.positions.shape[0]

    @property
    def num_graphs(self) -> int:
        return self.cell.shape[0]

    @property
    def num_edges(self) -> int:
        return self.senders.shape[0]

    @property
    def bucket(self) -> "Bucket":
        return Bucket(self.num_nodes, self.num_edges, self.num_graphs)

    def to_graphs_tuple(self):
        """The same data as a ``jraph.GraphsTuple`` (nodes / edges / globals dicts)."""
        import jraph

        return jraph.GraphsTuple(
            nodes={
                "positions": self.positions,
                "types": self.types,
                "fixed": self.fixed,
                "node_mask": self.node_mask,
            },
            edges={"shifts": self.shifts, "edge_mask": self.edge_mask},
            senders=self.senders,
            receivers=self.receivers,
            globals={
                "cell": self.cell,
                "pbc": self.pbc,
                "label": self.label,
                "graph_mask": self.graph_mask,
            },
            n_node=self.n_node,
            n_edge=self.n_edge,
        )

    @classmethod
    def from_graphs_tuple(cls, graph) -> "AtomsBatch":
        """Inverse of :meth:`to_graphs_tuple`."""
        graph_index = np.repeat(
            np.arange(len(graph.n_node), dtype=np.int32), np.asarray(graph.n_node)
        )
        return cls(
            positions=graph.nodes["positions"],
            types=graph.nodes["types"],
            cell=graph.globals["cell"],
            pbc=graph.globals["pbc"],
            node_mask=graph.nodes["node_mask"],
            graph_mask=graph.globals["graph_mask"],
            graph_index=graph_index,
            n_node=graph.n_node,
            label=graph.globals["label"],
            fixed=graph.nodes["fixed"],
            senders=graph.senders,
            receivers=graph.receivers,
            shifts=graph.edges["shifts"],
            edge_mask=graph.edges["edge_mask"],
            n_edge=graph.n_edge,
        )

    def replace(self, **kwargs) -> "AtomsBatch":
        return self._replace(**kwargs)


# --------------------------------------------------------------------------------------
# Buckets
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, order=True)
class Bucket:
    """Padded sizes of a batch. Every distinct bucket compiles once per jitted function."""

    n_node: int
    n_edge: int
    n_graph: int


def round_up(x: int, minimum: int = 1) -> int:
    """Smallest value of the ladder 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (ratio ≤ 1.5) ≥ x."""
    x = max(int(x), minimum, 1)
    p = 1 << max(0, (x - 1).bit_length() - 1)  # largest power of two < x (or 1)
    for cand in (p, (3 * p) // 2 if p >= 2 else 2, 2 * p):
        if cand >= x:
            return cand
    return 2 * p  # pragma: no cover


def bucket_for(n_node: int, n_edge: int, n_graph: int) -> Bucket:
    """Bucket holding ``n_node`` real atoms, ``n_edge`` real edges and ``n_graph`` real
    structures, always with room for one padding atom, edge and graph."""
    return Bucket(round_up(n_node + 1, 4), round_up(n_edge + 1, 4), round_up(n_graph + 1, 2))


# --------------------------------------------------------------------------------------
# Edge template (host, numpy)
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# ase.Atoms <-> batch
# --------------------------------------------------------------------------------------


def _describe(k: int, atoms: Any) -> str:
    try:
        formula = atoms.get_chemical_formula()
    except Exception:  # pragma: no cover - defensive
        formula = "?"
    return f"structure {k} ({formula or 'empty'})"


def validate_atoms(atoms: Any, k: int = 0, vocab: TypeVocab | None = None) -> None:
    """Raise :class:`StructureError` naming structure ``k`` if it cannot be batched."""
    name = _describe(k, atoms)
    if len(atoms) == 0:
        raise StructureError(f"{name}: empty structure (no atoms)")
    pos = np.asarray(atoms.positions, np.float64)
    if not np.all(np.isfinite(pos)):
        bad = np.where(~np.all(np.isfinite(pos), axis=1))[0]
        raise StructureError(f"{name}: non-finite (NaN/inf) positions for atoms {bad[:10].tolist()}")
    pbc = np.asarray(atoms.pbc, bool)
    if pbc.any():
        cell = np.asarray(atoms.cell, np.float64)
        if not np.all(np.isfinite(cell)):
            raise StructureError(f"{name}: non-finite cell")
        lengths = np.linalg.norm(cell, axis=1)
        if np.any(lengths[pbc] < 1e-6):
            raise StructureError(
                f"{name}: cell is singular in a periodic direction (pbc={pbc.tolist()}, "
                f"lattice vector lengths {np.round(lengths, 4).tolist()} Å)"
            )
        volume = abs(np.linalg.det(cell))
        if volume < 1e-6 * max(lengths.max(), 1.0) ** 3:
            raise StructureError(
                f"{name}: cell is singular (volume {volume:.3g} Å^3) with pbc={pbc.tolist()}; a "
                "periodic structure needs three independent lattice vectors (for a 2D material "
                "give the non-periodic axis a vacuum vector, e.g. atoms.center(vacuum=10, axis=2))"
            )
    if vocab is not None:
        for s in set(atoms.get_chemical_symbols()):
            if s not in vocab.symbols:
                raise StructureError(
                    f"{name}: element {s!r} is not in the type vocabulary {list(vocab.symbols)}"
                )


def _fixed_mask(atoms: Any) -> np.ndarray:
    from ase.constraints import FixAtoms

    mask = np.zeros(len(atoms), bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            mask[c.get_indices()] = True
    return mask


class EncodedStructure(NamedTuple):
    """One validated structure, encoded on the host, ready to be collated into batches."""

    positions: np.ndarray  # [N, 3] float64, Å
    types: np.ndarray  # [N] int32
    cell: np.ndarray  # [3, 3] float64
    pbc: np.ndarray  # [3] bool
    fixed: np.ndarray  # [N] bool
    label: int
    senders: np.ndarray  # [E] int32 local indices
    receivers: np.ndarray  # [E] int32 local indices
    shifts: np.ndarray  # [E, 3] float64

    @property
    def num_atoms(self) -> int:
        return len(self.types)

    @property
    def num_edges(self) -> int:
        return len(self.senders)


def encode_structures(
    atoms_list: Sequence[Any],
    vocab: TypeVocab,
    cutoff: float,
    *,
    labels: Sequence[int] | None = None,
    label_key: str | None = None,
    fixed: Sequence[np.ndarray] | None = None,
    max_atoms: int | None = None,
    masked_types: bool = False,
) -> list[EncodedStructure]:
    """Validate and encode structures (with their edge templates) for :func:`collate`.

    Arguments as in :func:`batch_from_atoms`. Encoding a data set once and collating random
    subsets is much cheaper than rebuilding templates for every batch.
    """
    if len(atoms_list) == 0:
        raise StructureError("empty list of structures: nothing to batch")
    if cutoff <= 0 or not math.isfinite(cutoff):
        raise ValueError(f"cutoff must be a positive number of Å, got {cutoff}")
    if labels is None and label_key is not None:
        labels = []
        for k, atoms in enumerate(atoms_list):
            if label_key not in atoms.info:
                raise StructureError(f"{_describe(k, atoms)}: no label {label_key!r} in atoms.info")
            labels.append(int(atoms.info[label_key]))
    if labels is not None and len(labels) != len(atoms_list):
        raise ValueError(f"{len(labels)} labels for {len(atoms_list)} structures")
    if fixed is not None and len(fixed) != len(atoms_list):
        raise ValueError(f"{len(fixed)} fixed masks for {len(atoms_list)} structures")

    out = []
    for k, atoms in enumerate(atoms_list):
        validate_atoms(atoms, k, vocab)
        na = len(atoms)
        if max_atoms is not None and na > max_atoms:
            raise StructureError(
                f"{_describe(k, atoms)}: {na} atoms is more than the configured "
                f"maximum of {max_atoms} atoms per structure"
            )
        f = _fixed_mask(atoms) if fixed is None else np.asarray(fixed[k], bool)
        if f.shape != (na,):
            raise StructureError(f"{_describe(k, atoms)}: fixed mask of shape {f.shape}, expected ({na},)")
        types = vocab.encode(atoms.get_chemical_symbols())
        if masked_types:
            types = np.where(f, types, MASK).astype(np.int32)
        cell = np.asarray(atoms.cell, np.float64).copy()
        pbc = np.asarray(atoms.pbc, bool).copy()
        snd, rcv, shf = edge_template(na, cell, pbc, cutoff)
        out.append(
            EncodedStructure(
                positions=np.asarray(atoms.positions, np.float64).copy(),
                types=types,
                cell=cell,
                pbc=pbc,
                fixed=f,
                label=0 if labels is None else int(labels[k]),
                senders=snd,
                receivers=rcv,
                shifts=shf,
            )
        )
    return out


def collate(encoded: Sequence[EncodedStructure], bucket: Bucket | None = None) -> AtomsBatch:
    """Pad encoded structures into one :class:`AtomsBatch` (numpy arrays).

    ``bucket`` defaults to the smallest ladder bucket that fits (:func:`bucket_for`); a
    bucket that is too small raises :class:`StructureError`.
    """
    if len(encoded) == 0:
        raise StructureError("empty list of structures: nothing to batch")
    real_nodes = sum(s.num_atoms for s in encoded)
    real_edges = sum(s.num_edges for s in encoded)
    real_graphs = len(encoded)
    needed = bucket_for(real_nodes, real_edges, real_graphs)
    if bucket is None:
        bucket = needed
    elif (
        bucket.n_node < real_nodes + 1
        or bucket.n_edge < real_edges + 1
        or bucket.n_graph < real_graphs + 1
    ):
        raise StructureError(
            f"batch of {real_graphs} structures, {real_nodes} atoms, {real_edges} template edges "
            f"does not fit the padding {bucket} (one padding atom, edge and graph are always "
            f"reserved); the smallest bucket that fits is {needed}"
        )
    n, e, g = bucket.n_node, bucket.n_edge, bucket.n_graph
    sizes = np.array([s.num_atoms for s in encoded])
    esizes = np.array([s.num_edges for s in encoded])
    node_off = np.concatenate([[0], np.cumsum(sizes)[:-1]])

    def pad(parts, length, fill, dtype, tail=()):
        out = np.full((length,) + tail, fill, dtype)
        cat = np.concatenate(parts) if len(parts) else np.zeros((0,) + tail, dtype)
        out[: len(cat)] = cat
        return out

    graph_index = pad([np.full(k, i, np.int32) for i, k in enumerate(sizes)], n, g - 1, np.int32)
    senders = pad([s.senders + o for s, o in zip(encoded, node_off)], e, n - 1, np.int32)
    receivers = pad([s.receivers + o for s, o in zip(encoded, node_off)], e, n - 1, np.int32)
    cell = np.zeros((g, 3, 3), np.float64)
    cell[:real_graphs] = np.stack([s.cell for s in encoded])
    pbc = np.zeros((g, 3), bool)
    pbc[:real_graphs] = np.stack([s.pbc for s in encoded])
    graph_mask = np.arange(g) < real_graphs
    label = np.zeros(g, np.int32)
    label[:real_graphs] = [s.label for s in encoded]
    n_node = np.zeros(g, np.int32)
    n_node[:real_graphs] = sizes
    n_node[g - 1] = n - real_nodes
    n_edge = np.zeros(g, np.int32)
    n_edge[:real_graphs] = esizes
    n_edge[g - 1] = e - real_edges
    return AtomsBatch(
        positions=pad([s.positions for s in encoded], n, 0.0, np.float64, (3,)),
        types=pad([s.types for s in encoded], n, MASK, np.int32),
        cell=cell,
        pbc=pbc,
        node_mask=np.arange(n) < real_nodes,
        graph_mask=graph_mask,
        graph_index=graph_index,
        n_node=n_node,
        label=label,
        fixed=pad([s.fixed for s in encoded], n, False, bool),
        senders=senders,
        receivers=receivers,
        shifts=pad([s.shifts for s in encoded], e, 0.0, np.float64, (3,)),
        edge_mask=np.arange(e) < real_edges,
        n_edge=n_edge,
    )


def batch_from_atoms(
    atoms_list: Sequence[Any],
    vocab: TypeVocab,
    cutoff: float,
    *,
    bucket: Bucket | None = None,
    labels: Sequence[int] | None = None,
    label_key: str | None = None,
    fixed: Sequence[np.ndarray] | None = None,
    max_atoms: int | None = None,
    masked_types: bool = False,
) -> AtomsBatch:
    """Build a padded :class:`AtomsBatch` (numpy arrays, float64) from ``ase.Atoms``.

    Args:
      atoms_list: structures; periodic ones need a full-rank cell.
      vocab: type vocabulary; unknown elements raise :class:`StructureError`.
      cutoff: largest cutoff (Å) the edges will be used with; sets the image range.
      bucket: padded sizes; default: the smallest ladder bucket that fits
        (:func:`bucket_for`). Too small a bucket raises :class:`StructureError`.
      labels: per-structure integer labels (0 = none); or ``label_key`` to read them
        from ``atoms.info``.
      fixed: per-structure boolean masks of fixed atoms; default: ASE ``FixAtoms``
        constraints.
      max_atoms: largest structure allowed (e.g. the model's configured padding).
      masked_types: set every non-fixed atom's type to MASK (for sampling templates).

    Returns:
      An :class:`AtomsBatch` of numpy arrays; ``jax.numpy`` converts it at the jit
      boundary (float32 unless x64 is enabled).
    """
    encoded = encode_structures(
        atoms_list,
        vocab,
        cutoff,
        labels=labels,
        label_key=label_key,
        fixed=fixed,
        max_atoms=max_atoms,
        masked_types=masked_types,
    )
    return collate(encoded, bucket)


def atoms_from_batch(
    batch: AtomsBatch,
    vocab: TypeVocab,
    info: Sequence[dict] | None = None,
    label_key: str | None = "label",
) -> list:
    """Turn the real graphs of a batch back into ``ase.Atoms`` (host).

    Positions, symbols (MASK -> ``'X'``), cell, pbc and fixed atoms (as ``FixAtoms``) are
    restored; ``info[k]`` is copied into structure ``k``'s ``atoms.info``; a non-zero label
    is stored under ``label_key``.
    """
    from ase import Atoms
    from ase.constraints import FixAtoms

    b = AtomsBatch(*(np.asarray(x) for x in batch))
    out = []
    graphs = np.where(b.graph_mask)[0]
    if info is not None and len(info) != len(graphs):
        raise ValueError(f"{len(info)} info dicts for {len(graphs)} structures")
    for k, gi in enumerate(graphs):
        sel = np.where(b.node_mask & (b.graph_index == gi))[0]
        atoms = Atoms(
            symbols=vocab.decode(b.types[sel]),
            positions=b.positions[sel].astype(np.float64),
            cell=b.cell[gi].astype(np.float64),
            pbc=b.pbc[gi].astype(bool),
        )
        if b.fixed[sel].any():
            atoms.set_constraint(FixAtoms(indices=np.where(b.fixed[sel])[0]))
        if info is not None:
            atoms.info.update(dict(info[k]))
        if label_key is not None and b.label[gi] != 0:
            atoms.info[label_key] = int(b.label[gi])
        out.append(atoms)
    return out


# --------------------------------------------------------------------------------------
# In-jit edges
# --------------------------------------------------------------------------------------


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
    import jax.numpy as jnp

    pos = batch.positions
    dtype = pos.dtype
    g_of_edge = batch.graph_index[batch.receivers]
    pbc = batch.pbc.astype(bool)
    cell = batch.cell.astype(dtype)
    # Inverse cell only for graphs with some periodicity; identity elsewhere (clusters
    # and padding graphs have zero cells).
    any_pbc = jnp.any(pbc, axis=-1)
    eye = jnp.eye(3, dtype=dtype)
    safe_cell = jnp.where(any_pbc[:, None, None], cell, eye)
    inv_cell = jnp.linalg.inv(safe_cell)

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


# --------------------------------------------------------------------------------------
# Masked per-graph reductions (jittable)
# --------------------------------------------------------------------------------------


def graph_sum(batch: AtomsBatch, values: Any) -> Any:
    """Sum of per-atom ``values`` [n, ...] over the real atoms of each graph -> [g, ...]."""
    import jax
    import jax.numpy as jnp

    mask = batch.node_mask.reshape((-1,) + (1,) * (values.ndim - 1))
    vals = jnp.where(mask, values, 0)
    return jax.ops.segment_sum(vals, batch.graph_index, num_segments=batch.num_graphs)


def graph_mean(batch: AtomsBatch, values: Any, weights: Any | None = None) -> Any:
    """Mean of per-atom ``values`` over the real (and ``weights``-selected) atoms of each
    graph -> [g, ...]; zero for graphs with no selected atoms."""
    import jax.numpy as jnp

    w = batch.node_mask if weights is None else (batch.node_mask & weights)
    w = w.astype(values.dtype)
    shape = (-1,) + (1,) * (values.ndim - 1)
    total = graph_sum(batch, values * w.reshape(shape))
    count = graph_sum(batch, w)
    count = count.reshape((-1,) + (1,) * (values.ndim - 1))
    return total / jnp.maximum(count, 1)


def com_axes(batch: AtomsBatch) -> Any:
    """[g, 3] bool: the axes along which a graph's positions live in the zero-centre-of-mass
    subspace — non-periodic axes of real graphs that have no fixed atoms (fixed atoms
    anchor the frame, so such graphs are not projected)."""
    import jax
    import jax.numpy as jnp

    has_fixed = jax.ops.segment_max(
        (batch.fixed & batch.node_mask).astype(jnp.int32), batch.graph_index, num_segments=batch.num_graphs
    ) > 0
    return (~batch.pbc.astype(bool)) & (batch.graph_mask & ~has_fixed)[:, None]


def remove_com(batch: AtomsBatch, x: Any) -> Any:
    """Project per-atom vectors ``x`` [n, 3] onto the zero-centre-of-mass subspace along
    :func:`com_axes` (subtract the per-graph mean over real atoms); padding atoms -> 0.

    Used for noise, prior samples and predicted scores of translation-invariant systems
    (clusters; z of a 2D material)."""
    import jax.numpy as jnp

    mean = graph_mean(batch, x)  # [g, 3]
    axes = com_axes(batch)
    shift = jnp.where(axes, mean, 0.0)[batch.graph_index]
    return jnp.where(batch.node_mask[:, None], x - shift, 0.0)
