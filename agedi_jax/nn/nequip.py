"""NequIP-style E(3)-equivariant score network (Batzner et al. 2022) written with e3nn-jax.

It models ``s_θ(M_t, t)`` of the paper: an equivariant vector per atom for the position
score (Eqs. 4, 7; the model layer reads it as ε̂ or as a score) and K scalars per atom for
the log concrete scores of the type process (Eq. 14), with one trunk and two heads (Eq. 18).

Per interaction layer (node features ``x``, edge ``i ← j`` with vector ``r_ij`` Å):

1. scalar channels += Dense(cond)[graph]        (time / label conditioning, scalars only)
2. ``x_up = Linear(x)``                           (self-interaction)
3. ``m_ij = w(r_ij) ⊙ [x_up_j ; x_up_j ⊗ Y(r̂_ij)]`` filtered to the target irreps,
   ``w = MLP(Bessel(r) · u(r)) · u(r)``, one weight per channel and path
4. ``a_i = Σ_j m_ij / sqrt(avg_num_neighbors)``   (masked edges contribute exactly 0)
5. ``x ← Gate(Linear(a) + Skip(x))``              (skip plain or per species)

Global inputs and stability (each a field, on by default; :mod:`agedi_jax.nn.context`,
:mod:`agedi_jax.nn.norms`):

* ``normalize``: step 0, ``x ← IrrepsNorm(x)`` (layer norm of ``0e``, soft RMS norm of
  ``l ≥ 1``), and the same before the heads, so every layer and head reads inputs of
  bounded size;
* ``global_context``: ``log N`` joins the condition, and after step 1 the scalar channels
  get ``MLP(mean_{j ∈ graph(i)} x_j^{0e})`` (a virtual node): atoms isolated at high noise
  still see the size and composition of their structure;
* ``com_vector``: the input features get ``1o`` channels ``d_i / sqrt(|d_i|² + L_k²)`` from
  the offset ``d_i`` to the centre of mass, and ``0e`` channels from their norms.

The target irreps are the hidden irreps plus one gate scalar per non-scalar channel. The
last layer keeps only ``0e`` (+ ``1o`` when the position head is on), so every parameter
reaches an output. Heads: ``Linear → 1x1o`` per atom (position output, projected to zero
centre of mass) and an MLP on the ``0e`` channels → K type log-scores; with ``energy_head``
an MLP on the ``0e`` channels → one invariant per-atom energy (:mod:`agedi_jax.forcefield`).
"""

from __future__ import annotations

from typing import Any

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp

from agedi_jax.batch import AtomsBatch
from agedi_jax.nn.common import (
    MLP,
    ScoreNetwork,
    bessel_basis,
    finalize_energy,
    finalize_scores,
    polynomial_envelope,
    prepare_inputs,
    unit_vectors,
)
from agedi_jax.nn.context import GlobalContext, com_features, graph_size_features
from agedi_jax.nn.embeddings import Conditioning
from agedi_jax.nn.lattice_head import LatticeHead
from agedi_jax.nn.norms import IrrepsNorm
from agedi_jax.scores import Scores

Array = Any


def hidden_irreps(features: int, vector_features: int, l_max: int) -> e3nn.Irreps:
    """``features x 0e + vector_features x (1o + 2e + ...)`` up to ``l_max`` (parity (-1)^l,
    the irreps spherical harmonics of an edge vector produce from scalars)."""
    irreps = [(features, (0, 1))]
    irreps += [(vector_features, (l, (-1) ** l)) for l in range(1, l_max + 1)]
    return e3nn.Irreps(irreps)


def _gated_irreps(irreps: e3nn.Irreps) -> e3nn.Irreps:
    """Scalars, then one gate scalar per non-scalar channel, then the non-scalars (the
    layout ``e3nn.gate`` expects)."""
    scalars = irreps.filter(keep=["0e"])
    nonscalars = irreps.filter(drop=["0e", "0o"])
    gates = e3nn.Irreps(f"{nonscalars.num_irreps}x0e") if nonscalars.num_irreps else e3nn.Irreps("")
    return (scalars + gates + nonscalars)


def _add_to_scalars(x: e3nn.IrrepsArray, s: Array) -> e3nn.IrrepsArray:
    """``x`` with ``s`` [n, num 0e channels] added to its ``0e`` channels."""
    scalars = x.filter(keep="0e")
    rest = x.filter(drop="0e")
    scalars = e3nn.IrrepsArray(scalars.irreps, scalars.array + s)
    return e3nn.concatenate([scalars, rest]) if rest.irreps.dim else scalars


class NequIPLayer(nn.Module):
    """One NequIP interaction (see the module docstring); returns features in ``irreps_out``."""

    irreps_out: e3nn.Irreps
    avg_num_neighbors: float
    l_max: int
    radial_hidden: int = 64
    radial_layers: int = 2
    species_skip: bool = False
    global_context: bool = False
    normalize: bool = False
    norm_eps: float = 1.0

    @nn.compact
    def __call__(
        self,
        batch: AtomsBatch,
        x: e3nn.IrrepsArray,  # [n, irreps_in]
        cond: Array,  # [n, F] per-atom condition vector
        sh: e3nn.IrrepsArray,  # [e, sh irreps]
        radial: Array,  # [e, num_basis] Bessel · envelope
        envelope: Array,  # [e]
        edges_mask: Array,  # [e] bool
        senders: Array,
        receivers: Array,
        type_weights: Array,  # [n, K+1]
    ) -> e3nn.IrrepsArray:
        irreps_out = e3nn.Irreps(self.irreps_out)
        target = _gated_irreps(irreps_out)
        n = x.shape[0]

        if self.normalize:
            x = IrrepsNorm(self.norm_eps, name="norm")(x)
        n_scalars = x.filter(keep="0e").irreps.num_irreps
        x = _add_to_scalars(x, nn.Dense(n_scalars, name="cond")(cond))
        if self.global_context:
            x = _add_to_scalars(
                x, GlobalContext(n_scalars, name="context")(batch, x.filter(keep="0e").array)
            )

        x_up = e3nn.flax.Linear(x.irreps, name="linear_up")(x)
        x_j = x_up[senders]
        tp = e3nn.tensor_product(x_j, sh.filter(drop="0e"), filter_ir_out=target)
        msg = e3nn.concatenate([x_j.filter(keep=target), tp]).regroup()

        w = MLP(
            (self.radial_hidden,) * self.radial_layers + (msg.irreps.num_irreps,),
            activation=nn.silu,
            use_bias=False,
            name="radial_mlp",
        )(radial)
        w = w * envelope[:, None]
        msg = msg * w  # one weight per (channel, path)
        msg = e3nn.IrrepsArray(msg.irreps, jnp.where(edges_mask[:, None], msg.array, 0.0))

        agg = e3nn.IrrepsArray(
            msg.irreps, jax.ops.segment_sum(msg.array, receivers, num_segments=n)
        ) / jnp.sqrt(self.avg_num_neighbors)

        out = e3nn.flax.Linear(target, force_irreps_out=True, name="linear_down")(agg)
        if self.species_skip:
            skip = e3nn.flax.Linear(target, force_irreps_out=True, name="skip")(type_weights, x)
        else:
            skip = e3nn.flax.Linear(target, force_irreps_out=True, name="skip")(x)
        out = out + skip
        return e3nn.gate(out, even_act=nn.silu, even_gate_act=jax.nn.sigmoid)


class NequIP(ScoreNetwork):
    """NequIP-style score network for positions (a ``1o`` vector per atom) and types
    (K log-scores per atom), conditioned on time, label and (soft) types.

    The fields shared by every network (``num_types``, ``cutoff``, ``num_layers``,
    ``features`` — here the ``0e`` channels —, heads, context and normalisation switches)
    are those of :class:`~agedi_jax.nn.common.ScoreNetwork`; NequIP adds:

    Attributes:
      vector_features: channels of every ``l ≥ 1`` irrep.
      l_max: largest degree of the spherical harmonics and of the hidden irreps.
      radial_hidden, radial_layers: width / depth of the radial MLP.
      species_skip: per-species (type-weighted) skip connection instead of a plain one.
    """

    vector_features: int = 32
    l_max: int = 2
    radial_hidden: int = 64
    radial_layers: int = 2
    species_skip: bool = False

    def check_fields(self) -> None:
        super().check_fields()
        if self.l_max < 1:
            raise ValueError(f"l_max must be >= 1 (the position output is a vector), got {self.l_max}")

    # One lifted jit around the whole forward pass: an eager ``model.init`` / ``model.apply``
    # then compiles once instead of dispatching hundreds of small e3nn ops one by one.
    @nn.jit
    @nn.compact
    def _forward(self, batch, t, label, edges, type_weights) -> Scores:
        batch, t, label, edges, type_weights = prepare_inputs(
            batch, t, label, edges, type_weights,
            num_types=self.num_types, num_labels=self.num_labels, cutoff=self.cutoff,
        )

        size = graph_size_features(batch, batch.positions.dtype) if self.global_context else None
        h0, cond = Conditioning(self.num_types, self.num_labels, self.features, name="embed")(
            type_weights, t, label, batch.graph_index, size
        )
        cond_n = cond[batch.graph_index]
        x = e3nn.IrrepsArray(f"{self.features}x0e", h0)
        if self.com_vector:
            com_s, com_v = com_features(batch, batch.positions, self.com_scales)  # [n,k], [n,3,k]
            k = com_s.shape[-1]
            x = e3nn.IrrepsArray(f"{self.features}x0e", h0 + nn.Dense(self.features, name="com_scalars")(com_s))
            vec = e3nn.IrrepsArray(f"{k}x1o", jnp.swapaxes(com_v, 1, 2).reshape(-1, 3 * k))
            x = e3nn.concatenate([x, vec])

        sh = e3nn.spherical_harmonics(
            e3nn.Irreps.spherical_harmonics(self.l_max), unit_vectors(edges.vectors), normalize=False,
            normalization="component",
        )
        envelope = polynomial_envelope(edges.lengths, self.cutoff, self.envelope_p)
        radial = bessel_basis(edges.lengths, self.num_basis, self.cutoff) * envelope[:, None]

        hidden = hidden_irreps(self.features, self.vector_features, self.l_max)
        last = hidden.filter(keep=["0e", "1o"] if self.position_head else ["0e"])
        for i in range(self.num_layers):
            x = NequIPLayer(
                irreps_out=last if i == self.num_layers - 1 else hidden,
                avg_num_neighbors=self.avg_num_neighbors,
                l_max=self.l_max,
                radial_hidden=self.radial_hidden,
                radial_layers=self.radial_layers,
                species_skip=self.species_skip,
                global_context=self.global_context,
                normalize=self.normalize,
                norm_eps=self.norm_eps,
                name=f"layer_{i}",
            )(batch, x, cond_n, sh, radial, envelope, edges.mask, batch.senders, batch.receivers,
              type_weights)

        if self.normalize:
            x = IrrepsNorm(self.norm_eps, name="norm_out")(x)
        pos = typ = None
        if self.position_head:
            pos = e3nn.flax.Linear("1x1o", force_irreps_out=True, name="position_head")(x).array
        if self.type_head:
            s = jnp.concatenate([x.filter(keep="0e").array, cond_n], axis=-1)
            typ = MLP((self.features, self.num_types), activation=nn.silu, name="type_head")(s)
        energy = None
        if self.energy_head:
            energy = MLP((self.features, 1), activation=nn.silu, name="energy_head")(x.filter(keep="0e").array)
        cell = None
        if self.lattice_head:
            cell = LatticeHead(self.features, self.num_basis, self.cutoff, self.envelope_p, self.avg_num_neighbors,
                               name="lattice_head")(x.filter(keep="0e").array, batch, edges)
        pos, typ = finalize_scores(batch, pos, typ)
        return Scores(positions=pos, types=typ, energy=finalize_energy(batch, energy), cell=cell)
