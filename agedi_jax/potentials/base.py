"""The energy interface shared by every interatomic potential of the package.

An *energy function* is any pure, jittable JAX function

    energy_fn(batch: AtomsBatch) -> [g]

returning the potential energy (eV) of every graph slot of the batch, 0 for padding graph
slots. Padding atoms and padding edges must contribute nothing. An energy function may
carry a host-side ``check(batch)`` attribute that raises on batches it cannot evaluate
(MASK atoms, unsupported elements, too small an edge template); :func:`agedi_jax.relax.relax`
calls it once before its jitted loop. :func:`energy_and_forces`
turns any such function into energies and forces (eV/Å) by ``jax.grad``; it is what the
relaxation (:mod:`agedi_jax.relax`) and every other force consumer call.
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp

from agedi_jax.batch import AtomsBatch

Array = jax.Array

__all__ = ["EnergyFn", "energy_and_forces", "masked_forces"]

EnergyFn = Callable[[AtomsBatch], Array]
"""``energy_fn(batch) -> [g]`` energies in eV per graph slot (padding graph slots 0)."""


def energy_and_forces(energy_fn: EnergyFn, batch: AtomsBatch) -> tuple[Array, Array]:
    """Energies and forces of every structure of ``batch`` (jittable).

    Forces are ``-∂E/∂r`` from ``jax.grad`` of the sum of the energies of the real graphs,
    so each atom's force involves only its own structure. Forces are raw (physical) forces:
    fixed atoms are *not* zeroed here (:func:`masked_forces` does that, as ASE's
    ``FixAtoms`` does).

    Args:
      energy_fn: ``energy_fn(batch) -> [g]`` eV.
      batch: the batch; ``positions`` [n, 3] Å.

    Returns:
      ``(energy [g] eV, forces [n, 3] eV/Å)``; padding graphs have energy exactly 0 and
      padding atoms force exactly 0.
    """
    positions = jnp.asarray(batch.positions)
    chex.assert_shape(positions, (batch.num_nodes, 3))
    graph_mask = jnp.asarray(batch.graph_mask, bool)
    node_mask = jnp.asarray(batch.node_mask, bool)

    def total(pos: Array) -> tuple[Array, Array]:
        energy = energy_fn(batch.replace(positions=pos))
        chex.assert_shape(energy, (batch.num_graphs,))
        energy = jnp.where(graph_mask, energy, 0.0)
        return jnp.sum(energy), energy

    grad, energy = jax.grad(total, has_aux=True)(positions)
    forces = jnp.where(node_mask[:, None], -grad, 0.0)
    return energy, forces


def masked_forces(batch: AtomsBatch, forces: Array) -> Array:
    """Forces ``[n, 3]`` with fixed and padding atoms set to 0 (the forces an optimizer
    sees under ASE's ``FixAtoms``)."""
    free = jnp.asarray(batch.node_mask, bool) & ~jnp.asarray(batch.fixed, bool)
    return jnp.where(free[:, None], forces, 0.0)
