"""A learned force field next to the score network: energies, forces, referencing, losses
and prediction on ``ase.Atoms``.

With ``model.energy_head`` the model predicts the potential energy of a *clean*
structure (the network evaluated at diffusion time ``t = 0``) as

    E(R, z) = Σ_i ( ref[z_i] + energy_scale · h_i(R, z) )          (eV)

where ``h_i`` is an invariant per-atom scalar read out of the network's final invariant
features (:attr:`agedi_jax.scores.Scores.energy`), ``ref`` a per-element linear reference
fitted by least squares on the training energies (``model.energy_reference``, eV/atom)
and ``energy_scale`` (eV) the spread of the referenced per-atom energies of the training
data (``model.energy_scale``), so the head only learns an O(1) residual and predictions
are absolute energies. Forces are ``F = −∂E/∂R`` (``jax.grad``), hence conservative,
rotation-equivariant and exactly consistent with the energy.

``model.energy_network``: ``"shared"`` — the head sits on the score network itself (one
set of parameters, the backbone trained by both objectives); ``"separate"`` — a second
network of the same family and size with only an energy head (parameters
``{"score": ..., "energy": ...}``).

Training (:func:`agedi_jax.losses.joint_loss` with ``energy_fn``) adds

    λ_E · mean_g ((Ê_g − E_g) / N_g / s)²  +  λ_F · mean_{i,α} ((F̂_iα − F_iα) / s)²

over the labelled structures / atoms of the batch (``s = energy_scale``; labels from
:class:`~agedi_jax.batch.AtomsBatch`'s ``energy``/``forces`` fields). Metrics:
``energy_mae`` (eV/atom), ``force_mae`` and ``force_rmse`` (eV/Å).

Host helpers: :func:`fit_reference` / :func:`prepare_config` (fill the reference and
scale of a config from training data), :func:`predict_atoms` (predicted energies and
forces as a ``SinglePointCalculator`` on ``ase.Atoms``), :func:`evaluate_atoms` (errors
against the structures' own labels).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agedi_jax.batch import AtomsBatch, EncodedStructure, collate, common_bucket
from agedi_jax.geometry import graph_sum
from agedi_jax.potentials.base import energy_and_forces
from agedi_jax.vocab import TypeVocab

Array = jax.Array

__all__ = [
    "ENERGY_NETWORKS",
    "reference_table",
    "energy_scale",
    "model_energy",
    "model_energy_and_forces",
    "model_energy_fn",
    "EnergyTerms",
    "energy_force_terms",
    "fit_reference",
    "prepare_config",
    "predict_atoms",
    "evaluate_atoms",
]

ENERGY_NETWORKS = ("shared", "separate")


# --------------------------------------------------------------------------------------
# The model's energy (jittable)
# --------------------------------------------------------------------------------------


def reference_table(config: Any, vocab: TypeVocab) -> np.ndarray:
    """``[K + 1]`` per-type reference energies (eV/atom) from ``model.energy_reference``;
    row 0 (MASK) and elements without a reference are 0."""
    table = np.zeros(vocab.num_types + 1, np.float64)
    for symbol, value in config.model.energy_reference:
        if symbol in vocab.symbols:
            table[vocab.index(symbol)] = float(value)
    return table


def energy_scale(config: Any) -> float:
    """``model.energy_scale`` (eV), or 1 eV when it is not set (0)."""
    s = float(config.model.energy_scale)
    return s if s > 0 else 1.0


def _energy_network(model: Any, params: Any) -> tuple[Any, Any, bool]:
    if getattr(model, "energy_network", None) is not None:
        return model.energy_network, params["energy"], False
    if not model.config.model.energy_head:
        raise ValueError("this model has no energy head (model.energy_head is off)")
    return model.network, params, True


def model_energy(model: Any, params: Any, batch: AtomsBatch, type_weights: Array | None = None) -> Array:
    """Predicted energies ``[g]`` (eV; padding graph slots 0) of the structures of
    ``batch`` taken as clean (``t = 0``); ``type_weights [n, K+1]`` replaces the one-hot
    types (soft types: the reference is then the weighted mean of the rows)."""
    net, p, shared = _energy_network(model, params)
    positions = jnp.asarray(batch.positions)
    dtype = positions.dtype if jnp.issubdtype(positions.dtype, jnp.floating) else jnp.float32
    t = jnp.zeros((batch.num_graphs,), dtype)
    label = jnp.asarray(batch.label) if (shared and model.config.model.num_labels > 0) else None
    kwargs = {} if type_weights is None else {"type_weights": type_weights}
    out = net.apply(p, batch, t, label, **kwargs)
    if out.energy is None:
        raise ValueError("the network returned no energy output (energy_head is off)")
    table = jnp.asarray(reference_table(model.config, model.vocab), dtype)
    if type_weights is None:
        ref = table[jnp.asarray(batch.types)]
    else:
        ref = jnp.asarray(type_weights, dtype) @ table
    e_atom = ref + energy_scale(model.config) * out.energy.astype(dtype)
    energy = graph_sum(batch, e_atom)
    return jnp.where(jnp.asarray(batch.graph_mask, bool), energy, 0.0)


def model_energy_fn(model: Any, params: Any) -> Callable[[AtomsBatch], Array]:
    """The learned force field as an :data:`agedi_jax.potentials.EnergyFn`
    (``energy_fn(batch) -> [g]`` eV), e.g. for :func:`agedi_jax.relax.relax` or
    :func:`agedi_jax.samplers.energy_guided`."""

    def energy_fn(batch: AtomsBatch) -> Array:
        return model_energy(model, params, batch)

    return energy_fn


def model_energy_and_forces(model: Any, params: Any, batch: AtomsBatch) -> tuple[Array, Array]:
    """``(energy [g] eV, forces [n, 3] eV/Å)`` of the learned force field; forces
    ``−∂E/∂R`` (fixed atoms included, padding 0)."""
    return energy_and_forces(model_energy_fn(model, params), batch)


# --------------------------------------------------------------------------------------
# Loss terms and metrics (jittable)
# --------------------------------------------------------------------------------------


class EnergyTerms(NamedTuple):
    """Force-field loss terms and metrics of one batch (scalars)."""

    loss_energy: Array
    loss_forces: Array
    energy_mae: Array  # eV/atom
    force_mae: Array  # eV/Å, per component
    force_rmse: Array  # eV/Å, per component


def energy_force_terms(batch: AtomsBatch, energy: Array, forces: Array, scale: float) -> EnergyTerms:
    """Losses and errors of predicted ``energy [g]`` / ``forces [n, 3]`` against the
    batch's labels (module docstring); terms without any label in the batch are 0."""
    if not batch.has_labels:
        raise ValueError(
            "model.energy_head: the batch carries no energy / force labels (AtomsBatch.energy is "
            "None); train on structures with energies (atoms.calc or atoms.info['energy'])"
        )
    dtype = energy.dtype
    n_atoms = graph_sum(batch, jnp.ones((batch.num_nodes,), dtype))
    e_mask = jnp.asarray(batch.energy_mask, bool) & jnp.asarray(batch.graph_mask, bool) & (n_atoms > 0)
    err_e = (energy - jnp.asarray(batch.energy, dtype)) / jnp.maximum(n_atoms, 1.0)
    err_e = jnp.where(e_mask, err_e, 0.0)
    n_e = jnp.maximum(jnp.sum(e_mask), 1).astype(dtype)
    f_mask = jnp.asarray(batch.force_mask, bool) & jnp.asarray(batch.node_mask, bool)
    err_f = jnp.where(f_mask[:, None], forces - jnp.asarray(batch.forces, dtype), 0.0)
    n_f = 3.0 * jnp.maximum(jnp.sum(f_mask), 1).astype(dtype)
    s2 = float(scale) ** 2
    mse_f = jnp.sum(err_f**2) / n_f
    return EnergyTerms(
        loss_energy=jnp.sum(err_e**2) / n_e / s2,
        loss_forces=mse_f / s2,
        energy_mae=jnp.sum(jnp.abs(err_e)) / n_e,
        force_mae=jnp.sum(jnp.abs(err_f)) / n_f,
        force_rmse=jnp.sqrt(mse_f),
    )


# --------------------------------------------------------------------------------------
# Reference energies from data (host)
# --------------------------------------------------------------------------------------


def _labelled(structures: Sequence[Any], vocab: TypeVocab) -> tuple[np.ndarray, np.ndarray, list]:
    """(element counts [S, K+1], energies [S], forces list) of structures (encoded or
    ``ase.Atoms``) with a finite energy."""
    from agedi_jax.convert import atoms_labels

    counts, energies, forces = [], [], []
    for s in structures:
        if isinstance(s, EncodedStructure):
            e, f, types = s.energy, s.forces, np.asarray(s.types)
        else:
            e, f = atoms_labels(s)
            types = vocab.encode(s.get_chemical_symbols())
        if f is not None:
            forces.append(np.asarray(f, np.float64))
        if e is None or not math.isfinite(float(e)):
            continue
        counts.append(np.bincount(types, minlength=vocab.num_types + 1))
        energies.append(float(e))
    if not energies:
        return np.zeros((0, vocab.num_types + 1)), np.zeros(0), forces
    return np.stack(counts).astype(np.float64), np.asarray(energies), forces


def fit_reference(structures: Sequence[Any], vocab: TypeVocab) -> tuple[dict[str, float], float]:
    """Per-element reference energies (eV/atom) and the energy scale (eV) of labelled data.

    The reference solves ``min Σ_s (E_s − Σ_el n_{s,el} ref_el)²`` (least squares over
    the structures' element counts; minimum-norm for elements that cannot be separated);
    the scale is the RMS of the referenced per-atom energies ``(E_s − Σ n ref)/N_s``, or,
    if that vanishes, the RMS force component, or 1 eV.

    Args:
      structures: :class:`~agedi_jax.batch.EncodedStructure` s or ``ase.Atoms`` (labels
        as :func:`agedi_jax.convert.atoms_labels`); unlabelled ones are skipped.
      vocab: the type vocabulary.
    Returns:
      ``({symbol: eV/atom} for the elements present, scale eV)``.
    """
    counts, energies, forces = _labelled(structures, vocab)
    if len(energies) == 0:
        raise ValueError("fit_reference: no structure carries an energy label")
    c = counts[:, 1:]
    present = c.sum(0) > 0
    ref = np.zeros(vocab.num_types)
    sol, *_ = np.linalg.lstsq(c[:, present], energies, rcond=None)
    ref[present] = sol
    resid = (energies - c @ ref) / np.maximum(c.sum(1), 1.0)
    scale = float(np.sqrt(np.mean(resid**2)))
    if not scale > 1e-6:
        comps = np.concatenate([f.ravel() for f in forces]) if forces else np.zeros(0)
        scale = float(np.sqrt(np.mean(comps**2))) if comps.size else 0.0
    if not scale > 1e-6:
        scale = 1.0
    reference = {vocab.symbols[k]: float(ref[k]) for k in range(vocab.num_types) if present[k]}
    return reference, float(f"{scale:.4g}")


def prepare_config(config: Any, vocab: TypeVocab, train_structures: Sequence[Any]) -> Any:
    """``config`` with ``model.energy_reference`` and ``model.energy_scale`` fitted on
    the training structures (:func:`fit_reference`) where they are not set; unchanged
    when ``model.energy_head`` is off. The training loop calls this once, beside filling
    ``avg_num_neighbors``, so that a checkpoint's config holds the reference it was
    trained with."""
    from agedi_jax.config import Params, replace

    m = config.model
    if not m.energy_head or (len(m.energy_reference) and m.energy_scale > 0):
        return config
    reference, scale = fit_reference(train_structures, vocab)
    updates: dict[str, Any] = {}
    if not len(m.energy_reference):
        updates["energy_reference"] = Params({k: round(v, 6) for k, v in reference.items()})
    if not m.energy_scale > 0:
        updates["energy_scale"] = scale
    return replace(config, model=updates)


# --------------------------------------------------------------------------------------
# Prediction on ase.Atoms (host)
# --------------------------------------------------------------------------------------


def _predict_fn(model: Any, dense: bool = True):
    """The jitted ``(params, batch) -> (energy, forces)``; for a model that picks its
    network's layout per batch (:func:`agedi_jax.model.picks_layout`) one compilation per
    layout (the dense per-structure layout for batches of small structures)."""
    from agedi_jax.cache import compiled
    from agedi_jax.layouts import PerLayout as _PerLayout
    from agedi_jax.layouts import picks_layout

    if dense and picks_layout(model):
        return compiled("ff_predict_dispatch", model,
                        lambda: _PerLayout(model, lambda m: _predict_fn(m, dense=False), batch_arg=1))

    def build():
        return jax.jit(lambda params, batch: model_energy_and_forces(model, params, batch))

    return compiled("ff_predict", model, build)


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def predict_arrays(model: Any, params: Any, atoms_list: Sequence[Any], batch_size: int = 64) -> tuple[list, list]:
    """Predicted ``(energies [S] eV, forces list of [N_s, 3] eV/Å)`` of structures
    (every batch padded to one bucket: one compilation)."""
    from agedi_jax.convert import encode_structures

    atoms_list = list(atoms_list)
    if not atoms_list:
        return [], []
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = encode_structures(
        atoms_list, model.vocab, model.config.model.cutoff, read_labels=False
    )
    chunks = _chunks(len(encoded), int(batch_size))
    bucket = common_bucket([[encoded[i] for i in c] for c in chunks])
    fn = _predict_fn(model)
    energies: list = []
    forces: list = []
    for c in chunks:
        batch = collate([encoded[i] for i in c], bucket)
        e, f = jax.device_get(fn(params, batch))
        off = 0
        for k, i in enumerate(c):
            n = encoded[i].num_atoms
            energies.append(float(e[k]))
            forces.append(np.asarray(f[off : off + n], np.float64))
            off += n
    return energies, forces


def predict_atoms(model: Any, params: Any, atoms_list: Sequence[Any], *, batch_size: int = 64,
                  copy: bool = True) -> list:
    """Predicted energies (eV) and forces (eV/Å) of ``atoms_list`` from the learned force
    field, attached as a ``SinglePointCalculator`` (``atoms.get_potential_energy()``,
    ``atoms.get_forces()``) to copies of the structures (``copy=False``: to the
    structures themselves, replacing any calculator). Needs ``model.energy_head``; every
    element must be in the model's vocabulary.
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms_list = list(atoms_list)
    energies, forces = predict_arrays(model, params, atoms_list, batch_size)
    out = []
    for a, e, f in zip(atoms_list, energies, forces):
        b = a.copy() if copy else a
        b.calc = SinglePointCalculator(b, energy=e, forces=f)
        out.append(b)
    return out


def evaluate_atoms(model: Any, params: Any, atoms_list: Sequence[Any], *, batch_size: int = 64) -> dict:
    """Errors of the learned force field against the structures' own labels
    (:func:`agedi_jax.convert.atoms_labels`): ``energy_mae`` / ``energy_rmse`` (eV/atom),
    ``force_mae`` / ``force_rmse`` (eV/Å per component), ``force_norm_mae`` (eV/Å per
    atom), the counts, and the same errors of the zero-force / reference-only baselines
    (``force_mae_zero``, ``energy_mae_reference``)."""
    from agedi_jax.convert import atoms_labels

    atoms_list = list(atoms_list)
    energies, forces = predict_arrays(model, params, atoms_list, batch_size)
    table = reference_table(model.config, model.vocab)
    de, de_ref, df, f_true = [], [], [], []
    for a, e, f in zip(atoms_list, energies, forces):
        e_true, ff = atoms_labels(a)
        n = len(a)
        if e_true is not None:
            de.append((e - e_true) / n)
            ref = float(table[model.vocab.encode(a.get_chemical_symbols())].sum())
            de_ref.append((ref - e_true) / n)
        if ff is not None:
            df.append(f - ff)
            f_true.append(ff)
    out: dict[str, Any] = {"structures": len(atoms_list), "with_energy": len(de), "with_forces": len(df)}
    if de:
        de_a = np.asarray(de)
        out.update(energy_mae=float(np.mean(np.abs(de_a))), energy_rmse=float(np.sqrt(np.mean(de_a**2))),
                   energy_mae_reference=float(np.mean(np.abs(de_ref))))
    if df:
        d = np.concatenate(df)
        t = np.concatenate(f_true)
        out.update(force_mae=float(np.mean(np.abs(d))), force_rmse=float(np.sqrt(np.mean(d**2))),
                   force_norm_mae=float(np.mean(np.linalg.norm(d, axis=1))),
                   force_mae_zero=float(np.mean(np.abs(t))), force_rms_true=float(np.sqrt(np.mean(t**2))))
    return out
