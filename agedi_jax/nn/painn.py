"""PaiNN score network (Schütt, Unke & Gastegger, ICML 2021), the paper's network.

Same outputs as :mod:`agedi_jax.nn.nequip`: an equivariant vector per atom for the position
score (Eqs. 4, 7) and K log concrete scores per atom for the types (Eq. 14).

Atoms carry scalars ``s`` [n, F] and vectors ``v`` [n, 3, F] (``v = 0`` at the start).
Per layer, with edge ``i ← j``, direction ``r̂_ij`` and length ``r_ij`` (Å):

* conditioning: ``s += Dense(cond)[graph]`` (time / label, scalars only); with ``film``
  the blocks below also read ``LN(s) ⊙ (1 + γ(cond)) + β(cond)`` (FiLM, zero-initialised)
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

from functools import partial
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from agedi_jax.nn.common import (
    MLP,
    RadialFilter,
    ScoreNetwork,
    finalize_energy,
    finalize_scores,
    prepare_inputs,
    radial_features,
    safe_norm,
    unit_vectors,
)
from agedi_jax.nn.context import GlobalContext, com_features, graph_size_features
from agedi_jax.nn.dense import (
    dense_batch,
    dense_map,
    dense_pairs,
    from_dense_checked,
    to_dense,
)
from agedi_jax.nn.embeddings import Conditioning, Modulation
from agedi_jax.nn.lattice_head import LatticeHead
from agedi_jax.nn.norms import VectorNorm
from agedi_jax.scores import Scores

Array = Any


class EdgeGeometry(NamedTuple):
    """Per-edge inputs of the message blocks on the edge path (computed once per call)."""

    radial: Array  # [e, K+1] filter inputs (radial_features)
    directions: Array  # [e, 3]
    mask: Array  # [e] bool
    senders: Array  # [e]
    receivers: Array  # [e]


class DenseGeometry(NamedTuple):
    """Per-pair inputs of the message blocks on the dense path (:mod:`agedi_jax.nn.dense`):
    every ordered pair × image, with the neighbour and image axes merged into one
    neighbour axis ``q = j·S + s`` of length ``Q = P·S``."""

    radial: Array  # [R, P, Q, K+4] filter inputs (radial_features), then the directions
    directions: Array  # [R, P, Q, 3] (a slice of ``radial``)
    images: int  # S


def edge_messages(phi, w, v, geo: EdgeGeometry, num_nodes: int):
    """``(Σ_j x_s, Σ_j x_vv ⊙ v_j + x_vs ⊗ r̂_ij)`` over the template edges (gather, scatter)."""
    x = jnp.where(geo.mask[:, None], phi[geo.senders] * w, 0.0)
    x_s, x_vv, x_vs = jnp.split(x, 3, axis=-1)
    dv = x_vv[:, None, :] * v[geo.senders] + x_vs[:, None, :] * geo.directions[:, :, None]
    ds = jax.ops.segment_sum(x_s, geo.receivers, num_segments=num_nodes)
    dv = jax.ops.segment_sum(dv, geo.receivers, num_segments=num_nodes)
    return ds, dv


def _rep(x, images: int):
    """Per-atom ``x`` [R, P, ...] -> per neighbour slot ``q = j·S + s`` [R, P·S, ...]."""
    return x if images == 1 else jnp.repeat(x, images, axis=1)


def _dot3(u, g):
    """``Σ_c u[..., c] · g[..., c, :]`` for ``u`` [..., 3] and ``g`` [..., 3, F], unrolled
    (a three-term sum, not a reduction over a middle axis)."""
    return u[..., 0:1] * g[..., 0, :] + u[..., 1:2] * g[..., 1, :] + u[..., 2:3] * g[..., 2, :]


def _dense_sums_value(p_s, a, p_vs, w_s, w_vv, w_vs, dirs, images):
    ds = jnp.sum(w_s * _rep(p_s, images)[:, None], axis=2)
    x = w_vs * _rep(p_vs, images)[:, None]  # [R, P, Q, F]
    dv = jnp.sum(w_vv[:, :, :, None, :] * _rep(a, images)[:, None] + x[:, :, :, None, :] * dirs[..., None], axis=2)
    return ds, dv


@partial(jax.custom_vjp, nondiff_argnums=(7,))
def dense_sums(p_s, a, p_vs, w_s, w_vv, w_vs, dirs, images):
    """PaiNN's message sums on the dense layout, for atom ``i`` of row ``r``::

        Δs_i = Σ_q w_s[i, q] ⊙ p_s[j(q)]
        Δv_i = Σ_q w_vv[i, q] ⊙ a[j(q)] + w_vs[i, q] ⊙ p_vs[j(q)] ⊗ r̂[i, q]

    over the neighbour slots ``q = j·S + s`` (atom ``j``, image ``s``), with ``p_s, p_vs``
    [R, P, F], ``a`` [R, P, 3, F], ``w_*`` [R, P, Q, F], ``dirs`` [R, P, Q, 3]. The backward
    pass uses that the filters are symmetric and the directions antisymmetric under
    ``(i, j, s) → (j, i, −s)``, so that each of its sums is again over the neighbour axis
    of a receiver's row (autodiff sums over the receiver axis instead, several times
    slower on the CPU); three-component sums are unrolled."""
    return _dense_sums_value(p_s, a, p_vs, w_s, w_vv, w_vs, dirs, images)


def _dense_sums_fwd(p_s, a, p_vs, w_s, w_vv, w_vs, dirs, images):
    out = _dense_sums_value(p_s, a, p_vs, w_s, w_vv, w_vs, dirs, images)
    return out, (p_s, a, p_vs, w_s, w_vv, w_vs, dirs)


def _dense_sums_bwd(images, res, g):
    p_s, a, p_vs, w_s, w_vv, w_vs, dirs = res
    g_s, g_v = g  # [R, P, F], [R, P, 3, F]
    r, p, q, f = w_s.shape
    g_s_n, g_v_n = _rep(g_s, images)[:, None], _rep(g_v, images)[:, None]  # [R, 1, Q, (3,) F]
    # inputs: by the symmetry, the receiver sums of the transpose are neighbour sums
    d_ps = jnp.sum(w_s * g_s_n, axis=2)
    d_a = jnp.sum(w_vv[:, :, :, None, :] * g_v_n, axis=2)
    d_pvs = -jnp.sum(w_vs * _dot3(dirs, g_v_n), axis=2)
    # filters and directions: products of receiver and neighbour terms
    a_n, p_s_n, p_vs_n = _rep(a, images)[:, None], _rep(p_s, images)[:, None], _rep(p_vs, images)[:, None]
    g_v_i = g_v[:, :, None]  # [R, P, 1, 3, F]
    d_ws = g_s[:, :, None, :] * p_s_n
    d_wvv = a_n[..., 0, :] * g_v_i[..., 0, :] + a_n[..., 1, :] * g_v_i[..., 1, :] + a_n[..., 2, :] * g_v_i[..., 2, :]
    d_wvs = p_vs_n * _dot3(dirs, g_v_i)
    d_dirs = jnp.sum((w_vs * p_vs_n)[:, :, :, None, :] * g_v_i, axis=-1)  # [R, P, Q, 3]
    return d_ps, d_a, d_pvs, d_ws, d_wvv, d_wvs, d_dirs


dense_sums.defvjp(_dense_sums_fwd, _dense_sums_bwd)


def dense_messages(phi, w, v, geo: DenseGeometry):
    """The message sums on the dense layout (:func:`dense_sums`): masked reductions over
    the neighbour axis, which XLA fuses with the products feeding them (no gather, no
    scatter, no pair-sized message in memory). The filters ``w = (w_s, w_vv, w_vs)``
    [R, P, Q, F] are zero on masked pairs."""
    w_s, w_vv, w_vs = w
    r, p, _, f = w_s.shape
    phi = phi.reshape(r, p, 3 * f)
    v = v.reshape(r, p, 3, f)
    p_s, p_vv, p_vs = jnp.split(phi, 3, axis=-1)  # [R, P, F]
    a = p_vv[:, :, None, :] * v  # [R, P, 3, F]
    ds, dv = dense_sums(p_s, a, p_vs, w_s, w_vv, w_vs, geo.directions, geo.images)
    return ds.reshape(r * p, f), dv.reshape(r * p, 3, f)


class PaiNNMessage(nn.Module):
    """PaiNN message block: returns ``(Δs [n, F], Δv [n, 3, F])``; on the edge path
    (:class:`EdgeGeometry`) or the dense one (:class:`DenseGeometry`), same parameters."""

    features: int
    avg_num_neighbors: float

    @nn.compact
    def __call__(self, s, v, geo):
        f = self.features
        phi = MLP((f, 3 * f), activation=nn.silu, name="phi")(s)  # [n, 3F]
        dense = isinstance(geo, DenseGeometry)
        if dense:
            w = RadialFilter(3 * f, splits=3, name="filter")(geo.radial, extra=3)
            ds, dv = dense_messages(phi, w, v, geo)
        else:
            w = RadialFilter(3 * f, name="filter")(geo.radial)
            ds, dv = edge_messages(phi, w, v, geo, s.shape[0])
        norm = 1.0 / jnp.sqrt(self.avg_num_neighbors)
        return ds * norm, dv * norm


class Kernel(nn.Module):
    """The kernel [in, out] of a bias-free ``nn.Dense`` (same name, shape, initialisation),
    returned instead of applied, so that several can share one matrix product."""

    in_features: int
    features: int

    @nn.compact
    def __call__(self):
        return self.param("kernel", nn.initializers.lecun_normal(), (self.in_features, self.features))


class PaiNNUpdate(nn.Module):
    """PaiNN update block: returns ``(Δs [n, F], Δv [n, 3, F])``."""

    features: int

    @nn.compact
    def __call__(self, s, v):
        f = self.features
        # U and V (the parameters of two bias-free Dense layers) applied in one product
        u_kernel = Kernel(v.shape[-1], f, name="U")()
        v_kernel = Kernel(v.shape[-1], f, name="V")()
        uv, vv = jnp.split(v @ jnp.concatenate([u_kernel, v_kernel], axis=1).astype(v.dtype), 2, axis=-1)
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
    film: bool = False
    """Modulate the (normalised) scalar inputs of every message and update block by the
    condition (:class:`~agedi_jax.nn.embeddings.Modulation`): a multiplicative path for the
    label and time next to the additive one (``model.network_params.film=true``)."""

    supports_dense = True

    # One lifted jit around the forward pass, so eager init / apply compile once.
    @nn.jit
    @nn.compact
    def _forward(self, batch, t, label, edges, type_weights) -> Scores:
        layout = self.layout if edges is None else None  # given edges: the edge path
        batch, t, label, edges, type_weights = prepare_inputs(
            batch, t, label, edges, type_weights,
            num_types=self.num_types, num_labels=self.num_labels, cutoff=self.cutoff,
            need_edges=layout is None,
        )
        full = batch
        if layout is not None:
            dmap = dense_map(batch, layout)
            batch = dense_batch(batch, dmap, layout)
            t = t[: layout.graphs]
            label = None if label is None else label[: layout.graphs]
            type_weights = to_dense(type_weights, dmap)
            pairs = dense_pairs(batch, layout, self.cutoff)
            r, p, _, ns = pairs.lengths.shape
            # one pair-sized array [basis·u², u, r̂] for all layers: the filters' matrix
            # product reads it (zero weights on r̂), so XLA materialises it once, and the
            # pair sums read r̂ from it (computed in the sums, the masks, square root and
            # division would be redone for every feature of every layer)
            packed = jnp.concatenate([
                radial_features(pairs.lengths, self.num_basis, self.cutoff, self.envelope_p),
                unit_vectors(pairs.vectors)], axis=-1).reshape(r, p, p * ns, self.num_basis + 4)
            geo = DenseGeometry(radial=packed, directions=packed[..., -3:], images=ns)
        else:
            geo = EdgeGeometry(
                radial=radial_features(edges.lengths, self.num_basis, self.cutoff, self.envelope_p),
                directions=unit_vectors(edges.vectors), mask=edges.mask,
                senders=batch.senders, receivers=batch.receivers,
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

        def norm(s, v, tag):
            if not self.normalize:
                return s, v
            return (nn.LayerNorm(name=f"norm_s_{tag}")(s),
                    VectorNorm(self.norm_eps, name=f"norm_v_{tag}")(v))

        for i in range(self.num_layers):
            # per graph, then to its atoms (the same numbers as Dense(cond_n), fewer rows)
            s = s + nn.Dense(f, name=f"cond_{i}")(cond)[batch.graph_index]
            if self.global_context:
                pooled_in = nn.LayerNorm(name=f"norm_context_{i}")(s) if self.normalize else s
                s = s + GlobalContext(f, name=f"context_{i}")(batch, pooled_in)
            hs, hv = norm(s, v, f"message_{i}")
            if self.film:
                hs = Modulation(name=f"film_message_{i}")(hs, cond, batch.graph_index)
            ds, dv = PaiNNMessage(f, self.avg_num_neighbors, name=f"message_{i}")(hs, hv, geo)
            s, v = s + ds, v + dv
            hs, hv = norm(s, v, f"update_{i}")
            if self.film:
                hs = Modulation(name=f"film_update_{i}")(hs, cond, batch.graph_index)
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
            energy = MLP((f, 1), activation=nn.silu, name="energy_head")(s)[:, 0]
        cell = None
        if self.lattice_head:  # check_fields keeps lattice models on the edge path
            cell = LatticeHead(f, self.num_basis, self.cutoff, self.envelope_p, self.avg_num_neighbors,
                               name="lattice_head")(s, full, edges)
        if layout is not None:
            pos, typ, energy = (None if x is None else from_dense_checked(x, dmap, full)
                                for x in (pos, typ, energy))
        pos, typ = finalize_scores(full, pos, typ)
        return Scores(positions=pos, types=typ, energy=finalize_energy(full, energy), cell=cell)
