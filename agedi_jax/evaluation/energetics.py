"""Energetics of generated clusters: relaxation, formation energy (paper Eq. 21) and a random
structure search (RSS) baseline (paper Sec. III A, Fig. 5b,c).

The paper relaxes with MACE-MPA-0 and evaluates single points with DFT. Here any ASE
calculator can be plugged in (a calculator or a zero-argument factory); the built-in default
is ASE's EMT, which covers only Al, Cu, Ag, Au, Ni, Pd, Pt — enough for the paper's Pt–Cu
and Pd–Ag interpolation studies, with EMT accuracy. Energies are in eV, lengths in Å.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

__all__ = [
    "EMT_ELEMENTS",
    "get_calculator",
    "relax",
    "formation_energy",
    "reference_energies",
    "parse_composition",
    "random_cluster",
    "random_structure_search",
]

EMT_ELEMENTS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
"""Elements with real parameters in ASE's EMT (its H, C, N, O values are not for serious use
and are refused here)."""

CalculatorLike = Union[None, Any, Callable[[], Any]]


def get_calculator(calculator: CalculatorLike = None, symbols: Sequence[str] = ()) -> Any:
    """An ASE calculator from ``None`` (EMT), a calculator instance, or a zero-argument
    factory returning one. With EMT, raises ValueError naming any element EMT lacks."""
    from ase.calculators.calculator import BaseCalculator

    if calculator is None:
        missing = sorted(set(symbols) - set(EMT_ELEMENTS))
        if missing:
            raise ValueError(
                f"the built-in EMT calculator has no parameters for {missing}; EMT covers "
                f"{', '.join(EMT_ELEMENTS)}. Pass another ASE calculator (or a factory) as `calculator`."
            )
        from ase.calculators.emt import EMT

        return EMT()
    if isinstance(calculator, BaseCalculator):
        return calculator
    if callable(calculator):
        calc = calculator()
        if not isinstance(calc, BaseCalculator):
            raise TypeError(f"calculator factory returned {type(calc).__name__}, not an ASE calculator")
        return calc
    raise TypeError(f"calculator must be None, an ASE calculator or a factory, got {type(calculator).__name__}")


def relax(
    atoms: Any,
    calculator: CalculatorLike = None,
    fmax: float = 0.05,
    steps: int = 500,
    optimizer: str = "FIRE",
) -> tuple[Any, float]:
    """Local relaxation with an ASE optimizer (the paper relaxes every cluster before Eq. 21).

    Args:
      atoms: structure (not modified).
      calculator: None (EMT), an ASE calculator, or a zero-argument factory.
      fmax: force convergence threshold (eV/Å). steps: maximum optimizer steps.
      optimizer: ``"FIRE"`` or ``"BFGS"``.

    Returns:
      ``(relaxed copy with the calculator attached, potential energy in eV)``. The copy's
      ``info["relax_converged"]`` says whether ``fmax`` was reached within ``steps``.
    """
    from ase.optimize import BFGS, FIRE

    optimizers = {"FIRE": FIRE, "BFGS": BFGS}
    if optimizer not in optimizers:
        raise ValueError(f"optimizer must be one of {sorted(optimizers)}, got {optimizer!r}")
    if len(atoms) == 0:
        raise ValueError("relax: structure has no atoms")
    out = atoms.copy()
    out.calc = get_calculator(calculator, out.get_chemical_symbols())
    opt = optimizers[optimizer](out, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    out.info["relax_converged"] = converged
    energy = float(out.get_potential_energy())
    out.info["energy"] = energy
    return out, energy


_relax = relax  # the functions below take a boolean argument named ``relax``


def formation_energy(
    energy: float,
    symbols: Sequence[str],
    references: Mapping[Any, float],
) -> float:
    """Formation energy per atom, paper Eq. 21, generalised to any number of elements:

        E_form = (E_{A_n B_m ...} − n E_A^ref − m E_B^ref − ...) / (n + m + ...)

    Args:
      energy: total energy of the (relaxed) cluster, eV.
      symbols: its chemical symbols (``atoms.get_chemical_symbols()``).
      references: per-atom reference energies (eV/atom) of the mono-elemental clusters of
        the *same size*: either ``{element: e}`` already for this size, or
        ``{(element, n_atoms): e}`` as returned by :func:`reference_energies`.

    Returns:
      eV/atom. A mono-elemental cluster whose energy is its own reference gives 0.
    """
    symbols = list(symbols)
    if not symbols:
        raise ValueError("formation_energy: no atoms")
    n = len(symbols)
    total_ref = 0.0
    for element, count in Counter(symbols).items():
        if (element, n) in references:
            e_ref = references[(element, n)]
        elif element in references:
            e_ref = references[element]
        else:
            raise KeyError(f"formation_energy: no reference energy for {element} at size {n}")
        total_ref += count * float(e_ref)
    return (float(energy) - total_ref) / n


def reference_energies(
    structures: Sequence[Any],
    calculator: CalculatorLike = None,
    relax: bool = True,
    fmax: float = 0.05,
    steps: int = 500,
) -> dict[tuple[str, int], float]:
    """Per-atom reference energies ``{(element, n_atoms): eV/atom}`` for Eq. 21 from
    mono-elemental clusters (the paper: QCD's monometallic clusters of the same size).

    Each mono-elemental structure is relaxed (or evaluated as is with ``relax=False``) with the calculator; the lowest energy per (element, size)
    is kept. Multi-element structures are ignored.
    """
    best: dict[tuple[str, int], float] = {}
    for atoms in structures:
        elements = set(atoms.get_chemical_symbols())
        if len(elements) != 1:
            continue
        if relax:
            _, energy = _relax(atoms, calculator, fmax=fmax, steps=steps)
        else:
            a = atoms.copy()
            a.calc = get_calculator(calculator, a.get_chemical_symbols())
            energy = float(a.get_potential_energy())
        key = (elements.pop(), len(atoms))
        per_atom = energy / len(atoms)
        if key not in best or per_atom < best[key]:
            best[key] = per_atom
    if not best:
        raise ValueError("reference_energies: no mono-elemental structure given")
    return best


def parse_composition(composition: Union[str, Mapping[str, int]]) -> dict[str, int]:
    """``"Pt6Cu7"`` or ``{"Pt": 6, "Cu": 7}`` → ``{"Pt": 6, "Cu": 7}`` (validated)."""
    from ase.data import atomic_numbers
    from ase.formula import Formula

    if isinstance(composition, str):
        try:
            counts = dict(Formula(composition).count())
        except ValueError as err:
            raise ValueError(f"cannot parse composition {composition!r}: {err}") from None
    else:
        counts = {str(k): int(v) for k, v in dict(composition).items()}
    bad = [s for s in counts if s not in atomic_numbers or s == "X"]
    if bad:
        raise ValueError(f"composition has unknown elements {bad}")
    if any(v < 0 for v in counts.values()) or sum(counts.values()) < 1:
        raise ValueError(f"composition needs non-negative counts and at least one atom, got {counts}")
    return {k: v for k, v in counts.items() if v > 0}


def _pair_minimum(numbers: np.ndarray, min_distance: float | None, factor: float = 0.75) -> np.ndarray:
    from ase.data import covalent_radii

    if min_distance is not None:
        return np.full((len(numbers), len(numbers)), float(min_distance))
    r = covalent_radii[numbers]
    return factor * (r[:, None] + r[None, :])


def random_cluster(
    composition: Union[str, Mapping[str, int]],
    rng: np.random.Generator,
    min_distance: float | None = None,
    radius: float | None = None,
    bond_factor: float | None = 1.3,
    max_attempts: int = 10_000,
) -> Any:
    """One random cluster: atoms placed one by one uniformly in a sphere, each at least the
    minimum distance from those already placed and, if ``bond_factor`` is set, within
    ``bond_factor × (r_cov,i + r_cov,j)`` of at least one of them (a connected start, as in
    AGOX's random generator). The element order is shuffled.

    Args:
      composition: ``"Pt6Cu7"`` or ``{"Pt": 6, "Cu": 7}``.
      rng: numpy Generator.
      min_distance: Å for every pair; None → ``0.75 × (r_cov,i + r_cov,j)`` per pair.
      radius: sphere radius in Å; None → ``(N / 0.3)^(1/3) × mean covalent radius``, a
        sphere about three times the close-packed volume.

    Returns:
      ``ase.Atoms`` without pbc or cell, centred at the origin.
    """
    from ase import Atoms
    from ase.data import atomic_numbers, covalent_radii

    counts = parse_composition(composition)
    numbers = np.array([atomic_numbers[s] for s, c in counts.items() for _ in range(c)])
    numbers = rng.permutation(numbers)
    n = len(numbers)
    if radius is None:
        radius = (n / 0.3) ** (1.0 / 3.0) * float(covalent_radii[numbers].mean())
    dmin = _pair_minimum(numbers, min_distance)
    r = covalent_radii[numbers]
    pos = np.zeros((n, 3))
    for k in range(1, n):
        for _ in range(max_attempts):
            v = rng.normal(size=3)
            trial = v / np.linalg.norm(v) * radius * rng.random() ** (1.0 / 3.0)
            d = np.linalg.norm(pos[:k] - trial, axis=1)
            if np.any(d < dmin[k, :k]):
                continue
            if bond_factor is not None and not np.any(d < bond_factor * (r[k] + r[:k])):
                continue
            pos[k] = trial
            break
        else:
            raise RuntimeError(
                f"random_cluster: could not place atom {k + 1} of {n} in a sphere of radius {radius:.2f} Å "
                f"after {max_attempts} attempts; increase radius or lower min_distance"
            )
    pos -= pos.mean(axis=0)
    return Atoms(numbers=numbers, positions=pos, pbc=False)


def random_structure_search(
    composition: Union[str, Mapping[str, int]],
    n_structures: int,
    seed: int = 0,
    min_distance: float | None = None,
    radius: float | None = None,
    calculator: CalculatorLike = None,
    relax: bool = True,
    fmax: float = 0.05,
    steps: int = 500,
    bond_factor: float | None = 1.3,
) -> list[Any]:
    """Random structure search (RSS, the paper's baseline of Fig. 5b,c): ``n_structures``
    random clusters of one composition (:func:`random_cluster`), each relaxed locally
    (:func:`relax`, FIRE) with the calculator (EMT by default).

    Args:
      composition: ``"Pt6Cu7"`` or ``{"Pt": 6, "Cu": 7}``.
      n_structures: number of independent starts.
      seed: deterministic: structure ``k`` uses ``numpy.random.default_rng([seed, k])``.
      min_distance, radius, bond_factor: see :func:`random_cluster` (constraints of the
        *starting* geometries; relaxation may move atoms further).
      relax: False returns the unrelaxed starts.

    Returns:
      list of ``ase.Atoms``; relaxed ones carry ``info["energy"]`` (eV) and
      ``info["relax_converged"]``.
    """
    if not (isinstance(n_structures, (int, np.integer)) and n_structures >= 1):
        raise ValueError(f"n_structures must be a positive integer, got {n_structures!r}")
    counts = parse_composition(composition)
    if relax:
        get_calculator(calculator, list(counts))  # fail early on unsupported elements
    out = []
    for k in range(int(n_structures)):
        atoms = random_cluster(counts, np.random.default_rng([int(seed), k]), min_distance, radius, bond_factor)
        if relax:
            atoms, _ = _relax(atoms, calculator, fmax=fmax, steps=steps)
        out.append(atoms)
    return out
