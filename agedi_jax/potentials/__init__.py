"""Interatomic potentials as pure JAX energy functions ``energy_fn(batch) -> [g]`` (eV).

* :mod:`~agedi_jax.potentials.base` — the interface and :func:`energy_and_forces`;
* :mod:`~agedi_jax.potentials.emt` — effective-medium theory (ASE's EMT) for Al, Cu, Ag,
  Au, Ni, Pd, Pt: :func:`make_emt`, :func:`emt_cutoff`.

Relaxation with any energy function: :func:`agedi_jax.relax.relax`.
"""

from agedi_jax.potentials.base import EnergyFn, energy_and_forces, masked_forces
from agedi_jax.potentials.emt import (
    EMT_ELEMENTS,
    UnsupportedElementError,
    check_emt_batch,
    emt_atom_energies,
    emt_cutoff,
    make_emt,
)

__all__ = [
    "EnergyFn",
    "energy_and_forces",
    "masked_forces",
    "EMT_ELEMENTS",
    "UnsupportedElementError",
    "check_emt_batch",
    "emt_atom_energies",
    "emt_cutoff",
    "make_emt",
]
