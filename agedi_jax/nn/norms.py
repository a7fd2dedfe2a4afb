"""Equivariant normalisation layers that keep the score networks' activations bounded.

PaiNN's updates are multiplicative (scalars gate vectors, vectors' inner products feed
scalars), so without normalisation an unusual input — two atoms 0.3 Å apart in a noisy
configuration — can be amplified layer after layer (outputs of 10⁴ where targets are
O(1) were seen in training). Normalising the inputs of every block bounds each residual
update by a function of the parameters only, whatever the geometry.

* scalars (``0e``): ordinary layer norm over the channels (invariant, so equivariance is
  untouched);
* vectors / higher irreps (``l ≥ 1``): divide every atom's channels by a *soft* RMS norm
  ``sqrt(mean_c |v_c|² + eps)`` and multiply by a learned per-channel gain (no bias: a bias
  would break equivariance). A rotation leaves ``|v_c|`` unchanged, so the map commutes with
  rotations. The ``eps`` is deliberately O(1) in feature units: small vectors pass almost
  unchanged (≈ ``v / sqrt(eps)``), large ones are scaled to unit RMS, and the map stays smooth
  at ``v = 0`` — with a tiny eps an atom whose only neighbour is crossing the cutoff would
  have its vanishing vector blown up to a unit one, a near-discontinuity in the positions.
"""

from __future__ import annotations

from typing import Any

import e3nn_jax as e3nn
import flax.linen as nn
import jax.numpy as jnp

Array = Any


def soft_rms(x: Array, axis: tuple[int, ...], eps: float) -> Array:
    """``sqrt(mean(x², axis) + eps)`` with ``axis`` kept (a norm with finite gradients at 0)."""
    return jnp.sqrt(jnp.mean(x * x, axis=axis, keepdims=True) + eps)


class VectorNorm(nn.Module):
    """Soft RMS normalisation of PaiNN vector features ``v`` [n, 3, F] (module docstring).

    ``v_c ← γ_c · v_c / sqrt(mean_c' |v_c'|² + eps)`` with ``mean_c' |v_c'|²`` the mean over
    channels of the squared 3-vector norms, ``γ`` [F] learned (init 1).

    Attributes:
      eps: softening, in squared feature units.
    """

    eps: float = 1.0

    @nn.compact
    def __call__(self, v: Array) -> Array:
        f = v.shape[-1]
        gain = self.param("gain", nn.initializers.ones, (f,))
        ms = jnp.mean(jnp.sum(v * v, axis=-2), axis=-1)  # [n]
        return v * (gain.astype(v.dtype) / jnp.sqrt(ms + self.eps)[:, None, None])


class IrrepsNorm(nn.Module):
    """Equivariant layer norm of an ``e3nn.IrrepsArray`` [n, irreps]: layer norm on the
    ``0e`` channels, soft RMS normalisation (module docstring) of each ``l ≥ 1`` irrep
    group with a learned per-channel gain. The output has the input's irreps and layout.

    Attributes:
      eps: softening of the ``l ≥ 1`` groups, in squared feature units (per component).
    """

    eps: float = 1.0

    @nn.compact
    def __call__(self, x: e3nn.IrrepsArray) -> e3nn.IrrepsArray:
        chunks = []
        for k, ((mul, ir), chunk) in enumerate(zip(x.irreps, x.chunks)):
            if mul == 0:
                chunks.append(chunk)
                continue
            # chunk: [n, mul, 2l+1] (None for zero chunks)
            if chunk is None:
                chunks.append(None)
                continue
            if ir == e3nn.Irrep("0e"):
                c = nn.LayerNorm(name=f"ln_{k}")(chunk[..., 0])[..., None]
            else:
                gain = self.param(f"gain_{k}", nn.initializers.ones, (mul,))
                c = chunk * (gain.astype(chunk.dtype)[:, None] / soft_rms(chunk, (-2, -1), self.eps))
            chunks.append(c)
        return e3nn.from_chunks(x.irreps, chunks, x.shape[:-1], x.dtype)
