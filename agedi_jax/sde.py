"""Continuous diffusion of atomic positions: noise schedules, VE / VP SDEs and their use
on an :class:`~agedi_jax.batch.AtomsBatch` (paper Sec. II A, Eqs. 2–9).

Time runs from ``t = 0`` (data) to ``t = 1`` (prior). Positions are Cartesian, in Å.

* **VE** (Eq. 8): ``dR = sqrt(d[σ²]/dt) dW``, no drift; kernel ``N(R0, (σ(t)² − σ(0)²) I)``.
  Schedules :class:`VELinearSchedule` (the paper's) and :class:`VEGeometricSchedule`.
* **VP** (Eq. 5): ``dR = −½ β R dt + sqrt(β) dW``; kernel (Eq. 6)
  ``N(R0 e^{−α/2}, (1 − e^{−α}) I)`` with ``α(t) = ∫_0^t β``. Schedules
  :class:`VPLinearSchedule` and :class:`VPCosineSchedule`.

Schedules and SDEs are frozen NamedTuples of Python numbers, registered as *static*
pytrees (pass them to ``jit`` freely; new numbers recompile). Their methods are pure,
elementwise functions of ``t`` (and of ``x`` for the drift). Every SDE has the interface
of :class:`SDE`.

**Adding an SDE or a schedule**: write the class(es) and add one line to :data:`SDES`
(``register_sde("name", MySDE, {"schedule": MySchedule})``); :func:`make_sde` — the one
construction point, used by the model and by the config's validation — then builds it
from names, and every field of the schedule can be set from the config
(``process.sigma_min``/``sigma_max``/``beta_min``/``beta_max`` where the schedule has
such fields, any other through ``process.schedule_params``).

Batch conventions (the batch-level functions below; geometry in :mod:`agedi_jax.geometry`):

* Fixed atoms and padding atoms are never noised and never moved.
* Translation invariance: along :func:`agedi_jax.geometry.com_axes` (the non-periodic axes
  of graphs without fixed atoms) noise, prior samples and scores live in the
  zero-centre-of-mass subspace, so the centre of mass never changes.
* VP acts on coordinates relative to a per-graph **centre**
  (:func:`agedi_jax.geometry.centre`): the centre of mass of a graph without fixed atoms,
  the centroid of its fixed atoms otherwise. The centre is kept by every noising and
  sampling step, so it can be recomputed from the current positions at any time.
* Periodic axes (SDEs with ``periodic = True``: VE; VP on a periodic axis has no
  stationary prior and raises): noised positions are wrapped into the cell, and the
  Gaussian kernel becomes the *wrapped normal* — the sum of the Gaussian over the periodic
  lattice images. Its score (:func:`wrapped_normal_score`) is the training target, since σ
  can be comparable to the cell. Non-periodic directions (z of a 2D material) stay
  Gaussian. The periodic lattice vectors are assumed orthogonal to the non-periodic
  Cartesian axes whenever those are zero-CoM axes (true for 2D materials in the xy plane).
* **Confined graphs** (a z window ``[z_lo, z_hi]`` in ``batch.z_window``; slabs with pbc
  (T, T, F) and in-plane lattice vectors, :func:`agedi_jax.geometry.confined`): along z
  the VE process is *reflected Brownian motion* in the window — noising is
  ``z_t = reflect(z_0 + std·ε)`` (:func:`agedi_jax.geometry.reflect_into`), whose kernel
  is the Gaussian summed over its mirror images in the two walls
  (:func:`reflected_normal_density`); its score (:func:`reflected_normal_score`, zero at
  the walls) is the DSM target along z, every sampler step reflects z back into the window
  (:func:`agedi_jax.geometry.displace`), and the prior (:func:`prior_sample`) is uniform
  in the window and uniform in the cell's a–b plane — the limit of the kernel when
  ``std(1)`` is large against the window and the cell. Reflection rather than truncation:
  reflected Brownian motion is a Markov process with this closed-form kernel that keeps
  all its mass in the window and tends to the uniform prior, so the time reversal with
  the learned score is exact in the limit (a truncated Gaussian is not the marginal of
  any such process). Only SDEs without drift (``periodic = True``: VE) can be confined.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple, Protocol

import chex
import jax
import jax.numpy as jnp
import numpy as np

from agedi_jax.batch import AtomsBatch
from agedi_jax.geometry import (
    centre,
    com_axes,
    confine_positions,
    confined,
    free_atoms,
    inv3,
    reflect_into,
    remove_com,
    wrap_positions,
)
from agedi_jax.keys import atom_keys, atom_normal

Array = jax.Array

__all__ = [
    "VELinearSchedule",
    "VEGeometricSchedule",
    "VPLinearSchedule",
    "VPCosineSchedule",
    "VESDE",
    "VPSDE",
    "SDE",
    "SDES",
    "register_sde",
    "is_sde",
    "schedule_fields",
    "make_sde",
    "reverse_drift",
    "batch_drift",
    "check_batch",
    "wrapped_normal_score",
    "reflected_normal_score",
    "reflected_normal_density",
    "noise_positions",
    "prior_sample",
]


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating))


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def _check_schedule(sde: Any) -> None:
    """Raise ``TypeError`` unless ``sde.schedule`` is one of the schedules registered for
    the SDE's class (:data:`SDES`); then validate the schedule's numbers."""
    allowed = [s for cls, scheds in SDES.values() if type(sde) is cls for s in scheds.values()]
    if allowed and not isinstance(sde.schedule, tuple(allowed)):
        names = " | ".join(c.__name__ for c in allowed)
        raise TypeError(f"{type(sde).__name__} needs one of its schedules ({names}), got {type(sde.schedule).__name__}")
    if hasattr(sde.schedule, "validate"):
        sde.schedule.validate()


# --------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------


class VELinearSchedule(NamedTuple):
    """Linear VE schedule (the paper's): ``σ(t) = σ_min + t (σ_max − σ_min)``, Å.

    ``g²(t) = d[σ²]/dt = 2 σ(t) (σ_max − σ_min)`` (Eq. 8).
    """

    sigma_min: float = 0.01
    sigma_max: float = 8.0

    def validate(self) -> None:
        lo, hi = self.sigma_min, self.sigma_max
        if _is_number(lo) and _is_number(hi):
            _require(0.0 <= lo < hi, f"VELinearSchedule: need 0 <= sigma_min < sigma_max, got {lo}, {hi}")

    def sigma(self, t) -> Array:
        """σ(t) in Å, elementwise."""
        return self.sigma_min + jnp.asarray(t) * (self.sigma_max - self.sigma_min)

    def variance(self, t) -> Array:
        """Kernel variance ``σ(t)² − σ(0)²`` (Å²), computed without cancellation at small t."""
        d = self.sigma_max - self.sigma_min
        t = jnp.asarray(t)
        return t * d * (2.0 * self.sigma_min + t * d)

    def g2(self, t) -> Array:
        """Squared diffusion ``g²(t) = d[σ²]/dt`` (Å²), elementwise."""
        return 2.0 * self.sigma(t) * (self.sigma_max - self.sigma_min)


class VEGeometricSchedule(NamedTuple):
    """Geometric VE schedule (score_sde's): ``σ(t) = σ_min (σ_max/σ_min)^t``, Å.

    ``g²(t) = 2 ln(σ_max/σ_min) σ(t)²``.
    """

    sigma_min: float = 0.01
    sigma_max: float = 8.0

    def validate(self) -> None:
        lo, hi = self.sigma_min, self.sigma_max
        if _is_number(lo) and _is_number(hi):
            _require(0.0 < lo < hi, f"VEGeometricSchedule: need 0 < sigma_min < sigma_max, got {lo}, {hi}")

    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t) -> Array:
        """σ(t) in Å, elementwise."""
        return self.sigma_min * jnp.exp(jnp.asarray(t) * self._log_ratio())

    def variance(self, t) -> Array:
        """Kernel variance ``σ(t)² − σ(0)² = σ_min² expm1(2 t ln r)`` (Å²)."""
        return self.sigma_min**2 * jnp.expm1(2.0 * jnp.asarray(t) * self._log_ratio())

    def g2(self, t) -> Array:
        """Squared diffusion ``g²(t) = d[σ²]/dt`` (Å²), elementwise."""
        return 2.0 * self._log_ratio() * self.sigma(t) ** 2


class VPLinearSchedule(NamedTuple):
    """Linear VP schedule: ``β(t) = β_min + t (β_max − β_min)``,
    ``α(t) = ∫_0^t β = β_min t + ½ t² (β_max − β_min)`` (Eqs. 5–6)."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def validate(self) -> None:
        lo, hi = self.beta_min, self.beta_max
        if _is_number(lo) and _is_number(hi):
            _require(0.0 <= lo <= hi and hi > 0, f"VPLinearSchedule: need 0 <= beta_min <= beta_max, beta_max > 0; got {lo}, {hi}")

    def beta(self, t) -> Array:
        """β(t), elementwise (per unit time)."""
        return self.beta_min + jnp.asarray(t) * (self.beta_max - self.beta_min)

    def alpha(self, t) -> Array:
        """α(t) = ∫_0^t β(s) ds, elementwise."""
        t = jnp.asarray(t)
        return t * (self.beta_min + 0.5 * t * (self.beta_max - self.beta_min))


class VPCosineSchedule(NamedTuple):
    """Cosine VP schedule (Nichol & Dhariwal 2021) in continuous time.

    The signal fraction is ``e^{−α(t)} = cos²φ(t) / cos²φ(0)`` with the angle linear in t,
    ``φ(t) = φ0 + t (φ1 − φ0)``, ``φ0 = (π/2) s/(1+s)``. Nichol & Dhariwal's ``φ1 = π/2``
    makes ``α(1)`` infinite (their discrete version clips β); here ``φ1`` is chosen so that
    ``α(1) = alpha_max`` exactly, which keeps the closed forms:

        α(t) = −2 ln[cos φ(t) / cos φ0],      β(t) = α'(t) = 2 (φ1 − φ0) tan φ(t).

    ``alpha_max = 10`` matches the linear schedule's default ``α(1) ≈ 10.05``.
    """

    s: float = 0.008
    alpha_max: float = 10.0

    def validate(self) -> None:
        if _is_number(self.s) and _is_number(self.alpha_max):
            _require(self.s > 0 and self.alpha_max > 0, f"VPCosineSchedule: need s > 0 and alpha_max > 0, got {self.s}, {self.alpha_max}")

    def _angles(self) -> tuple[float, float]:
        phi0 = 0.5 * math.pi * self.s / (1.0 + self.s)
        phi1 = math.acos(math.exp(-0.5 * self.alpha_max) * math.cos(phi0))
        return phi0, phi1

    def beta(self, t) -> Array:
        """β(t) = 2 (φ1 − φ0) tan φ(t), elementwise."""
        phi0, phi1 = self._angles()
        return 2.0 * (phi1 - phi0) * jnp.tan(phi0 + jnp.asarray(t) * (phi1 - phi0))

    def alpha(self, t) -> Array:
        """α(t) = −2 ln[cos(φ0 + δ)/cos φ0], δ = t (φ1 − φ0), written as
        ``−2 log1p(−2 sin²(δ/2) − tan φ0 sin δ)`` to stay accurate at small t."""
        phi0, phi1 = self._angles()
        delta = jnp.asarray(t) * (phi1 - phi0)
        return -2.0 * jnp.log1p(-2.0 * jnp.sin(0.5 * delta) ** 2 - math.tan(phi0) * jnp.sin(delta))


# --------------------------------------------------------------------------------------
# SDEs
# --------------------------------------------------------------------------------------


def _diffusion(self, t) -> Array:
    """Diffusion coefficient ``g(t) = sqrt(g(t)²)`` of an SDE with a ``g2`` method."""
    return jnp.sqrt(self.g2(t))


class VESDE(NamedTuple):
    """Variance-exploding SDE (Eq. 8): ``f = 0``, ``g² = d[σ²]/dt``.

    Methods are elementwise in ``t``; ``x`` is in Å.
    """

    schedule: Any = VELinearSchedule()

    periodic: ClassVar[bool] = True  # acts on periodic axes (wrapped normal)

    def validate(self) -> None:
        _check_schedule(self)

    def drift(self, x, t) -> Array:
        """Forward drift ``f(x, t) = 0`` (Å per unit time), shape of ``x``."""
        return jnp.zeros_like(jnp.asarray(x))

    def g2(self, t) -> Array:
        """Squared diffusion coefficient ``g(t)²`` (Å² per unit time)."""
        self.validate()
        return self.schedule.g2(t)

    diffusion = _diffusion

    def mean_coeff(self, t) -> Array:
        """Kernel mean coefficient (1 for VE): mean = coeff · x0."""
        return jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def mean_coeff_minus_one(self, t) -> Array:
        """``mean_coeff(t) − 1`` without rounding (exactly 0 for VE)."""
        return jnp.zeros_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def std(self, t) -> Array:
        """Kernel standard deviation ``sqrt(σ(t)² − σ(0)²)`` (Å), elementwise."""
        self.validate()
        return jnp.sqrt(self.schedule.variance(t))

    def marginal(self, x0, t) -> tuple[Array, Array]:
        """Kernel ``p_0t(x | x0) = N(mean, std² I)``: returns ``(x0, std(t))``; ``t`` must
        broadcast against ``x0`` for the mean (e.g. ``t [n, 1]`` for ``x0 [n, 3]``)."""
        x0 = jnp.asarray(x0)
        return x0 * self.mean_coeff(t), self.std(t)

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior at t = 1 (Å): ``sqrt(σ(1)² − σ(0)²)``."""
        return float(np.sqrt(np.asarray(self.schedule.variance(np.float64(1.0)))))

    def reverse_drift(self, x, t, score, probability_flow: bool = False) -> Array:
        """Drift of the reverse SDE (Eq. 3) ``f − g² s`` or of the probability-flow ODE
        ``f − ½ g² s``; ``score`` in Å⁻¹, ``t`` broadcastable against ``x``."""
        return reverse_drift(self, x, t, score, probability_flow)


class VPSDE(NamedTuple):
    """Variance-preserving SDE (Eq. 5): ``f = −½ β x``, ``g² = β``; kernel (Eq. 6)
    ``N(x0 e^{−α/2}, (1 − e^{−α}) I)``. ``x`` is relative to the graph's centre."""

    schedule: Any = VPLinearSchedule()

    periodic: ClassVar[bool] = False  # contracts towards a centre: clusters only

    def validate(self) -> None:
        _check_schedule(self)

    def drift(self, x, t) -> Array:
        """Forward drift ``f(x, t) = −½ β(t) x``."""
        self.validate()
        return -0.5 * self.schedule.beta(t) * jnp.asarray(x)

    def g2(self, t) -> Array:
        """Squared diffusion coefficient ``g² = β(t)``."""
        self.validate()
        return self.schedule.beta(t)

    diffusion = _diffusion

    def mean_coeff(self, t) -> Array:
        """Kernel mean coefficient ``e^{−α(t)/2}``."""
        self.validate()
        return jnp.exp(-0.5 * self.schedule.alpha(t))

    def mean_coeff_minus_one(self, t) -> Array:
        """``e^{−α/2} − 1`` computed with expm1."""
        self.validate()
        return jnp.expm1(-0.5 * self.schedule.alpha(t))

    def std(self, t) -> Array:
        """Kernel standard deviation ``sqrt(1 − e^{−α(t)})``, elementwise (units of x)."""
        self.validate()
        return jnp.sqrt(-jnp.expm1(-self.schedule.alpha(t)))

    def marginal(self, x0, t) -> tuple[Array, Array]:
        """Kernel (Eq. 6): returns ``(x0 e^{−α/2}, sqrt(1 − e^{−α}))``."""
        x0 = jnp.asarray(x0)
        return x0 * self.mean_coeff(t), self.std(t)

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior at t = 1: ``sqrt(1 − e^{−α(1)})``."""
        return float(np.sqrt(-np.expm1(-np.asarray(self.schedule.alpha(np.float64(1.0))))))

    def reverse_drift(self, x, t, score, probability_flow: bool = False) -> Array:
        """Drift of the reverse SDE (Eq. 3) ``f − g² s`` or of the probability-flow ODE
        ``f − ½ g² s``."""
        return reverse_drift(self, x, t, score, probability_flow)


class SDE(Protocol):
    """The interface of a position SDE (what losses, samplers and the model use).

    ``periodic`` says whether it may act on periodic axes; ``t`` broadcasts elementwise;
    ``x`` in Å (VP: relative to the graph's centre)."""

    periodic: ClassVar[bool]

    def validate(self) -> None: ...
    def drift(self, x, t) -> Array: ...
    def g2(self, t) -> Array: ...
    def diffusion(self, t) -> Array: ...
    def mean_coeff(self, t) -> Array: ...
    def mean_coeff_minus_one(self, t) -> Array: ...
    def std(self, t) -> Array: ...
    def marginal(self, x0, t) -> tuple[Array, Array]: ...
    @property
    def prior_std(self) -> float: ...


SDES: dict[str, tuple[type, dict[str, type]]] = {}
"""The registry of position SDEs: name → (SDE class, {schedule name: schedule class})."""


def register_sde(name: str, cls: type, schedules: dict[str, type]) -> None:
    """Register an SDE class (a NamedTuple whose one field is ``schedule``) under ``name``
    with its schedules (NamedTuples of numbers); both become static pytrees."""
    if not schedules:
        raise ValueError(f"register_sde({name!r}): give at least one schedule")
    for c in (cls, *schedules.values()):
        try:
            jax.tree_util.register_static(c)
        except ValueError:  # already registered (a module reload)
            pass
    SDES[name] = (cls, dict(schedules))


register_sde("ve", VESDE, {"linear": VELinearSchedule, "geometric": VEGeometricSchedule})
register_sde("vp", VPSDE, {"linear": VPLinearSchedule, "cosine": VPCosineSchedule})


def is_sde(obj: Any) -> bool:
    """Whether ``obj`` is an instance of a registered SDE class."""
    return any(isinstance(obj, cls) for cls, _ in SDES.values())


def schedule_fields(sde: str, schedule: str) -> tuple[str, ...]:
    """The parameter names of a registered schedule (its NamedTuple fields)."""
    return tuple(_lookup(sde, schedule)[1]._fields)


def _lookup(sde: str, schedule: str) -> tuple[type, type]:
    if sde not in SDES:
        raise ValueError(f"sde {sde!r} unknown; choose one of {sorted(SDES)}")
    cls, schedules = SDES[sde]
    if schedule not in schedules:
        raise ValueError(f"{sde!r} SDE: schedule {schedule!r} unknown; choose one of {sorted(schedules)}")
    return cls, schedules[schedule]


def make_sde(sde: str = "ve", schedule: str = "linear", *, strict: bool = True, **params: float) -> SDE:
    """Build and validate a registered SDE from names and schedule parameters — the one
    construction point of position SDEs (the model and the config's validation use it).

    ``params`` are fields of the schedule (e.g. ``sigma_min``, ``sigma_max`` for VE;
    ``beta_min``, ``beta_max`` for VP linear; ``s``, ``alpha_max`` for VP cosine); missing
    ones keep the schedule's defaults. With ``strict=False`` parameters the schedule does
    not have are ignored (the config passes its common fields to every schedule);
    otherwise they raise, naming the valid ones."""
    cls, sched_cls = _lookup(sde, schedule)
    fields = sched_cls._fields
    unknown = sorted(set(params) - set(fields))
    if unknown and strict:
        raise ValueError(f"{sde!r} SDE, {schedule!r} schedule: no parameter(s) {unknown}; valid: {list(fields)}")
    kwargs = {k: float(v) for k, v in params.items() if k in fields}
    out = cls(sched_cls(**kwargs))
    out.validate()
    return out


def reverse_drift(sde: SDE, x, t, score, probability_flow: bool = False) -> Array:
    """Reverse-time drift (Eq. 3): ``f(x, t) − g(t)² s`` (SDE), or ``f − ½ g² s``
    (probability-flow ODE). Shapes: ``x``, ``score`` ``[..., 3]``; ``t`` broadcastable."""
    g2 = sde.g2(t)
    factor = 0.5 if probability_flow else 1.0
    return sde.drift(x, t) - factor * g2 * jnp.asarray(score)


# --------------------------------------------------------------------------------------
# The SDE on a batch
# --------------------------------------------------------------------------------------


def check_batch(sde: SDE, batch: AtomsBatch) -> None:
    """Raise ``ValueError`` if an SDE without ``periodic`` (VP) meets a periodic real graph
    (VP contracts towards a centre, which a periodic axis does not have) or a confined one
    (a z window needs a drift-free, reflected process). Checked when ``batch.pbc`` is known on
    the host; inside a trace the batch-level functions poison such graphs with NaN."""
    if sde.periodic:
        return
    pbc, gm, win = batch.pbc, batch.graph_mask, batch.z_window
    if any(isinstance(x, jax.core.Tracer) for x in (pbc, gm, win)):
        return
    bad = np.where(np.any(np.asarray(pbc, bool), axis=-1) & np.asarray(gm, bool))[0]
    if bad.size:
        raise ValueError(
            f"this SDE ({type(sde).__name__}) cannot act on periodic axes (graphs {bad[:10].tolist()} have pbc); "
            "use the VE SDE for periodic structures"
        )
    if win is not None:
        w = np.asarray(win)
        bad = np.where((w[:, 1] > w[:, 0]) & np.asarray(gm, bool))[0]
        if bad.size:
            raise ValueError(
                f"this SDE ({type(sde).__name__}) cannot confine atoms to a z window (graphs {bad[:10].tolist()} "
                "have one); use the VE SDE"
            )


def _checked_positions(sde: SDE, batch: AtomsBatch) -> Array:
    """``batch.positions`` as an array ``[n, 3]`` after validating ``sde`` against ``batch``."""
    sde.validate()
    check_batch(sde, batch)
    x = jnp.asarray(batch.positions)
    chex.assert_shape(x, (batch.num_nodes, 3))
    return x


def _vp_poison(sde: SDE, batch: AtomsBatch, x: Array) -> Array:
    """NaN out the atoms of periodic graphs under an SDE that cannot act on periodic axes
    (the traced fallback of :func:`check_batch`)."""
    if sde.periodic:
        return x
    periodic = jnp.any(jnp.asarray(batch.pbc, bool), axis=-1) & jnp.asarray(batch.graph_mask, bool)
    if batch.z_window is not None:
        periodic = periodic | confined(batch)
    bad = periodic[batch.graph_index] & jnp.asarray(batch.node_mask, bool)
    return jnp.where(bad[:, None], jnp.nan, x)


def batch_drift(sde: SDE, batch: AtomsBatch, positions, t_atom) -> Array:
    """Forward drift ``f`` of every atom ``[n, 3]``: VE 0; VP ``−½ β (x − centre)``.
    ``t_atom`` is ``[n]``."""
    x = jnp.asarray(positions)
    c = centre(batch, x)[batch.graph_index]
    f = sde.drift(x - c, jnp.asarray(t_atom)[:, None])
    return _vp_poison(sde, batch, f)


def _graph_times(batch: AtomsBatch, t, dtype) -> Array:
    t = jnp.asarray(t, dtype)
    if t.ndim == 0:
        return jnp.broadcast_to(t, (batch.num_graphs,))
    chex.assert_shape(t, (batch.num_graphs,))
    return t


# --------------------------------------------------------------------------------------
# The wrapped normal
# --------------------------------------------------------------------------------------


def _image_grid(k: int) -> np.ndarray:
    r = np.arange(-k, k + 1)
    return np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3).astype(np.float64)


def wrapped_normal_score(d, std, cell, pbc, images: int = 2) -> Array:
    """Score ``∇_d log Σ_L N(d − L; 0, std² I)`` of the wrapped normal, per atom.

    ``L`` runs over the lattice spanned by the periodic rows of ``cell``; along the other
    directions the density stays Gaussian (score ``−d_⊥/std²``). Two exact expansions are
    truncated to ``(2·images+1)`` terms per periodic axis and the better one is taken per
    atom: the real-space image sum (after reducing ``d`` to the minimum image), accurate
    when ``std`` is small against the interplanar spacing, and its Poisson dual
    ``Σ_G e^{−std²|G|²/2} cos(G·d)`` over reciprocal vectors ``G``, accurate when ``std``
    is large (the density is then almost uniform and the score tiny). They are switched
    where their truncation errors are equal, ``std² = (k+½) d_min a_max / (2π (k+1))``;
    with ``images = 2`` the relative error is ~1e-10 for a square cell and stays below
    ~1e-6 for cells that are not extremely skewed (use reduced cells).

    Args:
      d: ``[n, 3]`` displacement from the kernel mean (Å).
      std: ``[n]`` kernel standard deviation (Å), > 0.
      cell: ``[n, 3, 3]`` lattice vectors (rows) of each atom's graph, Å.
      pbc: ``[n, 3]`` bool periodic axes of each atom's graph.
      images: image shells kept per periodic axis (static).
    Returns:
      ``[n, 3]`` score in Å⁻¹ (``−d/std²`` for atoms without periodic axes).
    """
    d = jnp.asarray(d)
    dtype = d.dtype
    pbc = jnp.asarray(pbc, bool)
    cell = jnp.asarray(cell, dtype)
    a = jnp.where(pbc[:, :, None], cell, 0.0)
    eye = jnp.eye(3, dtype=dtype)
    gram = jnp.einsum("nik,njk->nij", a, a) + jnp.where(pbc[:, :, None], 0.0, eye)
    b = jnp.einsum("nik,nij->nkj", a, inv3(gram))  # columns: reciprocal basis
    s2 = jnp.maximum(jnp.asarray(std, dtype) ** 2, jnp.finfo(dtype).tiny)[:, None]

    grid = jnp.asarray(_image_grid(images), dtype)  # [S, 3]
    valid = jnp.all(pbc[:, None, :] | (grid[None] == 0), axis=-1)  # [n, S]

    # Real space: minimum image, then the image sum (a softmax over images).
    frac = jnp.einsum("ni,nij->nj", d, b)
    d0 = d - jnp.einsum("ni,nij->nj", jnp.round(frac), a)
    r = d0[:, None, :] - jnp.einsum("si,nij->nsj", grid, a)  # [n, S, 3]
    logits = jnp.where(valid, -jnp.sum(r * r, -1) / (2.0 * s2), -jnp.inf)
    w = jax.nn.softmax(logits, axis=-1)
    score_real = -jnp.einsum("ns,nsj->nj", w, r) / s2

    # Reciprocal space: Poisson summation over the periodic sublattice.
    f = frac - jnp.round(frac)
    d_perp = d - jnp.einsum("ni,nij->nj", frac, a)
    bm = jnp.einsum("nij,sj->nsi", b, grid)  # B m, [n, S, 3]; G = 2π B m
    coef = jnp.where(valid, jnp.exp(-2.0 * jnp.pi**2 * s2 * jnp.sum(bm * bm, -1)), 0.0)
    phase = 2.0 * jnp.pi * jnp.einsum("sj,nj->ns", grid, f)
    dens = jnp.sum(coef * jnp.cos(phase), -1)
    grad = -2.0 * jnp.pi * jnp.einsum("ns,nsi->ni", coef * jnp.sin(phase), bm)

    a_len = jnp.where(pbc, jnp.linalg.norm(a, axis=-1), 0.0)
    spacing = 1.0 / jnp.where(pbc, jnp.linalg.norm(jnp.swapaxes(b, 1, 2), axis=-1), 1.0)
    d_min = jnp.min(jnp.where(pbc, spacing, jnp.inf), axis=-1)
    a_max = jnp.max(a_len, axis=-1)
    switch = (images + 0.5) * d_min * a_max / (2.0 * jnp.pi * (images + 1.0))
    use_recip = jnp.any(pbc, -1) & (s2[:, 0] > switch)
    dens = jnp.where(use_recip, dens, 1.0)
    score_recip = grad / dens[:, None] - d_perp / s2
    return jnp.where(use_recip[:, None], score_recip, score_real)


# --------------------------------------------------------------------------------------
# The reflected normal (z in a window)
# --------------------------------------------------------------------------------------


def _reflected_normal(x, x0, std, lo, hi, images: int, modes: int) -> tuple[Array, Array]:
    """``(density, score)`` of the reflected normal, elementwise (see
    :func:`reflected_normal_score`)."""
    x = jnp.asarray(x)
    dtype = jnp.result_type(x.dtype, float)
    x = x.astype(dtype)
    lo = jnp.asarray(lo, dtype)
    hi = jnp.asarray(hi, dtype)
    width = hi - lo
    w = jnp.where(width > 0, width, 1.0)
    u = jnp.clip(x - lo, 0.0, w)
    u0 = reflect_into(jnp.asarray(x0, dtype), lo, hi) - lo
    s2 = jnp.maximum(jnp.asarray(std, dtype) ** 2, jnp.finfo(dtype).tiny)

    # Real space: the 2(2k+1) images u0 + 2jL and −u0 + 2jL, j = −k..k (a softmax).
    j = jnp.arange(-images, images + 1, dtype=dtype)
    shift = 2.0 * j * w[..., None]
    centres = jnp.concatenate([u0[..., None] + shift, -u0[..., None] + shift], axis=-1)
    r = u[..., None] - centres
    logits = -(r * r) / (2.0 * s2[..., None])
    lse = jax.nn.logsumexp(logits, axis=-1)
    weights = jnp.exp(logits - lse[..., None])
    score_real = -jnp.sum(weights * r, axis=-1) / s2
    dens_real = jnp.exp(lse) / jnp.sqrt(2.0 * jnp.pi * s2)

    # Cosine series (the Neumann eigenfunctions): (1/L)[1 + 2 Σ_m e^{−m²π²s²/2L²} cos(mπu/L) cos(mπu0/L)].
    m = jnp.arange(1, modes + 1, dtype=dtype)
    k = m * jnp.pi / w[..., None]
    a = jnp.exp(-0.5 * (k * k) * s2[..., None])
    c0 = jnp.cos(k * u0[..., None])
    series = 1.0 + 2.0 * jnp.sum(a * jnp.cos(k * u[..., None]) * c0, axis=-1)
    grad = -2.0 * jnp.sum(a * k * jnp.sin(k * u[..., None]) * c0, axis=-1)
    use_series = s2 > 0.25 * w * w  # std > L/2: both truncations far below float64 rounding
    series = jnp.where(use_series, series, 1.0)
    score = jnp.where(use_series, grad / series, score_real)
    dens = jnp.where(use_series, series / w, dens_real)
    return dens, score


def reflected_normal_score(x, x0, std, lo, hi, images: int = 2, modes: int = 10) -> Array:
    """Score ``∂_x log p(x | x0)`` (Å⁻¹) of the normal ``N(x0, std²)`` reflected into the
    window ``[lo, hi]`` — the transition kernel of Brownian motion with reflecting walls
    (:func:`agedi_jax.geometry.reflect_into` of a Gaussian draw), elementwise.

    With ``L = hi − lo``, ``u = x − lo`` and ``u0 = x0 − lo`` the density is the image sum
    ``Σ_j [φ_s(u − u0 − 2jL) + φ_s(u + u0 − 2jL)]`` (mirror images in both walls), or
    equivalently the cosine series ``(1/L)[1 + 2 Σ_m e^{−m²π²s²/(2L²)} cos(mπu/L)
    cos(mπu0/L)]``. The image sum is kept to ``j = −images..images`` and used for
    ``std ≤ L/2``, the series to ``modes`` terms for ``std > L/2``: at the switch the
    truncation errors are ~e^{−50} and ~e^{−150}. The score vanishes at the walls and tends
    to 0 (uniform density) for ``std ≫ L``; deep inside the window at small ``std`` it is
    the Gaussian's ``−(x − x0)/std²``. ``x`` is clipped into the window and ``x0`` reflected
    into it."""
    return _reflected_normal(x, x0, std, lo, hi, images, modes)[1]


def reflected_normal_density(x, x0, std, lo, hi, images: int = 2, modes: int = 10) -> Array:
    """Density (Å⁻¹) of the reflected normal of :func:`reflected_normal_score` at ``x``
    (zero outside ``[lo, hi]``), elementwise; integrates to 1 over the window."""
    x = jnp.asarray(x)
    dens = _reflected_normal(x, x0, std, lo, hi, images, modes)[0]
    inside = (x >= jnp.asarray(lo)) & (x <= jnp.asarray(hi))
    return jnp.where(inside, dens, 0.0)


# --------------------------------------------------------------------------------------
# Noising, targets and the prior
# --------------------------------------------------------------------------------------


def noise_positions(key: Array, sde: SDE, batch: AtomsBatch, t) -> tuple[AtomsBatch, Array, Array]:
    """Sample ``R_t ~ p_0t(· | R_0)`` for every free atom (Eqs. 6, 8).

    ``x_t = x0 + (m − 1)(x0 − c) + std·ε`` with ``m`` the kernel mean coefficient, ``c``
    the graph :func:`~agedi_jax.geometry.centre` and ``ε ~ N(0, I)`` projected onto the zero-CoM subspace along
    :func:`~agedi_jax.geometry.com_axes`; fixed and padding atoms keep their positions;
    periodic axes are wrapped; in confined graphs z is reflected into the window. The
    noise is keyed per atom (:func:`agedi_jax.keys.atom_normal`).

    Args:
      key: PRNG key.
      sde: :class:`VESDE` or :class:`VPSDE`.
      batch: clean batch (positions Å).
      t: ``[g]`` per-graph times in (0, 1] (or a scalar).
    Returns:
      ``(batch_t, eps, std)``: the noised batch; ``eps`` ``[n, 3]``, the ε-target
      ``−std · ∇ log p_0t(x_t | x_0)`` — the (projected) Gaussian draw itself, except on
      periodic graphs where it is ``−std ·`` the wrapped-normal score
      (:func:`wrapped_normal_score`) and, along z of confined graphs, ``−std ·`` the
      reflected-normal score (:func:`reflected_normal_score`); zero on fixed and padding
      atoms; ``std`` ``[n]``, the kernel standard deviation of each atom's graph (Å for VE).
    """
    x0 = _checked_positions(sde, batch)
    dtype, gi = x0.dtype, batch.graph_index
    t_atom = _graph_times(batch, t, dtype)[gi]
    std = sde.std(t_atom)
    m1 = sde.mean_coeff_minus_one(t_atom)
    free = free_atoms(batch)

    eps = jnp.where(free[:, None], atom_normal(key, batch, dtype), 0.0)
    eps = remove_com(batch, eps)
    disp = std[:, None] * eps
    c = centre(batch, x0)[gi]
    xt = x0 + m1[:, None] * (x0 - c) + disp
    xt = jnp.where(free[:, None], xt, x0)
    xt = _vp_poison(sde, batch, wrap_positions(batch, xt))

    periodic = jnp.any(jnp.asarray(batch.pbc, bool), -1)[gi]
    ws = jax.lax.stop_gradient(
        wrapped_normal_score(disp, std, jnp.asarray(batch.cell, dtype)[gi], jnp.asarray(batch.pbc, bool)[gi])
    )
    target = jnp.where(periodic[:, None], -std[:, None] * ws, eps)
    if batch.z_window is not None:
        xt = confine_positions(batch, xt)
        win = jnp.asarray(batch.z_window, dtype)[gi]
        rs = jax.lax.stop_gradient(reflected_normal_score(xt[:, 2], x0[:, 2], std, win[:, 0], win[:, 1]))
        conf = confined(batch)[gi]
        target = target.at[:, 2].set(jnp.where(conf, -std * rs, target[:, 2]))
    target = jnp.where(free[:, None], target, 0.0)
    return batch._replace(positions=xt), target, std


def prior_sample(key: Array, sde: SDE, batch: AtomsBatch) -> AtomsBatch:
    """Draw the free atoms' positions from the prior at ``t = 1``.

    Along zero-CoM axes: ``c + std(1)·ε`` with ``c`` the template's centre of mass and ε
    projected (the template's internal arrangement is ignored there). Along other axes the
    kernel at ``t = 1`` applied to the template's positions ``x``: VE ``x + std(1)·ε``
    (uniform-ish after wrapping when std(1) exceeds the cell), VP
    ``c + e^{−α(1)/2}(x − c) + std(1)·ε`` with ``c`` the fixed atoms' centroid. Free atoms
    of confined graphs are drawn uniformly in the cell's a–b plane (fractional coordinates
    uniform in [0, 1)) and uniformly in z inside the window (keys ``fold_in(key, 1)`` per
    atom). Fixed and padding atoms are kept; periodic axes are wrapped.

    Args:
      key: PRNG key (noise keyed per atom).
      sde: the SDE.
      batch: template batch (positions Å; types untouched).
    Returns:
      the batch with new positions ``[n, 3]``.
    """
    x = _checked_positions(sde, batch)
    dtype, gi = x.dtype, batch.graph_index
    free = free_atoms(batch)
    std1 = sde.std(jnp.ones((), dtype))
    m1 = sde.mean_coeff_minus_one(jnp.ones((), dtype))
    eps = remove_com(batch, jnp.where(free[:, None], atom_normal(key, batch, dtype), 0.0))
    c = centre(batch, x)[gi]
    axes = com_axes(batch)[gi]
    new = jnp.where(axes, c + std1 * eps, x + m1 * (x - c) + std1 * eps)
    if batch.z_window is not None:
        new = jnp.where(confined(batch)[gi][:, None], _uniform_in_window(key, batch, dtype), new)
    new = jnp.where(free[:, None], new, x)
    new = jnp.where(jnp.asarray(batch.node_mask, bool)[:, None], new, 0.0)
    new = _vp_poison(sde, batch, wrap_positions(batch, new))
    return batch._replace(positions=new)


def _uniform_in_window(key: Array, batch: AtomsBatch, dtype) -> Array:
    """Positions ``[n, 3]`` uniform in the a–b plane of each atom's cell and uniform in z in
    its graph's window (meaningful for free atoms of confined graphs only)."""
    u = jax.vmap(lambda k: jax.random.uniform(k, (3,), dtype))(atom_keys(jax.random.fold_in(key, 1), batch))
    gi = batch.graph_index
    cell = jnp.asarray(batch.cell, dtype)[gi]
    win = jnp.asarray(batch.z_window, dtype)[gi]
    xy = u[:, :1] * cell[:, 0] + u[:, 1:2] * cell[:, 1]
    z = win[:, 0] + u[:, 2] * (win[:, 1] - win[:, 0])
    return xy.at[:, 2].set(z)
