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
``[s, cond]`` → K type log-scores. Differences from the original: a Bessel basis with a
polynomial envelope instead of Gaussians with a cosine cutoff, message sums divided by
``sqrt(avg_num_neighbors)`` (a fixed rescaling), and the global inputs and normalisation above.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from agedi_jax.batch import AtomsBatch
from agedi_jax.edges import Edges
from agedi_jax.nn.common import (
    MLP,
    bessel_basis,
    check_global_options,
    check_heads,
    check_positive,
    finalize_scores,
    polynomial_envelope,
    prepare_inputs,
    safe_norm,
    unit_vectors,
    validate_inputs,
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


class PaiNN(nn.Module):
    """PaiNN score network with the interface of :class:`agedi_jax.nn.nequip.NequIP`.

    Attributes:
      num_types: K physical types; the type table has K+1 rows (row 0 = MASK).
      num_labels: labels 1..num_labels (0 = null label, Eq. 19); 0 = unconditional.
      cutoff: radial cutoff, Å.
      num_layers: interaction (message + update) layers.
      features: width F of scalars and of vector channels.
      num_basis: Bessel functions of the radial basis.
      envelope_p: exponent of the polynomial envelope.
      avg_num_neighbors: see :func:`agedi_jax.nn.common.average_num_neighbors`.
      position_head, type_head: which outputs to produce (an absent head returns None and
        owns no parameters).
      global_context: ``log N`` in the condition and a virtual-node update of the scalars
        before every layer (module docstring).
      com_vector: initial vectors (and scalars) from the offset to the centre of mass
        (:func:`agedi_jax.nn.context.com_features`).
      com_scales: length scales (Å) at which the centre-of-mass offset is squashed.
      normalize: pre-normalise the inputs of every block and the heads (module docstring).
      norm_eps: softening of the vector normalisation (squared feature units).
    """

    num_types: int
    num_labels: int = 0
    cutoff: float = 6.0
    num_layers: int = 3
    features: int = 64
    num_basis: int = 20
    envelope_p: int = 6
    avg_num_neighbors: float = 12.0
    position_head: bool = True
    type_head: bool = True
    global_context: bool = True
    com_vector: bool = True
    com_scales: tuple[float, ...] = (1.0, 3.0, 10.0)
    normalize: bool = True
    norm_eps: float = 1.0

    def __call__(
        self,
        batch: AtomsBatch,
        t: Array,
        label: Array | None = None,
        *,
        edges: Edges | None = None,
        type_weights: Array | None = None,
    ) -> Scores:
        """Scores of a batch at diffusion times ``t``.

        Args:
          batch: padded batch (numpy or jax arrays; positions in Å).
          t: [g] (or scalar) diffusion time in [0, 1].
          label: [g] int condition, 0 = null; None -> ``batch.label`` (ignored when
            ``num_labels == 0``).
          edges: precomputed :func:`agedi_jax.edges.edge_vectors` (same cutoff); None ->
            computed here.
          type_weights: [n, K+1] per-atom weights over the type table (Eq. 20); None ->
            one-hot of ``batch.types``.

        Returns:
          ``Scores(positions [n, 3] (zero centre of mass along non-periodic axes),
          types [n, K])``; padding atoms are exactly 0; an absent head gives None.
        """
        check_heads(self.position_head, self.type_head)
        check_positive("cutoff", self.cutoff)
        check_positive("avg_num_neighbors", self.avg_num_neighbors)
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        check_global_options(self.com_vector, self.com_scales, self.normalize, self.norm_eps)
        validate_inputs(batch, t, label, edges, type_weights,
                        num_types=self.num_types, num_labels=self.num_labels)
        return self._forward(batch, t, label, edges, type_weights)

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
        pos, typ = finalize_scores(batch, pos, typ)
        return Scores(positions=pos, types=typ)
