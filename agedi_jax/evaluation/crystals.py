"""Evaluation of generated bulk crystals as the crystal-generation literature reports it
(CDVAE, Xie et al. ICLR 2022; DiffCSP, Jiao et al. NeurIPS 2023; FlowMM, Miller et al.
ICML 2024).

Crystal structure prediction (one or k samples per reference composition):

* :func:`match_rate` — fraction of references matched by their generated structure under
  pymatgen's ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``, and the mean
  normalised RMS displacement over the matches;
* :func:`best_of_k` — the same with k samples per reference (match if any matches; RMS
  of the best).

De novo generation:

* :func:`crystal_validity` / :func:`crystal_validity_batch` — structural validity (no two
  atoms closer than 0.5 Å, periodic images included; cell volume above a floor);
* :func:`wasserstein_density`, :func:`wasserstein_num_elements` — 1D Wasserstein (earth
  mover's) distances between the generated and reference distributions of density
  (g/cm³) and of the number of distinct elements;
* :func:`coverage` / :func:`crystal_coverage` — COV-R (recall) and COV-P (precision) with
  fingerprint-distance cutoffs. **The fingerprints differ from CDVAE's** (CrystalNN site
  fingerprints and Magpie composition features, both from matminer, which is not
  installed): here structure = element-agnostic SOAP averaged per structure, composition
  = fraction-weighted statistics of a few elemental properties from pymatgen. Coverage
  figures and cutoffs are therefore *not* comparable with published COV numbers;
  :func:`coverage_cutoffs` calibrates the cutoffs on the data instead (held-out
  structures against the training split).

Conversions: :func:`to_structure` / :func:`to_atoms` (``pymatgen.io.ase.AseAtomsAdaptor``).
Every function accepts ``ase.Atoms`` or pymatgen ``Structure``; lengths are in Å,
volumes in Å³, densities in g/cm³. Nothing here needs JAX.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np

from agedi_jax.data.bulk import MATCHER_DEFAULTS, _is_structure, structure_matcher, to_structure  # noqa: F401  (re-exported)

__all__ = [
    "AMU_PER_A3_TO_G_PER_CM3",
    "COMPOSITION_PROPERTIES",
    "MATCHER_TOLERANCES",
    "best_of_k",
    "composition_fingerprints",
    "coverage",
    "crystal_coverage",
    "coverage_cutoffs",
    "crystal_validity",
    "crystal_validity_batch",
    "de_novo_metrics",
    "densities",
    "match_rate",
    "nearest_distances",
    "num_elements",
    "standardize",
    "structure_fingerprints",
    "to_atoms",
    "to_structure",
    "valid_structures",
    "wasserstein_density",
    "wasserstein_num_elements",
]

MATCHER_TOLERANCES = MATCHER_DEFAULTS  # pymatgen StructureMatcher tolerances of the CSP literature (one definition)
"""The benchmark's StructureMatcher tolerances (CDVAE, DiffCSP, FlowMM)."""

AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660
"""1 amu / Å³ in g/cm³ (1.66053906660e-24 g / 1e-24 cm³)."""


# --------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------


def to_atoms(obj: Any) -> Any:
    """``ase.Atoms`` (``pbc=True``) of a pymatgen ``Structure``
    (``AseAtomsAdaptor.get_atoms``); ``ase.Atoms`` are returned unchanged."""
    if not _is_structure(obj):
        return obj
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(obj)
    atoms.pbc = True
    return atoms


def _numbers_and_cell(obj: Any) -> tuple[np.ndarray, np.ndarray]:
    """(atomic numbers [N], cell [3, 3] Å) of an Atoms or Structure."""
    if _is_structure(obj):
        return np.array([site.specie.Z for site in obj], dtype=np.int64), np.asarray(obj.lattice.matrix, float)
    return np.asarray(obj.numbers, dtype=np.int64), np.asarray(obj.cell, float)


# --------------------------------------------------------------------------------------
# Matching (crystal structure prediction)
# --------------------------------------------------------------------------------------


def _rms(matcher: Any, generated: Any, reference_structure: Any) -> float:
    """Normalised RMS displacement of ``generated`` onto ``reference_structure`` (NaN when
    they do not match or the matcher fails on them)."""
    try:
        out = matcher.get_rms_dist(to_structure(generated), reference_structure)
    except Exception:  # degenerate generated cells make pymatgen raise many kinds
        return float("nan")
    return float("nan") if out is None else float(out[0])


def _usable(generated: Any, require_valid: bool) -> bool:
    if generated is None:
        return False
    if require_valid:
        return crystal_validity(generated)["valid"]
    return True


def _summary(rms: np.ndarray, n_valid: int, n_missing: int) -> dict[str, Any]:
    matched = np.isfinite(rms)
    n = len(rms)
    return {
        "match_rate": float(matched.mean()) if n else float("nan"),
        "rmse": float(rms[matched].mean()) if matched.any() else float("nan"),
        "n": int(n),
        "n_matched": int(matched.sum()),
        "n_valid": int(n_valid),
        "n_missing": int(n_missing),
        "matched": matched,
        "rms": rms,
    }


def match_rate(
    generated: Sequence[Any],
    reference: Sequence[Any],
    *,
    tolerances: Mapping[str, float] | None = None,
    require_valid: bool = True,
) -> dict[str, Any]:
    """Match rate and RMSE of crystal structure prediction, one sample per reference.

    ``generated[i]`` is the sample for ``reference[i]`` (``None`` for a failed sample,
    which counts as unmatched). A pair matches when pymatgen's
    ``StructureMatcher(**tolerances).get_rms_dist(generated, reference)`` finds a
    mapping (pymatgen's other defaults: ``primitive_cell=True`` — both are reduced to
    Niggli primitive cells first, so supercells and rotated or permuted copies match —,
    ``scale=True``, ``attempt_supercell=False``).

    **RMS normalisation (pymatgen's):** after removing the mean displacement (the best
    rigid translation), rms = sqrt(mean_i |d_i|²) / (V/N)^(1/3), with N the number of
    sites of the (primitive) reduced cell, V the volume of that cell after pymatgen has
    rescaled both lattices to their common geometric-mean volume, and d_i computed on the
    average of the two lattices. The result is dimensionless (a fraction of the mean
    interatomic spacing) and below ``stol`` for every match. Note that the primitive-cell
    search (``get_primitive_structure``, 0.25 Å tolerance) may fold a slightly distorted
    supercell onto a smaller cell with averaged positions, so its rms can come out below
    the rms of its atoms' displacements.

    Args:
      generated: ``[n]`` ``ase.Atoms`` / ``Structure`` / ``None``.
      reference: ``[n]`` ``ase.Atoms`` / ``Structure``.
      tolerances: matcher tolerances overriding the benchmark's (:func:`~agedi_jax.data.bulk.structure_matcher`).
      require_valid: count a generated structure failing :func:`crystal_validity` as
        unmatched, as CDVAE and DiffCSP do (their validity also checks SMACT composition
        validity, which is not applied here; for generation with the reference
        composition it rarely matters).

    Returns:
      dict with ``match_rate`` (matched / n, failed and invalid samples included in n),
      ``rmse`` (mean rms over the matches; NaN when none), ``n``, ``n_matched``,
      ``n_valid`` (samples that were compared), ``n_missing`` (``None`` samples),
      ``matched`` (bool ``[n]``) and ``rms`` (float ``[n]``, NaN where unmatched).
    """
    generated, reference = list(generated), list(reference)
    if len(generated) != len(reference):
        raise ValueError(f"match_rate: {len(generated)} generated structures for {len(reference)} references")
    matcher = structure_matcher(tolerances)
    rms = np.full(len(reference), np.nan)
    n_valid = 0
    for i, (gen, ref) in enumerate(zip(generated, reference)):
        if not _usable(gen, require_valid):
            continue
        n_valid += 1
        rms[i] = _rms(matcher, gen, to_structure(ref))
    return _summary(rms, n_valid, sum(g is None for g in generated))


def best_of_k(
    generated_lists: Sequence[Sequence[Any]],
    reference: Sequence[Any],
    *,
    tolerances: Mapping[str, float] | None = None,
    require_valid: bool = True,
) -> dict[str, Any]:
    """Match rate and RMSE with k samples per reference (DiffCSP's multi-sample metric).

    ``generated_lists[i]`` holds the samples (any number, ``None`` allowed) for
    ``reference[i]``. A reference is matched if any of its samples matches; its rms is the
    smallest rms over its matching samples (normalised as in :func:`match_rate`).

    Returns:
      the dict of :func:`match_rate` (``n_valid`` / ``n_missing`` count samples, not
      references) plus ``k`` (the largest number of samples per reference) and ``best``
      (int ``[n]``: index of the best sample in ``generated_lists[i]``, −1 if none matched).
    """
    generated_lists, reference = [list(g) for g in generated_lists], list(reference)
    if len(generated_lists) != len(reference):
        raise ValueError(f"best_of_k: {len(generated_lists)} sample lists for {len(reference)} references")
    matcher = structure_matcher(tolerances)
    rms = np.full(len(reference), np.nan)
    best = np.full(len(reference), -1, dtype=np.int64)
    n_valid = n_missing = 0
    for i, (samples, ref) in enumerate(zip(generated_lists, reference)):
        ref_s = to_structure(ref)
        for j, gen in enumerate(samples):
            n_missing += gen is None
            if not _usable(gen, require_valid):
                continue
            n_valid += 1
            r = _rms(matcher, gen, ref_s)
            if np.isfinite(r) and not r >= rms[i]:  # NaN-safe "better than the best so far"
                rms[i], best[i] = r, j
    out = _summary(rms, n_valid, n_missing)
    out["k"] = max((len(s) for s in generated_lists), default=0)
    out["best"] = best
    return out


# --------------------------------------------------------------------------------------
# Validity
# --------------------------------------------------------------------------------------


def crystal_validity(
    crystal: Any,
    *,
    min_distance: float = 0.5,
    min_volume: float = 0.1,
    volume_per_atom: bool = True,
    self_images: bool = True,
) -> dict[str, Any]:
    """Structural validity of one crystal (CDVAE's definition, with the differences below).

    The crystal is treated as fully periodic. It is invalid when

    * ``no_atoms``: it has no atoms; ``non_finite``: a position or cell entry is NaN/inf;
    * ``singular_cell``: the cell has rank < 3 (no further checks are then made);
    * ``small_volume``: the cell volume is below ``min_volume`` Å³ — per atom with
      ``volume_per_atom=True`` (default); CDVAE applies 0.1 Å³ to the whole cell, which
      ``volume_per_atom=False`` reproduces;
    * ``close_atoms``: two distinct atoms are closer than ``min_distance`` Å (periodic
      images included: minimum-image distance, exact for any cell shape);
    * ``self_image``: an atom is closer than ``min_distance`` to its own periodic image,
      i.e. a lattice vector is shorter than ``min_distance``. CDVAE (pymatgen's
      ``distance_matrix``, diagonal ignored) does not check this; ``self_images=False``
      skips it;
    * ``degenerate_cell``: a layer spacing of the (Minkowski-reduced) cell is below
      0.01 Å, so that the neighbour search would need millions of images; only reachable
      with ``self_images=False``.

    Returns:
      dict with ``valid`` (bool), ``reason`` (the first failing check's name, ``None`` if
      valid), ``reasons`` (every failing check's name), ``detail`` (human-readable text
      per failing check), ``closest`` (shortest pair distance found below
      ``min_distance``, Å, ``None`` if none), ``volume`` (Å³) and ``volume_per_atom``
      (Å³).
    """
    from ase import Atoms
    from ase.geometry import minkowski_reduce
    from ase.neighborlist import neighbor_list

    numbers, cell = _numbers_and_cell(crystal)
    positions = crystal.cart_coords if _is_structure(crystal) else crystal.positions
    positions = np.asarray(positions, float)
    reasons: list[str] = []
    detail: list[str] = []
    out: dict[str, Any] = {"closest": None, "volume": float("nan"), "volume_per_atom": float("nan")}

    def done() -> dict[str, Any]:
        out.update(valid=not reasons, reason=reasons[0] if reasons else None, reasons=reasons, detail=detail)
        return out

    n = len(numbers)
    if n == 0:
        reasons.append("no_atoms")
        detail.append("the structure has no atoms")
        return done()
    if not (np.all(np.isfinite(cell)) and np.all(np.isfinite(positions))):
        reasons.append("non_finite")
        detail.append("non-finite cell or positions")
        return done()
    volume = abs(float(np.linalg.det(cell)))
    out["volume"], out["volume_per_atom"] = volume, volume / n
    if np.linalg.matrix_rank(cell, tol=1e-10 * max(1.0, float(np.abs(cell).max()))) < 3:
        reasons.append("singular_cell")
        detail.append(f"singular cell (volume {volume:.3g} Å³)")
        return done()
    measured = volume / n if volume_per_atom else volume
    if measured < min_volume:
        reasons.append("small_volume")
        unit = "Å³ per atom" if volume_per_atom else "Å³"
        detail.append(f"cell volume {measured:.4g} {unit} < {min_volume} {unit}")

    rcell, _ = minkowski_reduce(cell)
    lengths = np.linalg.norm(rcell, axis=1)
    if self_images and lengths.min() < min_distance:
        reasons.append("self_image")
        detail.append(f"lattice vector of {lengths.min():.4g} Å < {min_distance} Å: atoms overlap their own images")
    heights = volume / np.linalg.norm(np.cross(rcell[[1, 2, 0]], rcell[[2, 0, 1]]), axis=1)
    if heights.min() < 0.01:
        if not reasons:
            reasons.append("degenerate_cell")
            detail.append(f"layer spacing {heights.min():.3g} Å: cell too thin to search for close atoms")
        return done()

    atoms = Atoms(numbers=numbers, positions=positions, cell=rcell, pbc=True)
    atoms.wrap()
    i, j, d = neighbor_list("ijd", atoms, float(min_distance), self_interaction=False)
    distinct = i != j
    considered = d if self_images else d[distinct]
    if len(considered):
        out["closest"] = float(considered.min())
    if np.any(distinct):
        k = int(np.argmin(np.where(distinct, d, np.inf)))
        reasons.append("close_atoms")
        detail.append(f"atoms {int(i[k])} and {int(j[k])} are {d[k]:.4g} Å apart (< {min_distance} Å)")
    return done()


def crystal_validity_batch(structures: Sequence[Any], **kwargs: Any) -> dict[str, Any]:
    """:func:`crystal_validity` of every structure (``None`` = failed sample, invalid with
    reason ``missing``); ``kwargs`` go to :func:`crystal_validity`.

    Returns:
      dict with ``valid`` (bool ``[n]``), ``rate`` (valid fraction), ``n``, ``reasons``
      (list ``[n]`` of lists of reason names) and ``reason_counts`` (reason → number of
      structures failing it).
    """
    valid, reasons = [], []
    for s in structures:
        if s is None:
            valid.append(False)
            reasons.append(["missing"])
            continue
        r = crystal_validity(s, **kwargs)
        valid.append(r["valid"])
        reasons.append(r["reasons"])
    counts = Counter(x for rs in reasons for x in rs)
    v = np.array(valid, dtype=bool)
    return {
        "valid": v,
        "rate": float(v.mean()) if len(v) else float("nan"),
        "n": int(len(v)),
        "reasons": reasons,
        "reason_counts": dict(counts.most_common()),
    }


def valid_structures(structures: Sequence[Any], **kwargs: Any) -> list:
    """The structures that are not ``None`` and pass :func:`crystal_validity` (``kwargs``
    go to it), in order — the set CDVAE computes its de novo property statistics on."""
    keep = crystal_validity_batch(structures, **kwargs)["valid"]
    return [s for s, k in zip(structures, keep) if k]


# --------------------------------------------------------------------------------------
# Property distributions
# --------------------------------------------------------------------------------------


def _check_all_present(structures: Sequence[Any], what: str) -> list:
    structures = list(structures)
    if not structures:
        raise ValueError(f"{what}: no structures given")
    for k, s in enumerate(structures):
        if s is None:
            raise ValueError(f"{what}: structure {k} is None; filter failed samples first (valid_structures)")
    return structures


def densities(structures: Sequence[Any]) -> np.ndarray:
    """float ``[n]``: mass density of every crystal in g/cm³ (standard atomic masses of
    ASE's table by atomic number — custom ``Atoms`` masses are ignored — over the cell
    volume). pymatgen's ``Structure.density`` agrees to about 1e-4 relative."""
    from ase.data import atomic_masses

    out = []
    for k, s in enumerate(_check_all_present(structures, "densities")):
        numbers, cell = _numbers_and_cell(s)
        volume = abs(float(np.linalg.det(cell)))
        if volume <= 0:
            raise ValueError(f"densities: structure {k} has a singular cell")
        out.append(atomic_masses[numbers].sum() / volume * AMU_PER_A3_TO_G_PER_CM3)
    return np.asarray(out, dtype=np.float64)


def num_elements(structures: Sequence[Any]) -> np.ndarray:
    """int ``[n]``: number of distinct elements of every structure."""
    return np.array(
        [len(set(_numbers_and_cell(s)[0].tolist())) for s in _check_all_present(structures, "num_elements")],
        dtype=np.int64,
    )


def wasserstein_density(generated: Sequence[Any], reference: Sequence[Any]) -> float:
    """1D Wasserstein distance (``scipy.stats.wasserstein_distance``) between the density
    distributions (g/cm³) of two sets of crystals; in g/cm³. CDVAE computes it on the
    valid generated structures (see :func:`valid_structures`) against the test set."""
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(densities(generated), densities(reference)))


def wasserstein_num_elements(generated: Sequence[Any], reference: Sequence[Any]) -> float:
    """1D Wasserstein distance between the distributions of the number of distinct
    elements per structure (dimensionless)."""
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(num_elements(generated), num_elements(reference)))


# --------------------------------------------------------------------------------------
# Fingerprints and coverage
# --------------------------------------------------------------------------------------

COMPOSITION_PROPERTIES = ("Z", "row", "group", "mendeleev_no", "atomic_mass", "X")
"""pymatgen ``Element`` properties of :func:`composition_fingerprints` (atomic number,
period, group, Mendeleev number, mass in amu, Pauling electronegativity — undefined for
He, Ne, Ar, which are then left out of that property's statistics)."""

_STOICH_NORMS = (2, 3, 5, 7, 10)


def _element_table(numbers: np.ndarray) -> np.ndarray:
    """``[len(numbers), len(COMPOSITION_PROPERTIES)]`` property values (NaN if undefined)."""
    import warnings

    from pymatgen.core import Element

    rows = []
    for z in numbers:
        el = Element.from_Z(int(z))
        row = []
        for prop in COMPOSITION_PROPERTIES:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    v = float(getattr(el, prop))
            except (TypeError, ValueError, AttributeError):
                v = float("nan")
            row.append(v if np.isfinite(v) else float("nan"))
        rows.append(row)
    return np.asarray(rows, dtype=np.float64)


def composition_fingerprints(structures: Sequence[Any]) -> np.ndarray:
    """float ``[n, 5 + 4·P]`` composition features (a small Magpie-like vector built from
    pymatgen's element data; **not** CDVAE's Magpie fingerprint).

    Columns: the stoichiometric p-norms ``(Σ_e x_e^p)^(1/p)`` for p = 2, 3, 5, 7, 10 of
    the element fractions x_e, then for each of the P = ``len(COMPOSITION_PROPERTIES)``
    properties its fraction-weighted mean, mean absolute deviation, minimum and maximum
    over the elements present. Raw values: standardise them (:func:`standardize`) before
    taking distances.
    """
    structures = _check_all_present(structures, "composition_fingerprints")
    all_numbers = [_numbers_and_cell(s)[0] for s in structures]
    elements = np.unique(np.concatenate(all_numbers)) if all_numbers else np.zeros(0, int)
    table = dict(zip(elements.tolist(), _element_table(elements)))
    n_prop = len(COMPOSITION_PROPERTIES)
    out = np.zeros((len(structures), len(_STOICH_NORMS) + 4 * n_prop))
    for k, numbers in enumerate(all_numbers):
        if len(numbers) == 0:
            raise ValueError(f"composition_fingerprints: structure {k} has no atoms")
        els, counts = np.unique(numbers, return_counts=True)
        x = counts / counts.sum()
        out[k, : len(_STOICH_NORMS)] = [np.sum(x**p) ** (1.0 / p) for p in _STOICH_NORMS]
        props = np.stack([table[int(e)] for e in els])  # [n_el, P]
        for m in range(n_prop):
            ok = np.isfinite(props[:, m])
            if not ok.any():
                continue  # stays 0
            v, w = props[ok, m], x[ok] / x[ok].sum()
            mean = float(np.sum(w * v))
            base = len(_STOICH_NORMS) + 4 * m
            out[k, base : base + 4] = [mean, float(np.sum(w * np.abs(v - mean))), v.min(), v.max()]
    return out


def standardize(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(features − μ) / σ`` with the column means and standard deviations of
    ``reference`` (σ = 1 where a column is constant), as CDVAE scales its composition
    fingerprints by training-set statistics. Shapes ``[n, D]`` and ``[m, D]``."""
    features, reference = np.asarray(features, float), np.asarray(reference, float)
    mu, sigma = reference.mean(axis=0), reference.std(axis=0)
    sigma = np.where(sigma > 1e-12, sigma, 1.0)
    return (features - mu) / sigma


def structure_fingerprints(structures: Sequence[Any], **soap_kwargs: Any) -> np.ndarray:
    """float ``[n, D]`` geometric fingerprints: element-agnostic, periodic SOAP averaged
    over the atoms of each structure (:func:`agedi_jax.evaluation.descriptors.soap_features`
    with ``element_agnostic=True``; default 5 Å cutoff), each row scaled to unit Euclidean
    norm so that distances lie in [0, 2] and reflect shape rather than the overall
    magnitude of the density. **Not** CDVAE's CrystalNN fingerprint; unlike CrystalNN
    order parameters, SOAP at a fixed cutoff is not scale-invariant, so density
    differences also show up here. ``soap_kwargs`` go to ``soap_features``."""
    from agedi_jax.evaluation.descriptors import soap_features

    atoms = [to_atoms(s) for s in _check_all_present(structures, "structure_fingerprints")]
    soap_kwargs.setdefault("periodic", True)
    feats = np.asarray(soap_features(atoms, element_agnostic=True, **soap_kwargs), dtype=np.float64)
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    return feats / np.where(norms > 0, norms, 1.0)


def nearest_distances(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """float ``[len(a)]``: Euclidean distance from every row of ``a`` ``[n, D]`` to its
    nearest row of ``b`` ``[m, D]`` (computed in chunks of ``chunk`` rows). Useful to
    choose coverage cutoffs, e.g. from held-out reference vs. training distances."""
    from scipy.spatial.distance import cdist

    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"nearest_distances: feature widths differ ({a.shape[1]} vs {b.shape[1]})")
    if len(b) == 0:
        return np.full(len(a), np.inf)
    return np.concatenate(
        [cdist(a[s : s + chunk], b).min(axis=1) for s in range(0, len(a), chunk)] or [np.zeros(0)]
    )


def _covered(a_fps: Sequence[np.ndarray], b_fps: Sequence[np.ndarray], cutoffs: Sequence[float],
             joint: bool, chunk: int) -> np.ndarray:
    """bool [len(a)]: rows of a within every cutoff of some row of b (independent minima
    per fingerprint, or one row of b within all cutoffs when ``joint``)."""
    from scipy.spatial.distance import cdist

    n = len(a_fps[0])
    if not joint:
        ok = np.ones(n, dtype=bool)
        for a, b, c in zip(a_fps, b_fps, cutoffs):
            ok &= nearest_distances(a, b, chunk) <= c
        return ok
    out = np.zeros(n, dtype=bool)
    for s in range(0, n, chunk):
        both = None
        for a, b, c in zip(a_fps, b_fps, cutoffs):
            within = cdist(np.asarray(a[s : s + chunk], float), np.asarray(b, float)) <= c
            both = within if both is None else both & within
        out[s : s + chunk] = both.any(axis=1)
    return out


def coverage(
    generated_struct: np.ndarray,
    reference_struct: np.ndarray,
    *,
    struct_cutoff: float,
    generated_comp: np.ndarray | None = None,
    reference_comp: np.ndarray | None = None,
    comp_cutoff: float | None = None,
    joint: bool = False,
    chunk: int = 2048,
) -> dict[str, float]:
    """COV-R and COV-P from precomputed fingerprints (CDVAE's coverage definition).

    COV-R (recall) = fraction of reference structures whose nearest generated structure
    lies within ``struct_cutoff`` in structure-fingerprint distance and (if composition
    fingerprints are given) whose nearest generated composition lies within
    ``comp_cutoff``; COV-P (precision) = the same with the roles swapped. As in CDVAE the
    two nearest neighbours are found independently; ``joint=True`` instead requires one
    generated structure within both cutoffs. Distances are Euclidean.

    Args:
      generated_struct, reference_struct: ``[n_gen, D]``, ``[n_ref, D]`` structure
        fingerprints (e.g. :func:`structure_fingerprints`).
      struct_cutoff: distance threshold in the units of the structure fingerprint.
      generated_comp, reference_comp, comp_cutoff: optional composition fingerprints
        ``[n_gen, C]``, ``[n_ref, C]`` (already standardised) and their threshold.
      joint: see above. chunk: rows per block of the distance computation.

    Returns:
      ``{"cov_recall", "cov_precision"}`` (fractions in [0, 1]). The cutoffs of CDVAE
      (e.g. 0.2 / 4 for carbon_24 and perov_5) belong to its fingerprints and mean nothing
      here.
    """
    gen_fps, ref_fps, cutoffs = [np.asarray(generated_struct, float)], [np.asarray(reference_struct, float)], [float(struct_cutoff)]
    if (generated_comp is None) != (reference_comp is None) or ((generated_comp is None) != (comp_cutoff is None)):
        raise ValueError("coverage: give generated_comp, reference_comp and comp_cutoff together, or none of them")
    if generated_comp is not None:
        gen_fps.append(np.asarray(generated_comp, float))
        ref_fps.append(np.asarray(reference_comp, float))
        cutoffs.append(float(comp_cutoff))
    for g, r in zip(gen_fps, ref_fps):
        if len(g) != len(gen_fps[0]) or len(r) != len(ref_fps[0]):
            raise ValueError("coverage: structure and composition fingerprints need the same number of rows")
    if len(gen_fps[0]) == 0 or len(ref_fps[0]) == 0:
        raise ValueError("coverage: empty generated or reference set")
    recall = _covered(ref_fps, gen_fps, cutoffs, joint, chunk)
    precision = _covered(gen_fps, ref_fps, cutoffs, joint, chunk)
    return {"cov_recall": float(recall.mean()), "cov_precision": float(precision.mean())}


def crystal_coverage(
    generated: Sequence[Any],
    reference: Sequence[Any],
    *,
    struct_cutoff: float,
    comp_cutoff: float | None = None,
    joint: bool = False,
    **soap_kwargs: Any,
) -> dict[str, float]:
    """COV-R / COV-P of two sets of crystals with this module's fingerprints:
    :func:`structure_fingerprints` (unit-norm element-agnostic SOAP; ``soap_kwargs`` go to
    it) and, when ``comp_cutoff`` is given, :func:`composition_fingerprints` standardised
    with the *reference* set's statistics. See :func:`coverage`; the numbers are not
    comparable with CDVAE's (different fingerprints, different cutoffs)."""
    generated = _check_all_present(generated, "crystal_coverage")
    reference = _check_all_present(reference, "crystal_coverage")
    fps = structure_fingerprints(list(generated) + list(reference), **soap_kwargs)
    g_s, r_s = fps[: len(generated)], fps[len(generated) :]
    kw: dict[str, Any] = {}
    if comp_cutoff is not None:
        g_c, r_c = composition_fingerprints(generated), composition_fingerprints(reference)
        kw = dict(generated_comp=standardize(g_c, r_c), reference_comp=standardize(r_c, r_c), comp_cutoff=comp_cutoff)
    return coverage(g_s, r_s, struct_cutoff=struct_cutoff, joint=joint, **kw)


def coverage_cutoffs(
    reference: Sequence[Any],
    training: Sequence[Any],
    *,
    quantile: float = 0.5,
    **soap_kwargs: Any,
) -> dict[str, float]:
    """Coverage cutoffs calibrated on the data, for this module's fingerprints: the
    ``quantile`` of the distance from each ``reference`` (held-out) structure to its nearest
    ``training`` structure, for the structure fingerprint and for the composition
    fingerprint (standardised with the reference's statistics, as
    :func:`crystal_coverage` does). With the median, the training split itself covers half
    of the held-out set by construction — so a model's COV-R can be read against a
    training-set baseline of the same size (a random subset of the training structures),
    whatever the fingerprint's units.

    Returns:
      ``{"struct_cutoff", "comp_cutoff", "quantile"}``; the composition cutoff is 0 when
      every structure has the same composition fingerprint (e.g. carbon only).
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"coverage_cutoffs: quantile must lie in (0, 1], got {quantile}")
    reference = _check_all_present(reference, "coverage_cutoffs")
    training = _check_all_present(training, "coverage_cutoffs")
    if not reference or not training:
        raise ValueError("coverage_cutoffs: empty reference or training set")
    fps = structure_fingerprints(list(reference) + list(training), **soap_kwargs)
    d_struct = nearest_distances(fps[: len(reference)], fps[len(reference):])
    r_c = composition_fingerprints(reference)
    t_c = composition_fingerprints(training)
    d_comp = nearest_distances(standardize(r_c, r_c), standardize(t_c, r_c))
    return {"struct_cutoff": float(np.quantile(d_struct, quantile)),
            "comp_cutoff": float(np.quantile(d_comp, quantile)), "quantile": float(quantile)}


def de_novo_metrics(
    generated: Sequence[Any],
    reference: Sequence[Any],
    *,
    struct_cutoff: float | None = None,
    comp_cutoff: float | None = None,
    **validity_kwargs: Any,
) -> dict[str, Any]:
    """The de novo table in one call: validity rate of ``generated`` (``None`` = failed
    sample), then — on the valid generated structures only, as CDVAE does — the density
    and element-count Wasserstein distances to ``reference`` and, if ``struct_cutoff`` is
    given, COV-R / COV-P (:func:`crystal_coverage`).

    Returns:
      dict with ``validity`` (rate), ``n``, ``n_valid``, ``reason_counts``,
      ``wdist_density`` (g/cm³), ``wdist_num_elements`` and, with cutoffs,
      ``cov_recall`` / ``cov_precision``; NaN where there is no valid structure.
    """
    generated = list(generated)
    val = crystal_validity_batch(generated, **validity_kwargs)
    good = [s for s, ok in zip(generated, val["valid"]) if ok]
    out: dict[str, Any] = {
        "validity": val["rate"],
        "n": val["n"],
        "n_valid": len(good),
        "reason_counts": val["reason_counts"],
        "wdist_density": float("nan"),
        "wdist_num_elements": float("nan"),
    }
    if good:
        out["wdist_density"] = wasserstein_density(good, reference)
        out["wdist_num_elements"] = wasserstein_num_elements(good, reference)
    if struct_cutoff is not None:
        out.update(cov_recall=float("nan"), cov_precision=float("nan"))
        if good:
            out.update(crystal_coverage(good, reference, struct_cutoff=struct_cutoff, comp_cutoff=comp_cutoff))
    return out
