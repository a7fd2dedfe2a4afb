"""Energetics of generated clusters: relaxation, formation energy (paper Eq. 21) and a random
structure search (RSS) baseline (paper Sec. III A, Fig. 5b,c).

The paper relaxes with MACE-MPA-0 and evaluates single points with DFT. Here any ASE
calculator can be plugged in (a calculator or a zero-argument factory); the built-in default
is ASE's EMT, which covers only Al, Cu, Ag, Au, Ni, Pd, Pt — enough for the paper's Pt–Cu
and Pd–Ag interpolation studies, with EMT accuracy. Energies are in eV, lengths in Å.

**Relaxation backends.** With the default calculator (EMT: ``None``, the ``EMT`` class or
an ``EMT()`` instance with default parameters) and FIRE, the relaxations run batched in
JAX (:func:`agedi_jax.relax.relax_atoms`: ASE's FIRE variant and parameters with the JAX
EMT, every structure of a chunk in one compiled loop; ~40× faster than ASE's loop on 128
13-atom clusters, ``experiments/benchmarks/results/relaxation.json``). The result is then
handed back exactly as the ASE path hands it: a copy of the input with an ASE calculator
attached, whose float64 energy is the returned energy and whose forces decide
``info["relax_converged"]`` (ASE's criterion ``max |F| < fmax``); a structure that the
float32 loop called converged but ASE's forces put just above ``fmax`` is finished with a
few ASE FIRE steps. Any other calculator, BFGS, constraints other than ``FixAtoms`` or
``backend="ase"`` use the ASE optimizer loop as before. The two paths take the same FIRE
steps up to float32 rounding: on 128 random 13-atom PtCu / PdAg clusters the energies agree
to a median of 8e-6 eV (all within 1 meV) with the same step counts.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

__all__ = [
    "EMT_ELEMENTS",
    "get_calculator",
    "relax",
    "relax_many",
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


BACKENDS = ("auto", "jax", "ase")
"""Relaxation backends: ``"auto"`` (JAX for EMT + FIRE, else ASE), ``"jax"`` (require the
JAX path), ``"ase"`` (always the ASE optimizer loop)."""

_JAX_CHUNK = 256  # structures per compiled JAX relaxation
_POLISH_STEPS = 50  # ASE FIRE steps allowed to finish a float32-converged structure


def _is_default_emt(calculator: CalculatorLike) -> bool:
    """True for the calculators the JAX EMT reproduces: None, the ``EMT`` class (a
    factory) or an ``EMT`` instance with ASE's default parameters."""
    from ase.calculators.emt import EMT

    if calculator is None or calculator is EMT:
        return True
    if type(calculator) is EMT:
        return not bool(calculator.parameters.get("asap_cutoff", False))
    return False


def _jax_compatible(atoms: Any) -> bool:
    """Constraints the batched relaxation honours: none, or ``FixAtoms`` only."""
    from ase.constraints import FixAtoms

    return all(isinstance(c, FixAtoms) for c in atoms.constraints)


def _use_jax(structures: Sequence[Any], calculator: CalculatorLike, optimizer: str, backend: str) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "ase":
        return False
    ok = optimizer == "FIRE" and _is_default_emt(calculator) and all(_jax_compatible(a) for a in structures)
    if backend == "jax" and not ok:
        raise ValueError(
            "backend='jax' needs the EMT calculator (None), optimizer='FIRE' and no constraints "
            "other than FixAtoms; use backend='auto' or 'ase'"
        )
    return ok


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 1).bit_length()


def _ladder_bucket(structures: Sequence[Any]):
    """A padded size on a power-of-two ladder for a chunk of clusters (all atom pairs are
    edges), so that repeated calls with similar chunks reuse one compilation; None (the
    smallest bucket) when a structure is periodic."""
    from agedi_jax.batch import Bucket

    if any(np.any(a.pbc) for a in structures):
        return None
    n_node = sum(len(a) for a in structures)
    n_edge = sum(len(a) * (len(a) - 1) for a in structures)
    return Bucket(_pow2(n_node + 1), _pow2(n_edge + 1), _pow2(len(structures) + 1))


def _finish(atoms: Any, positions: np.ndarray, calculator: CalculatorLike, fmax: float, jax_converged: bool) -> tuple[Any, float]:
    """The ASE path's output from relaxed positions: a copy of ``atoms`` at ``positions``
    with the calculator attached, ASE's convergence criterion on its float64 forces, and
    a short ASE FIRE polish when the float32 loop stopped just short of it."""
    from ase.optimize import FIRE

    out = atoms.copy()
    out.positions = positions
    out.calc = get_calculator(calculator, out.get_chemical_symbols())
    forces = out.get_forces()  # constraints applied, as ASE's optimizers see them
    converged = bool(np.sqrt((forces**2).sum(axis=1).max(initial=0.0)) < fmax)
    if jax_converged and not converged:
        converged = bool(FIRE(out, logfile=None).run(fmax=fmax, steps=_POLISH_STEPS))
    out.info["relax_converged"] = converged
    energy = float(out.get_potential_energy())
    out.info["energy"] = energy
    return out, energy


def _relax_jax(structures: Sequence[Any], calculator: CalculatorLike, fmax: float, steps: int) -> list[tuple[Any, float]]:
    """Batched JAX FIRE + EMT (:func:`agedi_jax.relax.relax_atoms`) in chunks of
    :data:`_JAX_CHUNK` structures sorted by size (one compilation per padded chunk shape
    and element set)."""
    from agedi_jax.relax import relax_atoms

    order = sorted(range(len(structures)), key=lambda i: (len(structures[i]), i))
    results: list = [None] * len(structures)
    for start in range(0, len(order), _JAX_CHUNK):
        idx = order[start : start + _JAX_CHUNK]
        chunk = [structures[i] for i in idx]
        relaxed, _, converged = relax_atoms(chunk, "emt", fmax=fmax, max_steps=int(steps), bucket=_ladder_bucket(chunk))
        for i, a, r, c in zip(idx, chunk, relaxed, converged):
            results[i] = _finish(a, r.positions, calculator, fmax, bool(c))
    return results


def _relax_ase(atoms: Any, calculator: CalculatorLike, fmax: float, steps: int, optimizer: str) -> tuple[Any, float]:
    from ase.optimize import BFGS, FIRE

    optimizers = {"FIRE": FIRE, "BFGS": BFGS}
    out = atoms.copy()
    out.calc = get_calculator(calculator, out.get_chemical_symbols())
    opt = optimizers[optimizer](out, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    out.info["relax_converged"] = converged
    energy = float(out.get_potential_energy())
    out.info["energy"] = energy
    return out, energy


def relax_many(
    structures: Sequence[Any],
    calculator: CalculatorLike = None,
    fmax: float = 0.05,
    steps: int = 500,
    optimizer: str = "FIRE",
    backend: str = "auto",
) -> tuple[list, np.ndarray, np.ndarray]:
    """Relax many structures (the batched form of :func:`relax`, same arguments and
    results per structure): with EMT and FIRE all of them in compiled JAX loops (module
    docstring), otherwise one ASE optimizer run each.

    Returns:
      ``(relaxed copies, energies [N] eV, converged [N] bool)``; every copy carries the
      calculator, ``info["energy"]`` and ``info["relax_converged"]``.
    """
    structures = list(structures)
    if optimizer not in ("FIRE", "BFGS"):
        raise ValueError(f"optimizer must be one of ['BFGS', 'FIRE'], got {optimizer!r}")
    for atoms in structures:
        if len(atoms) == 0:
            raise ValueError("relax: structure has no atoms")
    if not structures:
        return [], np.zeros(0), np.zeros(0, bool)
    symbols = sorted({s for a in structures for s in a.get_chemical_symbols()})
    get_calculator(calculator, symbols)  # unsupported elements: the same error as before any work
    if _use_jax(structures, calculator, optimizer, backend):
        pairs = _relax_jax(structures, calculator, fmax, steps)
    else:
        pairs = [_relax_ase(a, calculator, fmax, steps, optimizer) for a in structures]
    relaxed = [p[0] for p in pairs]
    energies = np.array([p[1] for p in pairs], float)
    converged = np.array([a.info["relax_converged"] for a in relaxed], bool)
    return relaxed, energies, converged


def relax(
    atoms: Any,
    calculator: CalculatorLike = None,
    fmax: float = 0.05,
    steps: int = 500,
    optimizer: str = "FIRE",
    backend: str = "auto",
) -> tuple[Any, float]:
    """Local relaxation (the paper relaxes every cluster before Eq. 21).

    Args:
      atoms: structure (not modified).
      calculator: None (EMT), an ASE calculator, or a zero-argument factory.
      fmax: force convergence threshold (eV/Å). steps: maximum optimizer steps.
      optimizer: ``"FIRE"`` or ``"BFGS"``.
      backend: ``"auto"`` (EMT + FIRE in JAX, anything else with the ASE optimizer),
        ``"jax"`` or ``"ase"`` (see the module docstring; both give the same minimum
        within the FIRE tolerance). For many structures use :func:`relax_many`.

    Returns:
      ``(relaxed copy with the calculator attached, potential energy in eV)``. The copy's
      ``info["relax_converged"]`` says whether ``fmax`` was reached within ``steps``.
    """
    relaxed, energies, _ = relax_many([atoms], calculator, fmax=fmax, steps=steps, optimizer=optimizer,
                                      backend=backend)
    return relaxed[0], float(energies[0])


_relax = relax  # the functions below take a boolean argument named ``relax``
_relax_many = relax_many


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

    Each mono-elemental structure is relaxed (all at once, :func:`relax_many`) or evaluated
    as is with ``relax=False`` with the calculator; the lowest energy per (element, size)
    is kept. Multi-element structures are ignored.
    """
    mono = [a for a in structures if len(set(a.get_chemical_symbols())) == 1]
    if relax:
        _, energies, _ = _relax_many(mono, calculator, fmax=fmax, steps=steps)
    else:
        energies = []
        for atoms in mono:
            a = atoms.copy()
            a.calc = get_calculator(calculator, a.get_chemical_symbols())
            energies.append(float(a.get_potential_energy()))
    best: dict[tuple[str, int], float] = {}
    for atoms, energy in zip(mono, energies):
        key = (atoms.get_chemical_symbols()[0], len(atoms))
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
    (FIRE, :func:`relax_many`: with EMT, the default, all of them at once in JAX) with the
    calculator.

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
    out = [
        random_cluster(counts, np.random.default_rng([int(seed), k]), min_distance, radius, bond_factor)
        for k in range(int(n_structures))
    ]
    if relax:
        out, _, _ = _relax_many(out, calculator, fmax=fmax, steps=steps)
    return out
