"""Generate the surface data set: EMT local minima of small metal clusters / ad-layers
(Pt_n, Au_n, Cu_n with n = 1..8, and Pt2Cu2, Au2Cu2, Pt3Cu3) on fixed fcc substrate slabs
Cu(111), Ag(100) and Pt(111).

    python -m experiments.surfaces.make_dataset --out experiments/surfaces/data            # full
    python -m experiments.surfaces.make_dataset --out /tmp/surf --quick                     # smoke test

Physics / protocol
------------------
* Potential: ASE's EMT (``ase.calculators.emt.EMT``) for everything.
* Lattice constants: EMT's own equilibrium fcc lattice constant of each element (a 1-D
  minimisation of the bulk energy), so that the substrate is not strained by the potential.
* Substrates: ``ase.build.fcc111`` / ``fcc100`` with 3 layers, ``vacuum`` = 12 Å on both
  sides, pbc = (True, True, False); the bottom two layers (ASE tags 2 and 3) are fixed with
  ``FixAtoms``, the top layer (tag 1) relaxes. Lateral size 4x4 for all three (16 surface
  atoms; cells of 10.2 Å (Cu(111)), 11.5 Å (Ag(100)) and 11.1 Å (Pt(111))): clusters of up to
  8 atoms (coverage <= 0.5 ML) stay separated from their periodic images. (3x3 cells were
  tried: 2-4x fewer distinct minima per pair -- a 7-8 atom adsorbate on 9 sites is a nearly
  full ad-layer with a handful of arrangements -- at 60 % of the cost per relaxation.)
  Every clean slab is relaxed once (FIRE, fmax 0.01 eV/Å) and its energy E(slab) stored.
* Reference chemical potentials: mu_X = EMT energy per atom of bulk fcc X at EMT's
  equilibrium lattice constant (close to 0 eV by construction of EMT). The adsorption energy is
  E_ads = E(slab+ads) - E(slab) - sum_X n_X mu_X, relative to bulk metal (so usually
  *positive* for small islands: an adatom is less coordinated than in the bulk). Also stored:
  the binding energy relative to free atoms, E_bind = E(slab+ads) - E(slab) - sum_X n_X E_X(atom)
  with E_X(atom) the EMT energy of one isolated X atom (negative = bound).
* Search: for every (substrate, formula) several independent basin-hopping runs (own
  Monte-Carlo-with-relaxation loop). A run starts from the adsorbate atoms at uniformly random
  positions in the z-window 2..10 Å above the topmost atom of the relaxed clean slab (uniform
  in-plane in the cell, minimum interatomic distance 2.0 Å). Each hop proposes one move of the
  adsorbate atoms only -- "shake" (all adsorbate atoms displaced uniformly in a ball of radius
  1.2 Å), "jump" (one adsorbate atom, the highest one half the time, re-placed at a random
  in-plane position 1.5..3.0 Å above the top layer) or, for bimetallic adsorbates, "swap" (two
  atoms of different element exchanged) -- then relaxes with EMT (FIRE to fmax 0.05 eV/Å, at
  most 1000 steps; the top substrate layer relaxes too; a valid minimum is then rattled
  (Gaussian, sigma 0.1 Å on the adsorbate atoms) and refined to fmax 0.01 eV/Å: at 0.05 eV/Å
  the energies of one and the same minimum scatter by a few meV and the 1-meV deduplication
  below would keep copies, and without the rattle FIRE stops on symmetric saddle points --
  1.5 % of the minima of a first version were such saddles, e.g. Pt on a Cu(111) bridge site) and accepts by the Metropolis rule at
  kT = 0.1 eV. Desorbed / in-slab / unconverged proposals are rejected. "Unbound" ones (below)
  are not stored but may become the walk's state: a proposal with fewer unbound atoms is
  always accepted, one with more always rejected, else Metropolis -- a walk whose random start
  left atoms (or a floating fragment) in vacuum binds them one at a time (jump moves then pick
  an unbound atom), and a bound walk never becomes unbound.
* Every relaxed structure is a local minimum; all of them (accepted or not) are collected and
  checked. Discarded (counted per reason in summary.json):
    - ``desorbed``: an adsorbate atom above top + 10 Å,
    - ``in_slab``: an adsorbate atom below top - 0.5 Å (top = topmost atom of the clean slab;
      exchange *into* the top layer is kept),
    - ``unbound``: an adsorbate atom not connected to the substrate by a chain of bonds
      <= 3.3 Å (atoms left floating in vacuum where EMT has no force: from the random starts),
    - ``unconverged``: relaxation not converged in 1000 steps.
  Remaining minima are deduplicated per (substrate, formula): two minima are the same when
  their energies agree within 1 meV AND their fingerprints agree within 0.1 Å (max abs
  difference). Fingerprint = sorted adsorbate-adsorbate distances ++ sorted list of the 12
  nearest-neighbour distances (to any atom, periodic images included) of every adsorbate atom;
  invariant to lateral translation, permutation of the adsorbate atoms and to the symmetry of
  the substrate. The first occurrence (in run, then hop order) is kept.

Held-out split (evaluation)
---------------------------
81 (substrate, formula) pairs; 12 of them (14.8 %) are held out ("test"), the rest "train":
* every Au-containing adsorbate on Pt(111): Au1..Au8 and Au2Cu2 (9 pairs) -- an unseen
  (adsorbate element, substrate) combination; Au is seen on Cu(111)/Ag(100), Pt(111) is seen
  with Pt/Cu adsorbates. Au2Cu2 is held out too so that no training structure has Au on Pt(111).
* Pt5 and Cu6 on Cu(111) (2 pairs) -- interpolation in size (n-1 and n+1 are in training);
* Pt2Cu2 on Ag(100) (1 pair) -- an unseen bimetallic composition on a substrate (it is seen on
  the two other substrates).

Output
------
``OUT/surfaces.extxyz`` (all kept minima; substrate atoms tagged 1..3 by layer from the top
as ASE does, adsorbate atoms tag 0, FixAtoms on the bottom two layers kept) and
``OUT/summary.json`` (parameters, seed, substrates, mu_X, counts, best energies, discards,
timings). Per structure ``atoms.info``: substrate, formula, energy (total EMT, eV),
adsorption_energy (eV), binding_energy (eV), e_above_best (eV), n_adsorbate, run, hop, is_best, z_window ("2,10"),
split. Note: ASE's extxyz reader moves ``energy`` into a SinglePointCalculator
(``atoms.get_potential_energy()``) and parses ``z_window`` as the array [2, 10].

The result depends only on ``--seed`` (and the platform's floating point), not on
``--workers``: every run has its own random stream derived from (seed, pair, run).
"""

from __future__ import annotations

import os

# EMT and the optimiser do linear algebra on tiny arrays: BLAS threads only add contention.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

# --------------------------------------------------------------------------- parameters

SUBSTRATES = {  # name -> (element, facet, (nx, ny, layers))
    "Cu(111)": ("Cu", "111", (4, 4, 3)),
    "Ag(100)": ("Ag", "100", (4, 4, 3)),
    "Pt(111)": ("Pt", "111", (4, 4, 3)),
}
ADSORBATE_ELEMENTS = ("Pt", "Au", "Cu")
SIZES = tuple(range(1, 9))
BIMETALLIC = ("Pt2Cu2", "Au2Cu2", "Pt3Cu3")
HELD_OUT = (
    *[("Pt(111)", f"Au{n}") for n in SIZES],
    ("Pt(111)", "Au2Cu2"),
    ("Cu(111)", "Pt5"),
    ("Cu(111)", "Cu6"),
    ("Ag(100)", "Pt2Cu2"),
)

VACUUM = 12.0  # Å on both sides of the slab
Z_WINDOW = (2.0, 10.0)  # Å above the topmost clean-slab atom: start window; z_max = desorbed
BELOW_TOP = 0.5  # Å: an adsorbate atom below top - BELOW_TOP went into the slab
MIN_DIST = 2.0  # Å, minimum distance of random starts / jump moves
BOND = 3.3  # Å, bond cutoff of the "bound to the substrate" check
FMAX = 0.05  # eV/Å, relaxation of the walk's proposals
FMAX_KEEP = 0.01  # eV/Å, kept minima are refined to this (1-meV dedup needs it)
RATTLE = 0.1  # Å, Gaussian rattle of the adsorbate atoms before the refinement (saddles)
MAX_RELAX_STEPS = 1000
SLAB_FMAX = 0.01  # eV/Å, relaxation of the clean slabs
KT = 0.1  # eV, Metropolis temperature
SHAKE = 1.2  # Å, radius of the "shake" displacement ball
JUMP_Z = (1.5, 3.0)  # Å above top: height of a "jump" move
P_SWAP = 0.2  # probability of a swap move for bimetallic adsorbates
P_JUMP = 0.5  # probability of a jump move (else shake), after the swap draw
DEDUP_E = 1e-3  # eV
DEDUP_FP = 0.1  # Å
FP_K = 12  # nearest-neighbour distances per adsorbate atom in the fingerprint

# Search budget per (substrate, formula): number of independent runs and hops per run.
# Larger adsorbates have many more minima, so they get more hops.
FULL = dict(runs=lambda n: {1: 2, 2: 3}.get(n, 4), hops=lambda n: {1: 5, 2: 10}.get(n, 12 + 3 * n))
QUICK = dict(runs=lambda n: 1, hops=lambda n: 6)
QUICK_PAIRS = (("Cu(111)", "Pt4"), ("Ag(100)", "Pt2Cu2"), ("Pt(111)", "Au2"))  # 1 train, 2 test


# --------------------------------------------------------------------------- helpers


def parse_formula(formula: str) -> list[tuple[str, int]]:
    """'Pt2Cu2' -> [('Pt', 2), ('Cu', 2)] in the written order."""
    import re

    out = [(el, int(k)) for el, k in re.findall(r"([A-Z][a-z]?)(\d+)", formula)]
    if "".join(f"{el}{k}" for el, k in out) != formula:
        raise ValueError(f"bad formula {formula!r}")
    return out


def adsorbate_symbols(formula: str) -> list[str]:
    return [el for el, k in parse_formula(formula) for _ in range(k)]


def all_pairs() -> list[tuple[str, str]]:
    formulas = [f"{el}{n}" for el in ADSORBATE_ELEMENTS for n in SIZES] + list(BIMETALLIC)
    return [(s, f) for s in SUBSTRATES for f in formulas]


def emt_lattice_constant(element: str) -> tuple[float, float]:
    """EMT equilibrium fcc lattice constant (Å) and energy per atom there (eV)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.data import atomic_numbers, reference_states
    from scipy.optimize import minimize_scalar

    def energy(a):
        atoms = bulk(element, "fcc", a=a)
        atoms.calc = EMT()
        return atoms.get_potential_energy() / len(atoms)

    a0 = reference_states[atomic_numbers[element]]["a"]
    res = minimize_scalar(energy, bracket=(0.97 * a0, a0, 1.03 * a0), tol=1e-8)
    return float(res.x), float(res.fun)


def free_atom_energy(element: str) -> float:
    """EMT energy (eV) of one isolated atom."""
    from ase import Atoms
    from ase.calculators.emt import EMT

    atoms = Atoms(element, positions=[[0.0, 0.0, 0.0]])
    atoms.calc = EMT()
    return float(atoms.get_potential_energy())


def build_slab(name: str, a: float):
    """Relaxed clean slab (FixAtoms on the bottom two layers), its energy and top z."""
    from ase.build import fcc100, fcc111
    from ase.calculators.emt import EMT
    from ase.constraints import FixAtoms
    from ase.optimize import FIRE

    element, facet, size = SUBSTRATES[name]
    build = {"111": fcc111, "100": fcc100}[facet]
    slab = build(element, size=size, a=a, vacuum=VACUUM)
    slab.info.pop("adsorbate_info", None)  # not serialisable in extxyz
    slab.set_constraint(FixAtoms(mask=slab.get_tags() >= 2))
    slab.calc = EMT()
    FIRE(slab, logfile=None).run(fmax=SLAB_FMAX, steps=2000)
    energy = float(slab.get_potential_energy())
    slab.calc = None
    top = float(slab.positions[:, 2].max())
    return slab, energy, top


def random_inplane(cell, rng) -> np.ndarray:
    f = rng.random(2)
    return f[0] * cell[0] + f[1] * cell[1]


def mic_min_dist(p: np.ndarray, others: np.ndarray, cell, pbc) -> float:
    from ase.geometry import get_distances

    if len(others) == 0:
        return np.inf
    _, d = get_distances(p[None], others, cell=cell, pbc=pbc)
    return float(d.min())


def place(p_fixed: np.ndarray, cell, pbc, rng, z_lo: float, z_hi: float) -> np.ndarray | None:
    """A random point in-plane in the cell at z in [z_lo, z_hi) at least MIN_DIST from
    p_fixed (periodic images included); None after 200 failed tries."""
    for _ in range(200):
        p = random_inplane(cell, rng)
        p[2] = rng.uniform(z_lo, z_hi)
        if mic_min_dist(p, p_fixed, cell, pbc) >= MIN_DIST:
            return p
    return None


def unbound_atoms(atoms, n_sub: int) -> np.ndarray:
    """Boolean mask over the adsorbate atoms: not connected to the substrate by a chain of
    bonds <= BOND (periodic images included)."""
    from ase.neighborlist import neighbor_list

    i, j = neighbor_list("ij", atoms, BOND)
    # flood fill from all substrate atoms over the bond graph
    reached = np.zeros(len(atoms), bool)
    reached[:n_sub] = True
    adj = defaultdict(list)
    for a, b in zip(i, j):
        adj[a].append(b)
    todo = list(range(n_sub))
    while todo:
        a = todo.pop()
        for b in adj[a]:
            if not reached[b]:
                reached[b] = True
                todo.append(b)
    return ~reached[n_sub:]


def classify(atoms, n_sub: int, top: float) -> tuple[str, int]:
    """('ok' or the reason to discard a relaxed structure, number of unbound atoms)."""
    z = atoms.positions[n_sub:, 2]
    n_unbound = int(unbound_atoms(atoms, n_sub).sum())
    if (z > top + Z_WINDOW[1]).any():
        return "desorbed", n_unbound
    if (z < top - BELOW_TOP).any():
        return "in_slab", n_unbound
    return ("ok" if n_unbound == 0 else "unbound"), n_unbound


def fingerprint(atoms, n_sub: int) -> np.ndarray:
    from ase.geometry import get_distances
    from ase.neighborlist import neighbor_list

    n_ads = len(atoms) - n_sub
    _, d = get_distances(atoms.positions[n_sub:], cell=atoms.cell, pbc=atoms.pbc)
    dd = np.sort(d[np.triu_indices(n_ads, 1)])
    i, dist = neighbor_list("id", atoms, 6.5)
    knn = []
    for a in range(n_sub, len(atoms)):
        da = np.sort(dist[i == a])[:FP_K]
        knn.append(np.pad(da, (0, FP_K - len(da)), constant_values=6.5))
    return np.concatenate([dd, np.sort(np.concatenate(knn))])


# --------------------------------------------------------------------------- one run


def basin_hopping(task: dict) -> dict:
    """One basin-hopping run; returns every valid minimum found plus statistics."""
    from ase import Atoms
    from ase.calculators.emt import EMT
    from ase.optimize import FIRE

    t0, c0 = time.perf_counter(), time.process_time()
    rng = np.random.default_rng(task["seed_seq"])
    slab = task["slab"]
    top = task["top"]
    n_sub = len(slab)
    symbols = adsorbate_symbols(task["formula"])
    n_ads = len(symbols)
    cell, pbc = slab.cell.array, slab.pbc
    bimetallic = len(set(symbols)) > 1

    # random start in the z-window
    pos = slab.positions.copy()
    for _ in range(n_ads):
        p = place(pos, cell, pbc, rng, top + Z_WINDOW[0], top + Z_WINDOW[1])
        if p is None:
            raise RuntimeError("could not place a starting atom")
        pos = np.vstack([pos, p])
    atoms = slab.copy() + Atoms(symbols, positions=pos[n_sub:])
    atoms.set_tags(list(slab.get_tags()) + [0] * n_ads)

    stats = Counter()
    minima = []
    n_force = 0

    def relax(trial):
        nonlocal n_force
        trial.calc = EMT()
        opt = FIRE(trial, logfile=None)
        converged = opt.run(fmax=FMAX, steps=MAX_RELAX_STEPS)
        status, n_unbound = classify(trial, n_sub, top)
        n_force += opt.nsteps + 1
        if converged and status == "ok":
            # A minimum to keep: rattle the adsorbate atoms (FIRE can stop on a saddle point,
            # e.g. a bridge site, where the force vanishes by symmetry) and refine the energy.
            trial.positions[n_sub:] += rng.normal(scale=RATTLE, size=(n_ads, 3))
            opt = FIRE(trial, logfile=None)
            converged = opt.run(fmax=FMAX_KEEP, steps=MAX_RELAX_STEPS)
            n_force += opt.nsteps + 1
            status, n_unbound = classify(trial, n_sub, top)
        trial.wrap()
        e = float(trial.get_potential_energy())
        trial.calc = None
        return e, ("unconverged" if not converged else status), n_unbound

    cur = atoms
    e_cur, status, u_cur = relax(cur)
    stats[status] += 1
    if status == "ok":
        minima.append((cur.positions.copy(), e_cur, 0))
    for hop in range(1, task["hops"] + 1):
        trial = cur.copy()
        p = trial.positions
        ads = np.arange(n_sub, n_sub + n_ads)
        r = rng.random()
        if bimetallic and r < P_SWAP:
            move = "swap"
            sym = np.array(trial.get_chemical_symbols())
            a = rng.choice(ads)
            b = rng.choice(ads[sym[ads] != sym[a]])
            p[[a, b]] = p[[b, a]]
        elif rng.random() < P_JUMP:
            move = "jump"
            if u_cur:  # settle floating atoms first
                a = rng.choice(ads[unbound_atoms(trial, n_sub)])
            elif rng.random() < 0.5:
                a = ads[np.argmax(p[ads, 2])]
            else:
                a = rng.choice(ads)
            others = np.delete(p, a, axis=0)
            q = place(others, cell, pbc, rng, top + JUMP_Z[0], top + JUMP_Z[1])
            if q is not None:
                p[a] = q
        else:
            move = "shake"
            v = rng.normal(size=(n_ads, 3))
            v *= (SHAKE * rng.random((n_ads, 1)) ** (1 / 3)) / np.linalg.norm(v, axis=1, keepdims=True)
            p[ads] += v
            p[ads, 2] = np.clip(p[ads, 2], top + 1.0, top + Z_WINDOW[1] - 0.5)
        trial.positions = p
        e, status, u = relax(trial)
        stats[status] += 1
        stats[f"move_{move}"] += 1
        if status in ("desorbed", "in_slab", "unconverged"):
            continue  # rejected
        if status == "ok":
            minima.append((trial.positions.copy(), e, hop))
        # An "unbound" minimum (atoms floating out of EMT's range) is not stored but may be
        # the walk's state: a random start often leaves atoms (or a floating fragment) in
        # vacuum. Fewer unbound atoms always wins, more always loses, else Metropolis; so
        # the walk first binds the floating atoms one by one (jump moves pick them), then
        # never leaves the bound states.
        if u < u_cur or (u == u_cur and (e < e_cur or rng.random() < np.exp(-(e - e_cur) / KT))):
            cur, e_cur, u_cur = trial, e, u
            stats["accepted"] += 1
    return dict(
        substrate=task["substrate"], formula=task["formula"], run=task["run"],
        numbers=atoms.numbers.copy(), tags=atoms.get_tags().copy(), minima=minima,
        stats=dict(stats), n_force=n_force, seconds=time.perf_counter() - t0,
        cpu_seconds=time.process_time() - c0,
    )


# --------------------------------------------------------------------------- main


def atomic_write(path: Path, write_fn) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write_fn(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--quick", action="store_true", help="tiny smoke-test version (< 1 min)")
    ap.add_argument("--workers", type=int, default=1, help="processes for independent runs")
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args(argv)

    from ase import Atoms
    from ase.constraints import FixAtoms
    from ase.io import write

    t_start = time.perf_counter()
    budget = QUICK if args.quick else FULL
    pairs = list(QUICK_PAIRS) if args.quick else all_pairs()
    held_out = set(HELD_OUT)

    # ---- bulk references and substrates
    t0 = time.perf_counter()
    elements = sorted({SUBSTRATES[s][0] for s in SUBSTRATES} | set(ADSORBATE_ELEMENTS))
    bulk_ref = {el: emt_lattice_constant(el) for el in elements}
    mu = {el: e for el, (a, e) in bulk_ref.items()}
    e_atom = {el: free_atom_energy(el) for el in elements}
    slabs = {}
    for name in SUBSTRATES:
        el = SUBSTRATES[name][0]
        slabs[name] = build_slab(name, bulk_ref[el][0])
    t_setup = time.perf_counter() - t0
    for name, (slab, e, top) in slabs.items():
        lx, ly = slab.cell.lengths()[:2]
        print(f"{name}: {len(slab)} atoms, cell {lx:.2f} x {ly:.2f} Å, E(slab) = {e:.4f} eV, "
              f"top z = {top:.3f} Å", flush=True)
    print("EMT a (Å) / mu (eV/atom): " + ", ".join(
        f"{el} {a:.4f} / {e:+.5f}" for el, (a, e) in bulk_ref.items()), flush=True)

    # ---- tasks: one per (pair, run); independent random streams from (seed, pair, run)
    tasks = []
    for k, (sub, formula) in enumerate(pairs):
        n = len(adsorbate_symbols(formula))
        slab, _, top = slabs[sub]
        for run in range(budget["runs"](n)):
            tasks.append(dict(
                substrate=sub, formula=formula, run=run, hops=budget["hops"](n), slab=slab,
                top=top, seed_seq=np.random.SeedSequence([args.seed, k, run]),
            ))
    # biggest tasks first so that a pool stays busy to the end
    order = sorted(range(len(tasks)), key=lambda i: -tasks[i]["hops"] * len(
        adsorbate_symbols(tasks[i]["formula"])))
    print(f"{len(pairs)} pairs, {len(tasks)} runs, "
          f"{sum(t['hops'] + 1 for t in tasks)} relaxations planned, workers={args.workers}",
          flush=True)

    t0 = time.perf_counter()
    results = []
    if args.workers <= 1:
        it = (basin_hopping(tasks[i]) for i in order)
        pool = None
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(args.workers)
        it = pool.imap_unordered(basin_hopping, [tasks[i] for i in order])
    done_pairs = Counter()
    runs_per_pair = Counter((t["substrate"], t["formula"]) for t in tasks)
    try:
        for res in it:
            results.append(res)
            key = (res["substrate"], res["formula"])
            done_pairs[key] += 1
            if done_pairs[key] == runs_per_pair[key]:
                el = time.perf_counter() - t0
                print(f"[{el:7.1f} s] {key[0]:8s} {key[1]:7s} done "
                      f"({len(results)}/{len(tasks)} runs)", flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    t_search = time.perf_counter() - t0

    # ---- dedup per pair, in (run, hop) order
    t0 = time.perf_counter()
    by_pair = defaultdict(list)
    for res in sorted(results, key=lambda r: (pairs.index((r["substrate"], r["formula"])), r["run"])):
        by_pair[(res["substrate"], res["formula"])].append(res)
    frames = []
    summary_pairs = {}
    discards_total = Counter()
    for sub, formula in pairs:
        runs = by_pair[(sub, formula)]
        slab, e_slab, top = slabs[sub]
        n_sub = len(slab)
        comp = parse_formula(formula)
        e_ref = e_slab + sum(k * mu[el] for el, k in comp)
        e_ref_atoms = e_slab + sum(k * e_atom[el] for el, k in comp)
        kept = []  # (atoms, energy, fingerprint)
        n_found = 0
        stats = Counter()
        for res in runs:
            stats.update(res["stats"])
            for pos, e, hop in res["minima"]:
                n_found += 1
                atoms = Atoms(numbers=res["numbers"], positions=pos, cell=slab.cell, pbc=slab.pbc)
                atoms.set_tags(res["tags"])
                fp = fingerprint(atoms, n_sub)
                dup = any(abs(e - ek) < DEDUP_E and len(fp) == len(fk)
                          and np.abs(fp - fk).max() < DEDUP_FP for _, ek, fk in kept)
                if dup:
                    continue
                atoms.set_constraint(FixAtoms(indices=slab.constraints[0].index))
                atoms.info.update(run=res["run"], hop=hop)
                kept.append((atoms, e, fp))
        split = "test" if (sub, formula) in held_out else "train"
        energies = np.array([e for _, e, _ in kept])
        e_best = float(energies.min()) if len(kept) else None
        for atoms, e, _ in kept:
            atoms.info = dict(
                substrate=sub, formula=formula, energy=e, adsorption_energy=e - e_ref,
                binding_energy=e - e_ref_atoms,
                e_above_best=e - e_best, n_adsorbate=len(atoms) - n_sub,
                run=int(atoms.info["run"]), hop=int(atoms.info["hop"]),
                is_best=bool(e == e_best), z_window=f"{Z_WINDOW[0]:g},{Z_WINDOW[1]:g}",
                split=split,
            )
        # order by energy within a pair
        kept.sort(key=lambda t: t[1])
        frames.extend(a for a, _, _ in kept)
        discards = {k: stats.get(k, 0) for k in ("desorbed", "in_slab", "unbound", "unconverged")}
        discards_total.update(discards)
        summary_pairs[f"{sub} {formula}"] = dict(
            substrate=sub, formula=formula, split=split, runs=len(runs),
            relaxations=sum(sum(v for k, v in r["stats"].items()
                                if k in ("ok", "desorbed", "in_slab", "unbound", "unconverged"))
                            for r in runs),
            valid_minima=n_found, distinct_minima=len(kept), discarded=discards,
            accepted=stats.get("accepted", 0),
            best_energy=e_best, best_adsorption_energy=None if e_best is None else e_best - e_ref,
            best_binding_energy_per_atom=None if e_best is None
            else (e_best - e_ref_atoms) / sum(k for _, k in comp),
            n_within_0p5eV=int((energies - e_best <= 0.5).sum()) if len(kept) else 0,
            seconds=sum(r["seconds"] for r in runs),
            cpu_seconds=sum(r["cpu_seconds"] for r in runs), force_calls=sum(r["n_force"] for r in runs),
        )
    t_dedup = time.perf_counter() - t0

    # ---- write
    out = args.out
    xyz = out / "surfaces.extxyz"
    atomic_write(xyz, lambda p: write(p, frames, format="extxyz"))
    t_total = time.perf_counter() - t_start
    per_sub = Counter(a.info["substrate"] for a in frames)
    per_split = Counter(a.info["split"] for a in frames)
    summary = dict(
        description=__doc__.split("\n")[0] + " " + __doc__.split("\n")[1].strip(),
        command="python -m experiments.surfaces.make_dataset "
                + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        seed=args.seed, quick=args.quick, workers=args.workers,
        parameters=dict(
            potential="ase.calculators.emt.EMT", vacuum=VACUUM, z_window=Z_WINDOW,
            below_top=BELOW_TOP, min_dist=MIN_DIST, bond_cutoff=BOND, fmax=FMAX, fmax_keep=FMAX_KEEP, rattle=RATTLE,
            max_relax_steps=MAX_RELAX_STEPS, slab_fmax=SLAB_FMAX, optimizer="FIRE", kT=KT,
            shake_radius=SHAKE, jump_z=JUMP_Z, p_swap=P_SWAP, p_jump=P_JUMP,
            dedup_energy=DEDUP_E, dedup_fingerprint=DEDUP_FP, fingerprint_k=FP_K,
            runs_per_pair={str(n): budget["runs"](n) for n in range(1, 9)},
            hops_per_run={str(n): budget["hops"](n) for n in range(1, 9)},
        ),
        bulk={el: dict(a=a, mu=e, free_atom_energy=e_atom[el]) for el, (a, e) in bulk_ref.items()},
        mu_definition="EMT energy per atom of bulk fcc X at EMT's equilibrium lattice constant",
        substrates={
            name: dict(element=SUBSTRATES[name][0], facet=SUBSTRATES[name][1],
                       size=SUBSTRATES[name][2], n_atoms=len(s), energy=e, top_z=top,
                       cell=s.cell.array.tolist(), fixed_layers="tags 2, 3 (bottom two)")
            for name, (s, e, top) in slabs.items()
        },
        held_out=[list(p) for p in HELD_OUT if p in set(pairs)],
        n_pairs=len(pairs), n_pairs_test=sum(p in held_out for p in pairs),
        n_structures=len(frames), structures_per_substrate=dict(per_sub),
        structures_per_split=dict(per_split), discarded=dict(discards_total),
        relaxations=sum(v["relaxations"] for v in summary_pairs.values()),
        force_calls=sum(v["force_calls"] for v in summary_pairs.values()),
        timings=dict(setup_s=t_setup, search_s=t_search, dedup_s=t_dedup, total_s=t_total,
                     search_wall_s_sum_of_runs=sum(r["seconds"] for r in results),
                     search_cpu_s_sum_of_runs=sum(r["cpu_seconds"] for r in results),
                     main_process_cpu_s=time.process_time()),
        platform=dict(python=platform.python_version(), machine=platform.machine(),
                      ase=__import__("ase").__version__, numpy=np.__version__),
        pairs=summary_pairs,
    )
    atomic_write(out / "summary.json",
                 lambda p: Path(p).write_text(json.dumps(summary, indent=1) + "\n"))
    print(f"{len(frames)} structures ({dict(per_sub)}; {dict(per_split)}), "
          f"discarded {dict(discards_total)}", flush=True)
    print(f"timings: setup {t_setup:.1f} s, search {t_search:.1f} s, dedup {t_dedup:.1f} s, "
          f"total {t_total:.1f} s wall; search CPU "
          f"{summary['timings']['search_cpu_s_sum_of_runs']:.1f} s -> {xyz}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
