"""Batched FIRE relaxation in JAX for any energy function.

:func:`relax` runs the FIRE optimizer (Bitzek et al., PRL 97, 170201 (2006)) in the
variant of ``ase.optimize.FIRE`` on every structure of a padded
:class:`~agedi_jax.batch.AtomsBatch` at once, inside one jitted ``lax.while_loop``. Each
structure keeps its own FIRE state (velocities, time step, mixing parameter ``a``, count of
downhill steps, step counter) and is frozen as soon as its largest force drops below
``fmax``; the loop stops when every structure has converged or after ``max_steps`` steps.
Per step and structure, as ASE:

1. (from the second step on) with ``P = F·v``: if ``P > 0``, mix
   ``v ← (1 − a) v + a |v| F/|F|`` and, after more than ``n_min`` such steps in a row,
   ``dt ← min(dt·finc, dtmax)``, ``a ← a·fa``; otherwise ``v ← 0``, ``a ← astart``,
   ``dt ← dt·fdec``;
2. ``v ← v + dt F``; ``Δr = dt v``, scaled down so that ``|Δr|`` (the norm over the whole
   structure) is at most ``maxstep``.

Fixed atoms (``batch.fixed``) feel no force and never move (ASE's ``FixAtoms``); padding is
untouched; periodic axes are wrapped into the cell. Energies in eV, forces in eV/Å, lengths
in Å, time in ASE's FIRE units.

:func:`relax_atoms` is the host convenience: ``ase.Atoms`` in, relaxed ``ase.Atoms`` out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from agedi_jax.batch import AtomsBatch, Bucket
from agedi_jax.geometry import free_atoms, graph_sum, wrap_positions
from agedi_jax.potentials.base import EnergyFn, energy_and_forces

Array = jax.Array

__all__ = ["FireParams", "RelaxResult", "relax", "relax_atoms"]


class FireParams(NamedTuple):
    """FIRE hyper-parameters (ASE's names and defaults). Traced, so changing them does not
    recompile.

    Attributes:
      dt: initial time step. dtmax: largest time step.
      n_min: downhill steps before the time step may grow (ASE ``Nmin``).
      finc, fdec: time-step growth / reduction factors.
      astart: initial and reset mixing parameter ``a``; fa: its decay factor.
      maxstep: largest displacement norm per step over a whole structure, Å.
    """

    dt: float = 0.1
    dtmax: float = 1.0
    n_min: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99
    maxstep: float = 0.2


class RelaxResult(NamedTuple):
    """Outcome of :func:`relax`, one entry per graph slot (padding slots: 0 / False).

    Attributes:
      energy: [g] final energies, eV.
      fmax: [g] largest force norm over free atoms at the final positions, eV/Å.
      converged: [g] bool, ``fmax < fmax`` threshold (ASE's criterion).
      steps: [g] int32 FIRE steps taken.
    """

    energy: Any
    fmax: Any
    converged: Any
    steps: Any


class _State(NamedTuple):
    positions: Array  # [n, 3]
    velocities: Array  # [n, 3]
    dt: Array  # [g]
    a: Array  # [g]
    n_down: Array  # [g] int32, downhill steps in a row (ASE Nsteps)
    steps: Array  # [g] int32
    energy: Array  # [g]
    forces: Array  # [n, 3], zero on fixed and padding atoms
    fmax: Array  # [g]
    it: Array  # scalar int32


def _free_forces(energy_fn: EnergyFn, batch: AtomsBatch, positions: Array, free: Array):
    energy, forces = energy_and_forces(energy_fn, batch.replace(positions=positions))
    forces = jnp.where(free[:, None], forces, 0.0)
    norms = jnp.sqrt(jnp.sum(forces * forces, axis=-1))
    fmax = jax.ops.segment_max(
        jnp.where(free, norms, 0.0), batch.graph_index, num_segments=batch.num_graphs
    )
    fmax = jnp.where(jnp.asarray(batch.graph_mask, bool), jnp.maximum(fmax, 0.0), 0.0)
    return energy, forces, fmax


def _relax_impl(
    energy_fn: EnergyFn,
    batch: AtomsBatch,
    fmax: Array,
    max_steps: Array,
    params: FireParams,
) -> tuple[Array, RelaxResult]:
    free = free_atoms(batch)
    gi = batch.graph_index
    graph_mask = jnp.asarray(batch.graph_mask, bool)
    pos0 = jnp.asarray(batch.positions)
    dtype = pos0.dtype
    g = batch.num_graphs
    p = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)

    energy, forces, fm = _free_forces(energy_fn, batch, pos0, free)
    state = _State(
        positions=pos0,
        velocities=jnp.zeros_like(pos0),
        dt=jnp.full((g,), p.dt, dtype),
        a=jnp.full((g,), p.astart, dtype),
        n_down=jnp.zeros((g,), jnp.int32),
        steps=jnp.zeros((g,), jnp.int32),
        energy=energy,
        forces=forces,
        fmax=fm,
        it=jnp.zeros((), jnp.int32),
    )

    def active(s: _State) -> Array:
        # NaN forces never converge: such structures run to max_steps
        return graph_mask & ~(s.fmax < fmax) & (s.steps < max_steps)

    def cond(s: _State) -> Array:
        return jnp.any(active(s)) & (s.it < max_steps)

    def body(s: _State) -> _State:
        act = active(s)
        f, v = s.forces, s.velocities
        vf = graph_sum(batch, jnp.sum(f * v, axis=-1))
        f2 = graph_sum(batch, jnp.sum(f * f, axis=-1))
        v2 = graph_sum(batch, jnp.sum(v * v, axis=-1))
        started = s.steps > 0  # ASE skips the mixing on the very first step
        downhill = started & (vf > 0.0)
        reset = started & ~(vf > 0.0)

        mix = s.a * jnp.sqrt(v2) / jnp.sqrt(jnp.where(downhill, f2, 1.0))
        v_mixed = (1.0 - s.a)[gi, None] * v + mix[gi, None] * f
        v = jnp.where(downhill[gi, None], v_mixed, v)
        v = jnp.where(reset[gi, None], 0.0, v)
        grow = downhill & (s.n_down > p.n_min)
        dt = jnp.where(grow, jnp.minimum(s.dt * p.finc, p.dtmax), s.dt)
        a = jnp.where(grow, s.a * p.fa, s.a)
        n_down = jnp.where(downhill, s.n_down + 1, s.n_down)
        a = jnp.where(reset, p.astart, a)
        dt = jnp.where(reset, dt * p.fdec, dt)
        n_down = jnp.where(reset, 0, n_down)

        v = v + dt[gi, None] * f
        dr = dt[gi, None] * v
        norm = jnp.sqrt(graph_sum(batch, jnp.sum(dr * dr, axis=-1)))
        scale = jnp.where(norm > p.maxstep, p.maxstep / jnp.where(norm > 0, norm, 1.0), 1.0)
        dr = dr * scale[gi, None]
        moved = free & act[gi]
        new_pos = wrap_positions(batch, s.positions + dr)
        positions = jnp.where(moved[:, None], new_pos, s.positions)
        velocities = jnp.where(moved[:, None], v, s.velocities)

        keep = lambda new, old: jnp.where(act, new, old)
        energy, forces, fm = _free_forces(energy_fn, batch, positions, free)
        return _State(
            positions=positions,
            velocities=velocities,
            dt=keep(dt, s.dt),
            a=keep(a, s.a),
            n_down=keep(n_down, s.n_down),
            steps=s.steps + act.astype(jnp.int32),
            energy=keep(energy, s.energy),
            forces=jnp.where(act[gi, None], forces, s.forces),
            fmax=keep(fm, s.fmax),
            it=s.it + 1,
        )

    s = jax.lax.while_loop(cond, body, state)
    result = RelaxResult(
        energy=jnp.where(graph_mask, s.energy, 0.0),
        fmax=s.fmax,
        converged=graph_mask & (s.fmax < fmax),
        steps=s.steps,
    )
    return s.positions, result


def _relax_highest(energy_fn, batch, fmax, max_steps, params):
    # exact float32 cell products on GPUs (no TF32) for edge vectors and wrapping
    with jax.default_matmul_precision("highest"):
        return _relax_impl(energy_fn, batch, fmax, max_steps, params)


_relax_jit = jax.jit(_relax_highest, static_argnums=(0,))


def relax(
    energy_fn: EnergyFn,
    batch: AtomsBatch,
    *,
    fmax: float = 0.05,
    max_steps: int = 1000,
    dt: float = 0.1,
    dtmax: float = 1.0,
    n_min: int = 5,
    finc: float = 1.1,
    fdec: float = 0.5,
    astart: float = 0.1,
    fa: float = 0.99,
    maxstep: float = 0.2,
) -> tuple[AtomsBatch, RelaxResult]:
    """Relax every structure of ``batch`` with FIRE (ASE's variant) in one jitted loop.

    Args:
      energy_fn: ``energy_fn(batch) -> [g]`` eV, pure and jittable (e.g.
        :func:`~agedi_jax.potentials.emt.make_emt`); it is a static argument of the jitted
        loop, so reuse the same function object to reuse the compilation.
      batch: structures to relax (numpy or JAX arrays; positions Å). Fixed atoms stay put.
      fmax: convergence threshold on the largest force norm of a structure's free atoms,
        eV/Å (converged when ``max |F| < fmax``, as ASE).
      max_steps: most FIRE steps per structure.
      dt, dtmax, n_min, finc, fdec, astart, fa, maxstep: FIRE parameters (ASE's ``dt``,
        ``dtmax``, ``Nmin``, ``finc``, ``fdec``, ``astart``/``a``, ``fa``, ``maxstep`` Å).

    Returns:
      ``(batch with relaxed positions, RelaxResult)``. An energy function with a
      ``check(batch)`` attribute (e.g. EMT's) has it run on the host before the loop.
    """
    if not (fmax > 0 and np.isfinite(fmax)):
        raise ValueError(f"fmax must be a positive number of eV/Å, got {fmax}")
    if int(max_steps) < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    if not (dt > 0 and dtmax > 0 and maxstep > 0):
        raise ValueError(f"dt, dtmax and maxstep must be positive, got {dt}, {dtmax}, {maxstep}")
    chex.assert_shape(batch.positions, (batch.num_nodes, 3))
    jbatch = jax.tree.map(jnp.asarray, batch)
    check = getattr(energy_fn, "check", None)
    concrete = not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(jbatch))
    if check is not None and concrete:  # host checks (EMT: MASK atoms, elements, cutoff)
        check(jbatch)
    params = FireParams(dt, dtmax, n_min, finc, fdec, astart, fa, maxstep)
    positions, result = _relax_jit(
        energy_fn,
        jbatch,
        jnp.asarray(fmax, jbatch.positions.dtype),
        jnp.asarray(int(max_steps), jnp.int32),
        params,
    )
    return jbatch.replace(positions=positions), result


PotentialLike = str | Callable[..., EnergyFn]


def relax_atoms(
    atoms_list: Sequence[Any],
    potential: PotentialLike = "emt",
    fmax: float = 0.05,
    max_steps: int = 1000,
    *,
    cutoff: float | None = None,
    bucket: Bucket | None = None,
    **fire: Any,
) -> tuple[list, np.ndarray, np.ndarray]:
    """Relax ``ase.Atoms`` in one batch on the host: batch, :func:`relax`, unbatch.

    Args:
      atoms_list: structures (not modified); ``FixAtoms`` constraints are honoured.
      potential: ``"emt"`` (:func:`~agedi_jax.potentials.emt.make_emt`), or a factory
        ``potential(vocab) -> energy_fn`` together with ``cutoff`` (Å).
      fmax: eV/Å. max_steps: most FIRE steps.
      cutoff: edge-template cutoff, Å (default for EMT: ``emt_cutoff``).
      bucket: padded sizes (default: the smallest that fits).
      **fire: FIRE parameters for :func:`relax`.

    Returns:
      ``(relaxed list[ase.Atoms], energies [N] eV, converged [N] bool)``; each relaxed
      structure carries ``info["energy"]`` and ``info["relax_converged"]``.
    """
    from agedi_jax.convert import atoms_from_batch, batch_from_atoms
    from agedi_jax.vocab import TypeVocab

    atoms_list = list(atoms_list)
    if not atoms_list:
        raise ValueError("relax_atoms: no structures given")
    vocab = TypeVocab.from_atoms(atoms_list)
    if isinstance(potential, str):
        if potential.lower() != "emt":
            raise ValueError(f"unknown potential {potential!r}; use 'emt' or a factory vocab -> energy_fn")
        from agedi_jax.potentials.emt import emt_cutoff, make_emt

        energy_fn = make_emt(vocab)
        cut = emt_cutoff(vocab.symbols) if cutoff is None else float(cutoff)
    elif callable(potential):
        if cutoff is None:
            raise ValueError("relax_atoms: a potential factory needs the edge-template `cutoff` (Å)")
        energy_fn, cut = potential(vocab), float(cutoff)
    else:
        raise TypeError(f"potential must be 'emt' or a callable, got {type(potential).__name__}")
    batch = batch_from_atoms(atoms_list, vocab, cut, bucket=bucket)
    out_batch, result = relax(energy_fn, batch, fmax=fmax, max_steps=max_steps, **fire)
    # add the (possibly float32) displacement to the float64 input positions: atoms that
    # did not move (fixed ones) come back bit-identical
    start = jnp.asarray(batch.positions)
    moved = np.asarray(out_batch.positions, np.float64) - np.asarray(start, np.float64)
    out_batch = out_batch.replace(positions=np.asarray(batch.positions, np.float64) + moved)
    n = len(atoms_list)
    energies = np.asarray(result.energy, np.float64)[:n]
    converged = np.asarray(result.converged, bool)[:n]
    relaxed = atoms_from_batch(out_batch, vocab, info=[dict(a.info) for a in atoms_list], label_key=None)
    for a, e, c in zip(relaxed, energies, converged):
        a.info["energy"] = float(e)
        a.info["relax_converged"] = bool(c)
    return relaxed, energies, converged
