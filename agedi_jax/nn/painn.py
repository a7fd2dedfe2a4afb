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
import numpy as np

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
    mirror_pairs,
    neighbour_columns,
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
    """Per-pair inputs of the message blocks on the dense path (:mod:`agedi_jax.nn.dense`),
    in the mirror layout: of each couple of pairs ``(i, j, s)``, ``(j, i, −s)`` only one,
    row ``i`` holding the neighbours ``(i + cols[c]) mod P`` (:func:`agedi_jax.nn.dense.
    neighbour_columns`), with the offset and image axes merged into one neighbour axis
    ``q = c·S + s`` of length ``Q = D·S``."""

    radial: Array  # [R, P, Q, K+4] filter inputs (radial_features), then the directions
    directions: Array  # [R, P, Q, 3] (a slice of ``radial``)
    images: int  # S
    cols: tuple  # the neighbour offsets d (D of them)
    mirrored: int  # how many of them (after offset 0) also stand for their partner pair


def edge_messages(phi, w, v, geo: EdgeGeometry, num_nodes: int):
    """``(Σ_j x_s, Σ_j x_vv ⊙ v_j + x_vs ⊗ r̂_ij)`` over the template edges (gather, scatter)."""
    x = jnp.where(geo.mask[:, None], phi[geo.senders] * w, 0.0)
    x_s, x_vv, x_vs = jnp.split(x, 3, axis=-1)
    dv = x_vv[:, None, :] * v[geo.senders] + x_vs[:, None, :] * geo.directions[:, :, None]
    ds = jax.ops.segment_sum(x_s, geo.receivers, num_segments=num_nodes)
    dv = jax.ops.segment_sum(dv, geo.receivers, num_segments=num_nodes)
    return ds, dv


def _offset_index(p: int, cols, sign: int) -> np.ndarray:
    return (np.arange(p)[:, None] + sign * np.asarray(cols, np.int64)[None, :]) % p  # [P, D]


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def neighbours(x, cols):
    """``x`` [R, P, ...] at the neighbours of the mirror layout: ``out[:, i, c] =
    x[:, (i + cols[c]) mod P]`` -> [R, P, D, ...]. For every offset the map ``i → i + d`` is
    a permutation, so the transpose is again a gather (:func:`neighbours_t`), not a scatter."""
    return x[:, _offset_index(x.shape[1], cols, 1)]


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def neighbours_t(g, cols):
    """The transpose of :func:`neighbours`: ``out[:, j] = Σ_c g[:, (j − cols[c]) mod P, c]``
    for ``g`` [R, P, D, ...] -> [R, P, ...]: what each atom receives as the *neighbour* of
    the pairs stored in other atoms' rows."""
    src = _offset_index(g.shape[1], cols, -1)
    col = np.broadcast_to(np.arange(len(cols))[None, :], src.shape)
    return jnp.sum(g[:, src, col], axis=2)


neighbours.defvjp(lambda x, cols: (neighbours(x, cols), None), lambda cols, _, g: (neighbours_t(g, cols),))
neighbours_t.defvjp(lambda g, cols: (neighbours_t(g, cols), None), lambda cols, _, x: (neighbours(x, cols),))


def mirror_sums(p_s, a, p_vs, w_s, w_vv, w_vs, dirs, cols, mirrored):
    """PaiNN's message sums from half of the pairs. For atom ``i`` of row ``r``::

        Δs_i = Σ_(j,s) w_s[i, j, s] ⊙ p_s[j]
        Δv_i = Σ_(j,s) w_vv[i, j, s] ⊙ a[j] + w_vs[i, j, s] ⊙ p_vs[j] ⊗ r̂[i, j, s]

    over all neighbours ``j`` and images ``s``, with ``p_s, p_vs`` [R, P, F], ``a`` [R, P, 3, F].
    The filters ``w_*`` [R, P, D, S, F] and directions ``dirs`` [R, P, D, S, 3] are given
    for the mirror layout only: the pair ``i ← j``, ``j = (i + cols[c]) mod P``, at
    ``[r, i, c, s]`` (zero filters on masked pairs). Atom ``i`` receives its own row's pairs
    (sums over the neighbour axes, which XLA fuses with the products feeding them) and, for
    the ``mirrored`` offsets, the partner ``j ← i`` of every entry of the rows ``k = i − d``:
    the same filter (it depends on the length only), the reversed direction, the message
    of atom ``k`` (:func:`neighbours_t`). Half the filter work of the full ``[R, P, P, S]``
    layout and no gather or scatter of pair-sized arrays; the backward pass (autodiff)
    needs no sum over a receiver axis either, as :func:`neighbours` and
    :func:`neighbours_t` are each other's transposes."""
    ds = jnp.sum(w_s * neighbours(p_s, cols)[:, :, :, None], axis=(2, 3))
    x = w_vs * neighbours(p_vs, cols)[:, :, :, None]  # [R, P, D, S, F]
    dv = jnp.sum(w_vv[..., None, :] * neighbours(a, cols)[:, :, :, None] + x[..., None, :] * dirs[..., None],
                 axis=(2, 3))
    if mirrored:
        m = slice(int(cols[0] == 0), int(cols[0] == 0) + mirrored)
        zs = jnp.sum(w_s[:, :, m], axis=3) * p_s[:, :, None]  # [R, P, M, F]
        zv = (jnp.sum(w_vv[:, :, m], axis=3)[..., None, :] * a[:, :, None]
              - jnp.sum(w_vs[:, :, m][..., None, :] * dirs[:, :, m][..., None], axis=3) * p_vs[:, :, None, None])
        ds = ds + neighbours_t(zs, cols[m])
        dv = dv + neighbours_t(zv, cols[m])
    return ds, dv


def dense_messages(phi, w, v, geo: DenseGeometry):
    """The message sums on the dense layout (:func:`mirror_sums`) for the filters
    ``w = (w_s, w_vv, w_vs)`` [R, P, Q, F] of the mirror pairs; returns ``(Δs [n, F],
    Δv [n, 3, F])`` on the dense atom rows."""
    r, p, _, f = w[0].shape
    phi = phi.reshape(r, p, 3 * f)
    v = v.reshape(r, p, 3, f)
    p_s, p_vv, p_vs = jnp.split(phi, 3, axis=-1)  # [R, P, F]
    a = p_vv[:, :, None, :] * v  # [R, P, 3, F]
    shape = (r, p, len(geo.cols), geo.images)
    ds, dv = mirror_sums(p_s, a, p_vs, *(x.reshape(*shape, f) for x in w),
                         geo.directions.reshape(*shape, 3), geo.cols, geo.mirrored)
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
            w = RadialFilter(3 * f, splits=3, name="filter")(geo.radial, extra=3, after=s)
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
            # half of the pairs: one of each couple (i, j, s), (j, i, -s) (mirror_sums)
            cols, mirrored = neighbour_columns(layout.atoms, layout.num_shifts)
            pairs = mirror_pairs(pairs, cols)
            r, p, nq, ns = pairs.lengths.shape
            # one pair-sized array [basis·u², u, r̂] for all layers: the filters' matrix
            # product reads it (zero weights on r̂), so XLA materialises it once, and the
            # pair sums read r̂ from it (computed in the sums, the masks, square root and
            # division would be redone for every feature of every layer)
            packed = jnp.concatenate([
                radial_features(pairs.lengths, self.num_basis, self.cutoff, self.envelope_p),
                unit_vectors(pairs.vectors)], axis=-1).reshape(r, p, nq * ns, self.num_basis + 4)
            # computed once: without the barrier XLA fuses a copy of it into the filters'
            # products and another into the pair sums (the Bessel basis evaluated twice)
            packed = jax.lax.optimization_barrier(packed)
            geo = DenseGeometry(radial=packed, directions=packed[..., -3:], images=ns, cols=cols,
                                mirrored=mirrored)
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
