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

The joint loss is Eq. 18 (:func:`agedi_jax.losses.joint_loss`); with
``model.energy_head`` it also trains a force field on the data's energies and forces
(:mod:`agedi_jax.forcefield`), and :meth:`DiffusionModel.sampling_fns` builds the compiled
sampler's score function and step (guidance, interpolation, force-field guidance and
corrector) from the config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from agedi_jax import discrete, forcefield, losses, samplers
from agedi_jax import sde as sde_lib
from agedi_jax.batch import AtomsBatch, map_arrays
from agedi_jax.edges import compact_edges, edge_budget
from agedi_jax.cache import compiled, compute_key  # noqa: F401  (compute_key: public through the model)
from agedi_jax.config import Config, sde_params, type_schedule_params
from agedi_jax.layouts import (  # noqa: F401
    PerLayout,
    _with_layout,
    dense_layout,
    picks_layout,
    specialize,
)
from agedi_jax.nn import make_network, network_fields
from agedi_jax.runtime import tune_malloc
from agedi_jax.scores import (
    Scores,
    gaussian_skip,
    make_score_fn,
    mean_log_score,
    output_to_score,
)
from agedi_jax.vocab import TypeVocab

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
      energy_network: the separate energy network (``model.energy_network =
        "separate"``; parameters are then ``{"score": ..., "energy": ...}``), else None.
    """

    config: Config
    vocab: TypeVocab
    network: Any
    sde: Any
    process: Any
    loss_config: losses.LossConfig
    energy_network: Any = None
    lattice: Any = None

    @property
    def num_types(self) -> int:
        return self.vocab.num_types

    @property
    def has_energy(self) -> bool:
        """Whether the model has a learned force field (``model.energy_head``)."""
        return bool(self.config.model.energy_head)

    def score_params(self, params: Any) -> Any:
        """The score network's parameters (the whole ``params`` unless the energy network
        is separate)."""
        return params["score"] if self.energy_network is not None else params

    def energy(self, params: Any, batch: AtomsBatch, type_weights: Array | None = None) -> Array:
        """Learned energies ``[g]`` (eV) of the batch's structures taken as clean
        (:func:`agedi_jax.forcefield.model_energy`)."""
        return forcefield.model_energy(self, params, batch, type_weights)

    def energy_and_forces(self, params: Any, batch: AtomsBatch) -> tuple[Array, Array]:
        """Learned ``(energy [g] eV, forces [n, 3] eV/Å)``, forces ``−∂E/∂R``."""
        return forcefield.model_energy_and_forces(self, params, batch)

    def apply(self, params: Any, batch: AtomsBatch, t: Array, label: Array | None = None, **kwargs) -> Scores:
        """Raw network outputs (position output per the parametrisation, type log-scores;
        with a lattice the cell's ε-prediction, the head's output plus the Gaussian skip
        :func:`agedi_jax.lattice.gaussian_cell_eps`). Labels are ignored by an
        unconditional model (``model.num_labels == 0``)."""
        if self.config.model.num_labels == 0:
            label = None
        if self.config.model.edges_per_atom > 0 and kwargs.get("edges") is None:
            batch = self.compact(batch)
        out = self.network.apply(self.score_params(params), batch, t, label, **kwargs)
        p = self.config.process
        if out.positions is not None and p.data_scale > 0:
            skip = gaussian_skip(self.sde, p.data_scale, p.parametrization, batch, t)
            out = out._replace(positions=out.positions + skip)
        if out.types is not None and p.type_parametrization == "mean":
            out = out._replace(types=mean_log_score(self.process, batch, t, out.types))
        if out.cell is not None and self.lattice is not None:
            from agedi_jax.lattice import gaussian_cell_eps

            out = out._replace(cell=out.cell + gaussian_cell_eps(self.lattice, batch, t))
        return out

    def compact(self, batch: AtomsBatch) -> AtomsBatch:
        """The batch with only its edges inside the cutoff, in the static edge budget of
        ``model.edges_per_atom`` (:func:`agedi_jax.edges.compact_edges`); the batch itself
        when no budget is set."""
        per_atom = self.config.model.edges_per_atom
        if not per_atom > 0:
            return batch
        budget = edge_budget(per_atom, batch.num_nodes)
        return compact_edges(map_arrays(jnp.asarray, batch), self.config.model.cutoff, budget)[0]

    def score_fn(self, params: Any) -> Callable[..., Scores]:
        """Sampler score function (position score in Å⁻¹, type log-scores; with a lattice
        the lattice score ``−ε̂_L/std_L`` in lattice coordinates)."""
        if self.lattice is None:
            return make_score_fn(self.apply, params, self.sde, self.config.process.parametrization)
        from agedi_jax import lattice as lattice_lib

        lsde, apply = self.lattice, self.apply

        def score_fn(state: AtomsBatch, t, key, type_weights=None) -> Scores:
            kwargs = {} if type_weights is None else {"type_weights": type_weights}
            out = apply(params, state, t, state.label, **kwargs)
            pos = out.positions
            if pos is not None:
                std = self.sde.std(jnp.asarray(t)[state.graph_index])
                pos = output_to_score(pos, std, self.config.process.parametrization)
            cell = None
            if out.cell is not None:
                mask = lattice_lib.graph_lattice_mask(state)
                std_l = lattice_lib.kernel_std(lsde, jnp.asarray(t), state.n_node, mask)
                cell = lattice_lib.eps_to_cell_score(out.cell, std_l)
            return Scores(positions=pos, types=out.types, cell=cell)

        return score_fn

    def guidance_energy_fn(self, params: Any, config: Config | None = None) -> Callable[[AtomsBatch], Array]:
        """The energy function of force-field guidance (``sample.guidance_potential``):
        the learned force field, or EMT over the model's vocabulary (elements EMT lacks
        give NaN energies, whose forces the guidance sets to 0)."""
        cfg = config or self.config
        if cfg.sample.guidance_potential == "emt":
            from agedi_jax.potentials import make_emt

            return make_emt(self.vocab, allow_unsupported=True, check=False)
        if not self.has_energy:
            raise ValueError(
                "sample.guidance_potential=model needs a model with a learned force field "
                "(model.energy_head); use sample.guidance_potential=emt"
            )
        return forcefield.model_energy_fn(self, params)

    def sampling_fns(
        self,
        params: Any,
        config: Config | None = None,
        *,
        interpolate: tuple[int, int] | None = None,
        guided: bool = False,
        w: Any = 1.0,
    ) -> tuple[Callable[..., Scores], Any]:
        """``(score_fn, step)`` of the configured sampler, for
        :func:`agedi_jax.samplers.sample` (call inside the jitted sampler: ``params`` and
        ``w`` may be traced).

        The score function is the network's (:meth:`score_fn`), then type interpolation
        between the type indices ``interpolate`` (Eq. 20), then classifier-free guidance
        with weight ``w`` when ``guided`` (Eq. 19), then force-field guidance when
        ``sample.energy_guidance > 0`` (:func:`agedi_jax.samplers.energy_guided`; with
        ``sample.guidance_in = "corrector"`` only the predictor–corrector's Langevin
        corrector sees it). The step is :func:`agedi_jax.samplers.make_step` of
        ``config.sample``. ``config`` defaults to the model's."""
        cfg = config or self.config
        s = cfg.sample
        score_fn = self.score_fn(params)
        if interpolate is not None:
            score_fn = samplers.interpolated(score_fn, interpolate[0], interpolate[1], self.num_types)
        if guided:
            score_fn = samplers.guided(score_fn, w)
        step = samplers.make_step(self.sde, self.process, s, lattice=self.lattice,
                                  y_max=cfg.process.lattice_y_max)
        if s.energy_guidance > 0:
            if self.sde is None:
                raise ValueError("sample.energy_guidance needs a model of positions (model.positions)")
            energy_fn = self.guidance_energy_fn(params, cfg)

            def wrap(fn):
                return samplers.energy_guided(
                    fn, energy_fn, s.energy_guidance, zeta=s.guidance_zeta, on=s.guidance_on,
                    sde=self.sde, max_force=s.guidance_max_force,
                )

            if s.guidance_in == "corrector":
                step = samplers.with_corrector_guidance(step, wrap)
            else:
                score_fn = wrap(score_fn)
        return score_fn, step


def make_sde(config: Config):
    """The position SDE of a config (None when positions are off), built by the registry
    (:func:`agedi_jax.sde.make_sde`)."""
    if not config.model.positions:
        return None
    p = config.process
    return sde_lib.make_sde(p.sde, p.schedule, **sde_params(p))


def make_lattice(config: Config):
    """The lattice process of a config (None when ``process.lattice`` is off); its scale
    and σ must have been fitted (:func:`agedi_jax.train.prepare_data`) or set."""
    p = config.process
    if not p.lattice:
        return None
    if not (p.lattice_scale > 0 and p.lattice_sigma > 0):
        raise ValueError(
            "process.lattice: process.lattice_scale and process.lattice_sigma are 0 (not fitted); "
            "prepare the data (agedi_jax.train.prepare_data fits them) or set them"
        )
    from agedi_jax.lattice import make_lattice_sde

    return make_lattice_sde(p.lattice_schedule, scale=p.lattice_scale, sigma_rel=p.lattice_sigma, param=p.lattice,
                            **dict(p.lattice_schedule_params))


def make_process(config: Config, num_types: int):
    """The absorbing type process of a config (None when types are off), built by the
    registry (:func:`agedi_jax.discrete.make_type_process`)."""
    if not config.model.types:
        return None
    p = config.process
    return discrete.make_type_process(num_types, p.type_schedule, **type_schedule_params(p))


def network_kwargs(config: Config, num_types: int, avg_num_neighbors: float) -> dict[str, Any]:
    """The constructor arguments of the configured network: every ``model`` field the
    network class has (by name; ``positions``/``types`` as ``position_head``/``type_head``),
    then ``model.network_params``."""
    m = config.model
    fields = set(network_fields(m.network))
    values = {f.name: getattr(m, f.name) for f in dataclasses.fields(m)}
    values.update(position_head=m.positions, type_head=m.types)
    if config.process.lattice:
        values.update(lattice_head=True)
    kwargs = {k: v for k, v in values.items() if k in fields and k not in ("network_params", "avg_num_neighbors")}
    kwargs.update(num_types=num_types, avg_num_neighbors=float(avg_num_neighbors))
    kwargs.update(dict(m.network_params))
    return kwargs


def build_model(config: Config, vocab: TypeVocab, avg_num_neighbors: float | None = None) -> DiffusionModel:
    """Assemble a :class:`DiffusionModel` from the registries (network, SDE, type process).

    ``avg_num_neighbors`` (computed from the training data) is used when
    ``config.model.avg_num_neighbors`` is 0; the value used is the one saved in the config
    by the training loop, so a checkpoint rebuilds the same network.
    """
    tune_malloc()  # once per process; AGEDI_JAX_TUNE_MALLOC=0 keeps glibc's defaults
    m = config.model
    avg = m.avg_num_neighbors or avg_num_neighbors
    if not avg or avg <= 0:
        raise ValueError(
            "build_model: model.avg_num_neighbors is 0 and no value computed from data was given"
        )
    kwargs = network_kwargs(config, vocab.num_types, avg)
    energy_network = None
    if m.energy_head and m.energy_network == "separate":
        kwargs["energy_head"] = False
        e_kwargs = dict(kwargs, position_head=False, type_head=False, energy_head=True, num_labels=0)
        energy_network = make_network(m.network, **e_kwargs)
    elif m.energy_network not in forcefield.ENERGY_NETWORKS:
        raise ValueError(f"model.energy_network={m.energy_network!r}; choose one of {forcefield.ENERGY_NETWORKS}")
    network = make_network(m.network, **kwargs)
    sde = make_sde(config)
    process = make_process(config, vocab.num_types)
    lattice = make_lattice(config)
    t = config.train
    loss_config = losses.LossConfig(
        sde=sde,
        process=process,
        lambda_positions=t.lambda_positions,
        lambda_types=t.lambda_types,
        t_eps=config.process.t_eps,
        t_beta=(float(config.process.t_beta_a), float(config.process.t_beta_b)),
        independent_t=config.process.independent_t,
        parametrization=config.process.parametrization,
        p_uncond=t.label_dropout if m.num_labels > 0 else 0.0,
        lambda_energy=t.lambda_energy if m.energy_head else 0.0,
        lambda_forces=t.lambda_forces if m.energy_head else 0.0,
        energy_scale=forcefield.energy_scale(config),
        lattice=lattice,
        lambda_lattice=t.lambda_lattice,
        lattice_y_max=config.process.lattice_y_max,
        edges_per_atom=m.edges_per_atom,
        cutoff=m.cutoff,
    )
    return DiffusionModel(config, vocab, network, sde, process, loss_config, energy_network, lattice)


# --------------------------------------------------------------------------------------
# Dense layout per batch: agedi_jax.layouts (re-exported here)
# --------------------------------------------------------------------------------------

_PerLayout = PerLayout


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
    params = compiled("init", model, lambda: jax.jit(model.network.init))(key, batch, t, label)
    if model.energy_network is not None:
        e_params = compiled("init_energy", model, lambda: jax.jit(model.energy_network.init))(
            jax.random.fold_in(key, 1), batch, jnp.zeros_like(t), None
        )
        params = {"score": params, "energy": e_params}
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


def _loss_fn(model: DiffusionModel) -> Callable:
    loss_config = model.loss_config
    energy_fn = None
    if model.has_energy:

        def energy_fn(params, batch: AtomsBatch):
            return model.energy_and_forces(params, batch)

    def loss_fn(params, batch: AtomsBatch, key: Array):
        return losses.joint_loss(params, model.apply, batch, key, loss_config, energy_fn=energy_fn)

    return loss_fn


def make_grad_fn(model: DiffusionModel, mesh: Any = None) -> Callable:
    """``grad_fn(params, batch, key) -> (grads, metrics)``: gradients and metrics of the
    joint loss (Eq. 18). With a ``mesh`` the batch is stacked over its devices
    (:mod:`agedi_jax.parallel`) and the result is that of the union batch. Not jitted (for
    custom optimisers or gradient accumulation; :func:`make_train_step` uses it)."""
    loss_fn = _loss_fn(model)
    if mesh is not None:
        from agedi_jax.parallel import data_parallel_grad

        return data_parallel_grad(loss_fn, mesh)

    def grad_fn(params, batch: AtomsBatch, key: Array):
        chex.assert_rank(batch.positions, 2)
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
        return grads, metrics

    return grad_fn


def make_train_step(model: DiffusionModel, mesh: Any = None, *, jit: bool = True, dense: bool = True):
    """``train_step(state, batch, key) -> (state, metrics)``: one optimiser step on the joint
    loss (Eq. 18), with EMA update. Pure; jitted (state donated) unless ``jit=False``; the
    jitted function is shared by equal models (no recompilation across runs of one process).

    With a ``mesh`` (:func:`agedi_jax.parallel.make_mesh`) the step is data-parallel: the
    state is replicated, the batch stacked over the devices, and the update equals that of
    the single-device step on the union batch.

    The key is the step's key: the training loop passes ``fold_in(seed_key, step)`` so that
    a resumed run draws the same noise as an uninterrupted one.

    Without a mesh the jitted step picks the network's layout from every batch
    (:func:`specialize`: the dense per-structure layout for batches of small structures,
    one compilation per layout; ``dense=False`` or ``model.network_params.dense=false``
    keeps the model as given). ``.lower(state, batch, key)`` works as for a jitted function.
    """
    if jit and mesh is None and dense and picks_layout(model):
        return compiled("train_dispatch", model, lambda: _PerLayout(
            model, lambda m: make_train_step(m, None, jit=True, dense=False), batch_arg=1))
    if jit:
        return compiled("train", model, lambda: jax.jit(make_train_step(model, mesh, jit=False), donate_argnums=0), mesh)
    grad_fn = make_grad_fn(model, mesh)

    def train_step(state: TrainState, batch: AtomsBatch, key: Array):
        if mesh is not None:
            from agedi_jax.parallel import check_stacked

            check_stacked(batch, mesh, "data-parallel train step")
        grads, metrics = grad_fn(state.params, batch, key)
        return apply_gradients(model, state, grads), dict(metrics, grad_norm=optax.tree.norm(grads))

    return train_step


def make_eval_step(model: DiffusionModel, mesh: Any = None, *, jit: bool = True, dense: bool = True):
    """``eval_step(params, batch, key) -> metrics``: the joint loss without gradients
    (of the union batch with a ``mesh``). With a learned force field the metrics include
    ``loss_energy``, ``loss_forces``, ``energy_mae`` (eV/atom), ``force_mae`` and
    ``force_rmse`` (eV/Å) against the batch's labels."""
    if jit and mesh is None and dense and picks_layout(model):
        return compiled("eval_dispatch", model, lambda: _PerLayout(
            model, lambda m: make_eval_step(m, None, jit=True, dense=False), batch_arg=1))
    if jit:
        return compiled("eval", model, lambda: jax.jit(make_eval_step(model, mesh, jit=False)), mesh)
    loss_fn = _loss_fn(model)
    if mesh is not None:
        from agedi_jax.parallel import data_parallel_loss

        return data_parallel_loss(loss_fn, mesh)

    def eval_step(params, batch: AtomsBatch, key: Array):
        return loss_fn(params, batch, key)[1]

    return eval_step
