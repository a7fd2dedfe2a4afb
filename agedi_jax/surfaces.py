"""Surfaces: generating adsorbates and thin films on a fixed slab (host side).

A *confined* structure is a slab — pbc ``(True, True, False)``, lattice vectors ``a`` and
``b`` in the xy plane — whose free atoms live in a z window ``[z_lo, z_hi]`` above (or
below) its fixed atoms. The window is carried per structure in the batch
(``AtomsBatch.z_window``, absolute z in Å) and the position process reflects z into it
(:mod:`agedi_jax.sde`, :func:`agedi_jax.geometry.displace`). This module holds what
happens on the host:

* :func:`resolve_z_window` — a window given relative to the topmost fixed atom (the
  convention of the command line, the Python API and the ``atoms.info`` key
  :data:`Z_WINDOW_KEY`) or in absolute z, validated: an empty or non-finite window, a
  structure that is not such a slab, a window outside the cell or overlapping the fixed
  atoms, and (for training structures) free atoms outside the window are named errors
  (:class:`~agedi_jax.batch.StructureError`, a ``ValueError``);
* :func:`add_atoms` — a template slab with new atoms (a formula, or a number of atoms
  whose types are generated) appended, every template atom held fixed;
* :func:`prune_fixed_pairs` — drop from an edge template the pairs of two fixed atoms
  that can never come within the cutoff (fixed atoms never move), an exact saving that
  makes slab batches about three times cheaper.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from agedi_jax.batch import EncodedStructure, StructureError, describe_structure

__all__ = [
    "Z_WINDOW_KEY",
    "parse_z_window",
    "slab_top",
    "resolve_z_window",
    "add_atoms",
    "prune_fixed_pairs",
]

Z_WINDOW_KEY = "z_window_above_fixed"
"""``atoms.info`` key of a structure's z window, ``(lo, hi)`` in Å above the topmost fixed
atom (:func:`agedi_jax.convert.encode_structures` reads it; e.g. training data of a surface
model). Its own name, so that other ``z_window`` entries (the surface data set's record of
its search window, relative to the top slab atom) are never read as one."""


def parse_z_window(window: Any) -> tuple[float, float] | None:
    """``(lo, hi)`` floats from a pair, an array or a string ``"lo,hi"``; None for None,
    ``""`` or ``"none"``. Raises ``ValueError`` for anything else or an empty window."""
    if window is None:
        return None
    if isinstance(window, str):
        text = window.strip()
        if text.lower() in ("", "none", "off"):
            return None
        parts = [p for p in text.replace(":", ",").replace(" ", ",").split(",") if p]
    else:
        parts = list(np.asarray(window, dtype=object).reshape(-1))
    try:
        values = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise ValueError(f"z window {window!r}: expected two numbers LO HI (Å)") from None
    if len(values) != 2:
        raise ValueError(f"z window {window!r}: expected two numbers LO HI (Å), got {len(values)}")
    lo, hi = values
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"z window {window!r}: LO and HI must be finite numbers of Å")
    if not hi > lo:
        raise ValueError(f"z window ({lo:g}, {hi:g}) is empty: need LO < HI (Å)")
    return lo, hi


def slab_top(atoms: Any, fixed: np.ndarray) -> float:
    """z (Å) of the topmost fixed atom."""
    return float(np.max(np.asarray(atoms.positions)[np.asarray(fixed, bool), 2]))


def resolve_z_window(
    atoms: Any,
    window: Any,
    fixed: np.ndarray,
    *,
    relative: bool = True,
    check_free: bool = True,
    k: int = 0,
) -> np.ndarray:
    """The absolute window ``[z_lo, z_hi]`` (Å, float64 ``[2]``) of a structure.

    Args:
      atoms: the structure (``ase.Atoms``).
      window: ``(lo, hi)`` Å (or ``"lo,hi"``).
      fixed: ``[N]`` bool fixed atoms.
      relative: the window is relative to the topmost fixed atom (``z_top + lo .. z_top +
        hi``); else absolute Cartesian z.
      check_free: every free atom must already lie inside the window (training data).
      k: the structure's index, for messages.
    Raises:
      StructureError naming the structure: an empty / non-finite window, a structure that
      is not a slab with pbc (T, T, F) and lattice vectors a, b in the xy plane, a relative
      window without fixed atoms, a window outside the cell's z range ``[0, c_z]``, a
      window overlapping the z range of the fixed atoms, free atoms outside the window.
    """
    name = describe_structure(k, atoms)
    try:
        lo, hi = parse_z_window(window)
    except (TypeError, ValueError) as err:
        raise StructureError(f"{name}: {err}") from None
    pbc = np.asarray(atoms.pbc, bool)
    if pbc.tolist() != [True, True, False]:
        raise StructureError(
            f"{name}: a z window needs a slab with pbc (True, True, False), got pbc={tuple(pbc.tolist())}"
        )
    cell = np.asarray(atoms.cell, np.float64)
    if abs(cell[0, 2]) > 1e-6 or abs(cell[1, 2]) > 1e-6:
        raise StructureError(
            f"{name}: a z window needs lattice vectors a and b in the xy plane (their z components are "
            f"{cell[0, 2]:.3g}, {cell[1, 2]:.3g} Å); rotate the slab so that the surface normal is z"
        )
    fixed = np.asarray(fixed, bool)
    z = np.asarray(atoms.positions, np.float64)[:, 2]
    if relative:
        if not fixed.any():
            raise StructureError(
                f"{name}: the z window ({lo:g}, {hi:g}) is relative to the topmost fixed atom, but the structure "
                "has no fixed atoms (FixAtoms); fix the substrate or give an absolute window"
            )
        top = float(z[fixed].max())
        lo, hi = top + lo, top + hi
    height = float(cell[2, 2])
    if lo < -1e-9 or hi > height + 1e-9:
        raise StructureError(
            f"{name}: the z window [{lo:.3f}, {hi:.3f}] Å lies outside the cell, whose z range is "
            f"[0, {height:.3f}] Å (add vacuum, e.g. atoms.center(vacuum=..., axis=2), or lower the window)"
        )
    if fixed.any():
        zmin, zmax = float(z[fixed].min()), float(z[fixed].max())
        if lo <= zmax and hi >= zmin:
            raise StructureError(
                f"{name}: the z window [{lo:.3f}, {hi:.3f}] Å overlaps the slab: its fixed atoms span z "
                f"[{zmin:.3f}, {zmax:.3f}] Å (a window above the surface starts above {zmax:.3f} Å, i.e. LO > 0 "
                "relative to the topmost fixed atom)"
            )
    if check_free:
        free = ~fixed
        out = np.where(free & ((z < lo) | (z > hi)))[0]
        if out.size:
            raise StructureError(
                f"{name}: free atoms {out[:10].tolist()} lie outside the z window [{lo:.3f}, {hi:.3f}] Å "
                f"(z = {np.round(z[out[:5]], 3).tolist()} Å); widen the window or fix these atoms"
            )
    return np.array([lo, hi], np.float64)


def add_atoms(template: Any, new: Any, window: np.ndarray | None) -> tuple[Any, np.ndarray]:
    """The template with the atoms of ``new`` (an ``ase.Atoms``, positions ignored)
    appended, and the fixed mask used for sampling: every template atom fixed, the new
    atoms free. The new atoms are put at the centre of the window (absolute ``[2]``), or
    at the centroid of the template when there is none — the prior replaces them. The
    template's cell, pbc, info and tags are kept (new atoms get tag 0); constraints are
    dropped (the caller restores them on the sample)."""
    out = template.copy()
    out.set_constraint()
    n_old = len(out)
    add = new.copy()
    add.set_constraint()
    add.set_tags(0)
    centre = np.asarray(template.positions, np.float64).mean(0) if len(template) else np.zeros(3)
    if window is not None:
        centre = centre.copy()
        centre[2] = 0.5 * (float(window[0]) + float(window[1]))
    add.positions = np.tile(centre, (len(add), 1))
    add.cell, add.pbc = out.cell, out.pbc
    out += add
    fixed = np.zeros(len(out), bool)
    fixed[:n_old] = True
    return out, fixed


def prune_fixed_pairs(enc: EncodedStructure, cutoff: float, margin: float = 0.1) -> EncodedStructure:
    """``enc`` without the template edges that join two fixed atoms and are longer than
    ``cutoff + margin`` (Å).

    Fixed atoms never move (noising, sampling, relaxation), so such an edge is masked out
    by :func:`agedi_jax.edges.edge_vectors` at every use with a cutoff ≤ ``cutoff``: the
    network (and EMT) see exactly the same neighbours. The edge vector of template shift
    ``S`` is the minimum-image vector plus ``S·cell`` whatever the atoms' wrapping, so the
    pruning does not depend on it; pairs whose fractional separation sits within 10⁻³ of
    a half-integer (where the minimum image is ambiguous in float32) are kept whole.
    For a slab with a few free atoms this removes most of the ``N² × images`` template.
    """
    f = np.asarray(enc.fixed, bool)
    if f.sum() < 2 or len(enc.senders) == 0:
        return enc
    snd, rcv = np.asarray(enc.senders), np.asarray(enc.receivers)
    both = f[snd] & f[rcv]
    if not both.any():
        return enc
    pos = np.asarray(enc.positions, np.float64)
    pbc = np.asarray(enc.pbc, bool)
    cell = np.asarray(enc.cell, np.float64)
    d = pos[snd] - pos[rcv]
    if pbc.any():
        frac = d @ np.linalg.inv(cell)
        wrap = np.where(pbc, np.round(frac), 0.0)
        ambiguous = np.any(pbc & (np.abs(np.abs(frac - wrap) - 0.5) < 1e-3), axis=1)
        m = d - wrap @ cell
    else:
        ambiguous = np.zeros(len(d), bool)
        m = d
    vec = m + np.asarray(enc.shifts, np.float64) @ cell
    far = np.linalg.norm(vec, axis=1) >= cutoff + margin
    keep = ~(both & far & ~ambiguous)
    return enc._replace(senders=snd[keep], receivers=rcv[keep], shifts=np.asarray(enc.shifts)[keep])


def prune_all(encoded: Sequence[EncodedStructure], cutoff: float) -> list[EncodedStructure]:
    """:func:`prune_fixed_pairs` of every structure."""
    return [prune_fixed_pairs(e, cutoff) for e in encoded]
