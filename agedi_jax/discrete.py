"""The absorbing-state discrete diffusion of atom types (paper Sec. II B, Eqs. 10-17).

States are ``0..K`` with ``MASK = 0`` the absorbing state and ``1..K`` the physical types.
The forward process is a continuous-time Markov chain with ``dp/dt = σ(t) Q p`` (Eqs. 10,
15); ``Q`` follows the paper's column convention (``Q[i, j]`` is the rate from ``j`` to
``i``, columns sum to zero, Eq. 17)::

    Q[0, j] = 1  for j != 0,     Q[j, j] = -1  for j != 0,     0 otherwise.

With the integrated rate ``σ̄(t)`` (the schedule's ``total``) the kernel is closed form
(Eq. 16): a physical type survives with probability ``e^{-σ̄}`` and is masked with
probability ``1 - e^{-σ̄}``; a MASK stays a MASK.

The score network outputs, per atom, the log concrete score ``log ŝ_y`` for the ``K``
physical types (``[n, K]``, column ``k`` is type ``k + 1``; MASK has no column). For a
masked atom the true concrete score is ``ŝ_y = p_t(y) / p_t(MASK) = a(σ̄) p_0(y | rest)``
with ``a(σ̄) = 1 / (e^{σ̄} - 1)`` (see :func:`masked_log_ratio`); unmasked atoms need none.

Everything here is a pure function of arrays; times ``t`` are per atom (``[n]``, or a
scalar broadcast to all atoms), running from 1 (prior, all MASK) to 0 (data). Processes
and schedules are frozen NamedTuples registered as *static* pytrees: pass them to ``jit``
freely (a change of their numbers recompiles). Sampling moves from ``t`` to
``t_next < t``; ``fixed`` atoms are never corrupted and never resampled. Padding atoms
(type MASK) are treated like any masked atom by the reverse steps; pass
``fixed | ~node_mask`` to keep them MASK, or ignore them downstream (the node mask does).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from agedi_jax.vocab import MASK

Array = jax.Array

__all__ = [
    "MASK",
    "LogLinearSchedule",
    "GeometricSchedule",
    "AbsorbingProcess",
    "masked_log_ratio",
    "independent_log_score",
    "score_entropy",
    "tau_leap_transition",
    "analytic_transition",
    "tau_leap_step",
    "analytic_step",
    "resolve_mask",
    "TYPE_SCHEDULES",
    "make_type_process",
]


# --------------------------------------------------------------------------------------
# Input checks (shapes at trace time; values only when the arrays are concrete)
# --------------------------------------------------------------------------------------


def _concrete(x) -> np.ndarray | None:
    """The value of ``x`` as numpy when it is known on the host (not inside a trace)."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def _check_types(z, name: str, num_types: int | None = None) -> Array:
    z = jnp.asarray(z)
    if z.ndim != 1:
        raise ValueError(f"{name} must be a [n] vector of type indices, got shape {z.shape}")
    if not jnp.issubdtype(z.dtype, jnp.integer):
        raise TypeError(f"{name} must hold integer type indices (MASK = 0), got dtype {z.dtype}")
    v = _concrete(z)
    if v is not None and num_types is not None and v.size and (v.min() < 0 or v.max() > num_types):
        raise ValueError(
            f"{name} holds type indices outside 0..{num_types} (MASK = 0, K = {num_types} "
            f"physical types): min {v.min()}, max {v.max()}"
        )
    return z


def _check_log_score(log_score, n: int, num_types: int | None, name: str = "log_score") -> Array:
    log_score = jnp.asarray(log_score)
    if log_score.ndim != 2 or log_score.shape[0] != n:
        raise ValueError(
            f"{name} must be [n, K] = [{n}, {num_types if num_types is not None else 'K'}] "
            f"log concrete scores, got shape {log_score.shape}"
        )
    if num_types is not None and log_score.shape[1] != num_types:
        raise ValueError(
            f"{name} has {log_score.shape[1]} columns but the process has K = {num_types} "
            "physical types (MASK has no column)"
        )
    if not jnp.issubdtype(log_score.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating point, got dtype {log_score.dtype}")
    return log_score


def _per_atom(x, n: int, name: str, unit_interval: bool = False) -> Array:
    """Broadcast a scalar or ``[n]`` per-atom quantity to ``[n]`` (float)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if x.ndim == 0:
        x = jnp.broadcast_to(x, (n,))
    elif x.shape != (n,):
        raise ValueError(f"{name} must be a scalar or a per-atom [n] = [{n}] array, got shape {x.shape}")
    v = _concrete(x)
    if v is not None and v.size:
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} contains NaN or inf")
        if unit_interval and (v.min() < 0.0 or v.max() > 1.0):
            raise ValueError(f"{name} must lie in [0, 1] (1 = prior, 0 = data), got [{v.min()}, {v.max()}]")
    return x


def _check_fixed(fixed, n: int) -> Array | None:
    if fixed is None:
        return None
    fixed = jnp.asarray(fixed)
    if fixed.shape != (n,):
        raise ValueError(f"fixed must be a [n] = [{n}] boolean mask, got shape {fixed.shape}")
    if fixed.dtype != jnp.bool_:
        raise TypeError(f"fixed must be boolean, got dtype {fixed.dtype}")
    return fixed


def _check_step_times(t: Array, t_next: Array) -> None:
    tv, sv = _concrete(t), _concrete(t_next)
    if tv is not None and sv is not None and np.any(sv > tv):
        raise ValueError(
            "t_next must not exceed t: sampling runs backwards in time, from 1 (prior) to 0 (data)"
        )


def _movable(zt: Array, fixed: Array | None) -> Array:
    """Atoms a reverse step may change: masked and not fixed."""
    active = zt == MASK
    return active if fixed is None else active & ~fixed


# --------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------


class LogLinearSchedule(NamedTuple):
    """SEDD's log-linear schedule: ``σ̄(t) = -log(1 - (1 - eps) t)``, ``σ(t) = dσ̄/dt``.

    The masking probability ``1 - e^{-σ̄(t)} = (1 - eps) t`` is linear in ``t``; at
    ``t = 1`` a fraction ``eps`` of the types is still unmasked (the prior is all MASK).
    """

    eps: float = 1e-3

    def _check(self) -> None:
        if isinstance(self.eps, (int, float)) and not 0.0 < self.eps < 1.0:
            raise ValueError(f"LogLinearSchedule: eps must lie in (0, 1), got {self.eps}")

    def total(self, t) -> Array:
        """Integrated rate ``σ̄(t) = ∫_0^t σ``, elementwise, dimensionless; ``σ̄(0) = 0``."""
        self._check()
        return -jnp.log1p(-(1.0 - self.eps) * jnp.asarray(t))

    def rate(self, t) -> Array:
        """Rate ``σ(t) = (1 - eps) / (1 - (1 - eps) t)`` (Eq. 15), elementwise."""
        self._check()
        return (1.0 - self.eps) / (1.0 - (1.0 - self.eps) * jnp.asarray(t))


class GeometricSchedule(NamedTuple):
    """Geometric schedule: ``σ̄(t) = σ_min^(1-t) σ_max^t``, ``σ(t) = σ̄(t) log(σ_max/σ_min)``.

    As in SEDD, ``σ̄(0) = σ_min`` (not 0): the kernel at ``t`` is ``expm(σ̄(t) Q)``.
    """

    sigma_min: float = 1e-4
    sigma_max: float = 20.0

    def _check(self) -> None:
        lo, hi = self.sigma_min, self.sigma_max
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and not 0.0 < lo < hi:
            raise ValueError(f"GeometricSchedule: need 0 < sigma_min < sigma_max, got {lo}, {hi}")

    def total(self, t) -> Array:
        """Integrated rate ``σ̄(t) = σ_min^(1-t) σ_max^t``, elementwise, dimensionless."""
        self._check()
        t = jnp.asarray(t)
        return jnp.exp((1.0 - t) * np.log(self.sigma_min) + t * np.log(self.sigma_max))

    def rate(self, t) -> Array:
        """Rate ``σ(t) = dσ̄/dt = σ̄(t) log(σ_max / σ_min)`` (Eq. 15), elementwise."""
        return self.total(t) * np.log(self.sigma_max / self.sigma_min)


# --------------------------------------------------------------------------------------
# The process
# --------------------------------------------------------------------------------------


class AbsorbingProcess(NamedTuple):
    """The absorbing-state type process of Eqs. 15-17.

    Attributes:
      num_types: K, the number of physical types; states are ``0..K`` with MASK = 0.
      schedule: a :class:`LogLinearSchedule` or :class:`GeometricSchedule`.
    """

    num_types: int
    schedule: Any = LogLinearSchedule()

    def _check(self) -> None:
        if not isinstance(self.num_types, (int, np.integer)) or self.num_types < 1:
            raise ValueError(f"AbsorbingProcess: num_types must be a positive int, got {self.num_types!r}")

    def rate(self, t) -> Array:
        """Rate ``σ(t)`` of Eq. 15, elementwise in ``t``."""
        return self.schedule.rate(t)

    def total(self, t) -> Array:
        """Integrated rate ``σ̄(t)`` (the exponent of Eq. 16), elementwise in ``t``."""
        return self.schedule.total(t)

    def rate_matrix(self) -> Array:
        """``Q`` of Eq. 17, ``[K+1, K+1]``, column convention (``Q[i, j]``: rate j -> i)."""
        self._check()
        k1 = self.num_types + 1
        phys = jnp.arange(k1) > 0
        q = jnp.zeros((k1, k1)).at[0].set(phys.astype(float))
        return q - jnp.diag(phys.astype(float))

    def kernel(self, t) -> Array:
        """Transition kernel ``P[z_t, z_0] = expm(σ̄(t) Q)`` in closed form (Eq. 16).

        Args:
          t: times, any shape ``[...]``.
        Returns:
          ``[..., K+1, K+1]``; column ``z_0`` is the law of ``z_t`` given ``z_0``: a
          physical type stays with probability ``e^{-σ̄}`` and becomes MASK with
          probability ``1 - e^{-σ̄}``; MASK stays MASK. Columns sum to one.
        """
        self._check()
        sb = self.total(t)[..., None, None]
        k1 = self.num_types + 1
        phys = (jnp.arange(k1) > 0).astype(sb.dtype)
        stay = jnp.exp(-sb) * jnp.diag(phys)
        to_mask = -jnp.expm1(-sb) * jnp.zeros((k1, k1), sb.dtype).at[0].set(phys)
        mask_stays = jnp.zeros((k1, k1), sb.dtype).at[0, 0].set(1.0)
        return stay + to_mask + mask_stays

    def corrupt(self, key: Array, z0, t, fixed=None) -> Array:
        """Sample ``z_t ~ P(· | z_0)`` (Eq. 16): mask each non-fixed atom independently.

        Args:
          key: PRNG key.
          z0: ``[n]`` int type indices (MASK = 0 for padding atoms, which stay MASK).
          t: ``[n]`` per-atom times in [0, 1] (or a scalar).
          fixed: optional ``[n]`` bool; fixed atoms are never masked.
        Returns:
          ``[n]`` int, same dtype as ``z0``: each non-fixed atom is MASK with probability
          ``1 - e^{-σ̄(t)}``, else its ``z0``. Deterministic given ``key``.
        """
        self._check()
        z0 = _check_types(z0, "z0", self.num_types)
        n = z0.shape[0]
        t = _per_atom(t, n, "t", unit_interval=True)
        fixed = _check_fixed(fixed, n)
        p_mask = -jnp.expm1(-self.total(t))
        hit = jax.random.uniform(key, (n,), dtype=p_mask.dtype) < p_mask
        if fixed is not None:
            hit = hit & ~fixed
        return jnp.where(hit, jnp.asarray(MASK, z0.dtype), z0)

    def prior(self, n: int) -> Array:
        """The prior at ``t = 1``: ``[n]`` int32, every atom MASK."""
        return jnp.full((n,), MASK, jnp.int32)


jax.tree_util.register_static(AbsorbingProcess)

TYPE_SCHEDULES: dict[str, type] = {}
"""The registry of type-process schedules: name → schedule class (a NamedTuple of numbers
with ``total(t)`` = σ̄ and ``rate(t)`` = σ). Adding one is the class plus one
:func:`register_type_schedule` line."""


def register_type_schedule(name: str, cls: type) -> None:
    """Register a schedule of the absorbing process under ``name`` (a static pytree)."""
    try:
        jax.tree_util.register_static(cls)
    except ValueError:  # already registered (a module reload)
        pass
    TYPE_SCHEDULES[name] = cls


register_type_schedule("loglinear", LogLinearSchedule)
register_type_schedule("geometric", GeometricSchedule)


def make_type_process(num_types: int, schedule: str = "loglinear", *, strict: bool = True, **params: float) -> AbsorbingProcess:
    """The absorbing type process with a registered schedule — the one construction point
    (model and config validation use it). ``params`` are fields of the schedule
    (``eps`` for "loglinear"; ``sigma_min``, ``sigma_max`` for "geometric"); with
    ``strict=False`` unknown ones are ignored, else they raise naming the valid ones."""
    if schedule not in TYPE_SCHEDULES:
        raise ValueError(f"type schedule {schedule!r} unknown; choose one of {sorted(TYPE_SCHEDULES)}")
    cls = TYPE_SCHEDULES[schedule]
    unknown = sorted(set(params) - set(cls._fields))
    if unknown and strict:
        raise ValueError(f"type schedule {schedule!r}: no parameter(s) {unknown}; valid: {list(cls._fields)}")
    sched = cls(**{k: float(v) for k, v in params.items() if k in cls._fields})
    if hasattr(sched, "_check"):
        sched._check()
    out = AbsorbingProcess(int(num_types), sched)
    out._check()
    return out


# --------------------------------------------------------------------------------------
# Concrete scores and the score-entropy loss
# --------------------------------------------------------------------------------------


def _log_neg_expm1(x: Array) -> Array:
    """``log(1 - e^{-x})`` for ``x >= 0``: ``-inf`` at 0, accurate for tiny and large x."""
    return jnp.log(-jnp.expm1(-x))


def masked_log_ratio(sigma_bar) -> Array:
    """``log a(σ̄)`` with ``a = 1 / (e^{σ̄} - 1) = e^{-σ̄} / (1 - e^{-σ̄})``.

    ``a`` is the ratio ``p_{0t}(z_t = y | z_0 = y) / p_{0t}(MASK | z_0 = y)`` of the
    absorbing kernel (Eq. 16): the concrete-score target in Eq. 14, and the total mass
    ``Σ_y ŝ_y`` of the true concrete score of a masked atom. Written as
    ``-σ̄ - log(1 - e^{-σ̄})`` so that it is finite and accurate for ``σ̄`` from 1e-8 (where
    ``e^{σ̄} - 1`` would round) to large values (where ``e^{σ̄}`` would overflow).
    Elementwise; ``+inf`` at ``σ̄ = 0``.
    """
    sigma_bar = jnp.asarray(sigma_bar)
    return -sigma_bar - _log_neg_expm1(sigma_bar)


def independent_log_score(log_p0, sigma_bar) -> Array:
    """The exact log concrete score of masked atoms drawn independently from ``p0``.

    For the absorbing process ``p_t(y) = e^{-σ̄} p0(y)`` and ``p_t(MASK) = 1 - e^{-σ̄}``,
    so ``log ŝ_y = log a(σ̄) + log p0(y)``. An oracle for tests and toy models.

    Args:
      log_p0: ``[..., K]`` log-probabilities of the physical types (per atom or shared).
      sigma_bar: integrated rate, broadcastable to ``log_p0.shape[:-1]`` (e.g. ``[n]``).
    Returns:
      ``[..., K]`` log concrete scores.
    """
    return masked_log_ratio(sigma_bar)[..., None] + jnp.asarray(log_p0)


def score_entropy(log_score, z0, zt, sigma_bar, rate) -> Array:
    """Per-atom score-entropy loss (Eq. 14) for the absorbing process.

    With ``ŝ = exp(log_score)`` and ``a = 1 / (e^{σ̄} - 1)`` (Eq. 14 with weights
    ``w = σ(t)`` from ``Q_t = σ(t) Q`` and the kernel ratio ``a`` of Eq. 16), for atoms
    with ``z_t = MASK``::

        σ(t) · [ Σ_{y} ŝ_y − a log ŝ_{z0} + a (log a − 1) ]

    and 0 for every other atom (unmasked, or ``z0 = MASK`` i.e. padding). It is computed
    as ``σ · [Σ_{y≠z0} ŝ_y + a (e^u − 1 − u)]`` with ``u = log ŝ_{z0} − log a``, which is
    the same number but ≥ 0 term by term, exactly 0 with exactly zero gradient at the
    true ratio (``ŝ_{z0} = a``, ``ŝ_{y≠z0} = 0``), and free of the cancellation between
    ``a log a`` and ``a log ŝ`` when ``a`` is large (``σ̄`` small). Entries of
    ``log_score`` of −1e30 (disallowed types) give no NaN.

    Args:
      log_score: ``[n, K]`` network log concrete scores (column k ↔ type k + 1).
      z0: ``[n]`` int clean types (1..K; 0 = padding, contributes 0).
      zt: ``[n]`` int noised types (0..K).
      sigma_bar: ``[n]`` (or scalar) integrated rate σ̄(t) of each atom's time.
      rate: ``[n]`` (or scalar) rate σ(t) of each atom's time.
    Returns:
      ``[n]`` non-negative losses (dimensionless); average them over real atoms.
    """
    log_score = jnp.asarray(log_score)
    if log_score.ndim != 2:
        raise ValueError(f"log_score must be [n, K], got shape {log_score.shape}")
    n, k = log_score.shape
    log_score = _check_log_score(log_score, n, None)
    z0 = _check_types(z0, "z0", k)
    zt = _check_types(zt, "zt", k)
    if z0.shape[0] != n or zt.shape[0] != n:
        raise ValueError(f"z0 {z0.shape} and zt {zt.shape} must both be [n] with n = {n} (log_score rows)")
    sigma_bar = _per_atom(sigma_bar, n, "sigma_bar")
    rate = _per_atom(rate, n, "rate")
    chex.assert_type([sigma_bar, rate], float)

    active = (zt == MASK) & (z0 != MASK)
    # Inactive rows get harmless stand-ins, so that no inf/NaN arises in the branch that
    # jnp.where discards (its gradient would otherwise be 0 * inf = NaN).
    sb = jnp.where(active, sigma_bar, 1.0)
    ls = jnp.where(active[:, None], log_score, 0.0)
    log_a = masked_log_ratio(sb)
    a = jnp.exp(log_a)
    target = jnp.clip(z0 - 1, 0, k - 1)
    is_target = jnp.arange(k)[None, :] == target[:, None]
    others = jnp.sum(jnp.where(is_target, 0.0, jnp.exp(ls)), axis=-1)
    u = jnp.take_along_axis(ls, target[:, None], axis=-1)[:, 0] - log_a
    # expm1(u) - u >= 0 exactly in real arithmetic; the clamp guards a 1-ulp rounding.
    loss = rate * (others + a * jnp.maximum(jnp.expm1(u) - u, 0.0))
    return jnp.where(active, loss, 0.0)


# --------------------------------------------------------------------------------------
# Reverse transitions and sampling steps
# --------------------------------------------------------------------------------------


def _one_hot_log(z: Array, k1: int, dtype) -> Array:
    return jnp.where(jnp.arange(k1)[None, :] == z[:, None], 0.0, -jnp.inf).astype(dtype)


def _prepare_step(zt, log_score, t, t_next, process: AbsorbingProcess, fixed):
    process._check()
    zt = _check_types(zt, "zt", process.num_types)
    n = zt.shape[0]
    log_score = _check_log_score(log_score, n, process.num_types)
    t = _per_atom(t, n, "t", unit_interval=True)
    t_next = _per_atom(t_next, n, "t_next", unit_interval=True)
    _check_step_times(t, t_next)
    fixed = _check_fixed(fixed, n)
    return zt, log_score, t, t_next, fixed


def tau_leap_transition(
    zt,
    log_score,
    t,
    t_next,
    process: AbsorbingProcess,
    fixed=None,
    *,
    rate_form: Literal["euler", "integrated"] = "euler",
) -> Array:
    """Log-probabilities of one τ-leaping (Euler) step ``t -> t_next`` (Eqs. 11-13, 15).

    The reverse rate out of MASK into type ``y`` is ``Q̄_t[y, MASK] = σ(t) ŝ_y`` (Eq. 12
    with ``Q[MASK, y] = 1``). Over the step a masked atom jumps to ``y`` with probability
    ``λ ŝ_y`` and stays masked with ``1 − λ Σ_y ŝ_y``; a negative stay probability (large
    step or over-confident score) is clipped to 0 and the row renormalised.

    ``rate_form`` chooses ``λ``:

    * ``"euler"`` (default; the paper's and SEDD's Euler step): ``λ = (t − t_next) σ(t)``.
      With the true score the total jump probability is ``Δt σ(t) a(t)``; for the
      log-linear schedule ``σ(t) a(t) = 1/t`` and this equals the exact unmasking
      probability ``1 − m(t_next)/m(t) = Δt / t`` (``m = 1 − e^{−σ̄}``), at any step size.
    * ``"integrated"``: ``λ = σ̄(t) − σ̄(t_next)``, the exact integral of the rate over the
      step (score frozen at ``t``). With the true score it never exceeds the exact
      unmasking probability ``expm1(Δσ̄) a(t)``, so it never needs the clipping, but it
      lags (unmasks too slowly): the frozen ``a(t)`` is the smallest ``a`` on the step and
      Euler's ``σ(t)`` (the largest rate on the step for both schedules) happens to
      compensate. Measured, one atom with the true score, uniform grid 1 -> 1e-3, largest
      error of P(still masked) along the path, N = 4 / 16 / 64 / 256 steps: log-linear
      euler exact (1e-15), integrated 0.26 / 0.085 / 0.027 / 0.0078; geometric(1e-4, 20)
      euler 0.39 / 0.12 / 0.028 / 0.0068, integrated 0.39 / 0.20 / 0.052 / 0.013. Hence
      the default. :func:`analytic_transition` is exact for one atom at any N.

    Args:
      zt: ``[n]`` int current types (0..K).
      log_score: ``[n, K]`` log concrete scores at ``t`` (each masked row needs one finite
        entry; −1e30 marks disallowed types).
      t, t_next: ``[n]`` per-atom times (or scalars), ``0 <= t_next <= t <= 1``.
      process: the :class:`AbsorbingProcess`.
      fixed: optional ``[n]`` bool; fixed atoms keep their type.
    Returns:
      ``[n, K+1]`` normalised log-probabilities of ``z_{t_next}`` over states 0..K
      (rows of atoms that cannot move are one-hot at their current state).
    """
    zt, log_score, t, t_next, fixed = _prepare_step(zt, log_score, t, t_next, process, fixed)
    if rate_form == "euler":
        lam = (t - t_next) * process.rate(t)
    elif rate_form == "integrated":
        lam = process.total(t) - process.total(t_next)
    else:
        raise ValueError(f"rate_form must be 'euler' or 'integrated', got {rate_form!r}")
    lam = jnp.maximum(lam, 0.0)
    log_jump = jnp.log(lam)[:, None] + log_score
    jump_mass = jnp.exp(jax.nn.logsumexp(log_jump, axis=-1))
    log_stay = jnp.log1p(-jnp.minimum(jump_mass, 1.0))
    logits = jnp.concatenate([log_stay[:, None], log_jump], axis=-1)
    logp = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    moving = _movable(zt, fixed) & (lam > 0)
    return jnp.where(moving[:, None], logp, _one_hot_log(zt, process.num_types + 1, logp.dtype))


def analytic_transition(zt, log_score, t, t_next, process: AbsorbingProcess, fixed=None) -> Array:
    """Log-probabilities of the exact ("analytic", Tweedie) reverse step ``t -> t_next``.

    Derivation, for one masked atom, ``s = t_next < t``, ``Δσ̄ = σ̄(t) − σ̄(s)`` and the
    masking probability ``m(u) = 1 − e^{−σ̄(u)}``. By Bayes with the forward kernel from
    ``s`` to ``t`` (Eq. 16 between two times, ``expm(Δσ̄ Q)``)::

        p(z_s = y | z_t = M) = p(z_t = M | z_s = y) p_s(y) / p_t(M)
                             = (1 − e^{−Δσ̄}) e^{−σ̄(s)} p0(y) / m(t)
        p(z_s = M | z_t = M) = 1 · m(s) / m(t)

    and since the concrete score at ``t`` is ``ŝ_y = p_t(y)/p_t(M) = e^{−σ̄(t)} p0(y)/m(t)``,
    ``(1 − e^{−Δσ̄}) e^{−σ̄(s)} = (e^{Δσ̄} − 1) e^{−σ̄(t)}``, so::

        p(z_s = y | z_t = M) = expm1(Δσ̄) · ŝ_y(t),     p(z_s = M | z_t = M) = m(s) / m(t).

    With the true score these sum to one (``Σ ŝ = a(t)``); with a learned score the
    row is renormalised. In a system, ``p0(y)`` is the law of this atom given the others'
    current types, the step moves all atoms at once (the error of a finite step is only
    in the dependence between atoms unmasked in the same step). For one atom it is the
    exact reverse transition at any step size. This is SEDD's analytic sampler,
    specialised to the absorbing graph.

    Args and returns as :func:`tau_leap_transition` (without ``rate_form``).
    """
    zt, log_score, t, t_next, fixed = _prepare_step(zt, log_score, t, t_next, process, fixed)
    sb_t, sb_s = process.total(t), process.total(t_next)
    moving = _movable(zt, fixed) & (sb_t > sb_s)
    # Stand-ins for rows that cannot move keep the discarded branch finite.
    sb_t = jnp.where(moving, sb_t, 1.0)
    sb_s = jnp.where(moving, sb_s, 0.5)
    d = sb_t - sb_s
    log_expm1_d = d + _log_neg_expm1(d)
    log_stay = _log_neg_expm1(sb_s) - _log_neg_expm1(sb_t)
    logits = jnp.concatenate([log_stay[:, None], log_expm1_d[:, None] + log_score], axis=-1)
    logp = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    return jnp.where(moving[:, None], logp, _one_hot_log(zt, process.num_types + 1, logp.dtype))


def _sample_rows(key: Array, zt: Array, logp: Array) -> Array:
    return jax.random.categorical(key, logp, axis=-1).astype(zt.dtype)


def tau_leap_step(key: Array, zt, log_score, t, t_next, process: AbsorbingProcess, fixed=None, *,
                  rate_form: Literal["euler", "integrated"] = "euler") -> Array:
    """One τ-leaping step ``t -> t_next`` for every atom at once (paper Sec. II B).

    Samples from :func:`tau_leap_transition`. Args as there plus ``key``; returns ``[n]``
    int types at ``t_next`` (same dtype as ``zt``); unmasked and fixed atoms are unchanged.
    """
    logp = tau_leap_transition(zt, log_score, t, t_next, process, fixed, rate_form=rate_form)
    return _sample_rows(key, jnp.asarray(zt), logp)


def analytic_step(key: Array, zt, log_score, t, t_next, process: AbsorbingProcess, fixed=None) -> Array:
    """One analytic (exact-for-one-atom) reverse step ``t -> t_next``.

    Samples from :func:`analytic_transition`. Args as there plus ``key``; returns ``[n]``
    int types at ``t_next``; unmasked and fixed atoms are unchanged.
    """
    logp = analytic_transition(zt, log_score, t, t_next, process, fixed)
    return _sample_rows(key, jnp.asarray(zt), logp)


def resolve_mask(key: Array, zt, log_score, fixed=None, *, greedy: bool = False) -> Array:
    """Final step: replace every remaining MASK by a physical type.

    A masked atom takes type ``y`` with probability ``∝ ŝ_y`` (the law of ``z_0`` given
    ``z_t``, as ``t -> 0``), or ``argmax_y ŝ_y`` when ``greedy``.

    Args:
      key: PRNG key (unused when ``greedy``).
      zt: ``[n]`` int types.
      log_score: ``[n, K]`` log concrete scores at the final time.
      fixed: optional ``[n]`` bool; fixed atoms are left as they are.
    Returns:
      ``[n]`` int types; no non-fixed atom is MASK.
    """
    zt = _check_types(zt, "zt")
    n = zt.shape[0]
    log_score = _check_log_score(log_score, n, None)
    _check_types(zt, "zt", log_score.shape[1])
    fixed = _check_fixed(fixed, n)
    if greedy:
        y = jnp.argmax(log_score, axis=-1)
    else:
        y = jax.random.categorical(key, log_score, axis=-1)
    return jnp.where(_movable(zt, fixed), (y + 1).astype(zt.dtype), zt)
