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
        return self.network.apply(params, batch, t, label, **kwargs)

    def score_fn(self, params: Any) -> Callable[..., Scores]:
        """Sampler score function (position score in Å⁻¹, type log-scores)."""
        return losses.make_score_fn(self.apply, params, self.sde, self.config.process.parametrization)


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
    params = jax.jit(model.network.init)(key, batch, t, label)
    opt_state = make_optimizer(model.config).init(params)
    ema = jax.tree.map(jnp.array, params)  # a copy: params and EMA are donated separately
    return TrainState(jnp.zeros((), jnp.int32), params, opt_state, ema)


def make_train_step(model: DiffusionModel, jit: bool = True):
    """``train_step(state, batch, key) -> (state, metrics)``: one optimiser step on the joint
    loss (Eq. 18), with EMA update. Pure; jitted (state donated) unless ``jit=False``.

    The key is the step's key: the training loop passes ``fold_in(seed_key, step)`` so that
    a resumed run draws the same noise as an uninterrupted one.
    """
    optimizer = make_optimizer(model.config)
    decay = model.config.train.ema_decay
    loss_config = model.loss_config

    def train_step(state: TrainState, batch: AtomsBatch, key: Array):
        chex.assert_rank(batch.positions, 2)

        def loss_fn(params):
            return losses.joint_loss(params, model.apply, batch, key, loss_config)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # EMA with a warm-up so early averages are not dominated by the initialisation.
        step = state.step + 1
        d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)) if decay > 0 else 0.0
        ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
        metrics = dict(metrics, grad_norm=optax.global_norm(grads))
        return TrainState(step, params, opt_state, ema), metrics

    return jax.jit(train_step, donate_argnums=0) if jit else train_step


def make_eval_step(model: DiffusionModel, jit: bool = True):
    """``eval_step(params, batch, key) -> metrics``: the joint loss without gradients."""
    loss_config = model.loss_config

    def eval_step(params, batch: AtomsBatch, key: Array):
        _, metrics = losses.joint_loss(params, model.apply, batch, key, loss_config)
        return metrics

    return jax.jit(eval_step) if jit else eval_step
