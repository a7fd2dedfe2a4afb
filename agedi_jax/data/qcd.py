"""Metal and main-group clusters of the Quantum Cluster Database (QCD), GAP-relaxed.

The data is a directory of ``<El>_gap_QCD_relaxed.xyz`` files (extended XYZ, one per
element; see ``shared/data/README.md``). Every frame carries a cubic box with
``pbc=T T T`` that is only a container: clusters are returned non-periodic, with a zero
cell, centred at the origin.

The paper (section "Cluster AGeDi Model") trains on two subsets, rebuilt here:

* ``"gm"``: the global minimum — the lowest-energy cluster of every (element, N), N < 30;
* ``"de200"``: every cluster within 0.2 eV (total energy) of the lowest energy of its
  (element, N), all sizes. ``"deXXX"`` gives a window of XXX meV.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from agedi_jax.data.dataset import DataError, Dataset, check_path, read_frames

FILE_PATTERN = "*_gap_QCD_relaxed.xyz"
ENERGY_KEYS = ("relaxed_gap_energy", "gap_energy", "dft_energy")
GM_MAX_ATOMS = 30  # the GM subset holds clusters with N < GM_MAX_ATOMS
_DE = re.compile(r"de(\d+)$")


def is_subset_name(name: str | None) -> bool:
    """Whether ``name`` names a QCD subset (``None``/``"all"``, ``"gm"``, ``"de<meV>"``)."""
    return name in (None, "all", "gm") or bool(_DE.match(str(name)))


def qcd_files(directory: str | Path) -> list[Path]:
    """The ``<El>_gap_QCD_relaxed.xyz`` files of ``directory``, sorted by name."""
    return sorted(Path(directory).glob(FILE_PATTERN))


def _element_of(path: Path) -> str:
    return path.name.split("_", 1)[0]


def read_qcd_file(path: str | Path, energy_key: str = "relaxed_gap_energy") -> list:
    """Clusters of one ``<El>_gap_QCD_relaxed.xyz`` file as non-periodic, centred Atoms.

    ``atoms.info`` keeps the file's ``dft_energy``, ``gap_energy``, ``relaxed_gap_energy``
    (eV, total) and ``config_type``, and adds ``element``, ``n_atoms``, ``source_file``,
    ``frame`` (index in the file), ``energy_key`` and ``energy`` (= ``info[energy_key]``).
    The file's energy and forces (GAP, relaxed geometry) stay on a
    ``SinglePointCalculator``.
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    path = Path(path)
    if energy_key not in ENERGY_KEYS:
        raise ValueError(f"energy_key must be one of {ENERGY_KEYS}, got {energy_key!r}")
    element = _element_of(path)
    frames = read_frames(path, format="extxyz")
    if not frames:
        raise DataError(f"QCD file {str(path)!r} contains no clusters")
    out = []
    for k, atoms in enumerate(frames):
        symbols = set(atoms.get_chemical_symbols())
        if symbols != {element}:
            raise DataError(
                f"QCD file {str(path)!r}, frame {k}: elements {sorted(symbols)} do not match "
                f"the file name's element {element!r}"
            )
        missing = [key for key in ENERGY_KEYS if key not in atoms.info]
        if missing:
            raise DataError(f"QCD file {str(path)!r}, frame {k}: no {missing} in the frame info")
        calc = atoms.calc
        energy = forces = None
        if calc is not None:
            energy = calc.results.get("energy")
            forces = calc.results.get("forces")
        atoms.calc = None
        atoms.pbc = False
        atoms.cell = np.zeros((3, 3))
        atoms.positions = atoms.positions - atoms.positions.mean(axis=0)
        info = {key: float(atoms.info[key]) for key in ENERGY_KEYS}
        info.update(
            config_type=atoms.info.get("config_type", "qcd"),
            element=element,
            n_atoms=len(atoms),
            source_file=path.name,
            frame=k,
            energy_key=energy_key,
            energy=info[energy_key],
        )
        atoms.info = info
        if energy is not None:
            atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        out.append(atoms)
    return out


def subset_mask(
    elements: Sequence[str], sizes: Sequence[int], energies: Sequence[float], subset: str | None
) -> np.ndarray:
    """Boolean mask [len] of a QCD subset given each cluster's element, N and energy (eV).

    ``None``/``"all"``: everything; ``"gm"``: the lowest energy of each (element, N) with
    N < 30 (ties: the first); ``"deXXX"``: energy ≤ min of its (element, N) + XXX meV.
    """
    if not is_subset_name(subset):
        raise ValueError(f"unknown QCD subset {subset!r}: use None, 'all', 'gm' or 'de200' (any 'de<meV>')")
    elements = np.asarray(elements)
    sizes = np.asarray(sizes)
    energies = np.asarray(energies, np.float64)
    n = len(energies)
    if subset in (None, "all"):
        return np.ones(n, bool)
    mask = np.zeros(n, bool)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, key in enumerate(zip(elements.tolist(), sizes.tolist())):
        groups.setdefault(key, []).append(i)
    for (_, size), idx in groups.items():
        idx = np.asarray(idx)
        e = energies[idx]
        if subset == "gm":
            if size < GM_MAX_ATOMS:
                mask[idx[np.argmin(e)]] = True
        else:
            window = int(_DE.match(subset).group(1)) / 1000.0
            mask[idx[e <= e.min() + window]] = True
    return mask


def load_qcd(
    path: str | Path,
    subset: str | None = None,
    *,
    max_atoms: int | None = None,
    elements: Sequence[str] | None = None,
    energy_key: str = "relaxed_gap_energy",
    name: str | None = None,
) -> Dataset:
    """Load the QCD clusters of a directory of ``<El>_gap_QCD_relaxed.xyz`` files (or one
    such file).

    Args:
      path: the directory (``shared/data/qcd_gap_relaxed``) or a single file.
      subset: ``None``/``"all"``, ``"gm"`` (global minimum per (element, N), N < 30) or
        ``"de200"`` (within 0.2 eV of the (element, N) minimum; ``"de<meV>"`` in general),
        as in the paper's cluster model.
      max_atoms: keep only clusters with at most this many atoms (applied after the
        subset; subsets are defined per (element, N) so the order does not matter).
      elements: keep only these elements (files of other elements are not read).
      energy_key: the energy (eV, total) that defines the subsets and ``info["energy"]``.
        Default ``"relaxed_gap_energy"``, the GAP energy of the stored (GAP-relaxed)
        geometry; ``"dft_energy"`` is QCD's DFT energy of its own, unrelaxed geometry
        (every cluster is within 0.2 eV by that measure), ``"gap_energy"`` the GAP energy
        before relaxation.
      name: dataset name (default ``"qcd"`` or ``"qcd:<subset>"``).

    Returns:
      a :class:`Dataset` without labels, clusters in file (element) then frame order.
    """
    p = check_path(path)
    if energy_key not in ENERGY_KEYS:
        raise ValueError(f"energy_key must be one of {ENERGY_KEYS}, got {energy_key!r}")
    if not is_subset_name(subset):
        raise ValueError(f"unknown QCD subset {subset!r}: use None, 'all', 'gm' or 'de200' (any 'de<meV>')")
    files = [p] if p.is_file() else qcd_files(p)
    if not files:
        raise DataError(f"QCD directory {str(path)!r} holds no {FILE_PATTERN} files")
    if elements is not None:
        wanted = [str(e) for e in elements]
        have = {_element_of(f) for f in files}
        missing = sorted(set(wanted) - have)
        if missing:
            raise DataError(f"QCD data {str(path)!r} has no file for elements {missing}")
        files = [f for f in files if _element_of(f) in set(wanted)]

    structures = []
    for f in files:
        structures.extend(read_qcd_file(f, energy_key))

    els = [a.info["element"] for a in structures]
    sizes = [len(a) for a in structures]
    energies = [a.info["energy"] for a in structures]
    mask = subset_mask(els, sizes, energies, subset)
    if max_atoms is not None:
        mask &= np.asarray(sizes) <= max_atoms
    structures = [a for a, keep in zip(structures, mask) if keep]
    if not structures:
        raise DataError(
            f"QCD data {str(path)!r}: no clusters left (subset={subset!r}, max_atoms={max_atoms}, "
            f"elements={None if elements is None else list(elements)})"
        )
    tag = "all" if subset is None else subset
    return Dataset(
        structures=structures,
        name=name or ("qcd" if tag == "all" else f"qcd:{tag}"),
        labels=None,
        source={
            "loader": "qcd",
            "path": str(p),
            "subset": tag,
            "energy_key": energy_key,
            "max_atoms": max_atoms,
            "elements": None if elements is None else list(elements),
        },
    )
