"""Geometric validity, composition and symmetry statistics of generated structures
(paper Sec. III A: only mono-metallic clusters sampled; Sec. III B, Fig. 7a: layer-group
accuracy under guidance).

All functions take lists of ``ase.Atoms`` and return plain numpy / Python values.
Distances are in Å; bonds and overlaps are judged against ASE's covalent radii.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np

from agedi_jax import symmetry

__all__ = [
    "structure_validity",
    "validity",
    "composition_stats",
    "layer_groups",
    "space_groups",
    "point_groups",
    "layer_group_accuracy",
]


def _covalent_radii(atoms: Any) -> np.ndarray:
    from ase.data import covalent_radii

    return covalent_radii[atoms.numbers]


def _pairs(atoms: Any, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j, distance, shift) closer than ``cutoff``, periodic images included,
    each unordered pair once in both directions (ASE's neighbour list)."""
    from ase.neighborlist import neighbor_list

    if not np.any(atoms.pbc):
        pos = atoms.positions
        d = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
        i, j = np.nonzero((d < cutoff) & ~np.eye(len(atoms), dtype=bool))
        return i, j, d[i, j], np.zeros((len(i), 3), dtype=int)
    i, j, d, S = neighbor_list("ijdS", atoms, cutoff, self_interaction=False)
    return i, j, d, S


def structure_validity(
    atoms: Any,
    min_distance: float = 0.5,
    overlap_factor: float = 0.5,
    bond_factor: float = 1.3,
    cell_tolerance: float = 1e-3,
) -> dict[str, Any]:
    """Validity checks of one structure.

    * distance: no two atoms (periodic images included) closer than ``min_distance`` Å or
      ``overlap_factor × (r_cov,i + r_cov,j)``, whichever is larger;
    * image: along the periodic axes no atom overlaps its *own* image under the same
      criterion (a cell vector shorter than an atom) — reported separately;
    * connected: the bond graph (``d < bond_factor × (r_cov,i + r_cov,j)``, images
      included) has one component. For clusters this is "one cluster, no lone atoms";
      for a 2D material "one layer, no floating fragment";
    * inside_cell: every fractional coordinate along a periodic axis lies in
      ``[−cell_tolerance, 1 + cell_tolerance)`` and, for 2D (some axes periodic), the
      non-periodic fractional coordinate in ``[−cell_tolerance, 1 + cell_tolerance]``
      (atoms within the vacuum box). Always True for clusters (no pbc).

    Returns:
      dict with ``min_distance`` (Å, ``inf`` for one atom), ``n_components``, and booleans
      ``distance_ok``, ``image_ok``, ``connected``, ``inside_cell``, ``valid`` (all four).
    """
    n = len(atoms)
    radii = _covalent_radii(atoms)
    periodic = bool(np.any(atoms.pbc))
    if periodic and atoms.cell.rank < 3:
        raise ValueError("structure_validity: a periodic structure needs a full-rank cell (3 cell vectors)")
    if n == 0:
        raise ValueError("structure_validity: structure has no atoms")
    max_sum = 2.0 * float(radii.max())
    cutoff = max(bond_factor * max_sum, min_distance, overlap_factor * max_sum) + 1e-6
    i, j, d, S = _pairs(atoms, cutoff)
    rsum = radii[i] + radii[j]
    too_close = d < np.maximum(min_distance, overlap_factor * rsum)
    own_image = i == j
    distance_ok = not np.any(too_close & ~own_image)
    image_ok = not np.any(too_close & own_image)

    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    bonded = (d < bond_factor * rsum) & ~own_image
    graph = coo_matrix((np.ones(int(bonded.sum())), (i[bonded], j[bonded])), shape=(n, n))
    n_components = int(connected_components(graph, directed=False)[0])

    inside = True
    if periodic:
        frac = atoms.cell.scaled_positions(atoms.positions)
        pbc = np.asarray(atoms.pbc, bool)
        f_p = frac[:, pbc]
        inside = bool(np.all((f_p >= -cell_tolerance) & (f_p < 1 + cell_tolerance)))
        if not pbc.all():
            f_np = frac[:, ~pbc]
            inside &= bool(np.all((f_np >= -cell_tolerance) & (f_np <= 1 + cell_tolerance)))

    others = ~own_image
    if np.any(others):
        dmin = float(d[others].min())
    elif n > 1:  # no pair within the cutoff: far-apart atoms, compute the true minimum
        dmin = _min_distance_far(atoms)
    else:
        dmin = np.inf
    return dict(
        min_distance=dmin,
        n_components=n_components,
        distance_ok=bool(distance_ok),
        image_ok=bool(image_ok),
        connected=n_components == 1,
        inside_cell=bool(inside),
        valid=bool(distance_ok and image_ok and n_components == 1 and inside),
    )


def _min_distance_far(atoms: Any) -> float:
    if not np.any(atoms.pbc):
        pos = atoms.positions
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        d[np.diag_indices(len(atoms))] = np.inf
        return float(d.min())
    return float(atoms.get_all_distances(mic=True)[~np.eye(len(atoms), dtype=bool)].min())


def validity(
    structures: Sequence[Any],
    min_distance: float = 0.5,
    overlap_factor: float = 0.5,
    bond_factor: float = 1.3,
    cell_tolerance: float = 1e-3,
) -> dict[str, Any]:
    """Validity of a list of structures (see :func:`structure_validity` for each check).

    Returns:
      dict with per-structure arrays ``min_distance`` [n] (Å), ``n_components`` [n],
      ``distance_ok``, ``image_ok``, ``connected``, ``inside_cell``, ``valid`` [n] (bool), and
      the summary fractions ``frac_distance_ok``, ``frac_image_ok``, ``frac_connected``,
      ``frac_inside_cell``, ``frac_valid`` and ``n_structures``.
    """
    structures = list(structures)
    if not structures:
        raise ValueError("validity: no structures given")
    rows = []
    for k, atoms in enumerate(structures):
        try:
            rows.append(structure_validity(atoms, min_distance, overlap_factor, bond_factor, cell_tolerance))
        except ValueError as err:
            raise ValueError(f"structure {k} ({atoms.get_chemical_formula()}): {err}") from None
    out: dict[str, Any] = {key: np.array([r[key] for r in rows]) for key in rows[0]}
    for key in ("distance_ok", "image_ok", "connected", "inside_cell", "valid"):
        out[f"frac_{key}"] = float(np.mean(out[key]))
    out["n_structures"] = len(structures)
    return out


def composition_stats(structures: Sequence[Any]) -> dict[str, Any]:
    """Composition statistics of a structure list (paper Sec. III A: "only mono-metallic
    clusters are sampled").

    Returns:
      dict with ``fraction_monoelement`` (share of structures with one element),
      ``n_elements`` [n] (distinct elements per structure), ``element_atom_counts``
      (element → number of atoms), ``element_structure_counts`` (element → number of
      structures containing it), ``size_counts`` (atoms per structure → count) and
      ``formula_counts`` (Hill formula → count, most common first).
    """
    structures = list(structures)
    if not structures:
        raise ValueError("composition_stats: no structures given")
    n_elements = np.array([len(set(a.get_chemical_symbols())) for a in structures])
    atom_counts: Counter = Counter()
    structure_counts: Counter = Counter()
    for atoms in structures:
        symbols = atoms.get_chemical_symbols()
        atom_counts.update(symbols)
        structure_counts.update(set(symbols))
    return dict(
        fraction_monoelement=float(np.mean(n_elements == 1)),
        n_elements=n_elements,
        element_atom_counts=dict(sorted(atom_counts.items())),
        element_structure_counts=dict(sorted(structure_counts.items())),
        size_counts=dict(sorted(Counter(len(a) for a in structures).items())),
        formula_counts=dict(Counter(a.get_chemical_formula() for a in structures).most_common()),
    )


def layer_groups(structures: Sequence[Any], symprec: float = symmetry.DEFAULT_SYMPREC) -> np.ndarray:
    """Layer group numbers (1–80, 0 where spglib fails) of 2D structures, non-periodic along z
    (:func:`agedi_jax.symmetry.layer_group`, spglib at ``symprec`` Å; paper Sec. III B)."""
    return np.array([symmetry.layer_group(a, symprec=symprec) for a in structures], dtype=int)


def space_groups(structures: Sequence[Any], symprec: float = symmetry.DEFAULT_SYMPREC) -> np.ndarray:
    """Space group numbers (1–230, 0 where spglib fails) of periodic structures."""
    return np.array([symmetry.space_group(a, symprec=symprec) for a in structures], dtype=int)


def point_groups(structures: Sequence[Any], symprec: float = symmetry.DEFAULT_SYMPREC) -> list[str]:
    """Crystallographic point groups (Hermann–Mauguin) of clusters (see
    :func:`agedi_jax.symmetry.point_group` for the icosahedral caveat)."""
    return [symmetry.point_group(a, symprec=symprec) for a in structures]


def layer_group_accuracy(
    samples: Sequence[Any],
    target_labels: Any,
    symprec: float = symmetry.DEFAULT_SYMPREC,
) -> float:
    """Share of samples whose layer group equals its target label (paper Fig. 7a).

    Args:
      samples: generated 2D structures (pbc (T, T, F)).
      target_labels: ``[n]`` layer group numbers (1–80) the samples were conditioned on.
      symprec: spglib tolerance in Å (the paper: 0.1).

    Returns:
      accuracy in [0, 1].
    """
    samples = list(samples)
    target = np.asarray(target_labels, dtype=int).reshape(-1)
    if target.shape[0] != len(samples):
        raise ValueError(f"layer_group_accuracy: {len(samples)} samples but {target.shape[0]} target labels")
    if not samples:
        raise ValueError("layer_group_accuracy: no samples given")
    if np.any((target < 1) | (target > 80)):
        raise ValueError("layer_group_accuracy: target labels must be layer group numbers 1–80")
    return float(np.mean(layer_groups(samples, symprec) == target))
