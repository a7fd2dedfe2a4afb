"""Which network layout a model runs a concrete batch on, chosen on the host.

The score networks with a dense path (:mod:`agedi_jax.nn.dense`) evaluate batches of small
structures on a dense per-structure layout and everything else on the edge path; the
layout is static, so it is picked here from a concrete batch and the model's network is
specialised with it (``network.clone(layout=...)``). :class:`PerLayout` keeps one compiled
function per layout for the train/eval steps (:mod:`agedi_jax.model`), the sampler
(:mod:`agedi_jax.generate`) and force-field prediction (:mod:`agedi_jax.forcefield`).

Works on any :class:`~agedi_jax.model.DiffusionModel`-like named tuple with ``network`` and
``energy_network`` fields; it does not import the model module (no import cycle).
"""

from __future__ import annotations

from typing import Any, Callable

from agedi_jax.batch import AtomsBatch
from agedi_jax.nn.dense import DenseLayout, layout_reason

DiffusionModel = Any  # agedi_jax.model.DiffusionModel (not imported: no cycle)

__all__ = ["PerLayout", "dense_layout", "picks_layout", "specialize"]




def _with_layout(model: DiffusionModel, layout: DenseLayout | None) -> DiffusionModel:
    def clone(net):
        if net is None or not getattr(net, "supports_dense", False) or net.layout == layout:
            return net
        return net.clone(layout=layout)

    network, energy = clone(model.network), clone(model.energy_network)
    if network is model.network and energy is model.energy_network:
        return model
    return model._replace(network=network, energy_network=energy)


def dense_layout(model: DiffusionModel, batch: AtomsBatch, **kwargs) -> tuple[DenseLayout | None, str]:
    """The dense layout the model would use for a concrete ``batch`` and why
    (:func:`agedi_jax.nn.dense.layout_reason`; ``kwargs``: ``max_atoms``, ``max_ratio``):
    None when the network has no dense path or ``model.network_params.dense`` is off."""
    net = model.network
    if not getattr(net, "supports_dense", False):
        return None, f"{type(net).__name__} has no dense path"
    if getattr(net, "lattice_head", False):
        return None, "the lattice head runs on the edge path"
    if not net.dense:
        return None, "dense layout switched off (model.network_params.dense=false)"
    return layout_reason(batch, net.cutoff, **kwargs)


def picks_layout(model: DiffusionModel) -> bool:
    """Whether the model's compiled functions pick the network's layout per batch: its
    network has a dense path, ``model.network_params.dense`` is on and it is not already
    specialised to a layout (:func:`specialize`)."""
    net = model.network
    return bool(getattr(net, "supports_dense", False) and net.dense and net.layout is None
                and not getattr(net, "lattice_head", False))


def specialize(model: DiffusionModel, batch: AtomsBatch | None, **kwargs) -> DiffusionModel:
    """The model specialised to a concrete ``batch``: its network (and separate energy
    network) on the dense per-structure layout when :func:`dense_layout` finds one — a
    batch of small structures with a complete edge template — else on the edge path.

    Same parameters and outputs either way (float32 rounding aside); the dense layout is
    several times cheaper for clusters and small cells. ``batch=None`` gives the edge path.
    The train and eval steps (:func:`make_train_step`, :func:`make_eval_step`), the
    sampler (:func:`agedi_jax.generate.make_sampler`) and force-field prediction
    (:func:`agedi_jax.forcefield.predict_atoms`) do this for every batch; a model already
    specialised keeps its layout there."""
    layout = None if batch is None else dense_layout(model, batch, **kwargs)[0]
    return _with_layout(model, layout)


class PerLayout:
    """A jitted step function per dense layout, picked from each (concrete) batch: calling
    it (or ``.lower``) specialises the model to the batch (:func:`specialize`) and runs the
    step compiled for that model (``build(specialised_model)``, which should be cached).
    A layout compiled before that also fits the batch (more atom slots or structure rows)
    is reused rather than compiling another one while its pair tensor is at most
    ``reuse_ratio`` times the batch's own (None: whenever it fits — for a sampler, whose
    compilation costs more than one padded batch)."""

    def __init__(self, model: DiffusionModel, build: Callable[[DiffusionModel], Callable], batch_arg: int,
                 reuse_ratio: float | None = 1.5):
        self.model, self.build, self.batch_arg = model, build, batch_arg
        self.reuse_ratio = reuse_ratio
        self.layouts: list[DenseLayout] = []

    def for_batch(self, batch: AtomsBatch) -> Callable:
        layout, _ = dense_layout(self.model, batch)
        if layout is not None and layout not in self.layouts:
            for known in self.layouts:
                # rows: enough for the batch's structures, but no more than its graph slots
                fits = (known.atoms >= layout.atoms and layout.graphs <= known.graphs <= batch.num_graphs
                        and all(a >= b for a, b in zip(known.images, layout.images))
                        and (known.periodic or not layout.periodic)
                        and (self.reuse_ratio is None
                             or known.pair_slots <= self.reuse_ratio * max(layout.pair_slots, 1)))
                if fits:
                    layout = known
                    break
            else:
                self.layouts.append(layout)
        return self.build(_with_layout(self.model, layout))

    def __call__(self, *args):
        return self.for_batch(args[self.batch_arg])(*args)

    def lower(self, *args):
        return self.for_batch(args[self.batch_arg]).lower(*args)
