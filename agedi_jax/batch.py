"""The atomistic batch: one padded, fixed-shape container for the whole package.

A batch holds ``g`` graph slots (structures) and ``n`` node slots (atoms), padded to a
:class:`Bucket` so that batches of similar size share one compiled function. Conventions
(used everywhere in the package):

* positions are Cartesian, in Å, shape ``[n, 3]``; ``cell`` rows are lattice vectors
  (ASE convention), shape ``[g, 3, 3]``; ``pbc`` is ``[g, 3]``.
* ``types`` are integer indices ``[n]``: ``MASK = 0`` is the absorbing state of the type
  process, physical types are ``1..K`` through a :class:`~agedi_jax.vocab.TypeVocab`.
* The last graph slot is always a padding graph and the last node slot always a padding
  atom (as in jraph); padding atoms belong to the padding graph, padding edges join the
  padding atom to itself. ``node_mask`` / ``graph_mask`` / ``edge_mask`` mark real entries.
* ``label`` is a per-graph integer condition with ``0`` meaning "no label" (the null label
  of classifier-free guidance); ``fixed`` marks atoms that are never noised.
* Labels (optional): ``energy`` [g] (eV per structure) with ``energy_mask`` [g] and
  ``forces`` [n, 3] (eV/Å) with ``force_mask`` [n] carry reference energies and forces
  (DFT, GAP, EMT) for training a force field. A collated batch always has all four
  arrays (:func:`collate`; unknown values 0 and masked False, so a batch of unlabelled
  structures has all-False masks); a batch built by hand may leave them None, which every
  consumer reads as "no labels". Samplers drop them (they describe the template, not the
  sample).
* Confinement (optional): ``z_window`` [g, 2] holds, per graph, the absolute Cartesian z
  range ``[z_lo, z_hi]`` (Å) inside which the graph's free atoms live (slabs with pbc
  (T, T, F): adsorbates and films above a fixed substrate). A graph is *confined* when
  ``z_hi > z_lo``; ``[0, 0]`` means no window. :func:`collate` sets the field only when
  some structure has a window (else None, and every consumer reads None as "no window
  anywhere", so batches without windows compile and compute exactly as before). Along z
  the position process of a confined graph is reflected at the walls
  (:mod:`agedi_jax.sde`, :func:`agedi_jax.geometry.displace`).
* Edges: the batch carries a static-shaped *edge template* — every ordered pair of atoms
  inside each structure times every periodic image shift that can come within the cutoff
  (``senders``, ``receivers``, ``shifts``; :mod:`agedi_jax.edges` builds it on the host and
  turns it into edge vectors inside jit).

Structures are validated and encoded on the host by :mod:`agedi_jax.convert`
(``ase.Atoms`` → :class:`EncodedStructure`) and padded here by :func:`collate`. Nothing
here touches ASE.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import numpy as np

from agedi_jax.vocab import MASK

__all__ = [
    "StructureError",
    "describe_structure",
    "AtomsBatch",
    "Bucket",
    "round_up",
    "bucket_for",
    "EncodedStructure",
    "collate",
    "common_bucket",
    "map_arrays",
    "LABEL_FIELDS",
]

LABEL_FIELDS = ("energy", "forces", "energy_mask", "force_mask")
"""The optional label fields of :class:`AtomsBatch` (None when the batch has no labels)."""


class StructureError(ValueError):
    """A structure cannot be turned into a batch; the message names it and the problem."""


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
      energy: [g] float reference energy per structure, eV (0 where unknown), or None.
      forces: [n, 3] float reference forces, eV/Å (0 where unknown), or None.
      energy_mask: [g] bool, True where ``energy`` is a label, or None.
      force_mask: [n] bool, True where ``forces`` is a label, or None.
      z_window: [g, 2] float absolute z window ``[z_lo, z_hi]`` of each graph's free
        atoms, Å (``[0, 0]``: no window), or None (no graph has one).

    The four label fields and ``z_window`` are optional (default None; see the module
    docstring), so every constructor of the 15 structural fields keeps working.
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
    energy: Any = None
    forces: Any = None
    energy_mask: Any = None
    force_mask: Any = None
    z_window: Any = None

    @property
    def has_labels(self) -> bool:
        """Whether the batch carries the label fields (energies / forces and their masks)."""
        return self.energy_mask is not None

    def without_labels(self) -> "AtomsBatch":
        """The same batch with the four label fields set to None."""
        return self._replace(energy=None, forces=None, energy_mask=None, force_mask=None)

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

        nodes = {
            "positions": self.positions,
            "types": self.types,
            "fixed": self.fixed,
            "node_mask": self.node_mask,
        }
        globals_ = {
            "cell": self.cell,
            "pbc": self.pbc,
            "label": self.label,
            "graph_mask": self.graph_mask,
        }
        if self.has_labels:
            nodes.update(forces=self.forces, force_mask=self.force_mask)
            globals_.update(energy=self.energy, energy_mask=self.energy_mask)
        if self.z_window is not None:
            globals_.update(z_window=self.z_window)
        return jraph.GraphsTuple(
            nodes=nodes,
            edges={"shifts": self.shifts, "edge_mask": self.edge_mask},
            senders=self.senders,
            receivers=self.receivers,
            globals=globals_,
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
            energy=graph.globals.get("energy"),
            forces=graph.nodes.get("forces"),
            energy_mask=graph.globals.get("energy_mask"),
            force_mask=graph.nodes.get("force_mask"),
            z_window=graph.globals.get("z_window"),
        )

    def replace(self, **kwargs) -> "AtomsBatch":
        return self._replace(**kwargs)


def map_arrays(fn, batch: AtomsBatch) -> AtomsBatch:
    """``fn`` applied to every field of ``batch`` that is not None (absent label fields
    stay None), e.g. ``map_arrays(jnp.asarray, batch)``."""
    return AtomsBatch(*(None if x is None else fn(x) for x in batch))


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
    energy: float | None = None  # eV, or None (unknown)
    forces: np.ndarray | None = None  # [N, 3] eV/Å, or None (unknown)
    z_window: np.ndarray | None = None  # [2] absolute z window of the free atoms, Å, or None

    @property
    def num_atoms(self) -> int:
        return len(self.types)

    @property
    def num_edges(self) -> int:
        return len(self.senders)


def describe_structure(k: int, atoms: Any) -> str:
    """``structure k (formula)``: how error messages name an input structure."""
    try:
        formula = atoms.get_chemical_formula()
    except Exception:  # pragma: no cover - defensive
        formula = "?"
    return f"structure {k} ({formula or 'empty'})"


def collate(encoded: Sequence[EncodedStructure], bucket: Bucket | None = None) -> AtomsBatch:
    """Pad encoded structures into one :class:`AtomsBatch` (numpy arrays).

    ``bucket`` defaults to the smallest ladder bucket that fits (:func:`bucket_for`); a
    bucket that is too small raises :class:`StructureError`.

    Labels: the batch always gets the four label fields — energies and forces padded with
    0, ``energy_mask`` True where a structure's energy is known and finite, ``force_mask``
    True on the atoms of structures with known, finite forces of shape ``[N, 3]``.

    Windows: ``z_window`` [g, 2] is set when some structure has one (``[0, 0]`` for the
    others and for empty slots), else None.
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
    energy = np.zeros(g, np.float64)
    energy_mask = np.zeros(g, bool)
    raw = np.array([np.nan if s.energy is None else float(s.energy) for s in encoded], np.float64)
    energy_mask[:real_graphs] = np.isfinite(raw)
    energy[:real_graphs] = np.where(np.isfinite(raw), raw, 0.0)
    f_parts, m_parts = [], []
    for s in encoded:
        f = None if s.forces is None else np.asarray(s.forces, np.float64)
        ok = f is not None and f.shape == (s.num_atoms, 3) and bool(np.all(np.isfinite(f)))
        f_parts.append(f if ok else np.zeros((s.num_atoms, 3)))
        m_parts.append(np.full(s.num_atoms, ok))
    z_window = None
    if any(s.z_window is not None for s in encoded):
        z_window = np.zeros((g, 2), np.float64)
        for i, s in enumerate(encoded):
            if s.z_window is not None:
                z_window[i] = np.asarray(s.z_window, np.float64)
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
        energy=energy,
        forces=pad(f_parts, n, 0.0, np.float64, (3,)),
        energy_mask=energy_mask,
        force_mask=pad(m_parts, n, False, bool),
        z_window=z_window,
    )


def common_bucket(chunks: Sequence[Sequence[EncodedStructure]]) -> Bucket:
    """One bucket large enough for every chunk (so a list of batches compiles once)."""
    nodes = max(sum(s.num_atoms for s in c) for c in chunks)
    edges = max(sum(s.num_edges for s in c) for c in chunks)
    graphs = max(len(c) for c in chunks)
    return bucket_for(nodes, edges, graphs)
