"""Scores: what a score network outputs and how it becomes a score.

:class:`Scores` is shared by networks, losses and samplers. A *network* returns raw
outputs; a *score function* (what samplers consume) returns scores in physical units.
Everything that converts one into the other lives here:

* **Position output** (``process.parametrization``): ``"eps"`` (default) reads the raw
  equivariant vector ``o`` [n, 3] as a noise prediction ``ε̂`` (dimensionless), the score
  being ``s = −ε̂ / std`` (Å⁻¹, Eq. 7, ``std`` the kernel standard deviation of the atom's
  graph at time t); ``"score"`` reads ``o`` as the score itself. :func:`gaussian_skip`
  adds the exact output for Gaussian data (a skip connection, EDM-style preconditioning).
* **Type output** (``process.type_parametrization``): ``"direct"`` reads the head as log
  concrete scores ``[n, K]``; ``"mean"`` (default) as logits of the clean type, turned into
  the exact absorbing-state form by :func:`mean_log_score`.
* :func:`make_score_fn` turns a network's apply function and parameters into the
  sampler's :data:`~agedi_jax.samplers.ScoreFn`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from agedi_jax import discrete
from agedi_jax.batch import AtomsBatch
from agedi_jax.geometry import com_axes, remove_com

Array = jax.Array

__all__ = [
    "Scores",
    "PARAMETRIZATIONS",
    "eps_to_score",
    "score_to_eps",
    "output_to_eps",
    "output_to_score",
    "gaussian_skip",
    "mean_log_score",
    "make_score_fn",
]

PARAMETRIZATIONS = ("eps", "score")
"""Readings of the network's raw position output."""

_PARAMS = PARAMETRIZATIONS


class Scores(NamedTuple):
    """Per-atom scores.

    Attributes:
      positions: [n, 3] position output. From a *network* this is the raw equivariant
        vector (interpreted as ε̂ or as a score, module docstring); from a *score function*
        handed to a sampler it is the score ∇_R log p_t in Å⁻¹. ``None`` when positions are
        not modelled.
      types: [n, K] log concrete scores log ŝ_y for the K physical types (column k is type
        index k + 1; MASK has no column). ``None`` when types are not modelled.
      energy: [n] raw per-atom energy output of a network with an energy head
        (dimensionless; :mod:`agedi_jax.forcefield` scales it and adds the per-element
        reference). ``None`` otherwise; score functions do not pass it on.
      cell: [g, 3, 3] symmetric lattice output of a network with a lattice head (the
        noise prediction ε̂ of the lattice coordinates, :mod:`agedi_jax.lattice`); from a
        score function the lattice score ``−ε̂/std`` in those coordinates. ``None`` when
        the cell is not modelled.
    """

    positions: Any = None
    types: Any = None
    energy: Any = None
    cell: Any = None


def _std_col(std, like) -> Array:
    std = jnp.asarray(std, jnp.asarray(like).dtype)
    return std[..., None] if std.ndim == jnp.ndim(like) - 1 else std


def eps_to_score(eps, std) -> Array:
    """Score ``s = −ε / std`` (Å⁻¹) from a noise prediction ``ε`` [n, 3] and ``std`` [n]
    (Eq. 7); 0 where ``std`` is 0."""
    eps = jnp.asarray(eps)
    sd = _std_col(std, eps)
    return jnp.where(sd > 0, -eps / jnp.where(sd > 0, sd, 1.0), 0.0)


def score_to_eps(score, std) -> Array:
    """Noise ``ε = −std · s`` from a score ``s`` [n, 3] (Å⁻¹) and ``std`` [n] (Å)."""
    score = jnp.asarray(score)
    return -_std_col(std, score) * score


def output_to_eps(raw, std, parametrization: str = "eps") -> Array:
    """The network's raw position output ``[n, 3]`` as a noise prediction ε̂."""
    if parametrization == "eps":
        return jnp.asarray(raw)
    if parametrization == "score":
        return score_to_eps(raw, std)
    raise ValueError(f"parametrization={parametrization!r}; choose one of {_PARAMS}")


def output_to_score(raw, std, parametrization: str = "eps") -> Array:
    """The network's raw position output ``[n, 3]`` as a score (Å⁻¹)."""
    if parametrization == "eps":
        return eps_to_score(raw, std)
    if parametrization == "score":
        return jnp.asarray(raw)
    raise ValueError(f"parametrization={parametrization!r}; choose one of {_PARAMS}")


def gaussian_skip(sde: Any, data_scale: float, parametrization: str, batch: AtomsBatch, t: Array) -> Array:
    """The exact position output for Gaussian data, added to the network's output so that
    the network only learns the residual (a skip connection in the spirit of EDM's
    preconditioning).

    Along the zero-centre-of-mass axes (:func:`agedi_jax.geometry.com_axes`: every axis of a
    cluster, z of a 2D material) data of per-axis variance ``s²`` noised to
    ``x_t = m x_0 + std ε`` has the score ``−(x − c)/(m² s² + std²)``, i.e.
    ``ε̂ = std (x − c)/(m² s² + std²)`` (``c`` the centre of mass). ``s² = data_scale² ·
    N^{2/3}`` grows with the number of atoms N like a cluster's radius of gyration.
    At high noise, where atoms are farther apart than the cutoff and a local network cannot
    see the centre of the structure, this term carries the correct pull towards it.
    Shapes: batch [n], t [g] or scalar -> [n, 3]; zero on periodic axes and padding."""
    x = jnp.asarray(batch.positions)
    dtype = x.dtype
    t = jnp.broadcast_to(jnp.asarray(t, dtype), (batch.num_graphs,))
    gi = jnp.asarray(batch.graph_index)
    axes = com_axes(batch)  # [g, 3]
    rel = jnp.where(axes[gi], remove_com(batch, x), 0.0)
    n = jnp.maximum(jnp.asarray(batch.n_node, dtype), 1.0)
    s2 = (data_scale**2) * n ** (2.0 / 3.0)  # [g]
    std = sde.std(t)
    m = sde.mean_coeff(t)
    denom = (m * m * s2 + std * std)[gi][:, None]
    if parametrization == "eps":
        return std[gi][:, None] * rel / denom
    return -rel / denom


def mean_log_score(process, batch: AtomsBatch, t: Array, logits: Array) -> Array:
    """Type log-scores in the *mean* parametrisation: ``log ŝ_y = log a(σ̄(t)) +
    log_softmax(logits)_y`` with ``a = 1/(e^{σ̄} − 1)``.

    For the absorbing process the true concrete score of a masked atom is exactly
    ``a · p(z_0 = y | x_t)`` (the identity behind Eq. 14's constant term), so the
    network only predicts the clean-type posterior and the score entropy becomes a
    weighted cross-entropy ``σ a (−log p(z_0))``; this keeps the outputs O(1) at every
    noise level (SEDD scales its absorbing scores the same way). Shapes: t [g] or scalar,
    logits [n, K] -> [n, K]."""
    t = jnp.broadcast_to(jnp.asarray(t, logits.dtype), (batch.num_graphs,))
    sigma_bar = process.total(t)[jnp.asarray(batch.graph_index)]
    log_a = discrete.masked_log_ratio(sigma_bar)
    return log_a[:, None] + jax.nn.log_softmax(logits, axis=-1)


def make_score_fn(apply_fn: Callable[..., Scores], params: Any, sde: Any, parametrization: str = "eps"):
    """A sampler score function (:data:`agedi_jax.samplers.ScoreFn`) from a network.

    Returns ``score_fn(state, t[g], key, type_weights=None) -> Scores`` with the position
    output converted to a score in Å⁻¹ (:func:`output_to_score`, ``std`` from ``sde`` at
    each graph's time) and the type log-scores passed through. ``type_weights`` is
    forwarded to ``apply_fn`` as a keyword when given (type interpolation)."""
    if parametrization not in _PARAMS:
        raise ValueError(f"parametrization={parametrization!r}; choose one of {_PARAMS}")

    def score_fn(state: AtomsBatch, t, key, type_weights=None) -> Scores:
        del key
        kwargs = {} if type_weights is None else {"type_weights": type_weights}
        out = apply_fn(params, state, t, state.label, **kwargs)
        pos = out.positions
        if pos is not None and sde is not None:
            std = sde.std(jnp.asarray(t)[state.graph_index])
            pos = output_to_score(pos, std, parametrization)
        return Scores(positions=pos, types=out.types)

    return score_fn
