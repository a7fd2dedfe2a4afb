"""``ase.Atoms`` ↔ :class:`~agedi_jax.batch.AtomsBatch`: validation and encoding on the host.

:func:`encode_structures` validates structures (named errors for empty structures,
non-finite positions, singular periodic cells, unknown elements, structures larger than
the configured padding) and encodes each one with its edge template
(:class:`~agedi_jax.batch.EncodedStructure`); :func:`~agedi_jax.batch.collate` pads them
into a batch; :func:`batch_from_atoms` does both; :func:`atoms_from_batch` turns the real
graphs of a batch back into ``ase.Atoms``. ASE is used only here, never inside jit.

Energy and force labels (:func:`atoms_labels`) are read from a calculator's stored
results (``SinglePointCalculator``: ``atoms.get_potential_energy()`` / ``get_forces()``),
else from ``atoms.info["energy"]`` / ``atoms.arrays["forces"]``, and written back by
:func:`atoms_from_batch` as a ``SinglePointCalculator``.

z windows (slabs whose free atoms are confined to ``[z_lo, z_hi]``,
:mod:`agedi_jax.surfaces`): given to :func:`encode_structures` (``z_window=``), or read
from ``atoms.info[agedi_jax.surfaces.Z_WINDOW_KEY]`` (Å above the topmost fixed atom),
validated and stored as absolute z in ``EncodedStructure.z_window``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from agedi_jax.batch import (
    AtomsBatch,
    Bucket,
    EncodedStructure,
    StructureError,
    collate,
    describe_structure,
    map_arrays,
)
from agedi_jax.edges import edge_template
from agedi_jax.vocab import MASK, TypeVocab

__all__ = [
    "validate_atoms",
    "describe_structure",
    "fixed_mask",
    "atoms_labels",
    "encode_structures",
    "batch_from_atoms",
    "atoms_from_batch",
]


def validate_atoms(atoms: Any, k: int = 0, vocab: TypeVocab | None = None) -> None:
    """Raise :class:`StructureError` naming structure ``k`` if it cannot be batched."""
    name = describe_structure(k, atoms)
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


def fixed_mask(atoms: Any) -> np.ndarray:
    from ase.constraints import FixAtoms

    mask = np.zeros(len(atoms), bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            mask[c.get_indices()] = True
    return mask


def _finite_float(x: Any) -> float | None:
    try:
        v = float(np.asarray(x, np.float64).reshape(()))
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _forces_array(x: Any, n: int) -> np.ndarray | None:
    try:
        f = np.array(x, np.float64)
    except (TypeError, ValueError):
        return None
    if f.shape != (n, 3) or not np.all(np.isfinite(f)):
        return None
    return f


def atoms_labels(atoms: Any) -> tuple[float | None, np.ndarray | None]:
    """``(energy eV | None, forces [N, 3] eV/Å | None)`` of a structure.

    Read, without computing anything, from the results a calculator already holds
    (e.g. a ``SinglePointCalculator`` from an extxyz file; results are ignored when the
    calculator reports the atoms changed since, as ``atoms.get_potential_energy()``
    would refuse them), else from ``atoms.info["energy"]`` and ``atoms.arrays["forces"]``.
    Values that are not finite numbers of the right shape count as absent."""
    energy = forces = None
    calc = getattr(atoms, "calc", None)
    if calc is not None:
        results = getattr(calc, "results", None) or {}
        stale = False
        check = getattr(calc, "check_state", None)
        if check is not None and getattr(calc, "atoms", None) is not None:
            try:
                stale = bool(check(atoms))
            except Exception:  # pragma: no cover - a calculator without a usable check
                stale = False
        if not stale:
            if "energy" in results:
                energy = _finite_float(results["energy"])
            if "forces" in results:
                forces = _forces_array(results["forces"], len(atoms))
    if energy is None and "energy" in atoms.info:
        energy = _finite_float(atoms.info["energy"])
    if forces is None and "forces" in atoms.arrays:
        forces = _forces_array(atoms.arrays["forces"], len(atoms))
    return energy, forces


def _window_list(z_window: Any, n: int) -> list | None:
    """``z_window`` as one entry (None or a pair) per structure; None: read from info."""
    if z_window is None:
        return None
    numbers = (int, float, np.integer, np.floating)
    if isinstance(z_window, str) or (len(z_window) == 2 and all(isinstance(v, numbers) for v in z_window)):
        return [z_window] * n
    windows = list(z_window)
    if len(windows) != n:
        raise ValueError(f"{len(windows)} z windows for {n} structures")
    return windows


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
    read_labels: bool = True,
    z_window: Any = None,
    z_window_relative: bool = True,
    check_window: bool = True,
    image_cells: Sequence[Any] | None = None,
) -> list[EncodedStructure]:
    """Validate and encode structures (with their edge templates) for :func:`collate`.

    Arguments as in :func:`batch_from_atoms`. Encoding a data set once and collating random
    subsets is much cheaper than rebuilding templates for every batch.

    ``read_labels``: read energies and forces (:func:`atoms_labels`; None where absent).

    ``z_window``: confine the free atoms to a z window (:mod:`agedi_jax.surfaces`): one
    ``(lo, hi)`` in Å for every structure, or one entry (a pair or None) per structure;
    relative to the topmost fixed atom unless ``z_window_relative=False`` (absolute z).
    Default None: each structure's ``atoms.info[Z_WINDOW_KEY]`` (relative) if present,
    else no window. ``check_window``: free atoms must lie inside their window (training
    data; templates whose free atoms the prior replaces may skip it). Bad windows raise
    :class:`StructureError` naming the structure
    (:func:`agedi_jax.surfaces.resolve_z_window`).

    ``image_cells``: per structure, the cell ``[3, 3]`` (Å) whose image range the edge
    template covers instead of the structure's own (None entries: its own) — for cells that
    move while diffusing (:func:`agedi_jax.lattice.template_cell`).
    """
    if len(atoms_list) == 0:
        raise StructureError("empty list of structures: nothing to batch")
    if cutoff <= 0 or not math.isfinite(cutoff):
        raise ValueError(f"cutoff must be a positive number of Å, got {cutoff}")
    if labels is None and label_key is not None:
        labels = []
        for k, atoms in enumerate(atoms_list):
            if label_key not in atoms.info:
                raise StructureError(f"{describe_structure(k, atoms)}: no label {label_key!r} in atoms.info")
            labels.append(int(atoms.info[label_key]))
    if labels is not None and len(labels) != len(atoms_list):
        raise ValueError(f"{len(labels)} labels for {len(atoms_list)} structures")
    if fixed is not None and len(fixed) != len(atoms_list):
        raise ValueError(f"{len(fixed)} fixed masks for {len(atoms_list)} structures")
    if image_cells is not None and len(image_cells) != len(atoms_list):
        raise ValueError(f"{len(image_cells)} image cells for {len(atoms_list)} structures")

    found = [atoms_labels(a) for a in atoms_list] if read_labels else [(None, None)] * len(atoms_list)
    windows = _window_list(z_window, len(atoms_list))
    relative = bool(z_window_relative) if windows is not None else True
    if windows is None:
        from agedi_jax.surfaces import Z_WINDOW_KEY

        windows = [a.info.get(Z_WINDOW_KEY) for a in atoms_list]

    out = []
    for k, atoms in enumerate(atoms_list):
        validate_atoms(atoms, k, vocab)
        na = len(atoms)
        if max_atoms is not None and na > max_atoms:
            raise StructureError(
                f"{describe_structure(k, atoms)}: {na} atoms is more than the configured "
                f"maximum of {max_atoms} atoms per structure"
            )
        f = fixed_mask(atoms) if fixed is None else np.asarray(fixed[k], bool)
        if f.shape != (na,):
            raise StructureError(f"{describe_structure(k, atoms)}: fixed mask of shape {f.shape}, expected ({na},)")
        types = vocab.encode(atoms.get_chemical_symbols())
        if masked_types:
            types = np.where(f, types, MASK).astype(np.int32)
        cell = np.asarray(atoms.cell, np.float64).copy()
        pbc = np.asarray(atoms.pbc, bool).copy()
        image_cell = cell if image_cells is None or image_cells[k] is None else np.asarray(image_cells[k], np.float64)
        snd, rcv, shf = edge_template(na, image_cell, pbc, cutoff)
        window = None
        spec = windows[k]
        if spec is not None and not (isinstance(spec, str) and spec.strip().lower() in ("", "none", "off")):
            from agedi_jax.surfaces import resolve_z_window

            window = resolve_z_window(atoms, spec, f, relative=relative, check_free=check_window, k=k)
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
                energy=found[k][0],
                forces=found[k][1],
                z_window=window,
            )
        )
    return out


def batch_from_atoms(
    atoms_list: Sequence[Any],
    vocab: TypeVocab,
    cutoff: float,
    *,
    bucket: Bucket | None = None,
    **encode: Any,
) -> AtomsBatch:
    """Build a padded :class:`AtomsBatch` (numpy arrays, float64) from ``ase.Atoms``.

    Args:
      atoms_list: structures; periodic ones need a full-rank cell.
      vocab: type vocabulary; unknown elements raise :class:`StructureError`.
      cutoff: largest cutoff (Å) the edges will be used with; sets the image range.
      bucket: padded sizes; default: the smallest ladder bucket that fits
        (:func:`bucket_for`). Too small a bucket raises :class:`StructureError`.
      encode: keyword arguments of :func:`encode_structures` — ``labels`` / ``label_key``
        (per-structure integer labels, 0 = none), ``fixed`` (masks of fixed atoms; default
        the ``FixAtoms`` constraints), ``max_atoms`` (the configured padding),
        ``masked_types`` (every non-fixed type MASK, for sampling templates),
        ``read_labels`` (carry energies and forces), ``z_window``, ``z_window_relative``,
        ``check_window``, ``image_cells``.

    Returns:
      An :class:`AtomsBatch` of numpy arrays; ``jax.numpy`` converts it at the jit
      boundary (float32 unless x64 is enabled).
    """
    encoded = encode_structures(atoms_list, vocab, cutoff, **encode)
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
    is stored under ``label_key``. A batch with label fields gives every structure with a
    labelled energy a ``SinglePointCalculator`` (energy, and forces when every atom of it
    has them).
    """
    from ase import Atoms
    from ase.constraints import FixAtoms

    b = map_arrays(np.asarray, batch)
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
        if b.has_labels and bool(b.energy_mask[gi]):
            from ase.calculators.singlepoint import SinglePointCalculator

            forces = b.forces[sel].astype(np.float64) if bool(np.all(b.force_mask[sel])) else None
            atoms.calc = SinglePointCalculator(atoms, energy=float(b.energy[gi]), forces=forces)
        out.append(atoms)
    return out
