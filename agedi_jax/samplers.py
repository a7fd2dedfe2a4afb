"""Samplers: reverse-time steps for positions and types, one ``lax.scan`` over a time grid,
and score-function wrappers for guidance and type interpolation (paper Eqs. 3, 9, 19, 20).

A **score function** (:data:`ScoreFn`) maps ``(state, t[g], key)`` to
:class:`~agedi_jax.scores.Scores` in physical units: the position score
``∇_R log p_t`` in Å⁻¹ and the type log concrete scores ``[n, K]``. It may accept a
keyword ``type_weights=[n, K+1]`` (per-atom weights over the type-embedding table), which
:func:`interpolated` uses. :func:`agedi_jax.scores.make_score_fn` builds one from a network.

A **step** is a small frozen NamedTuple, callable as
``step(key, state, t, t_next, score_fn) -> state``, where ``state`` is the
:class:`~agedi_jax.batch.AtomsBatch` (positions and types evolve; everything else is the
template) and ``t > t_next`` are scalars of the grid:

* positions: :func:`euler_maruyama` (Eq. 9, or Euler on the probability-flow ODE),
  :func:`predictor_corrector` (Euler–Maruyama + Langevin corrector),
  :func:`heun_ode` (probability-flow ODE, 2nd order);
* types: :func:`tau_leaping`, :func:`analytic` (from :mod:`agedi_jax.discrete`);
* both: :func:`joint` — one score call at ``(x_t, z_t, t)`` feeds both updates.

Force-field guidance (:func:`energy_guided`) is a score-function wrapper too: the
position score plus ``λ(t) F`` with ``F = −∂E/∂R`` of any energy function (EMT, the
learned force field of :mod:`agedi_jax.forcefield`) on the noisy state or on Tweedie's
estimate x̂0, ``λ(t) = scale · (1 − t)^ζ``; :func:`with_corrector_guidance` gives it to the
Langevin corrector of :func:`predictor_corrector` only.

Position and type steps also accept ``scores=`` (already evaluated at ``(state, t)``) so
that :func:`joint` can share one call. Every step uses the grid's own ``Δt = t_next − t``
and adds the update to the current position. Invariants kept after every step: fixed
atoms never move and never change type, padding atoms stay at 0 (and their type), updates
are projected onto the zero-CoM subspace along :func:`~agedi_jax.geometry.com_axes` (the
centre of mass is kept), positions are wrapped along periodic axes, and in graphs with a z
window (``AtomsBatch.z_window``, slabs) the z of free atoms is reflected back into the
window (:func:`~agedi_jax.geometry.displace`; the prior is uniform there,
:func:`agedi_jax.sde.prior_sample`).

Randomness: step ``i`` of :func:`sample` uses ``fold_in(key, i)``; inside a step the
score call, the position noise, the type draw and corrector ``j`` use
``fold_in(step_key, 0 / 1 / 2 / 10 + j)``, and per-atom draws are keyed by graph slot and
index inside the graph (:func:`agedi_jax.keys.atom_keys`). A structure's sample therefore
does not depend on the padded sizes or on the other structures of the batch (given
score functions that treat graphs independently).

The final step (:func:`finalize`, the default of :func:`sample`) makes one more score
call at the last grid time: it resolves every remaining MASK
(:func:`agedi_jax.discrete.resolve_mask`) and, only when given the SDE, applies Tweedie's
denoising ``E[x_0 | x_t] = (x_t + std² s) / m`` to the positions. Denoising is opt-in:
at the default end time ``eps = 1e-3`` the remaining noise is small, and the paper's
Eq. 9 sampler has no such step.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from agedi_jax import discrete
from agedi_jax.batch import AtomsBatch
from agedi_jax.geometry import (
    centre,
    com_axes,
    displace,
    free_atoms,
    graph_sum,
    remove_com,
    wrap_positions,
)
from agedi_jax.keys import atom_keys, atom_normal, graph_uniform
from agedi_jax.scores import Scores
from agedi_jax.sde import SDE, batch_drift, check_batch, prior_sample
from agedi_jax.vocab import MASK

Array = jax.Array

ScoreFn = Callable[..., Scores]
"""``score_fn(state: AtomsBatch, t: [g], key, *, type_weights: [n, K+1] | None = None)
-> Scores(positions [n, 3] Å⁻¹ | None, types [n, K] log-scores | None)``."""

NEG_LOG_SCORE = -1e9
"""Log-score given to types that :func:`interpolated` forbids (finite: no inf − inf)."""

__all__ = [
    "ScoreFn",
    "NEG_LOG_SCORE",
    "EulerMaruyama",
    "PredictorCorrector",
    "HeunODE",
    "TauLeaping",
    "Analytic",
    "Joint",
    "LatticeJoint",
    "Finalize",
    "euler_maruyama",
    "predictor_corrector",
    "heun_ode",
    "tau_leaping",
    "analytic",
    "joint",
    "finalize",
    "POSITION_SAMPLERS",
    "TYPE_SAMPLERS",
    "GRIDS",
    "make_step",
    "time_grid",
    "sample",
    "sample_start",
    "sample_steps",
    "sample_finish",
    "prior_state",
    "guided",
    "interpolated",
    "energy_guided",
    "guidance_weight",
    "with_corrector_guidance",
]

_SCORE, _POS, _TYPES, _HEUN, _CELL, _CORR = 0, 1, 2, 3, 4, 10


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _graph_t(state: AtomsBatch, t) -> Array:
    t = jnp.asarray(t, jnp.asarray(state.positions).dtype)
    return jnp.broadcast_to(t, (state.num_graphs,))


def _call(score_fn: ScoreFn, state: AtomsBatch, t, key) -> Scores:
    out = score_fn(state, _graph_t(state, t), key)
    if not isinstance(out, Scores):
        raise TypeError(f"score_fn must return agedi_jax.scores.Scores, got {type(out).__name__}")
    return out


def _position_score(state: AtomsBatch, scores: Scores, who: str) -> Array:
    if scores.positions is None:
        raise ValueError(f"{who}: the score function returned no position score (Scores.positions is None)")
    s = jnp.asarray(scores.positions, jnp.asarray(state.positions).dtype)
    if s.shape != (state.num_nodes, 3):
        raise ValueError(f"{who}: position score of shape {s.shape}, expected ({state.num_nodes}, 3)")
    return remove_com(state, jnp.where(free_atoms(state)[:, None], s, 0.0))


def _type_log_score(state: AtomsBatch, scores: Scores, num_types: int, who: str) -> Array:
    if scores.types is None:
        raise ValueError(f"{who}: the score function returned no type scores (Scores.types is None)")
    ls = jnp.asarray(scores.types)
    if ls.shape != (state.num_nodes, num_types):
        raise ValueError(f"{who}: type log-scores of shape {ls.shape}, expected ({state.num_nodes}, {num_types})")
    return ls


def _noise(key: Array, state: AtomsBatch) -> Array:
    z = jnp.where(free_atoms(state)[:, None], atom_normal(key, state), 0.0)
    return remove_com(state, z)


def _pf_velocity(sde: SDE, state: AtomsBatch, x: Array, t, s: Array) -> Array:
    """Probability-flow velocity ``f − ½ g² s`` of every atom."""
    t_atom = jnp.full((state.num_nodes,), t, x.dtype)
    return batch_drift(sde, state, x, t_atom) - 0.5 * sde.g2(jnp.asarray(t, x.dtype)) * s


# --------------------------------------------------------------------------------------
# Position steps
# --------------------------------------------------------------------------------------


def _first_evaluation(key, state: AtomsBatch, t, t_next, score_fn: ScoreFn, scores: Scores | None, who: str):
    """Positions ``x``, position score ``s`` at ``(x, t)`` (the scores given, else one network
    call) and ``Δt = t_next − t`` in the positions' dtype: the start of every position step."""
    if scores is None:
        scores = _call(score_fn, state, t, jax.random.fold_in(key, _SCORE))
    x = jnp.asarray(state.positions)
    return x, _position_score(state, scores, who), jnp.asarray(t_next - t, x.dtype)


class EulerMaruyama(NamedTuple):
    """Euler–Maruyama on the reverse SDE (Eq. 9), or Euler on the probability-flow ODE.

    ``x ← x + [f(x, t) − g(t)² s] Δt + g(t) sqrt(|Δt|) z`` with ``Δt = t_next − t < 0``
    (``probability_flow``: ``x ← x + [f − ½ g² s] Δt``, no noise)."""

    sde: SDE
    probability_flow: bool = False

    def validate(self, state: AtomsBatch) -> None:
        check_batch(self.sde, state)

    def __call__(self, key, state: AtomsBatch, t, t_next, score_fn: ScoreFn, scores: Scores | None = None) -> AtomsBatch:
        x, s, dt = _first_evaluation(key, state, t, t_next, score_fn, scores, "euler_maruyama")
        if self.probability_flow:
            dx = _pf_velocity(self.sde, state, x, t, s) * dt
        else:
            t_atom = jnp.full((state.num_nodes,), t, x.dtype)
            g2 = self.sde.g2(jnp.asarray(t, x.dtype))
            drift = batch_drift(self.sde, state, x, t_atom) - g2 * s
            dx = drift * dt + jnp.sqrt(g2 * jnp.abs(dt)) * _noise(jax.random.fold_in(key, _POS), state)
        return state._replace(positions=displace(state, x, dx))


class HeunODE(NamedTuple):
    """Heun's (2nd-order) method on the probability-flow ODE ``dx/dt = f − ½ g² s``.

    ``v1 = v(x, t)``, ``x' = x + v1 Δt``, ``v2 = v(x', t_next)`` — ``f``, ``g`` and the score
    re-evaluated at the new point and time — and ``x ← x + ½ (v1 + v2) Δt``."""

    sde: SDE

    validate = EulerMaruyama.validate

    def __call__(self, key, state: AtomsBatch, t, t_next, score_fn: ScoreFn, scores: Scores | None = None) -> AtomsBatch:
        x, s1, dt = _first_evaluation(key, state, t, t_next, score_fn, scores, "heun_ode")
        v1 = _pf_velocity(self.sde, state, x, t, s1)
        mid = state._replace(positions=displace(state, x, v1 * dt))
        s2 = _position_score(mid, _call(score_fn, mid, t_next, jax.random.fold_in(key, _HEUN)), "heun_ode")
        v2 = _pf_velocity(self.sde, mid, mid.positions, t_next, s2)
        return state._replace(positions=displace(state, x, 0.5 * (v1 + v2) * dt))


class PredictorCorrector(NamedTuple):
    """Predictor–corrector (Song et al. 2021, Alg. 2/3): an Euler–Maruyama predictor step
    ``t → t_next``, then ``n_corrector`` Langevin steps at ``t_next``::

        x ← x + ε s + sqrt(2ε) z,     ε = 2 a (snr)² d / ||s||²

    per graph, with ``d`` the graph's degrees of freedom (3 × free atoms minus the zero-CoM
    constraints; it replaces score_sde's realised ``||z||²``, whose expectation it is, so
    that the step size does not depend on the noise it scales), ``||s||²`` over the graph's
    free atoms, and ``a = 1`` (VE) or ``e^{α(t_next) − α(t)}`` (VP, score_sde's ``α_i``).
    ``snr``: 0.16 is score_sde's VE choice, ~0.01 for VP.

    ``corrector_wrap``: a score-function wrapper (``score_fn -> score_fn``) applied to the
    corrector's score only, e.g. force-field guidance (:func:`with_corrector_guidance`):
    the Langevin corrector then samples the blend of the learned score and the force field
    while the predictor follows the plain score."""

    sde: SDE
    snr: float = 0.16
    n_corrector: int = 1
    corrector_wrap: Optional[Callable[[ScoreFn], ScoreFn]] = None

    def validate(self, state: AtomsBatch) -> None:
        check_batch(self.sde, state)
        if not (isinstance(self.n_corrector, int) and self.n_corrector >= 0):
            raise ValueError(f"predictor_corrector: n_corrector must be an int >= 0, got {self.n_corrector!r}")

    def __call__(self, key, state: AtomsBatch, t, t_next, score_fn: ScoreFn, scores: Scores | None = None) -> AtomsBatch:
        state = EulerMaruyama(self.sde)(key, state, t, t_next, score_fn, scores)
        dtype = jnp.asarray(state.positions).dtype
        # score_sde's α_i: the squared ratio of the kernel mean coefficients (1 for VE)
        a = (self.sde.mean_coeff(jnp.asarray(t, dtype)) / self.sde.mean_coeff(jnp.asarray(t_next, dtype))) ** 2
        free = free_atoms(state)
        dof = 3.0 * graph_sum(state, free.astype(dtype)) - jnp.sum(com_axes(state), -1).astype(dtype)
        dof = jnp.maximum(dof, 0.0)
        corrector_fn = score_fn if self.corrector_wrap is None else self.corrector_wrap(score_fn)
        for j in range(self.n_corrector):
            kj = jax.random.fold_in(key, _CORR + j)
            s = _position_score(state, _call(corrector_fn, state, t_next, jax.random.fold_in(kj, 0)), "predictor_corrector")
            s2 = graph_sum(state, jnp.sum(s * s, -1))
            eps = jnp.where(s2 > 0, 2.0 * a * self.snr**2 * dof / jnp.where(s2 > 0, s2, 1.0), 0.0)
            eps = eps[state.graph_index][:, None]
            x = jnp.asarray(state.positions)
            dx = eps * s + jnp.sqrt(2.0 * eps) * _noise(jax.random.fold_in(kj, 1), state)
            state = state._replace(positions=displace(state, x, dx))
        return state


# --------------------------------------------------------------------------------------
# Type steps
# --------------------------------------------------------------------------------------


def _type_update(step, process, key, state: AtomsBatch, log_score: Array, t, t_next) -> Array:
    """Apply a :mod:`agedi_jax.discrete` step atom by atom with per-atom keys."""
    z = jnp.asarray(state.types)
    dtype = log_score.dtype
    t1 = jnp.full((1,), t, dtype)
    s1 = jnp.full((1,), t_next, dtype)
    locked = jnp.asarray(state.fixed, bool) | ~jnp.asarray(state.node_mask, bool)

    def one(k, zi, li, fi):
        return step(k, zi[None], li[None], t1, s1, process, fi[None])[0]

    new = jax.vmap(one)(atom_keys(key, state), z, log_score, locked)
    return jnp.where(locked, z, new).astype(z.dtype)


class TauLeaping(NamedTuple):
    """τ-leaping (Euler) step of the absorbing type process
    (:func:`agedi_jax.discrete.tau_leap_step`)."""

    process: discrete.AbsorbingProcess
    rate_form: str = "euler"

    def validate(self, state: AtomsBatch) -> None:
        if self.rate_form not in ("euler", "integrated"):
            raise ValueError(f"tau_leaping: rate_form must be 'euler' or 'integrated', got {self.rate_form!r}")

    def __call__(self, key, state: AtomsBatch, t, t_next, score_fn: ScoreFn, scores: Scores | None = None) -> AtomsBatch:
        if scores is None:
            scores = _call(score_fn, state, t, jax.random.fold_in(key, _SCORE))
        ls = _type_log_score(state, scores, self.process.num_types, "tau_leaping")

        def step(k, z, l, a, b, p, f):
            return discrete.tau_leap_step(k, z, l, a, b, p, f, rate_form=self.rate_form)

        z = _type_update(step, self.process, jax.random.fold_in(key, _TYPES), state, ls, t, t_next)
        return state._replace(types=z)


class Analytic(NamedTuple):
    """SEDD's analytic (exact for one atom) reverse step of the absorbing type process
    (:func:`agedi_jax.discrete.analytic_step`)."""

    process: discrete.AbsorbingProcess

    def validate(self, state: AtomsBatch) -> None:
        return None

    def __call__(self, key, state: AtomsBatch, t, t_next, score_fn: ScoreFn, scores: Scores | None = None) -> AtomsBatch:
        if scores is None:
            scores = _call(score_fn, state, t, jax.random.fold_in(key, _SCORE))
        ls = _type_log_score(state, scores, self.process.num_types, "analytic")
        z = _type_update(discrete.analytic_step, self.process, jax.random.fold_in(key, _TYPES), state, ls, t, t_next)
        return state._replace(types=z)


class Joint(NamedTuple):
    """Positions and types stepped together (Eq. 18's joint model, Sec. II C).

    One score call at ``(x_t, z_t, t)`` feeds the type step and the first stage of the
    position step; the types are updated first, so that any further score evaluation of
    the position step (Heun's second stage, Langevin correctors, at ``t_next``) sees the
    state ``(x', z_{t_next})`` it belongs to."""

    position_step: Any
    type_step: Any

    def validate(self, state: AtomsBatch) -> None:
        for s in (self.position_step, self.type_step):
            if hasattr(s, "validate"):
                s.validate(state)

    def __call__(self, key, state: AtomsBatch, t, t_next, score_fn: ScoreFn) -> AtomsBatch:
        scores = _call(score_fn, state, t, jax.random.fold_in(key, _SCORE))
        types = self.type_step(key, state, t, t_next, score_fn, scores=scores).types
        return self.position_step(key, state._replace(types=types), t, t_next, score_fn, scores=scores)


class LatticeJoint(NamedTuple):
    """Cell, fractional positions (and types) of bulk crystals and layers stepped together
    from one score call (:mod:`agedi_jax.lattice`).

    With ``h = t − t_next`` and the scores at ``(S_t, f_t, z_t, t)``:

    1. types: ``type_step`` (if any) with the shared scores;
    2. cell: reverse Euler–Maruyama in lattice coordinates ``Y``,
       ``Y ← Y − h·reverse_drift(Y, t, s_L) + sqrt(h g_L²) E`` (``E`` a masked
       :func:`~agedi_jax.lattice.sym_normal`; no noise for the probability-flow ODE),
       mapped back to ``S`` and floored (:func:`~agedi_jax.lattice.floor_cells`,
       smallest eigenvalue ``≥ ℓ_N e^{−y_max}``);
    3. fractional positions: reverse VE on the torus with ``σ_f = σ/ℓ_N``,
       ``f ← f + h g_f² s_f + sqrt(h g_f²) z``, ``g_f² = g²/ℓ_N²``, the fractional score
       ``s_f = s_x Sᵀ`` (:func:`~agedi_jax.lattice.frac_score` of the Cartesian score on the
       cell it was evaluated at), wrapped, then placed in the new cell (``x = f S'``).
       Along the vacuum axis of a layer (pbc T, T, F) the same formulas with ``c_z`` in
       place of ``ℓ_N`` (:func:`~agedi_jax.lattice.axis_lengths`) are the Cartesian
       reverse VE step of ``z`` with the zero-CoM score and noise; ``c`` never moves.

    Keys: score ``fold_in(key, 0)``, position noise ``1``, types ``2``, cell noise ``4``."""

    lattice: Any
    sde: SDE
    type_step: Any = None
    y_max: float = 1.0
    probability_flow: bool = False

    def validate(self, state: AtomsBatch) -> None:
        check_batch(self.sde, state)
        if self.type_step is not None and hasattr(self.type_step, "validate"):
            self.type_step.validate(state)

    def __call__(self, key, state: AtomsBatch, t, t_next, score_fn: ScoreFn) -> AtomsBatch:
        from agedi_jax import lattice as lat

        scores = _call(score_fn, state, t, jax.random.fold_in(key, _SCORE))
        if scores.cell is None:
            raise ValueError("lattice step: the score function returned no cell score (Scores.cell is None)")
        if self.type_step is not None:
            state = state._replace(types=self.type_step(key, state, t, t_next, score_fn, scores=scores).types)
        x = jnp.asarray(state.positions)
        dtype = x.dtype
        s_x = _position_score(state, scores, "lattice step")
        gi = state.graph_index
        mask = lat.graph_lattice_mask(state)
        n = state.n_node
        h = jnp.asarray(t - t_next, dtype)
        tg = _graph_t(state, t)
        # cell
        cell = jnp.asarray(state.cell, dtype)
        y = lat.cell_to_coords(self.lattice, cell, n, mask)
        score_l = jnp.asarray(scores.cell, dtype)
        y = y - h * lat.reverse_drift(self.lattice, y, tg, score_l, n, mask, self.probability_flow)
        if not self.probability_flow:
            gg = lat.g2(self.lattice, tg, n, mask).astype(dtype)
            e = jnp.where(mask, lat.sym_normal(jax.random.fold_in(key, _CELL), (state.num_graphs,), dtype), 0.0)
            y = y + jnp.sqrt(h * gg)[:, None, None] * e
        new_cell = jnp.where(mask, lat.coords_to_cell(self.lattice, y, n, mask), cell)
        # fractional positions (score evaluated on the old cell); per axis: ℓ_N along periodic
        # axes, c_z along a layer's z (there the step is the Cartesian VE step, zero-CoM)
        ls = lat.axis_lengths(self.lattice, state, dtype)[gi]
        gf2 = self.sde.g2(jnp.asarray(t, dtype)) / (ls * ls)
        s_f = lat.frac_score(s_x, cell[gi])
        f = lat.batch_fractional(state)
        factor = 0.5 if self.probability_flow else 1.0
        df = h * factor * gf2 * s_f
        if not self.probability_flow:
            df = df + jnp.sqrt(h * gf2) * _noise(jax.random.fold_in(key, _POS), state)
        free = free_atoms(state)
        pbc = jnp.asarray(state.pbc, bool)[gi]
        f = jnp.where(free[:, None], lat.wrap_frac(f + df, pbc), f)
        state = state._replace(positions=jnp.where(jnp.asarray(state.node_mask, bool)[:, None], lat.frac_to_cart(f, cell[gi]), x))
        state = lat.with_cell(state, new_cell)
        return lat.floor_cells(self.lattice, state, self.y_max)


class Finalize(NamedTuple):
    """The last step at the end time ``t = grid[-1]`` (one score call).

    * ``resolve_types``: every remaining MASK of a free atom becomes a physical type drawn
      ``∝ ŝ_y`` (``greedy``: the argmax), :func:`agedi_jax.discrete.resolve_mask`; skipped
      when the score function has no type head.
    * ``sde`` given and ``denoise``: Tweedie's estimate ``E[x_0 | x_t] = c + (y + std² s)/m``
      (``y = x − c`` relative to the :func:`~agedi_jax.geometry.centre`, ``m`` the kernel mean
      coefficient; VE: ``x + std² s``), projected and wrapped like every step.
    """

    sde: Optional[SDE] = None
    denoise: bool = True
    resolve_types: bool = True
    greedy: bool = False

    def __call__(self, key, state: AtomsBatch, t, score_fn: ScoreFn) -> AtomsBatch:
        do_pos = self.sde is not None and self.denoise
        if not (do_pos or self.resolve_types):
            return state
        scores = _call(score_fn, state, t, jax.random.fold_in(key, _SCORE))
        if do_pos and scores.positions is not None:
            x = jnp.asarray(state.positions)
            s = _position_score(state, scores, "finalize")
            tt = jnp.asarray(t, x.dtype)
            m = self.sde.mean_coeff(tt)
            m1 = self.sde.mean_coeff_minus_one(tt)
            std2 = self.sde.std(tt) ** 2
            y = x - centre(state, x)[state.graph_index]
            dx = (-m1 / m) * y + (std2 / m) * s
            state = state._replace(positions=displace(state, x, dx))
        if self.resolve_types and scores.types is not None:
            ls = jnp.asarray(scores.types)
            greedy = self.greedy

            def step(k, z, l, a, b, p, f):
                return discrete.resolve_mask(k, z, l, f, greedy=greedy)

            z = _type_update(step, None, jax.random.fold_in(key, _TYPES), state, ls, t, t)
            state = state._replace(types=z)
        return state


def euler_maruyama(sde: SDE, probability_flow: bool = False) -> EulerMaruyama:
    """Euler–Maruyama step of the reverse SDE (Eq. 9); Euler on the ODE if ``probability_flow``."""
    sde.validate()
    return EulerMaruyama(sde, probability_flow)


def predictor_corrector(sde: SDE, snr: float = 0.16, n_corrector: int = 1) -> PredictorCorrector:
    """Euler–Maruyama predictor + ``n_corrector`` Langevin corrector steps of ``snr``."""
    sde.validate()
    if not snr > 0:
        raise ValueError(f"predictor_corrector: snr must be > 0, got {snr}")
    if not (isinstance(n_corrector, int) and n_corrector >= 0):
        raise ValueError(f"predictor_corrector: n_corrector must be an int >= 0, got {n_corrector!r}")
    return PredictorCorrector(sde, float(snr), n_corrector)


def heun_ode(sde: SDE) -> HeunODE:
    """Heun step of the probability-flow ODE (second order)."""
    sde.validate()
    return HeunODE(sde)


def tau_leaping(process: discrete.AbsorbingProcess, rate_form: str = "euler") -> TauLeaping:
    """τ-leaping step of the absorbing type process (``rate_form`` "euler" or "integrated")."""
    out = TauLeaping(process, rate_form)
    out.validate(None)
    return out


def analytic(process: discrete.AbsorbingProcess) -> Analytic:
    """Analytic (SEDD) step of the absorbing type process."""
    return Analytic(process)


def joint(position_step, type_step) -> Joint:
    """Step positions and types together from one score call per stage."""
    return Joint(position_step, type_step)


def finalize(sde: SDE | None = None, denoise: bool = True, resolve_types: bool = True, greedy: bool = False) -> Finalize:
    """Final step: resolve MASKs; Tweedie-denoise positions when ``sde`` is given."""
    return Finalize(sde, denoise, resolve_types, greedy)


# --------------------------------------------------------------------------------------
# Registries: sampler names -> step constructors
# --------------------------------------------------------------------------------------

POSITION_SAMPLERS: dict[str, Callable[[SDE, Any], Any]] = {
    "em": lambda sde, opts: euler_maruyama(sde),
    "pc": lambda sde, opts: predictor_corrector(sde, opts.snr, opts.corrector_steps),
    "ode": lambda sde, opts: heun_ode(sde),
}
"""Position samplers by name: ``(sde, options) -> step``; ``options`` is a
:class:`~agedi_jax.config.SampleConfig` (or anything with its fields). Adding a sampler is
its step class plus one line here; the config's validation reads this table."""

TYPE_SAMPLERS: dict[str, Callable[[discrete.AbsorbingProcess, Any], Any]] = {
    "tau": lambda process, opts: tau_leaping(process),
    "analytic": lambda process, opts: analytic(process),
}
"""Type samplers by name: ``(process, options) -> step`` (as :data:`POSITION_SAMPLERS`)."""

GRIDS = ("uniform", "quadratic", "log")
"""Kinds of :func:`time_grid`."""


def make_step(sde: SDE | None, process: discrete.AbsorbingProcess | None, options: Any, *,
              lattice: Any = None, y_max: float = 1.0):
    """The step of the configured samplers — the one construction point of sampler steps:
    ``options.sampler`` for positions (when ``sde`` is given), ``options.type_sampler`` for
    types (when ``process`` is given), :func:`joint` when both are modelled. With a
    ``lattice`` process (bulk crystals, layers) the step is :class:`LatticeJoint` (``sampler``
    "em", or "ode" for its probability-flow form) with the type step inside."""
    if lattice is not None:
        if sde is None:
            raise ValueError("make_step: a lattice process needs the position SDE")
        if options.sampler not in ("em", "ode"):
            raise ValueError(f"sample.sampler={options.sampler!r} is not available with process.lattice; use em or ode")
        typ = None
        if process is not None:
            if options.type_sampler not in TYPE_SAMPLERS:
                raise ValueError(f"unknown type sampler {options.type_sampler!r}; choose one of {sorted(TYPE_SAMPLERS)}")
            typ = TYPE_SAMPLERS[options.type_sampler](process, options)
        return LatticeJoint(lattice, sde, typ, float(y_max), options.sampler == "ode")
    pos = typ = None
    if sde is not None:
        if options.sampler not in POSITION_SAMPLERS:
            raise ValueError(f"unknown position sampler {options.sampler!r}; choose one of {sorted(POSITION_SAMPLERS)}")
        pos = POSITION_SAMPLERS[options.sampler](sde, options)
    if process is not None:
        if options.type_sampler not in TYPE_SAMPLERS:
            raise ValueError(f"unknown type sampler {options.type_sampler!r}; choose one of {sorted(TYPE_SAMPLERS)}")
        typ = TYPE_SAMPLERS[options.type_sampler](process, options)
    if pos is not None and typ is not None:
        return joint(pos, typ)
    if pos is None and typ is None:
        raise ValueError("make_step: nothing to sample (no SDE and no type process)")
    return pos if pos is not None else typ


# --------------------------------------------------------------------------------------
# The sampling loop
# --------------------------------------------------------------------------------------


def time_grid(num_steps: int, eps: float = 1e-3, kind: str = "uniform") -> Array:
    """Decreasing time grid ``[num_steps + 1]`` from ``t_N = 1`` to ``t_0 = eps``.

    ``kind``: "uniform" (equal steps), "quadratic" (``eps + (1 − eps) u²`` with ``u``
    uniform: finer steps near the data) or "log" (geometric from 1 to ``eps``)."""
    if not (isinstance(num_steps, (int, np.integer)) and num_steps >= 1):
        raise ValueError(f"time_grid: num_steps must be an int >= 1, got {num_steps!r}")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"time_grid: eps must lie in (0, 1), got {eps}")
    u = np.linspace(1.0, 0.0, num_steps + 1)
    if kind == "uniform":
        g = eps + (1.0 - eps) * u
    elif kind == "quadratic":
        g = eps + (1.0 - eps) * u**2
    elif kind == "log":
        g = np.exp(np.log(eps) * (1.0 - u))
    else:
        raise ValueError(f"time_grid: kind must be one of {GRIDS}, got {kind!r}")
    g[0], g[-1] = 1.0, eps
    return jnp.asarray(g)


def sample(
    key: Array,
    state0: AtomsBatch,
    score_fn: ScoreFn,
    step_fn,
    grid,
    final_step=Finalize(),
) -> AtomsBatch:
    """Run ``step_fn`` over ``grid`` in one ``lax.scan`` (no Python loop over steps, no
    host round trip), then ``final_step``.

    Args:
      key: PRNG key; step ``i`` uses ``fold_in(key, i)``, the final step
        ``fold_in(key, N)``.
      state0: the initial state at ``grid[0]`` (usually :func:`prior_state`): positions Å,
        types MASK for atoms to be generated; fixed atoms and the template are kept.
      score_fn: see :data:`ScoreFn`.
      step_fn: a step, e.g. ``joint(euler_maruyama(sde), tau_leaping(process))``.
      grid: ``[N+1]`` decreasing times (:func:`time_grid`).
      final_step: ``(key, state, t, score_fn) -> state`` at ``grid[-1]`` or ``None``; the
        default :func:`finalize` ``()`` resolves remaining MASKs only.
    Returns:
      the final state (an :class:`AtomsBatch` of jax arrays).

    Jit it with the callables closed over, e.g.
    ``jax.jit(lambda k, s: sample(k, s, score_fn, step, grid))``.
    """
    grid = jnp.asarray(grid)
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(f"sample: grid must be a [N+1] vector with N >= 1, got shape {grid.shape}")
    if not isinstance(grid, jax.core.Tracer):
        g = np.asarray(grid)
        if not (np.all(np.diff(g) < 0) and g.min() > 0 and g.max() <= 1):
            raise ValueError("sample: grid must be strictly decreasing inside (0, 1] (from the prior towards the data)")
    state = sample_start(state0, step_fn)
    n_steps = grid.shape[0] - 1
    state = sample_steps(key, state, score_fn, step_fn, grid, 0, n_steps)
    return sample_finish(key, state, score_fn, grid, final_step)


def sample_start(state0: AtomsBatch, step_fn=None) -> AtomsBatch:
    """The sampling state as :func:`sample` starts from it: jax arrays, padding atoms at 0,
    positions wrapped along periodic axes (after ``step_fn.validate``)."""
    if step_fn is not None and hasattr(step_fn, "validate"):
        step_fn.validate(state0)
    if isinstance(state0, AtomsBatch):
        state0 = state0.without_labels()  # a template's energy / forces are not the sample's
    state0 = jax.tree_util.tree_map(jnp.asarray, state0)
    x0 = jnp.asarray(state0.positions)
    x0 = jnp.where(jnp.asarray(state0.node_mask, bool)[:, None], x0, 0.0)
    return state0._replace(positions=wrap_positions(state0, x0))


def sample_steps(key: Array, state: AtomsBatch, score_fn: ScoreFn, step_fn, grid, start, stop) -> AtomsBatch:
    """Steps ``start .. stop − 1`` of the grid (step ``i`` goes from ``grid[i]`` to
    ``grid[i + 1]`` with key ``fold_in(key, i)``), so that running the chunks
    ``[0, a), [a, b), …`` one after the other is :func:`sample`'s loop. Python-int bounds
    give one ``lax.scan``; traced bounds one ``lax.while_loop`` (every chunk shares one
    compilation: the progress of a long sample can be reported between chunks without a
    host callback inside the loop)."""
    grid = jnp.asarray(grid).astype(jnp.asarray(state.positions).dtype)
    if isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer)):

        def body(st, xs):
            i, t, t_next = xs
            return step_fn(jax.random.fold_in(key, i), st, t, t_next, score_fn), None

        state, _ = jax.lax.scan(body, state, (jnp.arange(start, stop), grid[start:stop], grid[start + 1:stop + 1]))
        return state

    def loop(i, st):
        return step_fn(jax.random.fold_in(key, i), st, grid[i], grid[i + 1], score_fn)

    return jax.lax.fori_loop(start, stop, loop, state)


def sample_finish(key: Array, state: AtomsBatch, score_fn: ScoreFn, grid, final_step=Finalize()) -> AtomsBatch:
    """The final step of :func:`sample` at ``grid[-1]`` (key ``fold_in(key, N)``)."""
    grid = jnp.asarray(grid).astype(jnp.asarray(state.positions).dtype)
    n_steps = grid.shape[0] - 1
    if final_step is not None:
        state = final_step(jax.random.fold_in(key, n_steps), state, grid[-1], score_fn)
    return state


def prior_state(key: Array, template: AtomsBatch, sde: SDE | None = None, mask_types: bool = True) -> AtomsBatch:
    """Initial sampling state: positions from :func:`agedi_jax.sde.prior_sample` (when
    ``sde`` is given) and, if ``mask_types``, every free atom's type set to MASK (the
    absorbing prior). Fixed atoms and padding are kept; label fields (energies, forces)
    are dropped."""
    state = jax.tree_util.tree_map(jnp.asarray, template.without_labels())
    if sde is not None:
        state = prior_sample(key, sde, state)
    if mask_types:
        state = state._replace(types=jnp.where(free_atoms(state), MASK, state.types).astype(state.types.dtype))
    return state


# --------------------------------------------------------------------------------------
# Score-function wrappers
# --------------------------------------------------------------------------------------


def _mix(w, a, b):
    if a is None or b is None:
        return None if a is None and b is None else (a if b is None else b)
    return w * a + (1.0 - w) * b


def guided(score_fn: ScoreFn, w) -> ScoreFn:
    """Classifier-free guidance (Eq. 19): ``s̃ = w s(y) + (1 − w) s(∅)``.

    ``s(y)`` is the score with the state's labels, ``s(∅)`` with every label replaced by the
    null label 0; ``w = 1`` is purely conditional, ``w = 0`` unconditional, ``w > 1``
    sharpens the condition. Applied to position scores and to type log-scores alike. Two
    calls (with the same key and keywords) per evaluation."""

    def fn(state: AtomsBatch, t, key, **kwargs) -> Scores:
        cond = score_fn(state, t, key, **kwargs)
        uncond = score_fn(state._replace(label=jnp.zeros_like(jnp.asarray(state.label))), t, key, **kwargs)
        return Scores(positions=_mix(w, cond.positions, uncond.positions), types=_mix(w, cond.types, uncond.types),
                      cell=_mix(w, cond.cell, uncond.cell))

    return fn


def interpolated(score_fn: ScoreFn, type_a: int, type_b: int, num_types: int) -> ScoreFn:
    """Type interpolation (Eq. 20) between physical types ``type_a`` and ``type_b`` (1..K).

    At every call ``α ~ U(0, 1)`` is drawn per graph (keyed per graph slot) and the score
    function receives ``type_weights [n, K+1]``: atoms of type A get ``α`` at A and
    ``1 − α`` at B, atoms of type B ``α`` at B and ``1 − α`` at A, every other atom (MASK
    included) its one-hot row. Type log-scores of every type other than A and B are set to
    :data:`NEG_LOG_SCORE`, so the type process may only unmask into {A, B}. Position
    scores are passed through. An incoming ``type_weights`` keyword is replaced."""
    if not (1 <= type_a <= num_types and 1 <= type_b <= num_types) or type_a == type_b:
        raise ValueError(f"interpolated: need two different physical types in 1..{num_types}, got {type_a}, {type_b}")

    allowed = np.zeros(num_types, bool)
    allowed[[type_a - 1, type_b - 1]] = True

    def fn(state: AtomsBatch, t, key, **kwargs) -> Scores:
        kwargs.pop("type_weights", None)
        z = jnp.asarray(state.types)
        dtype = jnp.asarray(state.positions).dtype
        alpha = graph_uniform(jax.random.fold_in(key, 0x1A), state, dtype=dtype)[state.graph_index][:, None]
        e = jnp.eye(num_types + 1, dtype=dtype)
        row_a = alpha * e[type_a] + (1.0 - alpha) * e[type_b]
        row_b = alpha * e[type_b] + (1.0 - alpha) * e[type_a]
        weights = jnp.where((z == type_a)[:, None], row_a, jnp.where((z == type_b)[:, None], row_b, e[z]))
        out = score_fn(state, t, key, type_weights=weights, **kwargs)
        types = out.types
        if types is not None:
            types = jnp.where(jnp.asarray(allowed)[None, :], types, jnp.asarray(NEG_LOG_SCORE, jnp.asarray(types).dtype))
        return Scores(positions=out.positions, types=types, cell=out.cell)

    return fn


# --------------------------------------------------------------------------------------
# Force-field guidance
# --------------------------------------------------------------------------------------


def guidance_weight(t, scale, zeta: float = 1.0) -> Array:
    """``λ(t) = scale · (1 − t)^ζ`` (eV⁻¹ when ``scale`` is an inverse temperature)."""
    t = jnp.asarray(t)
    return scale * jnp.power(jnp.clip(1.0 - t, 0.0, 1.0), zeta)


def _resolved_types(state: AtomsBatch, log_scores) -> Array:
    """The state's types with every MASK of a real atom replaced by the most probable
    clean type (``argmax`` of the type log-scores, which for the absorbing process are
    the clean-type posterior up to a per-atom constant); unchanged without type scores."""
    z = jnp.asarray(state.types)
    if log_scores is None:
        return z
    best = (jnp.argmax(jnp.asarray(log_scores), axis=-1) + 1).astype(z.dtype)
    masked = (z == MASK) & jnp.asarray(state.node_mask, bool)
    return jnp.where(masked, best, z)


def _cap_norm(f: Array, max_norm: float) -> Array:
    if not max_norm or max_norm <= 0:
        return f
    norm = jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True))
    return f * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))


def energy_guided(
    score_fn: ScoreFn,
    energy_fn: Callable[[AtomsBatch], Array],
    scale,
    zeta: float = 1.0,
    on: str = "x0",
    sde: SDE | None = None,
    max_force: float = 0.0,
) -> ScoreFn:
    """Force-field guidance: the position score plus a force term,
    ``s̃ = s + λ(t) F``, ``λ(t) = scale · (1 − t)^ζ`` (per graph).

    ``F = −∂E/∂R`` (eV/Å) of ``energy_fn(batch) -> [g]`` (any
    :data:`agedi_jax.potentials.EnergyFn`: EMT, or the learned force field
    :func:`agedi_jax.forcefield.model_energy_fn`) is evaluated

    * ``on="xt"``: on the current noisy state;
    * ``on="x0"``: on Tweedie's denoised estimate ``x̂0 = c + (y + std² s)/m`` (``y = x − c``
      about the :func:`~agedi_jax.geometry.centre`, ``m`` the kernel mean coefficient; needs
      ``sde``), divided by ``m`` (the chain rule through ``x̂0`` with the score's own
      Jacobian neglected).

    With ``scale = 1/kT`` this is the score of ``p_t(x) · exp(−λ(t) E)``: at t → 0 the data
    distribution tilted by a Boltzmann factor; ``(1 − t)^ζ`` switches it on towards the end.
    Atoms still MASK get their most probable type (from the type scores) for the energy;
    non-finite forces (elements EMT lacks) count as 0; forces of fixed and padding atoms are
    0; each atom's force is capped at ``max_force`` eV/Å (0: no cap). Type scores pass
    through. Composes with :func:`guided` and :func:`interpolated` (wrap them first).
    """
    if on not in ("x0", "xt"):
        raise ValueError(f"energy_guided: on must be 'x0' or 'xt', got {on!r}")
    if on == "x0" and sde is None:
        raise ValueError("energy_guided: on='x0' needs the SDE (Tweedie's estimate)")
    from agedi_jax.potentials.base import energy_and_forces

    def fn(state: AtomsBatch, t, key, **kwargs) -> Scores:
        out = score_fn(state, t, key, **kwargs)
        if out.positions is None:
            raise ValueError("energy_guided: the score function returned no position score")
        x = jnp.asarray(state.positions)
        dtype = x.dtype
        tg = jnp.broadcast_to(jnp.asarray(t, dtype), (state.num_graphs,))
        gi = state.graph_index
        factor = guidance_weight(tg, jnp.asarray(scale, dtype), zeta)  # [g]
        if on == "x0":
            s = _position_score(state, out, "energy_guided")
            m = sde.mean_coeff(tg)
            m1 = sde.mean_coeff_minus_one(tg)
            std2 = sde.std(tg) ** 2
            y = x - centre(state, x)[gi]
            dx = (-m1 / m)[gi][:, None] * y + (std2 / m)[gi][:, None] * s
            x_eval = displace(state, x, dx)
            factor = factor / m
        else:
            x_eval = x
        probe = state._replace(positions=jax.lax.stop_gradient(x_eval), types=_resolved_types(state, out.types))
        _, forces = energy_and_forces(energy_fn, probe)
        forces = jnp.where(jnp.isfinite(forces), forces, 0.0)
        forces = jnp.where(free_atoms(state)[:, None], forces, 0.0)
        forces = _cap_norm(forces, max_force)
        guide = factor[gi][:, None] * forces
        return out._replace(positions=jnp.asarray(out.positions, dtype) + guide)

    return fn


def with_corrector_guidance(step, wrap: Callable[[ScoreFn], ScoreFn]):
    """``step`` with ``wrap`` (e.g. ``lambda f: energy_guided(f, ...)``) applied to the
    score of its Langevin corrector only (:class:`PredictorCorrector`, alone or inside
    :class:`Joint`); other steps have no corrector and raise."""
    if isinstance(step, PredictorCorrector):
        return step._replace(corrector_wrap=wrap)
    if isinstance(step, Joint) and isinstance(step.position_step, PredictorCorrector):
        return step._replace(position_step=step.position_step._replace(corrector_wrap=wrap))
    raise ValueError(
        "corrector-only guidance needs the predictor-corrector sampler (sample.sampler=pc), "
        f"got {type(step).__name__}"
    )
