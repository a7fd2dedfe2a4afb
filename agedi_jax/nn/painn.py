"""PaiNN score network (Schütt, Unke & Gastegger, ICML 2021), the paper's network.

Same outputs as :mod:`agedi_jax.nn.nequip`: an equivariant vector per atom for the position
score (Eqs. 4, 7) and K log concrete scores per atom for the types (Eq. 14).

Atoms carry scalars ``s`` [n, F] and vectors ``v`` [n, 3, F] (``v = 0`` at the start).
Per layer, with edge ``i ← j``, direction ``r̂_ij`` and length ``r_ij`` (Å):

* conditioning: ``s += Dense(cond)[graph]`` (time / label, scalars only)
* message:  ``(x_s, x_vv, x_vs) = φ(s_j) ⊙ W(r_ij)`` with ``φ = Dense∘silu∘Dense`` and
  ``W = Dense(Bessel(r)·u(r)) · u(r)``;
  ``Δs_i = Σ_j x_s``, ``Δv_i = Σ_j x_vv ⊙ v_j + x_vs ⊗ r̂_ij`` (sums / sqrt(avg_num_neighbors))
* update:   ``U v, V v`` (feature mixing, no bias); ``(a_vv, a_sv, a_ss) = MLP([s, ‖V v‖])``;
  ``Δv = a_vv ⊙ U v``, ``Δs = a_sv ⊙ ⟨U v, V v⟩ + a_ss``

Global inputs (:mod:`agedi_jax.nn.context`; each can be switched off):

* ``global_context``: ``log N`` joins the condition, and before every layer
  ``s_i += MLP(mean_{j ∈ graph(i)} LN(s_j))`` (a virtual node), so isolated atoms of a
  graph that has fallen apart at high noise still see its size and composition;
* ``com_vector``: the initial vectors are a linear map of the squashed offsets from the
  centre of mass, ``v_i = W [d_i / sqrt(|d_i|² + L_k²)]_k``, and ``s_i`` gets their norms.

Stability (``normalize``, :mod:`agedi_jax.nn.norms`): every message and update block reads
pre-normalised inputs (layer norm on ``s``, soft RMS norm on ``v``) and the heads read
normalised final features (and the second gated block of the position head reads
normalised outputs of the first), so each residual update is bounded whatever the geometry
(two nearly coincident atoms no longer blow the output up).

Heads: two gated equivariant blocks → one vector per atom (positions) and an MLP on
``[s, cond]`` → K type log-scores; with ``energy_head`` an MLP on ``s`` → one invariant
per-atom energy (the learned force field, :mod:`agedi_jax.forcefield`). Differences from the original: a Bessel basis with a
polynomial envelope instead of Gaussians with a cosine cutoff, message sums divided by
``sqrt(avg_num_neighbors)`` (a fixed rescaling), and the global inputs and normalisation above.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from agedi_jax.nn.common import (
    MLP,
    ScoreNetwork,
    bessel_basis,
    finalize_energy,
    finalize_scores,
    polynomial_envelope,
    prepare_inputs,
    safe_norm,
    unit_vectors,
)
from agedi_jax.nn.context import GlobalContext, com_features, graph_size_features
from agedi_jax.nn.embeddings import Conditioning
from agedi_jax.nn.norms import VectorNorm
from agedi_jax.scores import Scores

Array = Any


class PaiNNMessage(nn.Module):
    """PaiNN message block: returns ``(Δs [n, F], Δv [n, 3, F])``."""

    features: int
    avg_num_neighbors: float

    @nn.compact
    def __call__(self, s, v, radial, envelope, directions, edge_mask, senders, receivers):
        f = self.features
        n = s.shape[0]
        phi = MLP((f, 3 * f), activation=nn.silu, name="phi")(s)[senders]  # [e, 3F]
        w = nn.Dense(3 * f, name="filter")(radial) * envelope[:, None]
        x = jnp.where(edge_mask[:, None], phi * w, 0.0)
        x_s, x_vv, x_vs = jnp.split(x, 3, axis=-1)
        dv = x_vv[:, None, :] * v[senders] + x_vs[:, None, :] * directions[:, :, None]
        norm = 1.0 / jnp.sqrt(self.avg_num_neighbors)
        ds = jax.ops.segment_sum(x_s, receivers, num_segments=n) * norm
        dv = jax.ops.segment_sum(dv, receivers, num_segments=n) * norm
        return ds, dv


class PaiNNUpdate(nn.Module):
    """PaiNN update block: returns ``(Δs [n, F], Δv [n, 3, F])``."""

    features: int

    @nn.compact
    def __call__(self, s, v):
        f = self.features
        uv = nn.Dense(f, use_bias=False, name="U")(v)
        vv = nn.Dense(f, use_bias=False, name="V")(v)
        a = MLP((f, 3 * f), activation=nn.silu, name="mlp")(
            jnp.concatenate([s, safe_norm(vv, axis=-2)], axis=-1)
        )
        a_vv, a_sv, a_ss = jnp.split(a, 3, axis=-1)
        dv = a_vv[:, None, :] * uv
        ds = a_sv * jnp.sum(uv * vv, axis=-2) + a_ss
        return ds, dv


class GatedEquivariantBlock(nn.Module):
    """Gated equivariant block (Schütt et al. 2021, Fig. 3): vectors are mixed linearly and
    gated by scalars computed from ``[s, ‖W v‖]``; returns ``(s_out, v_out [n, 3, vector_out])``."""

    scalar_out: int
    vector_out: int
    hidden: int
    activate_scalars: bool = True

    @nn.compact
    def __call__(self, s, v):
        mix = nn.Dense(2 * self.vector_out, use_bias=False, name="mix")(v)
        v_a, v_b = jnp.split(mix, 2, axis=-1)
        x = MLP((self.hidden, self.scalar_out + self.vector_out), activation=nn.silu, name="mlp")(
            jnp.concatenate([s, safe_norm(v_a, axis=-2)], axis=-1)
        )
        s_out, gate = jnp.split(x, [self.scalar_out], axis=-1)
        if self.activate_scalars:
            s_out = nn.silu(s_out)
        return s_out, gate[:, None, :] * v_b


class PaiNN(ScoreNetwork):
    """PaiNN score network (the interface and shared fields of
    :class:`~agedi_jax.nn.common.ScoreNetwork`; ``features`` is the width F of scalars and
    of vector channels). Its radial basis defaults to 20 Bessel functions."""

    num_basis: int = 20

    # One lifted jit around the forward pass, so eager init / apply compile once.
    @nn.jit
    @nn.compact
    def _forward(self, batch, t, label, edges, type_weights) -> Scores:
        batch, t, label, edges, type_weights = prepare_inputs(
            batch, t, label, edges, type_weights,
            num_types=self.num_types, num_labels=self.num_labels, cutoff=self.cutoff,
        )
        f = self.features
        size = graph_size_features(batch, batch.positions.dtype) if self.global_context else None
        s, cond = Conditioning(self.num_types, self.num_labels, f, name="embed")(
            type_weights, t, label, batch.graph_index, size
        )
        cond_n = cond[batch.graph_index]
        if self.com_vector:
            com_s, com_v = com_features(batch, batch.positions, self.com_scales)
            s = s + nn.Dense(f, name="com_scalars")(com_s)
            v = nn.Dense(f, use_bias=False, name="com_vectors")(com_v)
        else:
            v = jnp.zeros(s.shape[:1] + (3, f), s.dtype)

        envelope = polynomial_envelope(edges.lengths, self.cutoff, self.envelope_p)
        radial = bessel_basis(edges.lengths, self.num_basis, self.cutoff) * envelope[:, None]
        directions = unit_vectors(edges.vectors)

        def norm(s, v, tag):
            if not self.normalize:
                return s, v
            return (nn.LayerNorm(name=f"norm_s_{tag}")(s),
                    VectorNorm(self.norm_eps, name=f"norm_v_{tag}")(v))

        for i in range(self.num_layers):
            s = s + nn.Dense(f, name=f"cond_{i}")(cond_n)
            if self.global_context:
                pooled_in = nn.LayerNorm(name=f"norm_context_{i}")(s) if self.normalize else s
                s = s + GlobalContext(f, name=f"context_{i}")(batch, pooled_in)
            hs, hv = norm(s, v, f"message_{i}")
            ds, dv = PaiNNMessage(f, self.avg_num_neighbors, name=f"message_{i}")(
                hs, hv, radial, envelope, directions, edges.mask, batch.senders, batch.receivers
            )
            s, v = s + ds, v + dv
            hs, hv = norm(s, v, f"update_{i}")
            ds, dv = PaiNNUpdate(f, name=f"update_{i}")(hs, hv)
            s, v = s + ds, v + dv
        s, v = norm(s, v, "out")

        pos = typ = None
        if self.position_head:
            hs, hv = GatedEquivariantBlock(f // 2, f // 2, f, name="position_block_0")(s, v)
            hs, hv = norm(hs, hv, "position")
            _, out = GatedEquivariantBlock(0, 1, f // 2, activate_scalars=False,
                                           name="position_block_1")(hs, hv)
            pos = out[:, :, 0]
        if self.type_head:
            typ = MLP((f, self.num_types), activation=nn.silu, name="type_head")(
                jnp.concatenate([s, cond_n], axis=-1)
            )
        energy = None
        if self.energy_head:
            energy = MLP((f, 1), activation=nn.silu, name="energy_head")(s)
        pos, typ = finalize_scores(batch, pos, typ)
        return Scores(positions=pos, types=typ, energy=finalize_energy(batch, energy))
