"""The joint diffusion model: config → processes + network → train state, train step,
score function.

A :class:`DiffusionModel` bundles the resolved :class:`~agedi_jax.config.Config`, the type
vocabulary, the Flax score network and the two forward processes (position SDE, absorbing
type process). Everything else is pure functions of it::

    model = build_model(config, vocab, avg_num_neighbors=...)
    state = init_state(model, key, example_batch)            # TrainState (a pytree)
    train_step = make_train_step(model)                      # jitted
    state, metrics = train_step(state, batch, key)
    score_fn = model.score_fn(state.ema_params)              # for agedi_jax.samplers

The joint loss is Eq. 18 (:func:`agedi_jax.losses.joint_loss`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import discrete, losses
from . import sde as sde_lib
from .config import Config
from .graph import AtomsBatch, TypeVocab
from .nn import make_network
from .scores import Scores

Array = jax.Array


class DiffusionModel(NamedTuple):
    """A configured model (static: hashable, pass it by closure, not as a jit argument).

    Attributes:
      config: the resolved configuration.
      vocab: the type vocabulary (K physical types, MASK = 0).
      network: the Flax score network (:mod:`agedi_jax.nn`).
      sde: position SDE, or None when positions are not modelled.
      process: absorbing type process, or None when types are not modelled.
      loss_config: the static configuration of the joint loss.
    """

    config: Config
    vocab: TypeVocab
    network: Any
    sde: Any
    process: Any
    loss_config: losses.LossConfig

    @property
    def num_types(self) -> int:
        return self.vocab.num_types

    def apply(self, params: Any, batch: AtomsBatch, t: Array, label: Array | None = None, **kwargs) -> Scores:
        """Raw network outputs (position output per the parametrisation, type log-scores).
        Labels are ignored by an unconditional model (``model.num_labels == 0``)."""
        if self.config.model.num_labels == 0:
            label = None
        out = self.network.apply(params, batch, t, label, **kwargs)
        if out.positions is not None and self.config.process.data_scale > 0:
            out = out._replace(positions=out.positions + gaussian_skip(self, batch, t))
        if out.types is not None and self.config.process.type_parametrization == "mean":
            out = out._replace(types=mean_log_score(self.process, batch, t, out.types))
        return out

    def score_fn(self, params: Any) -> Callable[..., Scores]:
        """Sampler score function (position score in Å⁻¹, type log-scores)."""
        return losses.make_score_fn(self.apply, params, self.sde, self.config.process.parametrization)


def gaussian_skip(model: "DiffusionModel", batch: AtomsBatch, t: Array) -> Array:
    """The exact position output for Gaussian data, added to the network's output so that
    the network only learns the residual (a skip connection in the spirit of EDM's
    preconditioning).

    Along the zero-centre-of-mass axes (:func:`agedi_jax.graph.com_axes`: every axis of a
    cluster, z of a 2D material) data of per-axis variance ``s²`` noised to
    ``x_t = m x_0 + std ε`` has the score ``−(x − c)/(m² s² + std²)``, i.e.
    ``ε̂ = std (x − c)/(m² s² + std²)`` (``c`` the centre of mass). ``s² = data_scale² ·
    N^{2/3}`` grows with the number of atoms N like a cluster's radius of gyration.
    At high noise, where atoms are farther apart than the cutoff and a local network cannot
    see the centre of the structure, this term carries the correct pull towards it.
    Shapes: batch [n], t [g] or scalar -> [n, 3]; zero on periodic axes and padding."""
    from .graph import com_axes, remove_com

    x = jnp.asarray(batch.positions)
    dtype = x.dtype
    t = jnp.broadcast_to(jnp.asarray(t, dtype), (batch.num_graphs,))
    gi = jnp.asarray(batch.graph_index)
    axes = com_axes(batch)  # [g, 3]
    rel = jnp.where(axes[gi], remove_com(batch, x), 0.0)
    n = jnp.maximum(jnp.asarray(batch.n_node, dtype), 1.0)
    s2 = (model.config.process.data_scale**2) * n ** (2.0 / 3.0)  # [g]
    sde = model.sde
    std = sde.std(t)
    m = sde.mean_coeff(t)
    denom = (m * m * s2 + std * std)[gi][:, None]
    if model.config.process.parametrization == "eps":
        return std[gi][:, None] * rel / denom
    return -rel / denom


def mean_log_score(process, batch: AtomsBatch, t: Array, logits: Array) -> Array:
    """Type log-scores in the *mean* parametrisation: ``log ŝ_y = log a(σ̄(t)) +
    log_softmax(logits)_y`` with ``a = 1/(e^{σ̄} − 1)``.

    For the absorbing process the true concrete score of a masked atom is exactly
    ``a · p(z_0 = y | x_t)`` (DESIGN.md §2; the identity behind Eq. 14's constant term), so the
    network only predicts the clean-type posterior and the score entropy becomes a
    weighted cross-entropy ``σ a (−log p(z_0))``; this keeps the outputs O(1) at every
    noise level (SEDD scales its absorbing scores the same way). Shapes: t [g] or scalar,
    logits [n, K] -> [n, K]."""
    t = jnp.broadcast_to(jnp.asarray(t, logits.dtype), (batch.num_graphs,))
    sigma_bar = process.total(t)[jnp.asarray(batch.graph_index)]
    log_a = discrete.masked_log_ratio(sigma_bar)
    return log_a[:, None] + jax.nn.log_softmax(logits, axis=-1)


def make_sde(config: Config):
    """The position SDE of a config (None when positions are off)."""
    p = config.process
    if not config.model.positions:
        return None
    if p.sde == "ve":
        sched = (
            sde_lib.VELinearSchedule(p.sigma_min, p.sigma_max)
            if p.schedule == "linear"
            else sde_lib.VEGeometricSchedule(p.sigma_min, p.sigma_max)
        )
        return sde_lib.VESDE(sched)
    sched = sde_lib.VPLinearSchedule(p.beta_min, p.beta_max) if p.schedule == "linear" else sde_lib.VPCosineSchedule()
    return sde_lib.VPSDE(sched)


def make_process(config: Config, num_types: int):
    """The absorbing type process of a config (None when types are off)."""
    if not config.model.types:
        return None
    p = config.process
    sched = (
        discrete.LogLinearSchedule(p.type_eps)
        if p.type_schedule == "loglinear"
        else discrete.GeometricSchedule()
    )
    return discrete.AbsorbingProcess(num_types, sched)


def build_model(config: Config, vocab: TypeVocab, avg_num_neighbors: float | None = None) -> DiffusionModel:
    """Assemble a :class:`DiffusionModel`.

    ``avg_num_neighbors`` (computed from the training data) is used when
    ``config.model.avg_num_neighbors`` is 0; the value used is the one saved in the config
    by the training loop, so a checkpoint rebuilds the same network.
    """
    m = config.model
    avg = m.avg_num_neighbors or avg_num_neighbors
    if not avg or avg <= 0:
        raise ValueError(
            "build_model: model.avg_num_neighbors is 0 and no value computed from data was given"
        )
    kwargs: dict[str, Any] = dict(
        num_types=vocab.num_types,
        num_labels=m.num_labels,
        cutoff=m.cutoff,
        num_layers=m.num_layers,
        features=m.features,
        num_basis=m.num_basis,
        avg_num_neighbors=float(avg),
        position_head=m.positions,
        type_head=m.types,
        global_context=m.global_context,
        com_vector=m.com_vector,
        normalize=m.normalize,
    )
    if m.network == "nequip":
        kwargs.update(vector_features=m.vector_features, l_max=m.l_max)
    network = make_network(m.network, **kwargs)
    sde = make_sde(config)
    process = make_process(config, vocab.num_types)
    t = config.train
    loss_config = losses.LossConfig(
        sde=sde,
        process=process,
        lambda_positions=t.lambda_positions,
        lambda_types=t.lambda_types,
        t_eps=config.process.t_eps,
        independent_t=config.process.independent_t,
        parametrization=config.process.parametrization,
        p_uncond=t.label_dropout if m.num_labels > 0 else 0.0,
    )
    return DiffusionModel(config, vocab, network, sde, process, loss_config)


# --------------------------------------------------------------------------------------
# Training state and step
# --------------------------------------------------------------------------------------


class TrainState(NamedTuple):
    """Everything that changes during training (a pytree; checkpointed as a whole).

    Attributes:
      step: int32 scalar, optimiser steps taken.
      params: network parameters.
      opt_state: optax state.
      ema_params: exponential moving average of ``params`` (used for sampling).
    """

    step: Array
    params: Any
    opt_state: Any
    ema_params: Any


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """AdamW with global-norm clipping and a warm-up + cosine learning-rate schedule."""
    t = config.train
    decay_steps = max(t.steps, t.warmup_steps + 1)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=t.learning_rate,
        warmup_steps=t.warmup_steps,
        decay_steps=decay_steps,
        end_value=t.learning_rate * t.final_lr_fraction,
    )
    return optax.chain(
        optax.clip_by_global_norm(t.grad_clip),
        optax.adamw(schedule, weight_decay=t.weight_decay),
    )


def learning_rate(config: Config, step: int) -> float:
    """The scheduled learning rate at ``step`` (for logging)."""
    t = config.train
    if step < t.warmup_steps:
        return t.learning_rate * step / max(t.warmup_steps, 1)
    decay_steps = max(t.steps, t.warmup_steps + 1)
    frac = min((step - t.warmup_steps) / max(decay_steps - t.warmup_steps, 1), 1.0)
    cos = 0.5 * (1 + np.cos(np.pi * frac))
    end = t.final_lr_fraction
    return float(t.learning_rate * (end + (1 - end) * cos))


def init_state(model: DiffusionModel, key: Array, example: AtomsBatch) -> TrainState:
    """Initialise parameters on ``example`` (any batch of the data) and the optimiser."""
    batch = jax.tree.map(jnp.asarray, example)
    t = jnp.full((batch.num_graphs,), 0.5, batch.positions.dtype)
    label = jnp.asarray(batch.label) if model.config.model.num_labels else None
    params = _cached("init", model, lambda: jax.jit(model.network.init))(key, batch, t, label)
    opt_state = make_optimizer(model.config).init(params)
    ema = jax.tree.map(jnp.array, params)  # a copy: params and EMA are donated separately
    return TrainState(jnp.zeros((), jnp.int32), params, opt_state, ema)


def apply_gradients(model: DiffusionModel, state: TrainState, grads: Any) -> TrainState:
    """One optimiser update of ``state`` with ``grads`` and the EMA update (pure).

    The EMA decay warms up as ``min(decay, (1 + step)/(10 + step))`` so that early
    averages are not dominated by the initialisation."""
    optimizer = make_optimizer(model.config)
    decay = model.config.train.ema_decay
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)) if decay > 0 else 0.0
    ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
    return TrainState(step, params, opt_state, ema)


_COMPILED: dict = {}


def compute_key(model: DiffusionModel) -> tuple:
    """What compiled code of a model depends on (not the data or sampling sections)."""
    c = model.config
    return (model.network, model.sde, model.process, model.loss_config, model.vocab, c.model, c.process, c.train)


def _cached(kind: str, model: DiffusionModel, build):
    """One jitted function per (kind, model): equal models share compiled code."""
    key = (kind, compute_key(model))
    if key not in _COMPILED:
        if len(_COMPILED) > 32:
            _COMPILED.clear()
        _COMPILED[key] = build()
    return _COMPILED[key]


def make_train_step(model: DiffusionModel, jit: bool = True):
    """``train_step(state, batch, key) -> (state, metrics)``: one optimiser step on the joint
    loss (Eq. 18), with EMA update. Pure; jitted (state donated) unless ``jit=False``; the
    jitted function is shared by equal models (no recompilation across runs of one process).

    The key is the step's key: the training loop passes ``fold_in(seed_key, step)`` so that
    a resumed run draws the same noise as an uninterrupted one.
    """
    if jit:
        return _cached("train", model, lambda: jax.jit(make_train_step(model, jit=False), donate_argnums=0))
    loss_config = model.loss_config

    def train_step(state: TrainState, batch: AtomsBatch, key: Array):
        chex.assert_rank(batch.positions, 2)

        def loss_fn(params):
            return losses.joint_loss(params, model.apply, batch, key, loss_config)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return apply_gradients(model, state, grads), dict(metrics, grad_norm=optax.tree.norm(grads))

    return train_step


def make_eval_step(model: DiffusionModel, jit: bool = True):
    """``eval_step(params, batch, key) -> metrics``: the joint loss without gradients."""
    if jit:
        return _cached("eval", model, lambda: jax.jit(make_eval_step(model, jit=False)))
    loss_config = model.loss_config

    def eval_step(params, batch: AtomsBatch, key: Array):
        _, metrics = losses.joint_loss(params, model.apply, batch, key, loss_config)
        return metrics

    return eval_step
