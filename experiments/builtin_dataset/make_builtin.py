"""Generate the built-in dataset ``emt_clusters``: low-energy EMT minima of small
mono-metallic clusters (Cu, Ag, Au, Ni, Pd, Pt; 4–13 atoms).

For every (element, N) the search runs a few basin-hopping walks from random compact
starts: each hop displaces every atom of the current minimum, relaxes with EMT (BFGS)
and accepts by the Metropolis rule. Every distinct connected minimum seen is kept; the
lowest few within an energy window are written, centred at the origin, non-periodic,
to ``agedi_jax/data/builtin/emt_clusters.xyz.gz`` (extended XYZ, gzip with a fixed
header time so that the same seed gives the same bytes on the same platform).

Usage:  python -m experiments.builtin_dataset.make_builtin [--seed 0] [--out PATH]
"""

from __future__ import annotations

import os

# The relaxations use numpy linear algebra on tiny matrices: BLAS threads only add
# contention (and may change the last bits between runs). Set before numpy loads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gzip  # noqa: E402
import io  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402
from ase.data import atomic_numbers, reference_states  # noqa: E402
from ase.optimize import BFGS  # noqa: E402

ELEMENTS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt")
SIZES = tuple(range(4, 14))
WALKS = 4  # basin-hopping walks per (element, N), each from a random start
HOPS = 14  # hops per walk
KT = 0.3  # eV, Metropolis temperature of the walk
STEP = 0.35  # hop displacement, in units of the nearest-neighbour distance d0
KEEP = 4  # distinct minima kept per (element, N)
WINDOW = 1.0  # eV above the lowest minimum found
FMAX = 0.01  # eV/Å, relaxation convergence
OUT = Path(__file__).resolve().parents[2] / "agedi_jax" / "data" / "builtin" / "emt_clusters.xyz.gz"


def nn_distance(element: str) -> float:
    """Nearest-neighbour distance d0 (Å) of the element's fcc reference lattice."""
    return reference_states[atomic_numbers[element]]["a"] / np.sqrt(2.0)


def random_start(rng: np.random.Generator, n: int, d0: float) -> np.ndarray:
    """Random compact start [n, 3]: atoms added one by one at distance ~d0 from a random
    earlier atom, rejecting overlaps (closer than 0.8 d0)."""
    pos = [np.zeros(3)]
    while len(pos) < n:
        anchor = pos[rng.integers(len(pos))]
        v = rng.normal(size=3)
        cand = anchor + d0 * rng.uniform(0.95, 1.1) * v / np.linalg.norm(v)
        if min(np.linalg.norm(cand - p) for p in pos) > 0.8 * d0:
            pos.append(cand)
    return np.array(pos)


def relax(symbols: str, positions: np.ndarray) -> tuple[np.ndarray, float]:
    """EMT relaxation (BFGS to FMAX); returns (positions [n, 3] Å, energy eV)."""
    atoms = Atoms(symbols, positions=positions)
    atoms.calc = EMT()
    BFGS(atoms, logfile=None).run(fmax=FMAX, steps=1000)
    return atoms.positions.copy(), float(atoms.get_potential_energy())


def connected(positions: np.ndarray, d0: float) -> bool:
    """Whether the bond graph at 1.3 d0 is connected (no fragments flew apart)."""
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    adj = d < 1.3 * d0
    seen = {0}
    todo = [0]
    while todo:
        i = todo.pop()
        for j in np.where(adj[i])[0]:
            if j not in seen:
                seen.add(int(j))
                todo.append(int(j))
    return len(seen) == len(positions)


def fingerprint(positions: np.ndarray) -> np.ndarray:
    """Sorted interatomic distances: invariant to rotation, translation, permutation."""
    i, j = np.triu_indices(len(positions), 1)
    return np.sort(np.linalg.norm(positions[i] - positions[j], axis=-1))


def search(element: str, n: int, seed: int) -> list[tuple[float, np.ndarray]]:
    """Distinct connected EMT minima (energy, positions) found for element_n, sorted."""
    rng = np.random.default_rng([seed, atomic_numbers[element], n])
    d0 = nn_distance(element)
    symbols = f"{element}{n}"
    found: list[tuple[float, np.ndarray, np.ndarray]] = []

    def record(pos: np.ndarray, e: float) -> None:
        if not connected(pos, d0):
            return
        fp = fingerprint(pos)
        for e2, _, fp2 in found:
            if abs(e - e2) < 2e-3 and np.max(np.abs(fp - fp2)) < 0.05:
                return
        found.append((e, pos, fp))

    for _ in range(WALKS):
        pos, e = relax(symbols, random_start(rng, n, d0))
        record(pos, e)
        for _ in range(HOPS):
            trial = pos + rng.uniform(-STEP, STEP, size=pos.shape) * d0
            new_pos, new_e = relax(symbols, trial)
            record(new_pos, new_e)
            if connected(new_pos, d0) and (new_e < e or rng.random() < np.exp(-(new_e - e) / KT)):
                pos, e = new_pos, new_e
    found.sort(key=lambda x: x[0])
    return [(e, p) for e, p, _ in found]


def make(seed: int = 0) -> list[Atoms]:
    """All kept minima as non-periodic, centred ``Atoms`` with info: element, n_atoms,
    emt_energy (eV), delta_e (eV above the lowest minimum found), rank, seed."""
    out = []
    for element in ELEMENTS:
        for n in SIZES:
            t0 = time.time()
            minima = search(element, n, seed)
            e_min = minima[0][0]
            kept = [(e, p) for e, p in minima if e - e_min <= WINDOW][:KEEP]
            for rank, (e, pos) in enumerate(kept):
                atoms = Atoms(f"{element}{n}", positions=pos - pos.mean(0), pbc=False)
                atoms.info.update(
                    element=element, n_atoms=n, emt_energy=e, delta_e=e - e_min, rank=rank, seed=seed
                )
                out.append(atoms)
            print(
                f"{element}{n:<3d} {len(minima):3d} minima, kept {len(kept)}, "
                f"E_min {e_min:8.4f} eV, {time.time() - t0:5.1f} s",
                flush=True,
            )
    return out


def write(structures: list[Atoms], path: Path) -> None:
    """Extended XYZ, gzip-compressed with mtime 0 (reproducible bytes)."""
    import ase.io

    buf = io.StringIO()
    ase.io.write(buf, structures, format="extxyz")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue().encode())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    t0 = time.time()
    structures = make(args.seed)
    write(structures, args.out)
    print(
        f"wrote {len(structures)} structures to {args.out} "
        f"({args.out.stat().st_size / 1024:.1f} KiB) in {time.time() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
