"""The package's one cache of jitted functions (train and eval steps, parameter
initialisation, samplers, force-field prediction), keyed by what their compiled code
depends on, so that equal models share compiled code within a process. The key of a model
is :func:`compute_key` (a :class:`~agedi_jax.model.DiffusionModel`, read by attribute)."""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["compiled", "compute_key", "clear"]


_COMPILED: dict = {}


def compute_key(model: Any) -> tuple:
    """What compiled code of a model depends on (not the data or sampling sections)."""
    c = model.config
    return (model.network, model.sde, model.process, model.loss_config, model.vocab, c.model, c.process, c.train,
            model.energy_network)


def compiled(kind: str, model: Any, build: Callable[[], Any], *extra: Any) -> Any:
    """The package's one cache of jitted functions: one per ``(kind, model, *extra)``, so
    equal models (and equal sampler settings, meshes, ...) share compiled code across runs
    of one process. ``build()`` makes the jitted function on a miss."""
    key = (kind, compute_key(model), *extra)
    if key not in _COMPILED:
        if len(_COMPILED) > 64:
            _COMPILED.clear()
        _COMPILED[key] = build()
    return _COMPILED[key]


def clear() -> None:
    """Forget every cached function (their compiled executables are freed with them)."""
    _COMPILED.clear()
