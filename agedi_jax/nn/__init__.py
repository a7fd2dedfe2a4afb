"""Equivariant score networks (Flax linen) for positions and atom types.

Both networks share one interface::

    model = make_network("nequip", num_types=3)          # or NequIP(num_types=3), PaiNN(...)
    params = model.init(key, batch, t)
    scores = model.apply(params, batch, t, label, edges=..., type_weights=...)
    # scores.positions [n, 3] (1o vector), scores.types [n, K] (log-scores)

See :class:`~agedi_jax.nn.nequip.NequIP` for the arguments.

Both networks also see per-graph context (:mod:`agedi_jax.nn.context`: ``log N``, a pooled
"virtual node" of the scalar channels, the offset of every atom from its structure's centre
of mass) and normalise their features equivariantly (:mod:`agedi_jax.nn.norms`); the fields
``global_context``, ``com_vector`` and ``normalize`` (all True by default) switch them off.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn

from agedi_jax.nn.common import average_num_neighbors, bessel_basis, polynomial_envelope
from agedi_jax.nn.context import GlobalContext, com_features, graph_size_features
from agedi_jax.nn.embeddings import fourier_features
from agedi_jax.nn.nequip import NequIP
from agedi_jax.nn.norms import IrrepsNorm, VectorNorm
from agedi_jax.nn.painn import PaiNN

NETWORKS: dict[str, type[nn.Module]] = {
    "nequip": NequIP,
    "painn": PaiNN,
}
"""Registered score networks by name. Adding a network is its module class (with the
interface above: fields ``num_types``, ``num_labels``, ``cutoff``, ``position_head``,
``type_head``, ...) plus one line here; :func:`agedi_jax.model.build_model` passes it every
model-config field it has by name, and the config's validation reads this table."""


def network_fields(name: str) -> list[str]:
    """The fields (constructor arguments) of a registered network class."""
    cls = NETWORKS[name.lower()]
    # ``layout`` is a run-time specialisation (agedi_jax.model.specialize), not a setting
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name", "layout")]


def make_network(name: str = "nequip", **kwargs: Any) -> nn.Module:
    """Build a score network by name (``"nequip"``, the default, or ``"painn"``).

    Args:
      name: key of :data:`NETWORKS` (case-insensitive).
      **kwargs: the module's fields, e.g. ``num_types=3, num_labels=2, cutoff=5.0``.

    Raises:
      ValueError: unknown network name or unknown field (the message lists the valid ones).
    """
    key = name.lower()
    if key not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of {sorted(NETWORKS)}")
    cls = NETWORKS[key]
    valid = network_fields(key)
    bad = sorted(set(kwargs) - set(valid))
    if bad:
        raise ValueError(f"{cls.__name__} has no field(s) {bad}; valid fields: {valid}")
    if "num_types" not in kwargs:
        raise ValueError(f"{cls.__name__} needs num_types (the number K of physical types)")
    if isinstance(kwargs.get("com_scales"), list):  # e.g. read back from JSON
        kwargs["com_scales"] = tuple(kwargs["com_scales"])
    return cls(**kwargs)


__all__ = [
    "NETWORKS",
    "GlobalContext",
    "IrrepsNorm",
    "NequIP",
    "PaiNN",
    "VectorNorm",
    "average_num_neighbors",
    "bessel_basis",
    "com_features",
    "fourier_features",
    "graph_size_features",
    "make_network",
    "network_fields",
    "polynomial_envelope",
]
