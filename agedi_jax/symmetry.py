"""Symmetry labels with spglib: layer groups of 2D materials, space groups of crystals,
point groups of clusters."""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_SYMPREC = 0.1


def _spglib():
    """spglib with exceptions instead of the deprecated ``None`` returns."""
    import spglib
    import spglib.error

    spglib.error.OLD_ERROR_HANDLING = False
    return spglib


def _spglib_cell(atoms: Any) -> tuple:
    return (
        np.asarray(atoms.cell, np.float64),
        np.asarray(atoms.get_scaled_positions(wrap=True), np.float64),
        np.asarray(atoms.numbers, np.int32),
    )


def layer_group(atoms: Any, symprec: float = DEFAULT_SYMPREC, aperiodic_dir: int = 2) -> int:
    """Layer group number (1–80) of a 2D structure (periodic in the two axes other than
    ``aperiodic_dir``), from ``spglib.get_symmetry_layerdataset`` at ``symprec`` (Å).

    Returns 0 if spglib cannot determine it."""
    spglib = _spglib()
    try:
        ds = spglib.get_symmetry_layerdataset(_spglib_cell(atoms), aperiodic_dir=aperiodic_dir, symprec=symprec)
    except spglib.error.SpglibError:
        return 0
    return 0 if ds is None else int(ds.number)


def space_group(atoms: Any, symprec: float = DEFAULT_SYMPREC) -> int:
    """Space group number (1–230) of a periodic structure; 0 if spglib fails."""
    spglib = _spglib()
    try:
        ds = spglib.get_symmetry_dataset(_spglib_cell(atoms), symprec=symprec)
    except spglib.error.SpglibError:
        return 0
    return 0 if ds is None else int(ds.number)


def point_group(atoms: Any, symprec: float = DEFAULT_SYMPREC, box: float = 30.0) -> str:
    """Crystallographic point group (Hermann–Mauguin symbol) of a cluster.

    The cluster is rotated onto its principal axes of inertia, centred in a large cubic
    box, and spglib's point group of that crystal is returned. Only crystallographic
    groups compatible with the cubic box can appear: an icosahedron reports ``m-3`` (its
    largest such subgroup), not ``Ih``; clusters whose symmetry axes are not the principal
    axes (degenerate moments) may report a subgroup."""
    spglib = _spglib()
    a = atoms.copy()
    x = a.positions - a.positions.mean(0)
    inertia = (x**2).sum() * np.eye(3) - x.T @ x
    _, axes = np.linalg.eigh(inertia)
    a.positions = x @ axes
    a.pbc = True
    extent = np.ptp(a.positions, axis=0).max() if len(a) > 1 else 0.0
    L = max(box, extent + 20.0)
    a.set_cell([L, L, L])
    a.positions = a.positions - a.positions.mean(0) + L / 2
    try:
        ds = spglib.get_symmetry_dataset(_spglib_cell(a), symprec=symprec)
    except spglib.error.SpglibError:
        return "1"
    if ds is None:
        return "1"
    return str(ds.pointgroup).strip()
