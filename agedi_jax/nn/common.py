"""Building blocks shared by the score networks: radial basis, envelope, MLP, safe vector
operations, input validation, output masking and the data-derived neighbour count.

Everything here is a pure function of arrays (or a tiny Flax module) and is jittable.
Lengths are in Å.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, ClassVar, Iterable, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from agedi_jax.batch import AtomsBatch, map_arrays
from agedi_jax.edges import Edges, edge_vectors
from agedi_jax.geometry import remove_com

Array = Any

# --------------------------------------------------------------------------------------
# Radial functions
# --------------------------------------------------------------------------------------


def _sin(x: Array) -> Array:
    """``sin(x)`` for ``0 ≤ x ≲ 1e3`` in plain arithmetic (so that XLA vectorises it on the
    CPU, where ``jnp.sin`` is several times slower): reduction by the nearest multiple of
    π (two-constant Cody–Waite), then the degree-11 Taylor polynomial on [−π/2, π/2];
    within 2e-7 of ``jnp.sin`` in float32 up to x = 200."""
    n = jnp.round(x * (1.0 / math.pi))
    p1 = 3.140625  # π = p1 + p2, p1 with few mantissa bits (n · p1 is exact)
    p2 = math.pi - p1
    y = (x - n * p1) - n * p2
    y2 = y * y
    s = y * (1.0 + y2 * (-1.0 / 6.0 + y2 * (1.0 / 120.0 + y2 * (-1.0 / 5040.0 + y2 * (
        1.0 / 362880.0 + y2 * (-1.0 / 39916800.0))))))
    odd = n - 2.0 * jnp.floor(0.5 * n)
    return s * (1.0 - 2.0 * odd)


def bessel_basis(r: Array, num_basis: int, cutoff: float) -> Array:
    """Spherical Bessel (DimeNet) radial basis ``sqrt(2/c) sin(k π r / c) / r``, k = 1..num_basis.

    The sines are a polynomial after range reduction (:func:`_sin`: ~5× faster than
    ``jnp.sin`` on the CPU, within float32 rounding), and ``sin(a r) / r`` is its Taylor
    polynomial ``a (1 − (a r)²/6 + (a r)⁴/120)`` for ``π r / c < 0.01``, so that the value
    *and* every derivative are finite and correct at and near ``r = 0`` (two atoms on top
    of each other; ``jnp.sinc``'s derivative is wrong for tiny non-zero arguments).

    Args:
      r: [...] distances, Å.
      num_basis: number of basis functions.
      cutoff: c, Å.

    Returns:
      [..., num_basis] basis values, Å^-3/2.
    """
    a = jnp.arange(1, num_basis + 1, dtype=r.dtype) * (math.pi / cutoff)  # [K]
    small = (r * (math.pi / cutoff) < 1e-2)[..., None]
    r_safe = jnp.where(small, 1.0, r[..., None])
    ar2 = jnp.where(small, (r[..., None] * a) ** 2, 0.0)
    taylor = a * (1.0 - ar2 / 6.0 + ar2 * ar2 / 120.0)
    return math.sqrt(2.0 / cutoff) * jnp.where(small, taylor, _sin(r_safe * a) / r_safe)


def polynomial_envelope(r: Array, cutoff: float, p: int = 6) -> Array:
    """DimeNet polynomial envelope ``u(d) = 1 − (p+1)(p+2)/2 d^p + p(p+2) d^{p+1} − p(p+1)/2 d^{p+2}``
    with ``d = r / cutoff``; ``u(0) = 1`` and ``u``, ``u'``, ``u''`` vanish at ``d = 1``.

    Exactly 0 for ``r ≥ cutoff`` (padded / out-of-cutoff edges carry length 2·cutoff).

    Args:
      r: [...] distances, Å.
      cutoff: Å.
      p: envelope exponent (≥ 1).

    Returns:
      [...] envelope values in [0, 1].
    """
    if p < 1:
        raise ValueError(f"envelope exponent p must be >= 1, got {p}")
    d = r / cutoff
    u = (
        1.0
        - 0.5 * (p + 1) * (p + 2) * d**p
        + p * (p + 2) * d ** (p + 1)
        - 0.5 * p * (p + 1) * d ** (p + 2)
    )
    return jnp.where(d < 1.0, u, 0.0)


def safe_norm(x: Array, axis: int = -1, keepdims: bool = False, eps: float = 1e-8) -> Array:
    """``sqrt(|x|^2 + eps)``: a norm whose gradient is finite at ``x = 0``."""
    return jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=keepdims) + eps)


def unit_vectors(vectors: Array, eps: float = 1e-6) -> Array:
    """Edge directions ``v / sqrt(|v|^2 + eps^2)`` [..., 3] (eps in Å).

    Equal to ``v / |v|`` to float precision for any physical bond, but smooth at ``v = 0``
    (two atoms on top of each other): value 0 there and gradients bounded by ``1/eps``.
    A rotation commutes with this map, so equivariance is exact."""
    return vectors / jnp.sqrt(jnp.sum(vectors * vectors, axis=-1, keepdims=True) + eps * eps)


# --------------------------------------------------------------------------------------
# MLP
# --------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Dense layers with ``activation`` between them (not after the last one).

    Attributes:
      features: output width of every layer, e.g. ``(64, 64, 3)``.
      activation: nonlinearity between layers.
      use_bias: biases in every layer.
      activate_final: also apply ``activation`` after the last layer.
    """

    features: Sequence[int]
    activation: Callable[[Array], Array] = nn.silu
    use_bias: bool = True
    activate_final: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i, f in enumerate(self.features):
            x = nn.Dense(f, use_bias=self.use_bias, name=f"dense_{i}")(x)
            if i < len(self.features) - 1 or self.activate_final:
                x = self.activation(x)
        return x


# --------------------------------------------------------------------------------------
# Radial filter
# --------------------------------------------------------------------------------------


def radial_features(r: Array, num_basis: int, cutoff: float, p: int = 6) -> Array:
    """The inputs of :class:`RadialFilter` for distances ``r`` [...]: ``[B(r)·u(r)², u(r)]``
    [..., num_basis + 1] (Bessel basis ``B``, envelope ``u``), so that one matrix product
    with ``[kernel; bias]`` gives ``(Dense(B·u)) · u``, PaiNN's filter, with no per-feature
    multiplication by the envelope afterwards (XLA broadcast the envelope to a pair-sized
    array and read it in every layer)."""
    u = polynomial_envelope(r, cutoff, p)
    return jnp.concatenate([bessel_basis(r, num_basis, cutoff) * (u * u)[..., None], u[..., None]], axis=-1)


@jax.custom_vjp
def radial_filter(features: Array, kernel: Array) -> Array:
    """``features @ kernel`` [..., F] for pair-sized ``features`` [..., K] and a small
    ``kernel`` [K, F], with a hand-written backward pass: the weight gradient is one
    ``[K, pairs] @ [pairs, F]`` product, written so that XLA on the CPU does not first
    transpose the pair-sized cotangent (which it did for autodiff of the filter, ~1.5× the
    cost of a layer's backward pass)."""
    return jax.lax.dot_general(features, kernel, (((features.ndim - 1,), (0,)), ((), ())))


def _radial_filter_fwd(features, kernel):
    return radial_filter(features, kernel), (features, kernel)


def _radial_filter_bwd(res, g):
    features, kernel = res
    k, f = kernel.shape
    d_kernel = jax.lax.dot_general(features.reshape(-1, k), g.reshape(-1, f), (((0,), (0,)), ((), ())))
    d_features = jax.lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())))
    return d_features, d_kernel.astype(kernel.dtype)


radial_filter.defvjp(_radial_filter_fwd, _radial_filter_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def radial_filter_split(features: Array, kernel: Array, splits: int) -> tuple:
    """:func:`radial_filter` as ``splits`` equal column blocks: one matrix product (its
    slices are read by the consumers), and in the backward pass one weight-gradient product
    per block, so that the blocks' cotangents are never concatenated into a pair-sized
    array."""
    y = radial_filter(features, kernel)
    return tuple(jnp.split(y, splits, axis=-1))


def _radial_filter_split_fwd(features, kernel, splits):
    return radial_filter_split(features, kernel, splits), (features, kernel)


def _radial_filter_split_bwd(splits, res, gs):
    features, kernel = res
    k = kernel.shape[0]
    f2 = features.reshape(-1, k)
    blocks = jnp.split(kernel, splits, axis=1)
    d_kernel = jnp.concatenate([
        jax.lax.dot_general(f2, g.reshape(-1, g.shape[-1]), (((0,), (0,)), ((), ()))) for g in gs], axis=1)
    d_features = sum(jax.lax.dot_general(g, b, (((g.ndim - 1,), (1,)), ((), ()))) for g, b in zip(gs, blocks))
    return d_features, d_kernel.astype(kernel.dtype)


radial_filter_split.defvjp(_radial_filter_split_fwd, _radial_filter_split_bwd)


def _varying_like(x: Array, like: Array) -> Array:
    """``x`` marked as varying over the manual mesh axes over which ``like`` varies (inside
    ``shard_map``; a no-op elsewhere). The hand-written backward passes above return a
    kernel cotangent computed from per-shard features; JAX requires it to have the same
    varying axes as the kernel, so the replicated kernel is cast first (its cotangent is
    then summed over the axes, as autodiff would do)."""
    try:
        want = jax.typeof(like).manual_axis_type.varying - jax.typeof(x).manual_axis_type.varying
    except AttributeError:  # outside shard_map, or a JAX without manual axis types
        return x
    return jax.lax.pcast(x, tuple(sorted(want)), to="varying") if want else x


class RadialFilter(nn.Module):
    """PaiNN's filter ``Dense(B(r)·u(r)) · u(r)`` [..., features] from
    :func:`radial_features` ``[B·u², u]``: the parameters (``kernel`` [K, features],
    ``bias`` [features]) and initialisation of ``nn.Dense`` on the K basis functions, the
    bias entering as the weight of the last input column (``u``).

    With ``splits = m`` the output is ``m`` arrays of ``features / m`` columns each
    (:func:`radial_filter_split`: no pair-sized concatenation of their cotangents in the
    backward pass)."""

    features: int
    splits: int = 1

    @nn.compact
    def __call__(self, radial: Array, extra: int = 0, after: Array | None = None) -> Array | tuple:
        """``radial`` [..., K + 1 + extra]: :func:`radial_features` then ``extra`` columns
        that the filter ignores (zero weights; other data riding along in one array).

        ``after``: an array of the layer (its input features); the filter is then computed
        only once that exists. Without it XLA computes the pair-sized filters of all layers
        up front, from the shared radial features: on the CPU the three [R, P, P, 3F]
        filters of a PaiNN (25 MB for 64 Pt13) then no longer fit the cache and every
        layer's pair sums read theirs from memory (the forward pass 1.2-1.3x slower)."""
        k = radial.shape[-1] - 1 - extra
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        dtype = jnp.result_type(radial.dtype, kernel.dtype)
        parts = [kernel, bias[None, :]] + ([jnp.zeros((extra, self.features), kernel.dtype)] if extra else [])
        full = jnp.concatenate(parts, axis=0).astype(dtype)
        if after is not None:
            # a data dependency XLA keeps (0 · x is not simplified for floats), on the small kernel
            full = full + jnp.zeros((), dtype) * jnp.ravel(after)[0].astype(dtype)
        radial = radial.astype(dtype)
        full = _varying_like(full, radial)
        if self.splits == 1:
            return radial_filter(radial, full)
        return radial_filter_split(radial, full, self.splits)


# --------------------------------------------------------------------------------------
# Inputs and outputs of a score network
# --------------------------------------------------------------------------------------


def _concrete(x: Any) -> bool:
    return x is not None and not isinstance(x, jax.core.Tracer)


def validate_inputs(
    batch: AtomsBatch,
    t: Array,
    label: Array | None,
    edges: Edges | None,
    type_weights: Array | None,
    *,
    num_types: int,
    num_labels: int,
) -> None:
    """Check the inputs of a score network (see ``NequIP.__call__``) without touching the
    device: shape and dtype problems raise ``ValueError`` (also under ``jit``), out-of-range
    type or label values raise ``ValueError`` when the values are concrete (outside ``jit``)."""
    if not isinstance(batch, AtomsBatch):
        raise TypeError(f"expected an agedi_jax.batch.AtomsBatch, got {type(batch).__name__}")
    n, g, e = batch.num_nodes, batch.num_graphs, batch.num_edges
    if np.shape(batch.positions) != (n, 3):
        raise ValueError(f"batch.positions must have shape [n, 3], got {np.shape(batch.positions)}")
    for name, shape in (("types", (n,)), ("node_mask", (n,)), ("graph_index", (n,)),
                        ("graph_mask", (g,)), ("label", (g,)), ("cell", (g, 3, 3)),
                        ("pbc", (g, 3)), ("receivers", (e,)), ("edge_mask", (e,))):
        if np.shape(getattr(batch, name)) != shape:
            raise ValueError(
                f"batch.{name} has shape {np.shape(getattr(batch, name))}, expected {shape} "
                f"for a batch of {n} atom, {g} graph and {e} edge slots"
            )
    if np.ndim(t) not in (0, 1) or (np.ndim(t) == 1 and np.shape(t) != (g,)):
        raise ValueError(
            f"t must be a scalar or have shape [g] = [{g}] (one time per graph slot), got {np.shape(t)}"
        )
    if label is not None:
        if num_labels == 0:
            if not _concrete(label) or np.any(np.asarray(label) != 0):
                raise ValueError(
                    "a label was given to a network built with num_labels = 0; set num_labels "
                    "to the number of condition labels"
                )
        if np.shape(label) != (g,):
            raise ValueError(f"label must have shape [g] = [{g}], got {np.shape(label)}")
        if not jnp.issubdtype(jnp.result_type(label), jnp.integer):
            raise ValueError(f"label must be integer (0 = null label), got dtype {jnp.result_type(label)}")
    if num_labels > 0:
        lab = batch.label if label is None else label
        if _concrete(lab) and _concrete(batch.graph_mask):
            lab = np.asarray(lab)[np.asarray(batch.graph_mask, bool)]
            if lab.size and (lab.min() < 0 or lab.max() > num_labels):
                raise ValueError(
                    f"label values must lie in 0..num_labels = 0..{num_labels} (0 = null), "
                    f"got values in {int(lab.min())}..{int(lab.max())}"
                )
    if type_weights is None:
        if _concrete(batch.types) and _concrete(batch.node_mask):
            ty = np.asarray(batch.types)[np.asarray(batch.node_mask, bool)]
            if ty.size and (ty.min() < 0 or ty.max() > num_types):
                raise ValueError(
                    f"batch.types must lie in 0..num_types = 0..{num_types} (0 = MASK), "
                    f"got values in {int(ty.min())}..{int(ty.max())}"
                )
    elif np.shape(type_weights) != (n, num_types + 1):
        raise ValueError(
            f"type_weights must have shape [n, num_types + 1] = [{n}, {num_types + 1}] "
            f"(column 0 = MASK), got {np.shape(type_weights)}"
        )
    if edges is not None:
        shapes = (np.shape(edges.vectors), np.shape(edges.lengths), np.shape(edges.mask))
        if shapes != ((e, 3), (e,), (e,)):
            raise ValueError(
                f"edges do not match the batch's edge template of {e} edges: vectors, lengths "
                f"and mask have shapes {shapes}"
            )


def prepare_inputs(
    batch: AtomsBatch, t: Array, label: Array | None, edges: Edges | None, type_weights: Array | None, *,
    num_types: int, num_labels: int, cutoff: float, need_edges: bool = True,
) -> tuple[AtomsBatch, Array, Array | None, Edges | None, Array]:
    """Normalise validated inputs (:func:`validate_inputs`) inside the network's jit.

    Returns:
      (batch as jax arrays, t [g] float with padding graphs set to 0, label [g] int (None
      when ``num_labels == 0``), edges (None when not given and not ``need_edges``),
      type_weights [n, K+1] float, 0 on padding atoms).
    """
    batch = map_arrays(jnp.asarray, batch)
    if not jnp.issubdtype(batch.positions.dtype, jnp.floating):
        batch = batch.replace(positions=batch.positions.astype(jnp.float32))
    dtype = batch.positions.dtype
    g = batch.num_graphs

    # Padding graph slots may hold anything (even NaN); keep them out of every gradient.
    t = jnp.broadcast_to(jnp.asarray(t, dtype), (g,))
    t = jnp.where(batch.graph_mask, t, 0.0)
    if num_labels > 0:
        label = batch.label if label is None else label
        label = jnp.where(batch.graph_mask, jnp.asarray(label, jnp.int32), 0)
    else:
        label = None

    if type_weights is None:
        type_weights = jax.nn.one_hot(batch.types, num_types + 1, dtype=dtype)
    type_weights = jnp.asarray(type_weights, dtype)
    type_weights = jnp.where(batch.node_mask[:, None], type_weights, 0.0)

    if edges is None and need_edges:
        edges = edge_vectors(batch, cutoff)
    if edges is not None:
        chex.assert_shape(edges.vectors, (batch.num_edges, 3))
    return batch, t, label, edges, type_weights


def finalize_scores(
    batch: AtomsBatch, positions: Array | None, types: Array | None
) -> tuple[Array | None, Array | None]:
    """Project the position output onto the zero-centre-of-mass subspace
    (:func:`agedi_jax.geometry.remove_com`) and set every output of padding atoms to exactly 0."""
    if positions is not None:
        chex.assert_shape(positions, (batch.num_nodes, 3))
        positions = remove_com(batch, positions)
    if types is not None:
        types = jnp.where(batch.node_mask[:, None], types, 0.0)
    return positions, types


def check_heads(position_head: bool, type_head: bool, energy_head: bool = False) -> None:
    if not (position_head or type_head or energy_head):
        raise ValueError("a score network needs at least one head (position_head, type_head or energy_head)")


def finalize_energy(batch: AtomsBatch, energy: Array | None) -> Array | None:
    """Per-atom energy output ``[n]`` (from ``[n]`` or ``[n, 1]``) with padding atoms exactly 0."""
    if energy is None:
        return None
    energy = energy.reshape((batch.num_nodes,))
    return jnp.where(batch.node_mask, energy, 0.0)


def check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_global_options(com_vector: bool, com_scales: Any, normalize: bool, norm_eps: float) -> None:
    """Validate the centre-of-mass and normalisation fields of a network."""
    if com_vector:
        try:
            scales = tuple(float(x) for x in com_scales)
        except TypeError:
            raise ValueError(f"com_scales must be a tuple of lengths in Å, got {com_scales!r}") from None
        if not scales or not all(math.isfinite(x) and x > 0 for x in scales):
            raise ValueError(f"com_scales must be a non-empty tuple of positive lengths in Å, got {com_scales!r}")
    if normalize:
        check_positive("norm_eps", norm_eps)


# --------------------------------------------------------------------------------------
# The interface every score network shares
# --------------------------------------------------------------------------------------


class ScoreNetwork(nn.Module):
    """Base of the score networks: the fields every network has (the model passes them by
    name, :func:`agedi_jax.model.network_kwargs`), input validation, and the call
    signature. A subclass adds its own fields and implements ``_forward`` (jitted with
    ``nn.jit``) on the validated inputs; :meth:`check_fields` may check more fields.

    Attributes:
      num_types: K physical types; the type table has K+1 rows (row 0 = MASK).
      num_labels: labels 1..num_labels (0 = null label for classifier-free guidance,
        Eq. 19); 0 means unconditional (no label parameters).
      cutoff: radial cutoff, Å.
      num_layers: interaction layers.
      features: scalar channels per atom.
      num_basis: Bessel functions of the radial basis.
      envelope_p: exponent of the polynomial envelope.
      avg_num_neighbors: see :func:`average_num_neighbors`.
      position_head, type_head: which outputs to produce (an absent head returns None and
        owns no parameters).
      energy_head: also produce a per-atom scalar ``Scores.energy`` [n] read out of the
        final invariant features (a learned force field sharing the backbone,
        :mod:`agedi_jax.forcefield`); off by default (no parameters, outputs unchanged).
      global_context: ``log N`` in the condition and a virtual-node update of the scalars
        in every layer (:mod:`agedi_jax.nn.context`).
      com_vector: input vector (and scalar) features from the offset to the centre of mass
        (:func:`agedi_jax.nn.context.com_features`).
      com_scales: length scales (Å) at which the centre-of-mass offset is squashed.
      normalize: equivariant normalisation of every block's inputs (:mod:`agedi_jax.nn.norms`).
      norm_eps: softening of the vector normalisation (squared feature units).
      dense: allow the dense per-structure layout (:mod:`agedi_jax.nn.dense`) where the
        model picks it for a batch of small structures (networks with ``supports_dense``);
        ``model.network_params.dense=false`` keeps every batch on the edge path.
      lattice_head: also produce ``Scores.cell`` [g, 3, 3], the symmetric lattice output
        of :class:`~agedi_jax.nn.lattice_head.LatticeHead` read from the final invariant
        features (``process.lattice``); edge path only. Off by default (no parameters).
      layout: the static :class:`~agedi_jax.nn.dense.DenseLayout` this instance is
        specialised to (None: the edge path). Not a config field: set by
        :func:`agedi_jax.model.specialize` from a concrete batch
        (``network.clone(layout=...)``); same parameters and outputs as the edge path.
    """

    supports_dense: ClassVar[bool] = False

    num_types: int
    num_labels: int = 0
    cutoff: float = 6.0
    num_layers: int = 3
    features: int = 64
    num_basis: int = 8
    envelope_p: int = 6
    avg_num_neighbors: float = 12.0
    position_head: bool = True
    type_head: bool = True
    global_context: bool = True
    com_vector: bool = True
    com_scales: tuple[float, ...] = (1.0, 3.0, 10.0)
    normalize: bool = True
    norm_eps: float = 1.0
    energy_head: bool = False
    dense: bool = True
    layout: Any = None
    lattice_head: bool = False

    def check_fields(self) -> None:
        """Raise ``ValueError`` naming a bad field (subclasses extend it)."""
        check_heads(self.position_head, self.type_head, self.energy_head)
        if self.layout is not None and not self.supports_dense:
            raise ValueError(f"{type(self).__name__} has no dense layout (layout must be None)")
        if self.layout is not None and self.lattice_head:
            raise ValueError("a network with a lattice head runs on the edge path only (layout must be None)")
        check_positive("cutoff", self.cutoff)
        check_positive("avg_num_neighbors", self.avg_num_neighbors)
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        check_global_options(self.com_vector, self.com_scales, self.normalize, self.norm_eps)

    def __call__(
        self,
        batch: AtomsBatch,
        t: Array,
        label: Array | None = None,
        *,
        edges: Edges | None = None,
        type_weights: Array | None = None,
    ) -> Any:
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
          ``Scores(positions [n, 3] (an equivariant vector, zero centre of mass along
          non-periodic axes), types [n, K], energy [n] (an invariant per-atom scalar,
          with ``energy_head``))``; padding atoms are exactly 0; an absent head gives None.
        """
        self.check_fields()
        validate_inputs(batch, t, label, edges, type_weights,
                        num_types=self.num_types, num_labels=self.num_labels)
        if self.layout is not None:
            from agedi_jax.nn.dense import check_layout

            check_layout(self.layout, batch, self.cutoff)
        return self._forward(batch, t, label, edges, type_weights)

    def _forward(self, batch, t, label, edges, type_weights):  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------------------
# Average number of neighbours (from data)
# --------------------------------------------------------------------------------------


def average_num_neighbors(data: Iterable[Any] | AtomsBatch, cutoff: float) -> float:
    """Mean number of neighbours within ``cutoff`` (Å) per real atom over a data set.

    The message sums of the networks are divided by ``sqrt`` of this number.

    Args:
      data: ``ase.Atoms`` objects, or :class:`~agedi_jax.batch.AtomsBatch` es (built with a
        template cutoff ≥ ``cutoff``), or a single batch.
      cutoff: Å.

    Returns:
      Edges per atom (periodic images counted, as ``ase.neighborlist.neighbor_list`` does).
    """
    check_positive("cutoff", cutoff)
    items = [data] if isinstance(data, AtomsBatch) else list(data)
    if not items:
        raise ValueError("average_num_neighbors: no structures given")
    n_edges = 0
    n_atoms = 0
    for item in items:
        if isinstance(item, AtomsBatch):
            e = edge_vectors(map_arrays(jnp.asarray, item), cutoff)
            n_edges += int(np.sum(np.asarray(e.mask)))
            n_atoms += int(np.sum(np.asarray(item.node_mask)))
        else:
            from ase.neighborlist import neighbor_list

            n_edges += len(neighbor_list("i", item, cutoff))
            n_atoms += len(item)
    if n_atoms == 0:
        raise ValueError("average_num_neighbors: the data hold no atoms")
    if n_edges == 0:
        raise ValueError(
            f"average_num_neighbors: no atom has a neighbour within the cutoff of {cutoff} Å; "
            "the cutoff is too small for these structures"
        )
    return n_edges / n_atoms
