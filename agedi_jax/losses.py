"""Training losses: denoising score matching for positions (Eqs. 4, 7), score entropy for
types (Eq. 14) and their weighted sum (Eq. 18).

**Parametrisation of the position head.** The network's raw position output ``o`` [n, 3]
is read in one of two ways (``LossConfig.parametrization``):

* ``"eps"`` (default): ``o = ε̂`` is dimensionless, a prediction of the noise; the score
  is ``s_θ = −ε̂ / std`` (Å⁻¹), with ``std`` the kernel standard deviation of the atom's
  graph at time t (Eq. 7).
* ``"score"``: ``o = s_θ`` is the score itself (Å⁻¹); then ``ε̂ = −std · s_θ``.

Both give the same loss for the same score: with the weighting ``λ(t) = std²`` (default
``weighting="std2"``) Eq. 4 becomes ``||std · s_θ + ε||² = ||ε̂ − ε||²``. Other weightings
multiply this by ``λ(t) / std²``: ``"g2"`` (Song et al.'s likelihood weighting,
``λ = g²``) or ``"none"`` (``λ = 1``, unweighted score error). Losses are averaged over the
real, non-fixed atoms of the batch (sum over those atoms divided by their count — never
by padded sizes); fixed atoms and padding contribute nothing.

On periodic axes the target ``ε`` is ``−std ×`` the wrapped-normal score
(:func:`agedi_jax.sde.noise_positions`), along z of a graph with a z window (a slab whose
free atoms are confined, ``AtomsBatch.z_window``) ``−std ×`` the reflected-normal score
(:func:`agedi_jax.sde.reflected_normal_score`); elsewhere it is the drawn Gaussian noise,
projected onto the zero-centre-of-mass subspace.

**The network** is ``apply_fn(params, noisy_batch, t[g], label[g]) -> Scores(positions=[n,3]
raw output | None, types=[n,K] log concrete scores | None)``; a head not in use may be None.

**Bulk crystals** (``lattice``, :mod:`agedi_jax.lattice`): per graph time ``t`` the cell
is noised first (:func:`agedi_jax.lattice.noise_cell`, canonical frame, eigenvalues kept
above the template's floor), then the fractional coordinates on the torus
(:func:`agedi_jax.lattice.noise_fractional`); the position term compares the network's
Cartesian output, read as a fractional noise prediction
(:func:`agedi_jax.lattice.eps_to_fractional`), with the fractional wrapped-normal target,
and ``λ_L`` times the mean over periodic graphs of ``‖ε̂_L − ε_L‖²_F`` (the masked
entries of the lattice-coordinate noise) is added. **Layers** (pbc T, T, F) the same way
on their in-plane cell (3 entries) and in-plane fractional coordinates, with ``z``
noised and compared in Cartesian coordinates as without a cell (zero-CoM Gaussian target).

**A learned force field** (``energy_fn``, :mod:`agedi_jax.forcefield`) adds
``λ_E L_E + λ_F L_F`` on the clean batch's energy and force labels.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import chex
import jax
import jax.numpy as jnp

from agedi_jax import discrete
from agedi_jax import lattice as lattice_lib
from agedi_jax.batch import AtomsBatch
from agedi_jax.edges import compact_edges, edge_budget
from agedi_jax.geometry import free_atoms
from agedi_jax.keys import atom_keys, graph_beta, graph_uniform
from agedi_jax.scores import PARAMETRIZATIONS, Scores, output_to_eps
from agedi_jax.sde import SDE, VESDE, is_sde, noise_positions

Array = jax.Array
ApplyFn = Callable[..., Scores]

__all__ = [
    "LossConfig",
    "dsm_loss",
    "lattice_loss",
    "score_entropy_loss",
    "joint_loss",
]

_PARAMS = PARAMETRIZATIONS
_WEIGHTINGS = ("std2", "g2", "none")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Configuration of :func:`joint_loss` (hashable: pass it as a static argument).

    Attributes:
      sde: position SDE (:class:`~agedi_jax.sde.VESDE` / :class:`~agedi_jax.sde.VPSDE`),
        or None for a types-only model.
      process: :class:`~agedi_jax.discrete.AbsorbingProcess`, or None for positions only.
      lambda_positions, lambda_types: weights λ_R, λ_z of Eq. 18.
      t_eps: times are drawn ``t ~ U(t_eps, 1)`` per graph.
      t_beta: ``(a, b)``: draw ``t = t_eps + (1 − t_eps) u`` with ``u ~ Beta(a, b)`` instead
        (``(1, 1)``, the default, is the uniform draw): puts more of the training effort on
        a range of noise levels (no reweighting — the objective's emphasis changes).
      independent_t: draw the type time independently of the position time (the network
        is then given the position time; the absorbing type head can read its noise level
        from the fraction of MASK atoms).
      parametrization: "eps" or "score" (module docstring).
      weighting: "std2" (λ = std², the default), "g2" (λ = g²) or "none" (λ = 1).
      p_uncond: probability of replacing a graph's label by the null label 0
        (classifier-free guidance training, Eq. 19).
      lambda_energy, lambda_forces: weights of the force-field terms (used when
        :func:`joint_loss` is given an ``energy_fn``).
      energy_scale: eV; the force-field errors are divided by it (per atom / per Å).
      lattice: :class:`~agedi_jax.lattice.LatticeSDE` to diffuse the cell too (bulk
        crystals, or the in-plane cell of layers; needs a periodic position SDE, VE), or
        None (the cell is fixed).
      lambda_lattice: weight λ_L of the lattice term.
      lattice_y_max: eigenvalue floor ``ℓ_N e^{−y_max}`` of the noised cells
        (:func:`agedi_jax.lattice.floor_cells`).
      edges_per_atom, cutoff: the network's edge budget (``model.edges_per_atom``; 0 =
        none) and cutoff (Å): graphs of the noised batch whose real edges do not fit the
        budget (:func:`agedi_jax.edges.compact_edges`) are left out of every term.
    """

    sde: Optional[SDE] = VESDE()
    process: Optional[discrete.AbsorbingProcess] = None
    lambda_positions: float = 1.0
    lambda_types: float = 1.0
    t_eps: float = 1e-3
    t_beta: tuple[float, float] = (1.0, 1.0)
    independent_t: bool = False
    parametrization: str = "eps"
    weighting: str = "std2"
    p_uncond: float = 0.0
    lambda_energy: float = 0.0
    lambda_forces: float = 0.0
    energy_scale: float = 1.0
    lattice: Optional[lattice_lib.LatticeSDE] = None
    lambda_lattice: float = 1.0
    lattice_y_max: float = 1.0
    edges_per_atom: float = 0.0
    cutoff: float = 0.0

    def __post_init__(self) -> None:
        if self.sde is None and self.process is None:
            raise ValueError("LossConfig: nothing to train: both sde and process are None")
        if self.sde is not None:
            if not is_sde(self.sde):
                raise TypeError(f"LossConfig.sde must be a registered SDE (agedi_jax.sde.SDES), got {type(self.sde).__name__}")
            self.sde.validate()
        if self.process is not None and not isinstance(self.process, discrete.AbsorbingProcess):
            raise TypeError(f"LossConfig.process must be an AbsorbingProcess, got {type(self.process).__name__}")
        if self.parametrization not in _PARAMS:
            raise ValueError(f"LossConfig.parametrization={self.parametrization!r}; choose one of {_PARAMS}")
        if self.weighting not in _WEIGHTINGS:
            raise ValueError(f"LossConfig.weighting={self.weighting!r}; choose one of {_WEIGHTINGS}")
        if not 0.0 < self.t_eps < 1.0:
            raise ValueError(f"LossConfig.t_eps must lie in (0, 1), got {self.t_eps}")
        if len(self.t_beta) != 2 or not all(x > 0 for x in self.t_beta):
            raise ValueError(f"LossConfig.t_beta must be two positive numbers (a, b), got {self.t_beta}")
        if not 0.0 <= self.p_uncond <= 1.0:
            raise ValueError(f"LossConfig.p_uncond must lie in [0, 1], got {self.p_uncond}")
        if self.lambda_positions < 0 or self.lambda_types < 0:
            raise ValueError("LossConfig: lambda_positions and lambda_types must be >= 0")
        if self.lambda_energy < 0 or self.lambda_forces < 0:
            raise ValueError("LossConfig: lambda_energy and lambda_forces must be >= 0")
        if not self.energy_scale > 0:
            raise ValueError(f"LossConfig.energy_scale must be > 0 eV, got {self.energy_scale}")
        if self.lattice is not None:
            if not isinstance(self.lattice, lattice_lib.LatticeSDE):
                raise TypeError(f"LossConfig.lattice must be a LatticeSDE, got {type(self.lattice).__name__}")
            self.lattice.validate()
            if self.sde is None or not getattr(self.sde, "periodic", False):
                raise ValueError("LossConfig.lattice needs a periodic position SDE (VESDE) for the fractional coordinates")
            if self.lambda_lattice < 0 or not self.lattice_y_max > 0:
                raise ValueError("LossConfig: lambda_lattice must be >= 0 and lattice_y_max > 0")
        if self.edges_per_atom < 0 or (self.edges_per_atom > 0 and not self.cutoff > 0):
            raise ValueError("LossConfig: edges_per_atom must be >= 0, with a cutoff > 0 Å when it is set")


# --------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------


def _masked_mean(values: Array, mask: Array) -> Array:
    mask = jnp.asarray(mask, bool)
    total = jnp.sum(jnp.where(mask, values, 0.0))
    return total / jnp.maximum(jnp.sum(mask), 1).astype(total.dtype)


def dsm_loss(eps_pred, eps, mask, weight=None) -> Array:
    """Denoising score matching (Eqs. 4, 7) in the ε form.

    ``mean over mask of  w · ||ε̂ − ε||²``, i.e. ``||std · s_θ + ε||²`` for ``w = 1``
    (λ = std²).

    Args:
      eps_pred: ``[n, 3]`` predicted noise ε̂ (dimensionless).
      eps: ``[n, 3]`` target noise (:func:`agedi_jax.sde.noise_positions`).
      mask: ``[n]`` bool atoms that count (real, non-fixed).
      weight: optional ``[n]`` per-atom factor ``λ(t) / std²``.
    Returns:
      scalar loss (sum over the masked atoms / their count).
    """
    eps_pred, eps = jnp.asarray(eps_pred), jnp.asarray(eps)
    chex.assert_equal_shape([eps_pred, eps])
    chex.assert_shape(mask, (eps.shape[0],))
    per_atom = jnp.sum((eps_pred - eps) ** 2, axis=-1)
    if weight is not None:
        per_atom = per_atom * weight
    return _masked_mean(per_atom, mask)


def score_entropy_loss(log_score, z0, zt, sigma_bar, rate, mask) -> Array:
    """Score entropy (Eq. 14, :func:`agedi_jax.discrete.score_entropy`) averaged over the
    masked atoms (real, non-fixed: sum / their count). Shapes ``[n, K], [n], [n], [n],
    [n], [n]`` → scalar."""
    per_atom = discrete.score_entropy(log_score, z0, zt, sigma_bar, rate)
    chex.assert_shape(mask, per_atom.shape)
    return _masked_mean(per_atom, mask)


def lattice_loss(eps_pred, eps, mask) -> Array:
    """Denoising score matching of the cell in lattice coordinates: the mean over graphs
    with a periodic axis of ``‖ε̂_L − ε_L‖²_F`` on their masked entries.

    Args:
      eps_pred: ``[g, 3, 3]`` predicted noise (network's symmetric lattice output).
      eps: ``[g, 3, 3]`` target (:func:`agedi_jax.lattice.noise_cell`).
      mask: ``[g, 3, 3]`` bool :func:`agedi_jax.lattice.graph_lattice_mask`.
    Returns:
      scalar loss.
    """
    eps_pred, eps = jnp.asarray(eps_pred), jnp.asarray(eps)
    chex.assert_equal_shape([eps_pred, eps])
    chex.assert_shape(eps, (None, 3, 3))
    mask = jnp.asarray(mask, bool)
    per_graph = jnp.sum(jnp.where(mask, (eps_pred - eps) ** 2, 0.0), axis=(-1, -2))
    return _masked_mean(per_graph, jnp.any(mask, axis=(-1, -2)))


def _weight(config: LossConfig, t_atom: Array, std: Array) -> Array | None:
    if config.weighting == "std2":
        return None
    s2 = jnp.maximum(std**2, jnp.finfo(std.dtype).tiny)
    if config.weighting == "g2":
        return config.sde.g2(t_atom) / s2
    return 1.0 / s2


def joint_loss(
    params: Any,
    apply_fn: ApplyFn,
    batch: AtomsBatch,
    key: Array,
    config: LossConfig,
    *,
    t: Array | None = None,
    energy_fn: Callable[[Any, AtomsBatch], tuple[Array, Array]] | None = None,
) -> tuple[Array, dict]:
    """The joint loss ``L = λ_R L_R + λ_z L_z`` (Eq. 18) on one batch.

    Per graph: ``t ~ U(t_eps, 1)`` (one time for both processes, or an independent type
    time), the label replaced by 0 with probability ``p_uncond``; positions noised with
    :func:`agedi_jax.sde.noise_positions`, types corrupted with
    :meth:`~agedi_jax.discrete.AbsorbingProcess.corrupt` (fixed atoms untouched); one
    network call on the noisy batch. All draws are keyed per graph slot / per atom, so a
    batch with extra padding gives the same loss.

    Args:
      params: network parameters.
      apply_fn: ``(params, noisy_batch, t[g], label[g]) -> Scores``.
      batch: clean batch.
      key: PRNG key.
      config: :class:`LossConfig` (static).
      t: optional ``[g]`` times to use instead of drawing them (evaluation at fixed t).
      energy_fn: ``(params, clean_batch) -> (energy [g] eV, forces [n, 3] eV/Å)``, a
        learned force field trained on the batch's labels (:mod:`agedi_jax.forcefield`).
    Returns:
      ``(loss, metrics)``: scalar loss and a dict of scalars ``loss``, ``loss_positions``,
      ``loss_types`` (with ``energy_fn`` also ``loss_energy``, ``loss_forces``,
      ``energy_mae`` eV/atom, ``force_mae`` and ``force_rmse`` eV/Å).
    """
    positions = jnp.asarray(batch.positions)
    chex.assert_shape(positions, (batch.num_nodes, 3))
    dtype = positions.dtype
    gi = batch.graph_index
    k_t, k_tz, k_drop, k_pos, k_types = (jax.random.fold_in(key, i) for i in range(5))
    if t is None:
        if tuple(config.t_beta) == (1.0, 1.0):
            t = graph_uniform(k_t, batch, config.t_eps, 1.0, dtype)
        else:
            t = config.t_eps + (1.0 - config.t_eps) * graph_beta(k_t, batch, *config.t_beta, dtype=dtype)
    else:
        t = jnp.broadcast_to(jnp.asarray(t, dtype), (batch.num_graphs,))
    t_types = graph_uniform(k_tz, batch, config.t_eps, 1.0, dtype) if config.independent_t else t

    label = jnp.asarray(batch.label)
    if config.p_uncond > 0:
        drop = graph_uniform(k_drop, batch, dtype=dtype) < config.p_uncond
        label = jnp.where(drop, jnp.zeros_like(label), label)
    noisy = batch._replace(label=label)
    counted = free_atoms(batch)

    if config.lattice is not None:
        noisy, eps_cell, std_cell = lattice_lib.noise_cell(jax.random.fold_in(key, 5), config.lattice, noisy, t)
        noisy = lattice_lib.floor_cells(config.lattice, noisy, config.lattice_y_max)
        noisy, eps, std_f = lattice_lib.noise_fractional(k_pos, config.sde, config.lattice, noisy, t)
        std = config.sde.std(t[gi])  # Cartesian σ(t): the network's output scale
    elif config.sde is not None:
        noisy, eps, std = noise_positions(k_pos, config.sde, noisy, t)
    if config.process is not None:
        z0 = jnp.asarray(batch.types)
        t_atom_z = t_types[gi]
        fixed = jnp.asarray(batch.fixed, bool) | ~jnp.asarray(batch.node_mask, bool)

        def corrupt_one(k, z, tt, f):
            return config.process.corrupt(k, z[None], tt[None], f[None])[0]

        zt = jax.vmap(corrupt_one)(atom_keys(k_types, batch), z0, t_atom_z, fixed)
        noisy = noisy._replace(types=zt)

    complete = None
    if config.edges_per_atom > 0:
        budget = edge_budget(config.edges_per_atom, batch.num_nodes)
        # compact once here (the model's own compaction of a compacted batch is a no-op on
        # ``budget`` edges, not a second pass over the whole template)
        noisy, complete = compact_edges(noisy, config.cutoff, budget)
        counted = counted & complete[gi]
    out = apply_fn(params, noisy, t, label)
    zero = jnp.zeros((), dtype)
    loss_r, loss_z = zero, zero
    if config.sde is not None:
        if out.positions is None:
            raise ValueError("joint_loss: the network returned no position output but the config has an SDE")
        eps_pred = output_to_eps(out.positions, std, config.parametrization)
        if config.lattice is not None:
            eps_pred = lattice_lib.eps_to_fractional(eps_pred, noisy, config.lattice)
        loss_r = dsm_loss(eps_pred, eps, counted, _weight(config, t[gi], std))
    if config.process is not None:
        if out.types is None:
            raise ValueError("joint_loss: the network returned no type scores but the config has a type process")
        t_atom_z = t_types[gi]
        loss_z = score_entropy_loss(
            out.types, z0, zt, config.process.total(t_atom_z), config.process.rate(t_atom_z), counted
        )
    loss = config.lambda_positions * loss_r + config.lambda_types * loss_z
    metrics = {"loss_positions": loss_r, "loss_types": loss_z}
    if config.lattice is not None:
        if out.cell is None:
            raise ValueError("joint_loss: the network returned no cell output but the config has a lattice process")
        cell_mask = lattice_lib.graph_lattice_mask(batch)
        if complete is not None:
            cell_mask = cell_mask & complete[:, None, None]
        loss_l = lattice_loss(out.cell, eps_cell, cell_mask)
        loss = loss + config.lambda_lattice * loss_l
        metrics["loss_lattice"] = loss_l
    if energy_fn is not None:
        from agedi_jax.forcefield import energy_force_terms

        energy, forces = energy_fn(params, batch)
        terms = energy_force_terms(batch, energy, forces, config.energy_scale)
        loss = loss + config.lambda_energy * terms.loss_energy + config.lambda_forces * terms.loss_forces
        metrics.update({k: v.astype(dtype) for k, v in terms._asdict().items()})
    if complete is not None:
        real = jnp.asarray(batch.graph_mask, bool)
        metrics["edges_complete"] = jnp.sum(complete & real).astype(dtype) / jnp.maximum(jnp.sum(real), 1).astype(dtype)
    return loss, {"loss": loss, **metrics}
