"""Embeddings of the network inputs that are scalars under rotation: diffusion time, the
condition label (with a null row for classifier-free guidance, paper Eq. 19) and the atom
type (as weights over a learned table, so that the sampler can interpolate types, Eq. 20).

All of them enter the networks' scalar (``0e``) channels only, which keeps the networks
equivariant.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from agedi_jax.nn.common import MLP

Array = Any


def fourier_features(t: Array, num_frequencies: int = 16, max_frequency: float = 1000.0) -> Array:
    """Sinusoidal features of the diffusion time ``t`` ∈ [0, 1].

    ``[sin(ω_k t), cos(ω_k t)]`` with ``ω_k`` log-spaced from 1 to ``max_frequency``
    (the transformer / DDPM embedding of ``t``).

    Args:
      t: [g] times.
      num_frequencies: number of frequencies (output has twice as many features).
      max_frequency: largest angular frequency.

    Returns:
      [g, 2 * num_frequencies] features in [-1, 1].
    """
    omega = jnp.exp(jnp.linspace(0.0, math.log(max_frequency), num_frequencies, dtype=t.dtype))
    arg = t[:, None] * omega
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


class TimeEmbedding(nn.Module):
    """``t`` [g] -> [g, features]: Fourier features followed by a two-layer MLP."""

    features: int
    num_frequencies: int = 16
    max_frequency: float = 1000.0

    @nn.compact
    def __call__(self, t: Array) -> Array:
        x = fourier_features(t, self.num_frequencies, self.max_frequency)
        return MLP((self.features, self.features), activation=nn.silu, name="mlp")(x)


class LabelEmbedding(nn.Module):
    """Label [g] int in ``0..num_labels`` -> [g, features]; row 0 is the learned null label ∅
    that classifier-free guidance (Eq. 19) trains with probability τ."""

    num_labels: int
    features: int

    @nn.compact
    def __call__(self, label: Array) -> Array:
        return nn.Embed(self.num_labels + 1, self.features, name="table")(label)


class TypeEmbedding(nn.Module):
    """Per-atom weights over the type table [n, K+1] -> [n, features]: ``type_weights @ E``.

    ``E`` is the [K+1, features] table (row 0 = MASK). One-hot weights pick a row; the
    sampler's type interpolation (Eq. 20) passes ``α`` and ``1 − α`` in the columns of
    types A and B to get ``α E_A + (1 − α) E_B``.
    """

    num_types: int
    features: int

    @nn.compact
    def __call__(self, type_weights: Array) -> Array:
        table = self.param(
            "table", nn.initializers.normal(stddev=1.0), (self.num_types + 1, self.features)
        )
        return type_weights @ table.astype(type_weights.dtype)


class Modulation(nn.Module):
    """Feature-wise modulation of per-atom scalars by the per-graph condition (FiLM;
    "adaLN" of diffusion transformers): ``h ⊙ (1 + γ) + β`` with
    ``(γ, β) = Dense(silu(cond))[graph_index]``. The Dense starts at zero, so a fresh
    network computes exactly what it would without the modulation. Multiplicative, where
    the networks' per-layer ``s += Dense(cond)`` is only additive: the label (and time) can
    switch features on and off, not just shift them.

    Args (call): ``h`` [n, F] scalars (typically layer-normalised), ``cond`` [g, C],
    ``graph_index`` [n]. Returns [n, F].
    """

    @nn.compact
    def __call__(self, h: Array, cond: Array, graph_index: Array) -> Array:
        f = h.shape[-1]
        gb = nn.Dense(2 * f, kernel_init=nn.initializers.zeros, name="dense")(nn.silu(cond))
        gamma, beta = jnp.split(gb[graph_index].astype(h.dtype), 2, axis=-1)
        return h * (1.0 + gamma) + beta


class Conditioning(nn.Module):
    """Initial scalar node features and the per-graph condition vector.

    Returns ``(h0 [n, features], cond [g, features])`` with
    ``cond = TimeEmbedding(t) (+ LabelEmbedding(label)) (+ MLP(size))`` and
    ``h0 = Dense(concat[TypeEmbedding(type_weights), cond[graph_index]])``.
    ``size`` [g, d] holds per-graph size features (e.g. ``log N``,
    :func:`agedi_jax.nn.context.graph_size_features`), or None.
    The networks also add a per-layer projection of ``cond`` to their scalar channels.
    """

    num_types: int
    num_labels: int
    features: int

    @nn.compact
    def __call__(
        self,
        type_weights: Array,
        t: Array,
        label: Array | None,
        graph_index: Array,
        size: Array | None = None,
    ) -> tuple[Array, Array]:
        cond = TimeEmbedding(self.features, name="time")(t)
        if self.num_labels > 0:
            cond = cond + LabelEmbedding(self.num_labels, self.features, name="label")(label)
        if size is not None:
            cond = cond + MLP((self.features, self.features), activation=nn.silu, name="size")(size)
        z = TypeEmbedding(self.num_types, self.features, name="type")(type_weights)
        h0 = nn.Dense(self.features, name="node_in")(
            jnp.concatenate([z, cond[graph_index]], axis=-1)
        )
        return h0, cond
