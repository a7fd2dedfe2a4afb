"""Small structures and batches shared by several test files (not collected by pytest)."""

from __future__ import annotations

import math

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms

from agedi_jax.batch import AtomsBatch


def anchor_batch(n_graphs: int, n_free: int, pad_atoms: int = 1, pad_graphs: int = 1, *,
                 anchor_type: int = 0, free_type: int = 0, pad_type: int = 0) -> AtomsBatch:
    """``n_graphs`` graphs of one fixed anchor atom at the origin plus ``n_free`` free atoms,
    built directly as arrays (positions zero). The anchor fixes the frame: no zero-CoM
    projection, and the VP centre is the anchor, so the free atoms are independent particles.
    One padding edge on the last padding atom; types ``anchor_type`` / ``free_type`` /
    ``pad_type``."""
    per = n_free + 1
    n_real = n_graphs * per
    n, g = n_real + pad_atoms, n_graphs + pad_graphs
    gi = np.full(n, g - 1, np.int32)
    gi[:n_real] = np.repeat(np.arange(n_graphs), per)
    fixed = np.zeros(n, bool)
    fixed[:n_real:per] = True
    real = np.arange(n) < n_real
    n_node = np.zeros(g, np.int32)
    n_node[:n_graphs] = per
    n_node[g - 1] = pad_atoms
    types = np.where(fixed, anchor_type, np.where(real, free_type, pad_type)).astype(np.int32)
    return AtomsBatch(
        positions=np.zeros((n, 3)), types=types, cell=np.zeros((g, 3, 3)),
        pbc=np.zeros((g, 3), bool), node_mask=real, graph_mask=np.arange(g) < n_graphs,
        graph_index=gi, n_node=n_node, label=np.zeros(g, np.int32), fixed=fixed,
        senders=np.full(1, n - 1, np.int32), receivers=np.full(1, n - 1, np.int32), shifts=np.zeros((1, 3)),
        edge_mask=np.zeros(1, bool), n_edge=np.array([0] * (g - 1) + [1], np.int32),
    )


def mixed_atoms(seed: int, *, fixed_sheet: bool = False) -> list[Atoms]:
    """A free C4H2 cluster, a C2O3 cluster with two fixed atoms and a CO2 sheet (pbc T, T, F);
    with ``fixed_sheet`` the sheet has one fixed atom and a C2 sheet follows."""
    rng = np.random.default_rng(seed)
    cl = Atoms("C4H2", positions=rng.normal(size=(6, 3)) + 2.0)
    fx = Atoms("C2O3", positions=rng.normal(size=(5, 3)))
    fx.set_constraint(FixAtoms(indices=[1, 3]))
    cell = np.array([[3.2, 0, 0], [-1.6, 3.2 * math.sqrt(3) / 2, 0], [0, 0, 16.0]])
    sh = Atoms("CO2", cell=cell, pbc=(True, True, False), scaled_positions=[[0.1, 0.2, 0.5], [0.6, 0.7, 0.55], [0.3, 0.9, 0.45]])
    if not fixed_sheet:
        return [cl, fx, sh]
    sh.set_constraint(FixAtoms(indices=[1]))
    sh2 = Atoms("C2", cell=cell, pbc=(True, True, False), scaled_positions=[[0.0, 0.0, 0.5], [0.33, 0.66, 0.5]])
    return [cl, fx, sh, sh2]
