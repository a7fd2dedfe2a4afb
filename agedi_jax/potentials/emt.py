"""Effective-medium theory (EMT) in JAX, as ``ase.calculators.emt.EMT``.

The EMT of Jacobsen, Stoltze & Nørskov (Surf. Sci. 366, 394 (1996)) with the parameters
ASE uses for the fcc metals Al, Cu, Ag, Au, Ni, Pd and Pt, written over the batch's edge
template (:func:`~agedi_jax.edges.edge_vectors`), so it runs inside jit on whole padded
batches of clusters and periodic cells. For an atom ``i`` of type ``a`` with neighbours
``j`` (type ``b``) at distance ``r`` (all within the neighbour cutoff ``r_list``):

* smooth cutoff ``w(r) = 1 / (1 + exp(a_cut (r − r_c)))``;
* neighbour density ``σ1_i = Σ_j χ_ab w(r) exp(−η2_b (r − β s0_b))``, ``χ_ab = n0_b/n0_a``;
* neutral-sphere radius deviation ``s_i = −ln(σ1_i / (12 γ1_a)) / (β η2_a)``;
* cohesive function ``E_c = E0_a (1 + λ_a s) exp(−λ_a s)`` and the atomic-sphere
  correction ``E_AS = 6 V0_a exp(−κ_a s) + ½ Σ_j (c_a χ_ab w e^{−κ_b (r/β − s0_b)}
  + c_b χ_ab⁻¹ w e^{−κ_a (r/β − s0_a)})`` with ``c = −V0 / (2 γ2)``;
* ``E_i = E_c + E_AS − E0_a`` (energies relative to the isolated atoms, as ASAP/ASE),

where ``γ1, γ2`` normalise the sums to their fcc values over the first three neighbour
shells and ``r_c, a_cut`` are set from the largest ``s0`` of the parameter table (ASE's
default ``asap_cutoff=False``): ``r_c`` is midway between the 3rd and 4th fcc neighbour
shells and ``w(r_4nn) = 10⁻⁴``; neighbours are cut off sharply at ``r_list = r_c + 0.5 Å``
(as ASE). ``β = 1.809`` (ASE's historical rounding of ``(16π/3)^{1/3}/√2``). Forces come
from ``jax.grad`` (:func:`~agedi_jax.potentials.base.energy_and_forces`).

Precision: with x64 enabled the energy is computed in float64 whatever the input dtype
(agreement with ASE to ~1e-14 eV/atom and ~1e-13 eV/Å); in float32 (the default) the
test set of ``tests/test_emt.py`` agrees to ≤ 6e-6 eV/atom and ≤ 3e-5 eV/Å. Edge vectors
are computed with ``matmul precision = highest`` (no TF32 on GPUs).

Differences from ASE: no stress; ASE's ``asap_cutoff=True`` option and its H, C, N, O
parameters are not provided; coincident atoms give finite forces here (NaN in ASE).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from agedi_jax.batch import AtomsBatch, StructureError
from agedi_jax.edges import edge_vectors, image_range
from agedi_jax.geometry import graph_sum
from agedi_jax.potentials.base import EnergyFn
from agedi_jax.vocab import MASK, TypeVocab

Array = jax.Array

__all__ = [
    "EMT_PARAMETERS",
    "EMT_ELEMENTS",
    "BETA",
    "UnsupportedElementError",
    "EMTConstants",
    "emt_constants",
    "emt_cutoff",
    "emt_tables",
    "check_emt_batch",
    "emt_atom_energies",
    "make_emt",
]

EMT_PARAMETERS: Mapping[str, tuple[float, float, float, float, float, float, float]] = {
    #       E0     s0     V0     eta2   kappa  lambda  n0
    #       eV     bohr   eV     1/bohr 1/bohr 1/bohr  1/bohr^3
    "Al": (-3.28, 3.00, 1.493, 1.240, 2.000, 1.169, 0.00700),
    "Cu": (-3.51, 2.67, 2.476, 1.652, 2.740, 1.906, 0.00910),
    "Ag": (-2.96, 3.01, 2.132, 1.652, 2.790, 1.892, 0.00547),
    "Au": (-3.80, 3.00, 2.321, 1.674, 2.873, 2.182, 0.00703),
    "Ni": (-4.44, 2.60, 3.673, 1.669, 2.757, 1.948, 0.01030),
    "Pd": (-3.90, 2.87, 2.773, 1.818, 3.107, 2.155, 0.00688),
    "Pt": (-5.85, 2.90, 4.067, 1.812, 3.145, 2.192, 0.00802),
}
"""EMT parameters per element (Jacobsen et al. 1996, the values ASE uses), in atomic
units as tabulated: E0 (eV), s0 (bohr), V0 (eV), η2, κ, λ (1/bohr), n0 (1/bohr³)."""

EMT_ELEMENTS: tuple[str, ...] = tuple(EMT_PARAMETERS)
"""Elements EMT has parameters for (ASE's extra H, C, N, O values are not supported)."""

BETA = 1.809
"""β = (16π/3)^{1/3} / √2, with ASE's historical rounding."""

_BOHR = 0.5291772105638411  # Å, ase.units.Bohr (CODATA 2014, ASE's default units)


class UnsupportedElementError(ValueError):
    """An element EMT has no parameters for (the message names it and the supported ones)."""


def _check_symbols(symbols: Iterable[str], what: str = "EMT") -> None:
    bad = sorted(set(symbols) - set(EMT_ELEMENTS))
    if bad:
        raise UnsupportedElementError(
            f"{what} has no parameters for {bad}; EMT supports {', '.join(EMT_ELEMENTS)}"
        )


class EMTConstants(NamedTuple):
    """EMT's global cutoff constants (see :func:`emt_constants`)."""

    rc: float  # Å, midpoint of the logistic cutoff
    acut: float  # 1/Å, its slope
    rc_list: float  # Å, the sharp neighbour cutoff


@functools.cache
def emt_constants() -> EMTConstants:
    """The global smoothing constants (host floats, Å): ``rc`` (midpoint of the logistic
    cutoff), ``acut`` (its slope, 1/Å) and ``rc_list`` (the sharp neighbour cutoff).

    They follow ASE's default (``asap_cutoff=False``): set by the largest ``s0`` of the
    parameter table (Ag, 3.01 bohr), independent of the elements present.
    """
    s0_max = max(p[1] for p in EMT_PARAMETERS.values()) * _BOHR
    r1nn = BETA * s0_max  # first-neighbour distance of the fcc lattice
    rc = r1nn * 0.5 * (math.sqrt(3.0) + 2.0)  # between the 3rd and 4th neighbour shells
    r4nn = 2.0 * r1nn
    acut = math.log(1.0 / 1e-4 - 1.0) / (r4nn - rc)  # w(r4nn) = 1e-4
    return EMTConstants(rc=rc, acut=acut, rc_list=rc + 0.5)


def emt_cutoff(symbols: Sequence[str] = ()) -> float:
    """EMT's neighbour cutoff in Å (``r_list`` ≈ 5.877 Å) for structures of ``symbols``.

    Batches for :func:`make_emt` must be built with a cutoff at least this large
    (``batch_from_atoms(..., cutoff=emt_cutoff(symbols))``). The value is the same for
    every supported element (ASE's default cutoff); unsupported elements raise
    :class:`UnsupportedElementError`.
    """
    _check_symbols(symbols)
    return float(emt_constants().rc_list)


def _element_row(symbol: str) -> np.ndarray:
    """Parameters of one element in Å/eV units plus the derived fcc normalisations:
    [E0, s0, V0, eta2, kappa, lambda, n0, gamma1, gamma2]."""
    e0, s0, v0, eta2, kappa, lam, n0 = EMT_PARAMETERS[symbol]
    s0, eta2, kappa, lam, n0 = s0 * _BOHR, eta2 / _BOHR, kappa / _BOHR, lam / _BOHR, n0 / _BOHR**3
    c = emt_constants()
    counts = np.array([12.0, 6.0, 24.0])  # neighbours in the first three fcc shells
    dist = BETA * s0 * np.sqrt([1.0, 2.0, 3.0])
    weight = counts / 12.0 / (1.0 + np.exp(c.acut * (dist - c.rc)))
    gamma1 = float(weight @ np.exp(-eta2 * (dist - BETA * s0)))
    gamma2 = float(weight @ np.exp(-kappa / BETA * (dist - BETA * s0)))
    return np.array([e0, s0, v0, eta2, kappa, lam, n0, gamma1, gamma2], np.float64)


_FIELDS = ("E0", "s0", "V0", "eta2", "kappa", "lam", "n0", "gamma1", "gamma2")


def emt_tables(vocab: TypeVocab, allow_unsupported: bool = False) -> dict[str, np.ndarray]:
    """Per-type parameter tables ``{name: [K + 1]}`` (float64, Å / eV units) gathered by
    ``batch.types``: ``E0, s0, V0, eta2, kappa, lam, n0, gamma1, gamma2``.

    Row 0 (MASK) holds finite placeholder values (MASK atoms are excluded from the energy).
    Elements without EMT parameters raise :class:`UnsupportedElementError`, or with
    ``allow_unsupported`` get NaN rows (a structure containing one gets a NaN energy;
    :func:`check_emt_batch` refuses it on the host).
    """
    if not allow_unsupported:
        _check_symbols(vocab.symbols, f"EMT (type vocabulary {list(vocab.symbols)})")
    rows = [_element_row("Cu")]  # MASK placeholder
    for s in vocab.symbols:
        rows.append(_element_row(s) if s in EMT_PARAMETERS else np.full(len(_FIELDS), np.nan))
    table = np.stack(rows)
    return {name: table[:, k].copy() for k, name in enumerate(_FIELDS)}


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _checkable(batch: AtomsBatch) -> bool:
    """Every field but the positions is concrete (not traced): the host check can run."""
    return all(_is_concrete(v) for k, v in batch._asdict().items() if k != "positions")


def check_emt_batch(batch: AtomsBatch, vocab: TypeVocab) -> None:
    """Host check that a concrete batch can be evaluated by EMT; raises
    :class:`~agedi_jax.batch.StructureError` (or :class:`UnsupportedElementError`) naming
    the graph slot and the problem:

    * real atoms with the MASK type (0) or a type outside the vocabulary;
    * elements EMT has no parameters for;
    * an edge template too small for EMT's neighbour cutoff: a cluster without every
      ordered pair, or a periodic cell whose template lacks image shifts needed within
      :func:`emt_cutoff` (the batch was built with a smaller ``cutoff``).
    """
    types = np.asarray(batch.types)
    node_mask = np.asarray(batch.node_mask, bool)
    graph_index = np.asarray(batch.graph_index)
    graph_mask = np.asarray(batch.graph_mask, bool)
    real_types = types[node_mask]
    if np.any(real_types == MASK):
        slots = sorted(set(graph_index[node_mask & (types == MASK)].tolist()))
        raise StructureError(
            f"EMT: graph slots {slots[:10]} contain MASK atoms (type 0); EMT needs every real "
            "atom to have a chemical element"
        )
    if np.any((real_types < 0) | (real_types > vocab.num_types)):
        raise StructureError(
            f"EMT: type indices outside 1..{vocab.num_types} of the vocabulary {list(vocab.symbols)}"
        )
    _check_symbols(vocab.decode(np.unique(real_types)))

    rc_list = emt_constants().rc_list
    n_node = np.asarray(batch.n_node)
    n_edge = np.asarray(batch.n_edge)
    pbc = np.asarray(batch.pbc, bool)
    cell = np.asarray(batch.cell, np.float64)
    clusters = graph_mask & ~pbc.any(axis=1)
    short = clusters & (n_edge < n_node * (n_node - 1))
    if np.any(short):
        g = int(np.where(short)[0][0])
        raise StructureError(
            f"EMT: graph slot {g} (a cluster of {n_node[g]} atoms) has {n_edge[g]} template "
            f"edges, fewer than the {n_node[g] * (n_node[g] - 1)} ordered pairs EMT needs"
        )
    periodic = np.where(graph_mask & pbc.any(axis=1))[0]
    if len(periodic):
        edge_mask = np.asarray(batch.edge_mask, bool)
        shifts = np.abs(np.asarray(batch.shifts, np.float64))
        edge_graph = graph_index[np.asarray(batch.receivers)]
        for g in periodic:
            need = image_range(cell[g], pbc[g], rc_list)
            sel = edge_mask & (edge_graph == g)
            have = shifts[sel].max(axis=0) if sel.any() else np.zeros(3)
            if np.any(have + 1e-9 < need):
                raise StructureError(
                    f"EMT: graph slot {g} (periodic, pbc={pbc[g].tolist()}) has an edge template "
                    f"with image shifts up to {have.astype(int).tolist()} but EMT's neighbour "
                    f"cutoff {rc_list:.4f} Å needs {need.tolist()}: build the batch with "
                    f"cutoff >= emt_cutoff() = {rc_list:.4f} Å"
                )


def _compute_dtype() -> jnp.dtype:
    """float64 whenever x64 is enabled, else float32."""
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def emt_atom_energies(batch: AtomsBatch, tables: Mapping[str, np.ndarray]) -> Array:
    """Per-atom EMT energies ``[n]`` (eV; ASE's ``energies``) of a batch (jittable).

    Args:
      batch: the batch; its edge template must cover :func:`emt_cutoff`.
      tables: :func:`emt_tables` of the batch's vocabulary.

    Returns:
      ``[n]`` eV, in float64 if x64 is enabled else float32; exactly 0 for padding and
      MASK atoms, which also contribute nothing to their neighbours.
    """
    chex.assert_rank(batch.positions, 2)
    dtype = _compute_dtype()
    c = emt_constants()
    p = {k: jnp.asarray(v, dtype) for k, v in tables.items()}
    pos = jnp.asarray(batch.positions).astype(dtype)
    b = batch.replace(positions=pos)
    with jax.default_matmul_precision("highest"):  # no TF32/bf16 cell products on GPUs
        edges = edge_vectors(b, c.rc_list)

    types = jnp.asarray(batch.types, jnp.int32)
    atom_ok = jnp.asarray(batch.node_mask, bool) & (types != MASK)
    rcv = jnp.asarray(batch.receivers, jnp.int32)  # centre atom i
    snd = jnp.asarray(batch.senders, jnp.int32)  # neighbour j
    ti, tj = types[rcv], types[snd]
    m = edges.mask & atom_ok[rcv] & atom_ok[snd]
    # masked edges get a harmless constant distance (no NaN/inf anywhere, zero gradient)
    r = jnp.where(m, edges.lengths, jnp.asarray(c.rc, dtype))
    w = jax.nn.sigmoid(-c.acut * (r - c.rc))
    chi = p["n0"][tj] / p["n0"][ti]
    dsig1 = jnp.exp(-p["eta2"][tj] * (r - BETA * p["s0"][tj])) * chi * w
    dsig2_self = jnp.exp(-p["kappa"][tj] * (r / BETA - p["s0"][tj])) * chi * w
    dsig2_other = jnp.exp(-p["kappa"][ti] * (r / BETA - p["s0"][ti])) / chi * w
    coef = -0.5 * p["V0"] / p["gamma2"]
    pair = 0.5 * (coef[ti] * dsig2_self + coef[tj] * dsig2_other)
    n = batch.num_nodes
    sigma1 = jax.ops.segment_sum(jnp.where(m, dsig1, 0.0), rcv, num_segments=n)
    e_pair = jax.ops.segment_sum(jnp.where(m, pair, 0.0), rcv, num_segments=n)

    e0, lam, kappa = p["E0"][types], p["lam"][types], p["kappa"][types]
    has_nb = atom_ok & (sigma1 > 0)
    ratio = jnp.where(has_nb, sigma1 / (12.0 * p["gamma1"][types]), 1.0)
    s = -jnp.log(ratio) / (BETA * p["eta2"][types])
    ls = lam * s
    # E0 (1 + λs) e^{-λs} − E0, written to limit cancellation near s = 0
    e_coh = e0 * (jnp.expm1(-ls) + ls * jnp.exp(-ls))
    e_as = 6.0 * p["V0"][types] * jnp.exp(-kappa * s)
    # an atom without neighbours has E_c = E_AS = 0, i.e. energy −E0
    e_atom = jnp.where(has_nb, e_coh + e_as, -e0) + e_pair
    return jnp.where(atom_ok, e_atom, 0.0)


@functools.cache
def make_emt(vocab: TypeVocab, *, allow_unsupported: bool = False, check: bool = True) -> EnergyFn:
    """The EMT energy function of a type vocabulary.

    Args:
      vocab: the batch's type vocabulary; every element must be one of
        :data:`EMT_ELEMENTS` (else :class:`UnsupportedElementError` naming it), unless
        ``allow_unsupported`` (then such types give NaN energies and are refused by the
        host check).
      check: run :func:`check_emt_batch` whenever the function is called on a concrete
        batch (outside jit): MASK atoms, unsupported elements and too small an edge
        template raise there. Under jit nothing can be checked: MASK atoms then simply
        contribute nothing.

    Returns:
      ``energy_fn(batch) -> [g]`` eV per graph slot (padding slots 0), pure and jittable,
      float64 when x64 is enabled, with a host ``check(batch)`` attribute
      (:func:`check_emt_batch`). Cached per vocabulary, so jitted callers compile once.
    """
    tables = emt_tables(vocab, allow_unsupported=allow_unsupported)

    def energy_fn(batch: AtomsBatch) -> Array:
        if check and _checkable(batch):
            check_emt_batch(batch, vocab)
        e_atom = emt_atom_energies(batch, tables)
        energy = graph_sum(batch, e_atom)
        return jnp.where(jnp.asarray(batch.graph_mask, bool), energy, 0.0)

    energy_fn.check = functools.partial(check_emt_batch, vocab=vocab)
    energy_fn.__name__ = f"emt_{'_'.join(vocab.symbols)}"
    energy_fn.__qualname__ = energy_fn.__name__
    return energy_fn
