"""Random numbers keyed per graph slot and per atom (padding-invariant).

Every random draw of the losses and samplers goes through these functions: a structure's
noise depends only on its graph slot and on each atom's index inside its graph, never on
the padded sizes or on the other structures of the batch. The same key therefore gives
the same sample whatever the bucket, and a data-parallel run with global graph slots
(:mod:`agedi_jax.parallel`) draws exactly the noise of the single-device run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from agedi_jax.batch import AtomsBatch

Array = jax.Array

__all__ = ["local_index", "graph_keys", "atom_keys", "atom_normal", "graph_uniform", "graph_beta"]


def local_index(batch: AtomsBatch) -> Array:
    """[n] index of every atom inside its graph (0 for the first atom of each graph)."""
    n, g = batch.num_nodes, batch.num_graphs
    idx = jnp.arange(n)
    first = jax.ops.segment_min(idx, batch.graph_index, num_segments=g)
    return idx - first[batch.graph_index]


def graph_keys(key: Array, batch: AtomsBatch) -> Array:
    """One PRNG key per graph slot ``[g]``: ``fold_in(key, slot)``."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(batch.num_graphs))


def atom_keys(key: Array, batch: AtomsBatch) -> Array:
    """One PRNG key per atom: ``fold_in(fold_in(key, graph slot), index in graph)``."""
    gkeys = graph_keys(key, batch)
    return jax.vmap(jax.random.fold_in)(gkeys[batch.graph_index], local_index(batch))


def atom_normal(key: Array, batch: AtomsBatch, dtype=None) -> Array:
    """Standard normal ``[n, 3]`` keyed per atom (see :func:`atom_keys`)."""
    dtype = dtype or jnp.asarray(batch.positions).dtype
    keys = atom_keys(key, batch)
    return jax.vmap(lambda k: jax.random.normal(k, (3,), dtype))(keys)


def graph_uniform(key: Array, batch: AtomsBatch, minval=0.0, maxval=1.0, dtype=None) -> Array:
    """Uniform ``[g]`` keyed per graph slot (``fold_in(key, slot)``)."""
    dtype = dtype or jnp.asarray(batch.positions).dtype
    gkeys = graph_keys(key, batch)
    return jax.vmap(lambda k: jax.random.uniform(k, (), dtype, minval, maxval))(gkeys)


def graph_beta(key: Array, batch: AtomsBatch, a: float, b: float, dtype=None) -> Array:
    """Beta(a, b) draws ``[g]`` keyed per graph slot (``fold_in(key, slot)``)."""
    dtype = dtype or jnp.asarray(batch.positions).dtype
    gkeys = graph_keys(key, batch)
    return jax.vmap(lambda k: jax.random.beta(k, a, b, (), dtype))(gkeys)
