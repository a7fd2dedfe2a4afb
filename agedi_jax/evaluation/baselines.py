"""Synthetic baselines for the precision–recall evaluation (paper Sec. II G, Fig. 4c / 6c).

A baseline is the reference set degraded in a controlled way: a random subsample (coverage,
e.g. 100 % or 50 % of the training data) with independent N(0, σ²) noise added to every
Cartesian coordinate of every atom (fidelity). Composition, cell, pbc and the structures'
``info`` are unchanged; only positions move. Their PRD curves frame a model's curve.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["noised_baseline", "baseline_family", "baseline_label"]


def _subsample_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    count = int(round(fraction * n))
    if count < 1:
        raise ValueError(f"fraction {fraction} of {n} structures keeps none")
    rng = np.random.default_rng([int(seed), 0])
    return np.sort(rng.choice(n, size=count, replace=False))


def noised_baseline(
    structures: Sequence[Any],
    fraction: float = 1.0,
    sigma: float = 0.1,
    seed: int = 0,
) -> list[Any]:
    """A subsampled, position-noised copy of a reference set (paper Sec. II G).

    Args:
      structures: reference ``ase.Atoms`` list (not modified).
      fraction: share of the structures kept, in (0, 1]; ``round(fraction · n)`` structures
        are drawn without replacement, kept in their original order.
      sigma: standard deviation (Å) of the Gaussian noise added independently to every
        coordinate; 0 gives exact copies.
      seed: the subsample depends only on ``(seed, fraction, n)`` and the noise is one
        standard-normal draw (from ``seed`` and the kept structures) scaled by σ — so one
        seed gives the *same subsample* and the same noise direction for every σ.

    Returns:
      new ``ase.Atoms`` (copies, without calculators). Along periodic axes atoms are wrapped
      back into the cell (``Atoms.wrap``), so 2D structures stay in their cell; clusters
      (no pbc) are not re-centred.
    """
    structures = list(structures)
    if not structures:
        raise ValueError("noised_baseline: no structures given")
    if not (0.0 < float(fraction) <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if not (float(sigma) >= 0.0 and np.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite non-negative length in Å, got {sigma!r}")
    keep = _subsample_indices(len(structures), float(fraction), seed)
    rng = np.random.default_rng([int(seed), 1])
    out = []
    for i in keep:
        atoms = structures[i].copy()
        atoms.calc = None
        if sigma > 0:
            atoms.positions = atoms.positions + rng.normal(0.0, float(sigma), size=atoms.positions.shape)
            if np.any(atoms.pbc):
                atoms.wrap()
        out.append(atoms)
    return out


def baseline_label(fraction: float, sigma: float) -> str:
    """Label used in plots and reports, e.g. ``"100% σ=0.10 Å"``."""
    return f"{100 * fraction:.0f}% σ={sigma:.2f} Å"


def baseline_family(
    structures: Sequence[Any],
    fractions: Sequence[float] = (1.0, 0.5),
    sigmas: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.3),
    seed: int = 0,
    include_identity: bool = False,
) -> dict[str, list[Any]]:
    """The standard family of baselines: every ``fraction × sigma`` combination.

    Members with the same fraction share one subsample (same ``seed``), so along σ only the
    noise grows. The 100 %, σ = 0 member is the reference itself (the ideal curve) and is
    left out unless ``include_identity``.

    Returns:
      ``{baseline_label(fraction, sigma): structures}`` in fraction-then-sigma order.
    """
    family: dict[str, list[Any]] = {}
    for fraction in fractions:
        for sigma in sigmas:
            if float(fraction) == 1.0 and float(sigma) == 0.0 and not include_identity:
                continue
            family[baseline_label(fraction, sigma)] = noised_baseline(structures, fraction, sigma, seed)
    return family
