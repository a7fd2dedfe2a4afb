"""Diffusion over the periodic cell: a variance-preserving process on the *symmetric
lattice* (in log or linear coordinates) with a density-scaled prior, beside the position
SDEs of :mod:`agedi_jax.sde`.

Conventions: a cell ``L`` is ``[..., 3, 3]`` with the lattice vectors as **rows** (ASE,
:class:`~agedi_jax.batch.AtomsBatch`), Å; Cartesian positions are rows ``x = f L`` with
fractional coordinates ``f``. Time runs from ``t = 0`` (data) to ``t = 1`` (prior).

**Rotations are removed, not learned.** Every full-rank cell has the polar decomposition
``L = S R`` with ``S = (L Lᵀ)^{1/2}`` symmetric positive definite and ``R`` orthogonal
(:func:`polar_decomposition`). Rotating the crystal by ``Q`` (positions ``x ↦ x Qᵀ``)
maps ``L ↦ L Qᵀ = S (R Qᵀ)``: ``S`` is unchanged and so are the fractional coordinates
(``x Qᵀ = f L Qᵀ``). The *canonical frame* of a crystal is the one in which its cell is
``S`` (positions ``f S = x Rᵀ``); :func:`canonicalize` brings a batch there, first
negating the first periodic vector of a left-handed basis (the same crystal in another
basis; that fractional coordinate changes sign) so that ``R`` is a proper rotation and a chiral crystal is never mirrored. A process on
``S`` and ``f`` is therefore O(3)-invariant by construction, and the network only has
to be rotation-*equivariant* (:mod:`agedi_jax.nn.lattice_head`). ``S`` does depend on
the choice of basis (a unimodular ``M``: ``L ↦ M L``), so data cells are Niggli-reduced
on the host first (:func:`reduce_cell`; the most orthogonal basis, unique up to ties).

**The process** (:class:`LatticeSDE`) acts on the ``d = k(k+1)/2`` independent entries of
``S`` restricted to the ``k`` periodic axes (:func:`lattice_mask`: 6 entries for bulk,
the 3 in-plane entries of a layer with pbc (T, T, F), whose vacuum axis never moves),
through *lattice coordinates* ``Y`` (:func:`cell_to_coords` / :func:`coords_to_cell`),
with ``N`` atoms and the density length ``ℓ_N = c N^{1/k}``:

* ``param="log"`` (default): ``Y = log(S/ℓ_N)`` (matrix logarithm; ``S = ℓ_N exp(Y)``),
* ``param="linear"`` (MatterGen-like): ``Y = S`` (Å).

In either, ``Y`` follows the variance-preserving SDE ::

    dY = −½ β(t) (Y − μ) dt + σ_∞ sqrt(β(t)) dW_sym,

``μ = 0``, ``σ_∞ = σ_rel`` (log) or ``μ = ℓ_N I``, ``σ_∞ = σ_rel ℓ_N`` (linear), with
``β`` a VP schedule of :mod:`agedi_jax.sde` (``α(t) = ∫_0^t β``) and ``W_sym`` the
standard Brownian motion on symmetric matrices with the Frobenius inner product
(:func:`sym_normal`: diagonal entries of unit variance, off-diagonal entries of variance
½; its law is invariant under ``E ↦ Q E Qᵀ``, and ``log(Q S Qᵀ) = Q log(S) Qᵀ``, so
both parametrisations are O(3)-equivariant maps). The kernel is Gaussian in closed form,

    Y_t | Y_0 ~ N(μ + e^{−α/2} (Y_0 − μ), σ_∞² (1 − e^{−α}) I_sym),

and the prior ``N(μ, σ_∞² I_sym)`` is *density-scaled*: its central cell ``ℓ_N I`` has
volume (area) ``c^k N``, ``c^k`` the volume (area) per atom fitted from data
(:func:`fit_lattice`), so a sample of ``N`` atoms starts at a physically sensible
density whatever ``N``. Scores are Frobenius gradients on the masked symmetric subspace:
for a log density written as a function of the 9 entries, ``sym(∇)``; the kernel score is
``−(Y_t − mean)/std²`` and the ε-target of denoising score matching is the standard
normal draw itself (:func:`noise_cell`).

**Why this process** — measured with :func:`agedi_jax.data.bulk.load_bulk_csv` and
:func:`fit_lattice` (Niggli-reduced cells) on the CDVAE benchmark files in
``shared/data/bulk``:

* the density is tight and follows ``V ∝ N``: perov_5 (3 787 crystals, all N = 5)
  ``c = (V/N)^{1/3}`` = 2.41 Å with a log-spread of 7 %; carbon_24 (2 032 crystals,
  N = 6…24) ``c`` = 1.85 Å, log-spread 3.5 %, per-N ``c_N`` from 1.86 (N = 6) to
  1.83 Å (N = 24), correlation of ``log V/N`` with ``log N`` −0.11. A prior centred on
  ``c N^{1/3} I`` therefore starts at the right density for every N, and the network
  learns only the shape;
* the shape spread is moderate and standardises well: the RMS per coordinate of
  ``S/ℓ_N − I`` is 0.050 (perov_5, cubic) and 0.29 (carbon_24; 0.34 without Niggli
  reduction), of ``log(S/ℓ_N)`` 0.050 and 0.27 — so ``σ_rel`` from the fit makes the
  process a unit-scale diffusion, like the positions';
* positivity decides between the two coordinates: with the fitted carbon_24
  ``σ_rel ≈ 0.3`` the *linear* prior draws a non-positive-definite ``S`` 1.1 % of the
  time and a cell with an eigenvalue below 0.2 ℓ_N 6.5 % of the time (4 % non-PD at
  0.35; none in 2·10⁵ draws at 0.2), i.e. singular or inside-out crystals for the
  network and unbounded edge-image ranges. The *log* prior is positive definite by
  construction (smallest eigenvalue above 0.30 ℓ_N with probability 0.999 at σ = 0.3,
  against 0.44 ℓ_N in the carbon_24 data) and its log-volume ``k log ℓ_N + tr Y`` is
  Gaussian. Hence ``"log"`` is the default; ``"linear"`` (with :func:`spd_floor` at
  every sampler step) remains for comparison;
* DiffCSP's alternative, DDPM on the raw 9 entries of ``L`` towards ``N(0, I)``, has a
  prior unrelated to the density (median ``|det|`` ≈ 1 Å³ against ≈ 40–150 Å³ in the
  data), left-handed half of the time, and rotations among its degrees of freedom, so it
  needs an O(3)-equivariant score of a 9-vector; the symmetric lattice has 6, none of
  them a rotation.

**Positions where the cell moves** live in fractional coordinates on the torus: the cell
process keeps ``f`` (:func:`with_cell`), and a VE process on ``f`` uses the wrapped
normal of the unit lattice ``Z^k`` (:func:`fractional_wrapped_normal_score`, the
existing :func:`agedi_jax.sde.wrapped_normal_score` with the identity cell). Helpers
:func:`cart_to_frac`, :func:`frac_to_cart`, :func:`frac_score` (Cartesian gradients as
fractional ones), :func:`wrap_frac`, :func:`batch_fractional`.

**Layers** (pbc T, T, F; 2D materials such as C2DB, generated without template cells)
assume the package's convention: ``a`` and ``b`` in the xy plane, ``c = (0, 0, c_z)``,
``c_z > 0`` (:func:`check_cell_layout` raises a named ``ValueError`` otherwise, and for
any other partial periodicity). The polar factors are then block-diagonal
(:func:`periodic_polar`: the vacuum row is kept bit for bit), only the 2×2 in-plane block
of ``S`` diffuses (``d = 3``), the density prior uses the area per atom (``k = 2``,
``ℓ_N = c √N``), Niggli reduction becomes the 2D Gauss–Lagrange reduction of ``(a, b)``
with ``c`` untouched (:func:`reduce_cell`), and the edge templates have no images along
z. Positions are mixed: fractional on the in-plane torus, ``z`` Cartesian with the usual
zero-centre-of-mass VE noise (:func:`axis_lengths`, :func:`noise_fractional`,
:func:`eps_to_fractional`, the sampler's z prior in :func:`crystal_prior_sample`).
Preset ``c2db_cell``; ``experiments/two_d/README.md`` ("Generating the in-plane cell").

**Wiring** (``process.lattice``): training noises the cell first
(:func:`noise_cell`, then :func:`floor_cells`), then the fractional coordinates with
``σ_f = σ(t)/ℓ_N`` of the VE position SDE (:func:`noise_fractional`); the network's
Cartesian position output is read as ``ε̂_f = ε̂_x S/ℓ_N`` (:func:`eps_to_fractional`)
and its lattice output plus the Gaussian skip :func:`gaussian_cell_eps` as ``ε̂_L``.
Sampling starts from :func:`crystal_prior_sample` and steps cell, fractional positions
and types together (:class:`agedi_jax.samplers.LatticeJoint`). Edge templates are built
for the cell ``ℓ_N e^{−y_max} I`` (:func:`template_cell`), which covers every cell whose
eigenvalues :func:`floor_cells` keeps above that bound.

Everything is a pure, jittable function of arrays except :func:`fit_lattice`,
:func:`reduce_cell`, :func:`check_cell_layout` and :func:`template_cell` (host). :class:`LatticeSDE` is a frozen NamedTuple of Python
numbers registered as a static pytree, like the position SDEs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from agedi_jax.batch import AtomsBatch
from agedi_jax.geometry import free_atoms, inv3, remove_com, safe_cell
from agedi_jax.keys import atom_keys, atom_normal
from agedi_jax.sde import SDES, VPLinearSchedule, wrapped_normal_score

Array = jax.Array

__all__ = [
    "sym",
    "sym_normal",
    "polar_decomposition",
    "periodic_polar",
    "lattice_mask",
    "periodic_dim",
    "PARAMS",
    "LatticeSDE",
    "make_lattice_sde",
    "length_scale",
    "cell_to_coords",
    "coords_to_cell",
    "limit_mean",
    "stationary_std",
    "marginal",
    "kernel_sample",
    "kernel_score",
    "kernel_log_density",
    "eps_to_cell_score",
    "drift",
    "g2",
    "reverse_drift",
    "prior_coords",
    "prior_cell",
    "spd_floor",
    "cart_to_frac",
    "frac_to_cart",
    "frac_score",
    "wrap_frac",
    "fractional_wrapped_normal_score",
    "batch_fractional",
    "with_cell",
    "graph_lattice_mask",
    "canonicalize",
    "noise_cell",
    "cell_prior_sample",
    "kernel_std",
    "cell_floor",
    "Y_CAP",
    "floor_cells",
    "template_cell",
    "gaussian_cell_eps",
    "axis_lengths",
    "noise_fractional",
    "eps_to_fractional",
    "uniform_fractional",
    "crystal_prior_sample",
    "LatticeFit",
    "LAYER_PBC",
    "check_cell_layout",
    "reduce_cell",
    "fit_lattice",
]


# --------------------------------------------------------------------------------------
# Symmetric matrices and the polar decomposition
# --------------------------------------------------------------------------------------


def sym(m: Any) -> Array:
    """Symmetric part ``(M + Mᵀ)/2`` of ``[..., 3, 3]`` matrices (the orthogonal projection
    onto symmetric matrices in the Frobenius inner product)."""
    m = jnp.asarray(m)
    return 0.5 * (m + jnp.swapaxes(m, -1, -2))


def sym_normal(key: Array, shape: tuple[int, ...] = (), dtype: Any = jnp.float32) -> Array:
    """Standard normal on symmetric 3×3 matrices in the Frobenius metric, ``[*shape, 3, 3]``:
    ``sym(Z)`` with ``Z`` iid ``N(0, 1)``. Diagonal entries have variance 1, off-diagonal
    ones variance ½, so the coordinates in the orthonormal basis ``{e_ii, (e_ij + e_ji)/√2}``
    are iid ``N(0, 1)``; the law is invariant under ``E ↦ Q E Qᵀ`` for every orthogonal Q."""
    return sym(jax.random.normal(key, tuple(shape) + (3, 3), dtype))


def polar_decomposition(cell: Any, iters: int = 12) -> tuple[Array, Array]:
    """Left polar decomposition ``L = S R`` of full-rank cells ``[..., 3, 3]`` (rows =
    lattice vectors, Å).

    ``R`` (orthogonal, ``det R = sign det L``) is the limit of the determinant-scaled
    Newton iteration ``X ← ½(γ X + X^{−T}/γ)``, ``γ = |det X|^{−1/3}``, from ``X = L``
    (quadratic convergence; ``iters = 12`` reaches float64 rounding for condition numbers
    up to ~1e6); ``S = sym(L Rᵀ) = (L Lᵀ)^{1/2}``, symmetric positive definite, Å. Unlike
    an eigendecomposition of ``L Lᵀ`` this stays differentiable for cells with degenerate
    Gram eigenvalues (cubic cells).

    Returns:
      ``(S, R)``, both ``[..., 3, 3]``.
    """
    cell = jnp.asarray(cell)
    chex.assert_shape(cell, (..., 3, 3))
    x = cell
    for _ in range(iters):
        det = jnp.linalg.det(x)[..., None, None]
        gamma = jnp.abs(det) ** (-1.0 / 3.0)
        x = 0.5 * (gamma * x + jnp.swapaxes(inv3(x), -1, -2) / gamma)
    r = x
    s = sym(cell @ jnp.swapaxes(r, -1, -2))
    return s, r


def periodic_polar(cell: Any, mask: Any) -> tuple[Array, Array]:
    """Polar decomposition ``L = S R`` of the periodic block of cells ``[..., 3, 3]`` (Å):
    :func:`polar_decomposition` of the masked block (``mask`` a :func:`lattice_mask`
    ``[..., 3, 3]``; identity elsewhere), with ``S`` taking the cell's own entries and
    ``R`` the identity outside the block. For bulk (every entry masked) this is
    :func:`polar_decomposition` itself; for a layer (pbc T, T, F) with ``a``, ``b`` in the
    xy plane and ``c = (0, 0, c_z)``, ``c_z > 0``, it is the exact block-diagonal
    decomposition ``S = diag(S₂, c_z)``, ``R = diag(R₂, 1)``: the vacuum axis is returned
    bit for bit (no rounding of a 3×3 iteration leaks into it)."""
    cell = jnp.asarray(cell)
    mask = jnp.asarray(mask, bool)
    eye = jnp.eye(3, dtype=cell.dtype)
    s, r = polar_decomposition(jnp.where(mask, cell, eye))
    return jnp.where(mask, s, cell), jnp.where(mask, r, eye)


def lattice_mask(pbc: Any) -> Array:
    """``[..., 3, 3]`` bool: the entries of ``S`` that diffuse, ``pbc_i & pbc_j`` (all 9 for
    bulk, the in-plane 2×2 block for pbc (T, T, F), none for a cluster)."""
    pbc = jnp.asarray(pbc, bool)
    return pbc[..., :, None] & pbc[..., None, :]


def periodic_dim(mask: Any) -> Array:
    """Number ``k`` of periodic axes ``[...]`` (float) from a :func:`lattice_mask`."""
    return jnp.sum(jnp.diagonal(jnp.asarray(mask, bool), axis1=-2, axis2=-1), axis=-1).astype(jnp.result_type(float))


# --------------------------------------------------------------------------------------
# The process
# --------------------------------------------------------------------------------------

PARAMS = ("log", "linear")
"""Lattice coordinates of :class:`LatticeSDE` (module docstring)."""


class LatticeSDE(NamedTuple):
    """VP process on the symmetric lattice with a density-scaled limit (module docstring).

    Attributes:
      schedule: a VP schedule of :mod:`agedi_jax.sde` (:class:`VPLinearSchedule` or
        :class:`VPCosineSchedule`): ``β(t)`` and ``α(t) = ∫_0^t β``.
      scale: ``c`` (Å): the limit cell is ``ℓ_N I``, ``ℓ_N = c N^{1/k}`` on the ``k``
        periodic axes, so ``c^k`` is the volume (k = 3) or area (k = 2) per atom.
      sigma_rel: stationary standard deviation per orthonormal coordinate of
        ``log(S/ℓ_N)`` (``"log"``) or of ``S/ℓ_N`` (``"linear"``), dimensionless.
      param: ``"log"`` (default: ``Y = log(S/ℓ_N)``, every cell positive definite) or
        ``"linear"`` (``Y = S``, MatterGen-like).
    """

    schedule: Any = VPLinearSchedule()
    scale: float = 1.0
    sigma_rel: float = 0.2
    param: str = "log"

    def validate(self) -> None:
        allowed = tuple(SDES["vp"][1].values())
        if not isinstance(self.schedule, allowed):
            raise TypeError(f"LatticeSDE needs a VP schedule ({', '.join(c.__name__ for c in allowed)}), "
                            f"got {type(self.schedule).__name__}")
        self.schedule.validate()
        for name in ("scale", "sigma_rel"):
            v = getattr(self, name)
            if isinstance(v, (int, float)) and not v > 0:
                raise ValueError(f"LatticeSDE: {name} must be > 0, got {v}")
        if self.param not in PARAMS:
            raise ValueError(f"LatticeSDE: param must be one of {PARAMS}, got {self.param!r}")


try:
    jax.tree_util.register_static(LatticeSDE)
except ValueError:  # already registered (a module reload)
    pass


def make_lattice_sde(schedule: str = "linear", *, scale: float, sigma_rel: float = 0.2, param: str = "log",
                     **params: float) -> LatticeSDE:
    """Build and validate a :class:`LatticeSDE` from a VP schedule name (``"linear"``,
    ``"cosine"``) and its fields (``beta_min``, ``beta_max`` / ``s``, ``alpha_max``)."""
    schedules = SDES["vp"][1]
    if schedule not in schedules:
        raise ValueError(f"lattice schedule {schedule!r} unknown; choose one of {sorted(schedules)}")
    cls = schedules[schedule]
    unknown = sorted(set(params) - set(cls._fields))
    if unknown:
        raise ValueError(f"{schedule!r} schedule: no parameter(s) {unknown}; valid: {list(cls._fields)}")
    out = LatticeSDE(cls(**{k: float(v) for k, v in params.items()}), float(scale), float(sigma_rel), param)
    out.validate()
    return out


def length_scale(sde: LatticeSDE, n_atoms: Any, mask: Any) -> Array:
    """``ℓ_N = c N^{1/k}`` (Å) per cell ``[...]``; 0 where ``k = 0``. ``n_atoms`` ``[...]``,
    ``mask`` ``[..., 3, 3]``."""
    k = periodic_dim(mask)
    n = jnp.maximum(jnp.asarray(n_atoms, k.dtype), 1.0)
    return jnp.where(k > 0, sde.scale * n ** (1.0 / jnp.maximum(k, 1.0)), 0.0)


def _sym_fn(m: Array, fn) -> Array:
    """``fn`` applied to the eigenvalues of symmetric ``[..., 3, 3]`` (forward only: the
    gradient of an eigendecomposition is undefined at degenerate eigenvalues)."""
    w, v = jnp.linalg.eigh(sym(m))
    return jnp.einsum("...ij,...j,...kj->...ik", v, fn(w), v)


def cell_to_coords(sde: LatticeSDE, s: Any, n_atoms: Any, mask: Any) -> Array:
    """Lattice coordinates ``Y`` ``[..., 3, 3]`` of symmetric cells ``S``: ``"log"``:
    ``log(S/ℓ_N)`` on the masked block (a block-diagonal ``S`` is assumed); ``"linear"``:
    ``S``. Unmasked entries are ``S``'s own (they never move). Forward only."""
    s = jnp.asarray(s)
    mask = jnp.asarray(mask, bool)
    if sde.param == "linear":
        return s
    ls = length_scale(sde, n_atoms, mask).astype(s.dtype)
    ls = jnp.where(ls > 0, ls, 1.0)[..., None, None]
    eye = jnp.eye(3, dtype=s.dtype)
    a = _sym_fn(jnp.where(mask, s / ls, eye), lambda w: jnp.log(jnp.maximum(w, jnp.finfo(s.dtype).tiny)))
    return jnp.where(mask, a, s)


def coords_to_cell(sde: LatticeSDE, y: Any, n_atoms: Any, mask: Any) -> Array:
    """Inverse of :func:`cell_to_coords`: ``S = ℓ_N exp(Y)`` on the masked block (always
    positive definite) for ``"log"``, ``S = Y`` for ``"linear"``; Å. Forward only."""
    y = jnp.asarray(y)
    mask = jnp.asarray(mask, bool)
    if sde.param == "linear":
        return y
    ls = length_scale(sde, n_atoms, mask).astype(y.dtype)[..., None, None]
    e = _sym_fn(jnp.where(mask, y, 0.0), jnp.exp)
    return jnp.where(mask, ls * e, y)


def limit_mean(sde: LatticeSDE, n_atoms: Any, mask: Any) -> Array:
    """Limit (prior) mean of the coordinates ``[..., 3, 3]`` on the masked block: 0 for
    ``"log"`` (the cell ``ℓ_N I``), ``ℓ_N I`` (Å) for ``"linear"``; zero outside it."""
    mask = jnp.asarray(mask, bool)
    ls = length_scale(sde, n_atoms, mask)
    if sde.param == "log":
        return jnp.zeros(mask.shape, ls.dtype)
    return jnp.where(mask, ls[..., None, None] * jnp.eye(3, dtype=ls.dtype), 0.0)


def stationary_std(sde: LatticeSDE, n_atoms: Any, mask: Any) -> Array:
    """Prior standard deviation per orthonormal coordinate ``[...]``: ``σ_rel`` for
    ``"log"``, ``σ_rel ℓ_N`` (Å) for ``"linear"``; 0 for cells without periodic axes."""
    ls = length_scale(sde, n_atoms, mask)
    if sde.param == "log":
        return jnp.where(ls > 0, sde.sigma_rel, 0.0).astype(ls.dtype)
    return sde.sigma_rel * ls


def marginal(sde: LatticeSDE, y0: Any, t: Any, n_atoms: Any, mask: Any) -> tuple[Array, Array]:
    """Kernel ``p_0t(Y | Y_0)`` of the coordinates: ``(mean [..., 3, 3], std [...])``.

    ``mean = μ + e^{−α(t)/2}(Y_0 − μ)`` on the masked entries (``μ`` :func:`limit_mean`)
    and ``Y_0`` elsewhere (the fixed axes); ``std = σ_∞ sqrt(1 − e^{−α(t)})`` per
    orthonormal coordinate (``σ_∞`` :func:`stationary_std`). ``t`` and ``n_atoms``
    ``[...]`` (one per cell)."""
    sde.validate()
    y0 = jnp.asarray(y0)
    chex.assert_shape(y0, (..., 3, 3))
    mask = jnp.asarray(mask, bool)
    t = jnp.asarray(t, y0.dtype)
    alpha = sde.schedule.alpha(t)
    mu = limit_mean(sde, n_atoms, mask).astype(y0.dtype)
    m = jnp.exp(-0.5 * alpha)[..., None, None]
    mean = jnp.where(mask, mu + m * (y0 - mu), y0)
    std = stationary_std(sde, n_atoms, mask).astype(y0.dtype) * jnp.sqrt(-jnp.expm1(-alpha))
    return mean, std


def kernel_sample(key: Array, sde: LatticeSDE, y0: Any, t: Any, n_atoms: Any, mask: Any) -> tuple[Array, Array, Array]:
    """Draw ``Y_t ~ p_0t(· | Y_0)``.

    Returns:
      ``(y_t [..., 3, 3], eps [..., 3, 3], std [...])``: ``eps`` is the masked
      :func:`sym_normal` draw (the ε-target, ``−std ·`` the kernel score); unmasked
      entries of ``y_t`` equal ``Y_0``.
    """
    y0 = jnp.asarray(y0)
    mask = jnp.asarray(mask, bool)
    mean, std = marginal(sde, y0, t, n_atoms, mask)
    eps = jnp.where(mask, sym_normal(key, y0.shape[:-2], y0.dtype), 0.0)
    return mean + std[..., None, None] * eps, eps, std


def kernel_score(sde: LatticeSDE, y: Any, y0: Any, t: Any, n_atoms: Any, mask: Any) -> Array:
    """Score ``∇_Y log p_0t(Y | Y_0) = −(Y − mean)/std²`` ``[..., 3, 3]``: the Frobenius
    gradient on the masked symmetric subspace, 0 on fixed entries (Å⁻¹ for ``"linear"``)."""
    y = jnp.asarray(y)
    mask = jnp.asarray(mask, bool)
    mean, std = marginal(sde, y0, t, n_atoms, mask)
    v = jnp.maximum(std * std, jnp.finfo(y.dtype).tiny)[..., None, None]
    return jnp.where(mask, -sym(y - mean) / v, 0.0)


def kernel_log_density(sde: LatticeSDE, y: Any, y0: Any, t: Any, n_atoms: Any, mask: Any) -> Array:
    """``log p_0t(Y | Y_0)`` ``[...]`` with respect to the Lebesgue measure of the
    orthonormal coordinates of the masked symmetric block (``d = k(k+1)/2`` of them):
    ``−‖Y − mean‖²_F/(2 std²) − (d/2) log(2π std²)``."""
    y = jnp.asarray(y)
    mask = jnp.asarray(mask, bool)
    mean, std = marginal(sde, y0, t, n_atoms, mask)
    k = periodic_dim(mask)
    d = 0.5 * k * (k + 1.0)
    r2 = jnp.sum(jnp.where(mask, (y - mean) ** 2, 0.0), axis=(-1, -2))
    v = std * std
    return -0.5 * r2 / v - 0.5 * d * jnp.log(2.0 * jnp.pi * v)


def eps_to_cell_score(eps: Any, std: Any) -> Array:
    """Score ``−ε/std`` ``[..., 3, 3]`` from a noise prediction ``ε`` and ``std`` ``[...]``;
    0 where ``std`` is 0."""
    eps = jnp.asarray(eps)
    sd = jnp.asarray(std, eps.dtype)[..., None, None]
    return jnp.where(sd > 0, -eps / jnp.where(sd > 0, sd, 1.0), 0.0)


def drift(sde: LatticeSDE, y: Any, t: Any, n_atoms: Any, mask: Any) -> Array:
    """Forward drift ``f = −½ β(t)(Y − μ)`` (per unit time) on the masked entries."""
    sde.validate()
    y = jnp.asarray(y)
    mask = jnp.asarray(mask, bool)
    beta = sde.schedule.beta(jnp.asarray(t, y.dtype))[..., None, None]
    mu = limit_mean(sde, n_atoms, mask).astype(y.dtype)
    return jnp.where(mask, -0.5 * beta * (y - mu), 0.0)


def g2(sde: LatticeSDE, t: Any, n_atoms: Any, mask: Any) -> Array:
    """Squared diffusion ``g² = β(t) σ_∞²`` (per unit time) ``[...]``."""
    sde.validate()
    t = jnp.asarray(t, jnp.result_type(float))
    return sde.schedule.beta(t) * stationary_std(sde, n_atoms, mask).astype(t.dtype) ** 2


def reverse_drift(sde: LatticeSDE, y: Any, t: Any, score: Any, n_atoms: Any, mask: Any,
                  probability_flow: bool = False) -> Array:
    """Drift of the reverse-time SDE ``f − g² ∇ log p_t`` (or of the probability-flow ODE,
    ``f − ½ g² ∇ log p_t``) on the masked entries, ``[..., 3, 3]``. A reverse
    Euler–Maruyama step from ``t`` to ``t − h`` is ``Y ← Y − h·drift + sqrt(h g²) E``
    with ``E`` a masked :func:`sym_normal` draw (no noise for the ODE)."""
    y = jnp.asarray(y)
    mask = jnp.asarray(mask, bool)
    factor = 0.5 if probability_flow else 1.0
    gg = g2(sde, t, n_atoms, mask).astype(y.dtype)[..., None, None]
    out = drift(sde, y, t, n_atoms, mask) - factor * gg * sym(jnp.asarray(score, y.dtype))
    return jnp.where(mask, out, 0.0)


def prior_coords(key: Array, sde: LatticeSDE, n_atoms: Any, mask: Any, template: Any) -> Array:
    """Prior draw of the coordinates, ``μ + σ_∞ E`` on the masked entries and
    ``template``'s entries elsewhere (``[..., 3, 3]``; the fixed axes of a layer)."""
    template = jnp.asarray(template)
    mask = jnp.asarray(mask, bool)
    mu = limit_mean(sde, n_atoms, mask).astype(template.dtype)
    sd = stationary_std(sde, n_atoms, mask).astype(template.dtype)[..., None, None]
    eps = sym_normal(key, template.shape[:-2], template.dtype)
    return jnp.where(mask, mu + sd * eps, template)


def prior_cell(key: Array, sde: LatticeSDE, n_atoms: Any, mask: Any, template: Any) -> Array:
    """Prior draw of symmetric cells ``[..., 3, 3]`` (Å): :func:`prior_coords` mapped by
    :func:`coords_to_cell`; ``template`` (a symmetric cell) supplies the fixed entries."""
    template = jnp.asarray(template)
    y = prior_coords(key, sde, n_atoms, mask, template)
    return coords_to_cell(sde, y, n_atoms, mask)


def spd_floor(s: Any, mask: Any, floor: Any) -> Array:
    """``S`` with the eigenvalues of its masked block raised to at least ``floor`` (Å,
    ``[...]`` or scalar), others unchanged: the nearest (Frobenius) such matrix. Every
    interplanar spacing of a cell ``S`` is at least its smallest eigenvalue, so a floor
    bounds the periodic images an edge template needs; for ``"linear"`` sampling."""
    s = jnp.asarray(s)
    mask = jnp.asarray(mask, bool)
    eye = jnp.eye(3, dtype=s.dtype)
    floor = jnp.asarray(floor, s.dtype)[..., None]
    fixed = _sym_fn(jnp.where(mask, s, eye), lambda w: jnp.maximum(w, floor))
    return jnp.where(mask, fixed, s)


# --------------------------------------------------------------------------------------
# Fractional coordinates
# --------------------------------------------------------------------------------------


def cart_to_frac(x: Any, cell: Any) -> Array:
    """Fractional coordinates ``f = x L⁻¹`` ``[..., 3]`` of Cartesian rows ``x`` (Å) in
    full-rank cells ``cell`` ``[..., 3, 3]`` (broadcast per row)."""
    x = jnp.asarray(x)
    return jnp.einsum("...i,...ij->...j", x, inv3(jnp.asarray(cell, x.dtype)))


def frac_to_cart(f: Any, cell: Any) -> Array:
    """Cartesian rows ``x = f L`` (Å) ``[..., 3]``."""
    f = jnp.asarray(f)
    return jnp.einsum("...i,...ij->...j", f, jnp.asarray(cell, f.dtype))


def frac_score(score_x: Any, cell: Any) -> Array:
    """A Cartesian score (gradient) ``∇_x`` ``[..., 3]`` (Å⁻¹) as the gradient with respect
    to fractional coordinates, ``∇_f = ∇_x Lᵀ`` (rows; ``x = f L``), per unit fractional
    coordinate. The inverse is ``∇_x = ∇_f L⁻ᵀ``. Use it to compare a network's Cartesian
    vector output with a fractional wrapped-normal target."""
    score_x = jnp.asarray(score_x)
    return jnp.einsum("...j,...ij->...i", score_x, jnp.asarray(cell, score_x.dtype))


def wrap_frac(f: Any, pbc: Any) -> Array:
    """``f − ⌊f⌋`` along periodic axes (into ``[0, 1)``), unchanged elsewhere."""
    f = jnp.asarray(f)
    return jnp.where(jnp.asarray(pbc, bool), f - jnp.floor(f), f)


def fractional_wrapped_normal_score(d: Any, std: Any, pbc: Any, images: int = 2) -> Array:
    """Score of the wrapped normal on the unit torus ``∇_f log Σ_{m ∈ Z^k} N(d − m; 0,
    std² I)`` ``[n, 3]`` (per unit fractional coordinate) for displacements ``d`` ``[n, 3]``
    from the kernel mean, fractional ``std`` ``[n]`` > 0 and ``pbc`` ``[n, 3]``;
    Gaussian (``−d/std²``) along non-periodic axes. This is
    :func:`agedi_jax.sde.wrapped_normal_score` with the identity cell, whose
    real-space / Poisson switch keeps it accurate for every ``std``."""
    d = jnp.asarray(d)
    chex.assert_shape(d, (None, 3))
    n = d.shape[0]
    eye = jnp.broadcast_to(jnp.eye(3, dtype=d.dtype), (n, 3, 3))
    return wrapped_normal_score(d, std, eye, pbc, images)


# --------------------------------------------------------------------------------------
# On a batch
# --------------------------------------------------------------------------------------


def graph_lattice_mask(batch: AtomsBatch) -> Array:
    """``[g, 3, 3]`` bool :func:`lattice_mask` of every real graph (padding graphs: none)."""
    gm = jnp.asarray(batch.graph_mask, bool)
    return lattice_mask(batch.pbc) & gm[:, None, None]


def batch_fractional(batch: AtomsBatch, positions: Any = None) -> Array:
    """Fractional coordinates ``[n, 3]`` of the atoms of periodic graphs (not wrapped);
    atoms of graphs without periodic axes keep their Cartesian coordinates (identity
    cell, :func:`agedi_jax.geometry.safe_cell`)."""
    x = jnp.asarray(batch.positions if positions is None else positions)
    _, inv = safe_cell(batch, x.dtype)
    return jnp.einsum("ni,nij->nj", x, inv[batch.graph_index])


def with_cell(batch: AtomsBatch, cell: Any) -> AtomsBatch:
    """The batch with cells ``cell`` ``[g, 3, 3]`` (Å) on its periodic graphs and every atom
    of those graphs moved with the cell so that its fractional coordinates are kept
    (``x ← f L_new``); graphs without periodic axes are returned unchanged. Edges stay
    valid (:func:`agedi_jax.edges.edge_vectors` recomputes vectors from the cell) as long
    as the template's image range covers the new cell at the cutoff."""
    cell = jnp.asarray(cell, jnp.asarray(batch.positions).dtype)
    chex.assert_shape(cell, (batch.num_graphs, 3, 3))
    per = jnp.any(jnp.asarray(batch.pbc, bool), -1) & jnp.asarray(batch.graph_mask, bool)
    new_cell = jnp.where(per[:, None, None], cell, jnp.asarray(batch.cell, cell.dtype))
    f = batch_fractional(batch)
    gi = batch.graph_index
    x = jnp.where(per[gi][:, None], jnp.einsum("ni,nij->nj", f, new_cell[gi]), jnp.asarray(batch.positions, cell.dtype))
    return batch._replace(positions=x, cell=new_cell)


def canonicalize(batch: AtomsBatch) -> tuple[AtomsBatch, Array]:
    """Rotate every periodic graph into its canonical frame (cell ``S``, positions ``f S``).

    A left-handed cell is first replaced by a right-handed basis of the same lattice, its
    first periodic lattice vector negated (a unimodular change of basis; that fractional
    coordinate changes sign), so the crystal is only *rotated* (``det R = +1``), never
    mirrored, and the vacuum axis of a layer keeps its direction. Graphs without periodic
    axes are unchanged. A layer (pbc T, T, F; ``a``, ``b`` in the xy plane, ``c`` along +z,
    :func:`check_cell_layout`) is rotated about z only: its ``c`` row and every z
    coordinate are kept exactly (:func:`periodic_polar`).

    Returns:
      ``(batch, R)``: ``R`` ``[g, 3, 3]`` the proper rotation with ``L' = S R``
      (``L'`` the right-handed basis; identity for non-periodic graphs), so the new
      positions are ``x Rᵀ``.
    """
    cell, _ = safe_cell(batch, jnp.asarray(batch.positions).dtype)
    pbc = jnp.asarray(batch.pbc, bool)
    per = jnp.any(pbc, -1) & jnp.asarray(batch.graph_mask, bool)
    eye = jnp.eye(3, dtype=cell.dtype)
    safe = jnp.where(per[:, None, None], cell, eye)
    first = jnp.argmax(pbc, axis=-1)  # first periodic axis
    left = jnp.linalg.det(safe) < 0
    flip = jnp.where(left[:, None] & (jnp.arange(3)[None, :] == first[:, None]), -1.0, 1.0).astype(cell.dtype)
    right = flip[:, :, None] * safe
    s, r = periodic_polar(right, lattice_mask(pbc))
    # Same Cartesian positions in the right-handed basis; with_cell then maps f' to f' S.
    flipped = batch._replace(cell=jnp.where(per[:, None, None], right, cell),
                             positions=jnp.asarray(batch.positions, cell.dtype))
    return with_cell(flipped, s), jnp.where(per[:, None, None], r, eye)


def _graph_times(batch: AtomsBatch, t: Any, dtype: Any) -> Array:
    t = jnp.asarray(t, dtype)
    if t.ndim == 0:
        return jnp.broadcast_to(t, (batch.num_graphs,))
    chex.assert_shape(t, (batch.num_graphs,))
    return t


def noise_cell(key: Array, sde: LatticeSDE, batch: AtomsBatch, t: Any) -> tuple[AtomsBatch, Array, Array]:
    """Noise the cells of a batch: ``Y_t ~ p_0t(· | Y_0)`` per graph in lattice coordinates
    (:func:`cell_to_coords` of the canonical cell), atoms carried along at fixed fractional
    coordinates (:func:`with_cell`).

    ``S_0`` is the symmetric polar factor of each (right-handed) cell, so the input need
    not be canonical; the output is in the canonical frame (cell ``S_t``, positions
    ``f S_t``). Only the entries of :func:`graph_lattice_mask` move.

    Args:
      key: PRNG key (one :func:`sym_normal` draw per graph slot).
      sde: the lattice process.
      batch: clean batch; ``N`` is ``batch.n_node``.
      t: ``[g]`` per-graph times in (0, 1] (or a scalar).
    Returns:
      ``(batch_t, eps [g, 3, 3], std [g])``: ``eps`` the ε-target in coordinates
      (``−std ·`` the kernel score; 0 on fixed entries and non-periodic graphs) and
      ``std`` the kernel standard deviation (:func:`marginal`).
    """
    canon, _ = canonicalize(batch)
    s0 = jnp.asarray(canon.cell)
    mask = graph_lattice_mask(batch)
    n = batch.n_node
    y0 = cell_to_coords(sde, s0, n, mask)
    y_t, eps, std = kernel_sample(key, sde, y0, _graph_times(batch, t, s0.dtype), n, mask)
    return with_cell(canon, coords_to_cell(sde, y_t, n, mask)), eps, std


def cell_prior_sample(key: Array, sde: LatticeSDE, batch: AtomsBatch) -> AtomsBatch:
    """Draw the cells of the periodic graphs from the prior (:func:`prior_cell`, ``N =
    batch.n_node``), atoms kept at their fractional coordinates; the fixed axes of a layer
    keep the template's entries (its canonical ``S``)."""
    canon, _ = canonicalize(batch)
    mask = graph_lattice_mask(batch)
    cell = prior_cell(key, sde, batch.n_node, mask, canon.cell)
    return with_cell(canon, cell)


def kernel_std(sde: LatticeSDE, t: Any, n_atoms: Any, mask: Any) -> Array:
    """Kernel standard deviation ``σ_∞ sqrt(1 − e^{−α(t)})`` ``[...]`` per orthonormal
    lattice coordinate (:func:`marginal`'s ``std``) without a ``Y_0``."""
    sde.validate()
    t = jnp.asarray(t, jnp.result_type(float))
    alpha = sde.schedule.alpha(t)
    return stationary_std(sde, n_atoms, mask).astype(t.dtype) * jnp.sqrt(-jnp.expm1(-alpha))


def cell_floor(sde: LatticeSDE, n_atoms: Any, mask: Any, y_max: float) -> Array:
    """``ℓ_N e^{−y_max}`` (Å) ``[...]``: the smallest eigenvalue a cell may have while
    diffusing (:func:`spd_floor`), so that an edge template built for it
    (:func:`template_cell`) always holds every periodic image within the cutoff."""
    return length_scale(sde, n_atoms, mask) * float(np.exp(-y_max))


Y_CAP = 3.0
"""Largest eigenvalue of a diffusing cell's log coordinates: ``S ≤ ℓ_N e^{Y_CAP}`` (≈ 20
ℓ_N), a bound no crystal of the data comes near (its largest is ≈ +1); it only keeps a
badly trained or coarsely stepped sampler finite (:func:`floor_cells`)."""


def floor_cells(sde: LatticeSDE, batch: AtomsBatch, y_max: float) -> AtomsBatch:
    """The batch with the eigenvalues of every periodic cell (a symmetric ``S``, canonical
    frame) clamped into ``[ℓ_N e^{−y_max}, ℓ_N e^{Y_CAP}]`` (the floor is
    :func:`cell_floor`), atoms kept at their fractional coordinates (:func:`with_cell`).
    Cells inside the bounds are returned bitwise unchanged."""
    mask = graph_lattice_mask(batch)
    s = jnp.asarray(batch.cell, jnp.asarray(batch.positions).dtype)
    floor = cell_floor(sde, batch.n_node, mask, y_max).astype(s.dtype)
    ls = length_scale(sde, batch.n_node, mask).astype(s.dtype)
    cap = ls * float(np.exp(Y_CAP))
    # outside the periodic block (a layer's vacuum axis) a neutral ℓ_N, strictly inside the
    # bounds, so that only the block's own eigenvalues decide and are clamped
    neutral = jnp.where(mask, s, jnp.eye(3, dtype=s.dtype) * jnp.where(ls > 0, ls, 1.0)[:, None, None])
    w = jnp.linalg.eigvalsh(neutral)
    bad = jnp.any(mask, (-1, -2)) & ((jnp.min(w, -1) < floor) | (jnp.max(w, -1) > cap))
    clamped = _sym_fn(neutral, lambda v: jnp.clip(v, floor[..., None], cap[..., None]))
    fixed = jnp.where(bad[:, None, None], jnp.where(mask, clamped, s), s)
    return with_cell(batch, fixed)


def gaussian_cell_eps(sde: LatticeSDE, batch: AtomsBatch, t: Any) -> Array:
    """The exact lattice ε-prediction ``[g, 3, 3]`` for Gaussian data with the prior's
    own mean and spread, ``E[ε | Y_t] = std (Y_t − μ)/σ_∞²`` (data ``Y_0 ~ N(μ, σ_∞²)``:
    the fitted σ is the data's RMS, so ``Y_t`` has variance σ_∞² at every t), added to the
    lattice head's output as a skip connection (EDM-style preconditioning, as
    :func:`agedi_jax.scores.gaussian_skip` for positions): the head learns the residual,
    and the cell score is the prior's at high noise.

    ``Y_t`` is read from the right polar factor ``(Lᵀ L)^{1/2}`` of each cell, the lattice
    tensor in the frame of the positions (``S`` itself in the canonical frame), so the
    output rotates with the crystal. 0 on fixed entries and graphs without periodic axes.
    ``t`` ``[g]`` or scalar."""
    dtype = jnp.asarray(batch.positions).dtype
    cell, _ = safe_cell(batch, dtype)
    mask = graph_lattice_mask(batch)
    s, r = periodic_polar(cell, mask)
    s_right = sym(jnp.swapaxes(r, -1, -2) @ s @ r)
    n = batch.n_node
    y = cell_to_coords(sde, s_right, n, mask)
    std = kernel_std(sde, _graph_times(batch, t, dtype), n, mask).astype(dtype)
    sd = stationary_std(sde, n, mask).astype(dtype)
    coef = jnp.where(sd > 0, std / jnp.where(sd > 0, sd * sd, 1.0), 0.0)
    mu = limit_mean(sde, n, mask).astype(dtype)
    return jnp.where(mask, coef[:, None, None] * (y - mu), 0.0)


def template_cell(scale: float, n_atoms: int, pbc: Any, y_max: float) -> np.ndarray:
    """Host: the cell ``d_min I`` (Å) ``[3, 3]`` whose image range
    (:func:`agedi_jax.edges.image_range`) covers every cell with smallest eigenvalue
    ``≥ d_min = ℓ_N e^{−y_max}`` — every interplanar spacing of a symmetric cell is at
    least its smallest eigenvalue. Build edge templates of diffusing cells with it. For a
    layer (pbc T, T, F) ``ℓ_N = c √N`` and the image range is 0 along z (non-periodic
    axes never get images), so the template's z entry only keeps it full rank."""
    pbc = np.asarray(pbc, bool)
    k = max(int(pbc.sum()), 1)
    d_min = float(scale) * max(int(n_atoms), 1) ** (1.0 / k) * float(np.exp(-y_max))
    return np.eye(3) * d_min


def _graph_length(sde: LatticeSDE, batch: AtomsBatch, dtype: Any) -> Array:
    """``ℓ_N`` ``[g]`` (1 for graphs without periodic axes)."""
    ls = length_scale(sde, batch.n_node, graph_lattice_mask(batch)).astype(dtype)
    return jnp.where(ls > 0, ls, 1.0)


def axis_lengths(sde: LatticeSDE, batch: AtomsBatch, dtype: Any = None) -> Array:
    """Length (Å) ``[g, 3]`` of one unit of each position coordinate the cell process
    works in: ``ℓ_N`` along periodic axes (fractional coordinates on the torus, noise
    ``σ_f = σ/ℓ_N``) and the cell's own diagonal entry ``L_ii`` along the non-periodic
    axes of a periodic graph — ``c_z`` for the vacuum axis of a layer in the package's
    convention (:func:`check_cell_layout`), whose fractional coordinate ``f_c = z/c_z`` is
    the Cartesian ``z`` in units of ``c_z``, so a step of ``σ/c_z`` there is the usual
    Cartesian step ``σ`` of the position SDE; 1 for graphs without periodic axes."""
    dtype = jnp.asarray(batch.positions).dtype if dtype is None else dtype
    ls = _graph_length(sde, batch, dtype)
    cell, _ = safe_cell(batch, dtype)
    diag = jnp.diagonal(cell, axis1=-2, axis2=-1)
    pbc = jnp.asarray(batch.pbc, bool)
    per = jnp.any(pbc, -1, keepdims=True)
    return jnp.where(pbc, ls[:, None], jnp.where(per, diag, 1.0))


def noise_fractional(key: Array, pos_sde: Any, sde: LatticeSDE, batch: AtomsBatch, t: Any) -> tuple[AtomsBatch, Array, Array]:
    """Noise the fractional coordinates of the free atoms on the torus at the batch's
    (already noised) cells: ``f_t = wrap(f_0 + σ_f ε)`` with the fractional standard
    deviation ``σ_f = σ(t)/ℓ_N`` (``σ(t)`` of the VE position SDE in Å, ``ℓ_N`` of the
    lattice process), positions ``x_t = f_t S``.

    Along the vacuum axis of a layer (pbc T, T, F, :func:`check_cell_layout`) ``z`` is
    noised in Cartesian coordinates as by the position SDE without a cell,
    ``z_t = z_0 + σ(t) ε_z`` with ``ε_z`` projected onto the zero-centre-of-mass subspace
    (:func:`agedi_jax.geometry.remove_com`), and its ε-target is that draw
    (:func:`axis_lengths`).

    Returns:
      ``(batch_t, eps [n, 3], std_f [n])``: the ε-target ``−σ_f ·`` the wrapped-normal
      score on the unit torus (:func:`fractional_wrapped_normal_score`) along periodic
      axes and the projected Gaussian draw along a layer's z (0 on fixed and padding
      atoms), and ``σ_f`` per atom (dimensionless, of the periodic axes).
    """
    x = jnp.asarray(batch.positions)
    dtype = x.dtype
    gi = batch.graph_index
    t_atom = _graph_times(batch, t, dtype)[gi]
    sigma = pos_sde.std(t_atom)
    std_f = sigma / _graph_length(sde, batch, dtype)[gi]
    std_axes = sigma[:, None] / axis_lengths(sde, batch, dtype)[gi]  # [n, 3]
    free = free_atoms(batch)
    # zero-CoM projection along com axes (a layer's z; a no-op for bulk crystals)
    eps = remove_com(batch, jnp.where(free[:, None], atom_normal(key, batch, dtype), 0.0))
    d = std_axes * eps
    pbc = jnp.asarray(batch.pbc, bool)[gi]
    f0 = batch_fractional(batch)
    f_t = jnp.where(free[:, None], wrap_frac(f0 + d, pbc), f0)
    cell = jnp.asarray(batch.cell, dtype)[gi]
    x_t = jnp.where(jnp.asarray(batch.node_mask, bool)[:, None], frac_to_cart(f_t, cell), x)
    ws = jax.lax.stop_gradient(fractional_wrapped_normal_score(d, std_f, pbc))
    target = jnp.where(free[:, None], jnp.where(pbc, -std_f[:, None] * ws, eps), 0.0)
    return batch._replace(positions=x_t), target, std_f


def eps_to_fractional(eps_x: Any, batch: AtomsBatch, sde: LatticeSDE) -> Array:
    """A network's Cartesian noise prediction ``ε̂_x`` ``[n, 3]`` (dimensionless, score
    ``−ε̂_x/σ``) as the fractional one ``ε̂_f = ε̂_x S/ℓ_N`` (score ``−ε̂_f/σ_f``, ``σ_f =
    σ/ℓ_N``): the Cartesian score ``s_x`` is the fractional ``s_f = s_x Sᵀ``
    (:func:`frac_score`) on the batch's cells ``S``. Along the non-periodic axis of a
    layer (z, Cartesian there: :func:`noise_fractional`) ``ε̂_x`` itself; for a
    block-diagonal layer cell the in-plane entries only involve ``ε̂_x``'s in-plane ones."""
    eps_x = jnp.asarray(eps_x)
    gi = batch.graph_index
    ls = _graph_length(sde, batch, eps_x.dtype)[gi]
    frac = frac_score(eps_x, jnp.asarray(batch.cell, eps_x.dtype)[gi]) / ls[:, None]
    return jnp.where(jnp.asarray(batch.pbc, bool)[gi], frac, eps_x)


def uniform_fractional(key: Array, batch: AtomsBatch) -> AtomsBatch:
    """Free atoms of periodic graphs placed uniformly on the torus (fractional coordinates
    ``U[0, 1)`` along periodic axes, keyed per atom by graph slot and index,
    :func:`agedi_jax.keys.atom_keys`); other atoms and padding unchanged."""
    x = jnp.asarray(batch.positions)
    dtype = x.dtype
    u = jax.vmap(lambda k: jax.random.uniform(k, (3,), dtype))(atom_keys(key, batch))
    gi = batch.graph_index
    pbc = jnp.asarray(batch.pbc, bool)[gi]
    f = jnp.where(pbc, u, batch_fractional(batch))
    move = free_atoms(batch) & jnp.any(pbc, -1)
    new = jnp.where(move[:, None], frac_to_cart(f, jnp.asarray(batch.cell, dtype)[gi]), x)
    return batch._replace(positions=new)


def crystal_prior_sample(key: Array, sde: LatticeSDE, batch: AtomsBatch, y_max: float,
                         pos_sde: Any = None) -> AtomsBatch:
    """The sampler's prior: cells from :func:`cell_prior_sample` (floored,
    :func:`floor_cells`), then fractional positions uniform on the torus
    (:func:`uniform_fractional`); keys ``fold_in(key, 0 / 1)``. With the position SDE
    ``pos_sde``, the free atoms' non-periodic coordinates of periodic graphs (z of a
    layer) are drawn from its prior (:func:`agedi_jax.sde.prior_sample`: the template's
    centre of mass plus ``σ(1)`` times a zero-CoM normal draw; key ``fold_in(key, 2)``);
    without it they keep the template's (bulk crystals have none)."""
    state = cell_prior_sample(jax.random.fold_in(key, 0), sde, batch)
    state = floor_cells(sde, state, y_max)
    state = uniform_fractional(jax.random.fold_in(key, 1), state)
    if pos_sde is None:
        return state
    from agedi_jax.sde import prior_sample

    drawn = jnp.asarray(prior_sample(jax.random.fold_in(key, 2), pos_sde, state).positions)
    gi = state.graph_index
    pbc = jnp.asarray(state.pbc, bool)[gi]
    vac = ~pbc & jnp.any(pbc, -1, keepdims=True) & free_atoms(state)[:, None]
    return state._replace(positions=jnp.where(vac, drawn, jnp.asarray(state.positions)))


# --------------------------------------------------------------------------------------
# Fitting the prior to data (host)
# --------------------------------------------------------------------------------------


class LatticeFit(NamedTuple):
    """Statistics of a set of crystals for the prior (:func:`fit_lattice`).

    Attributes:
      scale: ``c`` (Å), the geometric mean of ``(V/N)^{1/k}`` (so the mean of
        ``tr log(S/ℓ_N)`` over the set is exactly 0).
      sigma_log: RMS per orthonormal coordinate of ``log(S/ℓ_N)`` (``param="log"``).
      sigma_linear: RMS per orthonormal coordinate of ``S/ℓ_N − I`` (``param="linear"``).
      dim: ``k``, periodic axes of every structure.
      spread: standard deviation of ``log (V/N)^{1/k}`` (the relative spread of the
        density's length scale).
      per_n: ``{N: c_N}`` the geometric mean of ``(V/N)^{1/k}`` per atom count.
      n_structures: how many structures were used.
    """

    scale: float
    sigma_log: float
    sigma_linear: float
    dim: int
    spread: float
    per_n: dict
    n_structures: int

    def sde(self, param: str = "log", schedule: Any = None) -> LatticeSDE:
        """The :class:`LatticeSDE` with this fit's ``scale`` and the ``sigma_rel`` of
        ``param``; ``schedule`` defaults to :class:`VPLinearSchedule`."""
        sigma = self.sigma_log if param == "log" else self.sigma_linear
        out = LatticeSDE(VPLinearSchedule() if schedule is None else schedule, self.scale, sigma, param)
        out.validate()
        return out


LAYER_PBC = (True, True, False)
"""Periodicity of a layer (2D material) whose in-plane cell a model of the cell generates."""


def check_cell_layout(cell: Any, pbc: Any, what: str = "structure", rtol: float = 1e-6) -> int:
    """Host: that a structure's cell can diffuse (``process.lattice``) and its number
    ``k`` of periodic axes: 3 for a bulk crystal (pbc T, T, T) with a full-rank cell, 2
    for a layer (pbc T, T, F) in the package's 2D convention — ``a`` and ``b`` in the xy
    plane (zero z components), ``c = (0, 0, c_z)`` with ``c_z > 0`` (Å; the vacuum axis,
    which never moves) and a full-rank in-plane block. Tolerances are ``rtol`` times the
    largest cell entry.

    Raises:
      ValueError naming ``what`` and the problem for any other periodicity (clusters,
      wires, a layer periodic along another pair of axes) or a layer in another frame.
    """
    cell = np.asarray(cell, np.float64)
    pbc_t = tuple(bool(p) for p in np.asarray(pbc, bool).reshape(-1))
    if cell.shape != (3, 3) or len(pbc_t) != 3:
        raise ValueError(f"{what}: expected a [3, 3] cell and 3 pbc flags, got {cell.shape} and {len(pbc_t)}")
    shown = "(" + ", ".join("T" if p else "F" for p in pbc_t) + ")"
    if not np.all(np.isfinite(cell)):
        raise ValueError(f"{what}: the cell has non-finite entries")
    tol = rtol * max(float(np.abs(cell).max()), 1e-12)
    if pbc_t == (True, True, True):
        if abs(np.linalg.det(cell)) <= 1e-8 * np.prod(np.linalg.norm(cell, axis=1)):
            raise ValueError(f"{what}: a bulk crystal needs a full-rank cell, got det = {np.linalg.det(cell):.3g} Å³")
        return 3
    if pbc_t != LAYER_PBC:
        raise ValueError(
            f"{what}: process.lattice needs bulk crystals (pbc T, T, T) or layers (pbc T, T, F, the vacuum "
            f"along z); got pbc {shown}"
        )
    problems = []
    if max(abs(cell[0, 2]), abs(cell[1, 2])) > tol:
        problems.append(f"a and b must lie in the xy plane (their z components are {cell[0, 2]:.3g}, {cell[1, 2]:.3g} Å)")
    if max(abs(cell[2, 0]), abs(cell[2, 1])) > tol or not cell[2, 2] > tol:
        problems.append(f"c must point along +z (c = ({cell[2, 0]:.3g}, {cell[2, 1]:.3g}, {cell[2, 2]:.3g}) Å)")
    if abs(np.linalg.det(cell[:2, :2])) <= 1e-8 * np.prod(np.linalg.norm(cell[:2, :2], axis=1)):
        problems.append("a and b must span the plane (in-plane area 0)")
    if problems:
        raise ValueError(f"{what}: a layer (pbc T, T, F) for process.lattice needs a and b in the xy plane and c "
                         f"along +z (the package's 2D convention): " + "; ".join(problems))
    return 2


def _reduce_layer(cell: np.ndarray) -> np.ndarray:
    """Host: the 2D analogue of Niggli reduction for a layer in the package's convention:
    Gauss–Lagrange reduction of ``(a, b)`` (``|a| ≤ |b|``, ``|a·b| ≤ |a|²/2``: the
    shortest basis of the 2D lattice), then ``a`` negated if ``a × b`` points along −z
    (the bulk rule: the first periodic vector of a left-handed basis is negated); ``c``
    untouched."""
    a, b = cell[0, :2].copy(), cell[1, :2].copy()
    for _ in range(1000):
        if b @ b < a @ a:
            a, b = b, a
        m = np.round((a @ b) / (a @ a))
        if m == 0:
            break
        b = b - m * a
    if a[0] * b[1] - a[1] * b[0] < 0:
        a = -a
    out = cell.copy()
    out[0, :2], out[1, :2] = a, b
    return out


def reduce_cell(cell: Any, pbc: Any) -> np.ndarray:
    """Host: a reduced basis ``[3, 3]`` of the same lattice, right-handed: Niggli for bulk;
    for a layer (pbc T, T, F, :func:`check_cell_layout`) the 2D Gauss–Lagrange reduction
    of the in-plane vectors with ``c`` untouched (:func:`_reduce_layer`); Minkowski along
    the periodic axes otherwise. The polar factor ``S`` of a reduced cell is as close to
    isotropic as the lattice allows."""
    from ase.cell import Cell
    from ase.geometry import minkowski_reduce

    cell = np.asarray(cell, np.float64)
    pbc = np.asarray(pbc, bool)
    if pbc.all():
        red = np.asarray(Cell(cell).niggli_reduce()[0][:])
    elif tuple(bool(p) for p in pbc) == LAYER_PBC and np.allclose(cell[:2, 2], 0.0) and np.allclose(cell[2, :2], 0.0):
        return _reduce_layer(cell)  # right-handed in plane, c along +z kept
    elif pbc.any():
        red = np.asarray(minkowski_reduce(cell, pbc=pbc)[0])
    else:
        return cell
    if np.linalg.det(red) < 0:  # negate the first periodic vector: same lattice, right-handed
        red[int(np.argmax(pbc))] *= -1.0
    return red


def _sqrt_gram(cell: np.ndarray) -> np.ndarray:
    """Host float64 ``S = (L Lᵀ)^{1/2}``, the symmetric polar factor of ``L``."""
    w, v = np.linalg.eigh(cell @ cell.T)
    return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def _measure(cell: np.ndarray, pbc: np.ndarray) -> float:
    """Volume (k = 3), area (k = 2) or length (k = 1) spanned by the periodic rows."""
    a = cell[pbc]
    return float(np.sqrt(abs(np.linalg.det(a @ a.T))))


def fit_lattice(atoms_list: Sequence[Any], reduce: bool = True) -> LatticeFit:
    """Fit the density-scaled prior to structures (``ase.Atoms``, host, float64).

    ``c`` is the geometric mean of ``(V/N)^{1/k}`` (``V`` the volume, or area, spanned by
    the ``k`` periodic lattice vectors); ``σ_rel`` the RMS of the orthonormal coordinates
    of ``log(S/ℓ_N)`` and of ``S/ℓ_N − I`` (``ℓ_N = c N^{1/k}``) on the periodic block, with
    ``S`` the polar factor of the (by default Niggli/Minkowski-reduced, :func:`reduce_cell`)
    cell. Structures must all have the same periodic axes (raises ``ValueError`` otherwise
    or for an empty list). Use as ``fit.sde("log")``.
    """
    if len(atoms_list) == 0:
        raise ValueError("fit_lattice: no structures")
    pbcs = {tuple(bool(p) for p in a.pbc) for a in atoms_list}
    if len(pbcs) != 1 or not any(next(iter(pbcs))):
        raise ValueError(f"fit_lattice: need structures with one common, non-empty set of periodic axes, got {sorted(pbcs)}")
    pbc = np.array(next(iter(pbcs)))
    k = int(pbc.sum())
    d = k * (k + 1) // 2
    lengths, blocks, ns = [], [], []
    for a in atoms_list:
        n = len(a)
        cell = np.asarray(a.cell[:], np.float64)
        if reduce:
            cell = reduce_cell(cell, pbc)
        lengths.append((_measure(cell, pbc) / n) ** (1.0 / k))
        ns.append(n)
        blocks.append(_sqrt_gram(cell)[np.ix_(pbc, pbc)])
    lengths = np.asarray(lengths)
    ns = np.asarray(ns)
    c = float(np.exp(np.mean(np.log(lengths))))
    sq_lin = sq_log = 0.0
    for s, n in zip(blocks, ns):
        r = s / (c * n ** (1.0 / k))
        w = np.linalg.eigvalsh(r)
        sq_lin += float(np.sum((r - np.eye(k)) ** 2)) / d
        sq_log += float(np.sum(np.log(w) ** 2)) / d  # ‖log R‖²_F = Σ log² λ
    per_n = {int(n): float(np.exp(np.mean(np.log(lengths[ns == n])))) for n in np.unique(ns)}
    return LatticeFit(
        scale=c,
        sigma_log=float(np.sqrt(sq_log / len(blocks))),
        sigma_linear=float(np.sqrt(sq_lin / len(blocks))),
        dim=k,
        spread=float(np.std(np.log(lengths))),
        per_n=per_n,
        n_structures=len(atoms_list),
    )
