"""Fixed-seed sample fingerprints of the committed checkpoints: a refactoring that must not
change results is checked by running this before and after and comparing.

    python -m experiments.checks.sample_fingerprint --out before.npz      # on the old commit
    python -m experiments.checks.sample_fingerprint --out after.npz       # on the new one
    python -m experiments.checks.sample_fingerprint --compare before.npz after.npz

Ten cases on ``experiments/clusters/runs/cpu_gm`` (sizes, composition, type
interpolation, predictor-corrector, probability-flow ODE with analytic type steps),
``experiments/two_d/runs/cpu_geo`` (guided, conditional, unconditional on six C2DB
validation templates) and ``experiments/bulk/runs/perov5_cpu`` (crystal structure
prediction and de novo generation, cell and positions), each a fixed seed and a few steps. ``--compare`` prints, per case,
whether the samples are bitwise equal (SHA-256 of positions, numbers and cells), the
largest position difference (Å) and the number of atoms whose element differs; it exits 1
when some case is not bitwise equal (``--atol`` relaxes that to a position tolerance with
identical elements, for changes that are meant to alter float rounding only).

Needs the shared data (``$AGEDI_JAX_DATA``, else ``../shared/data``) for the C2DB templates.
"""

from __future__ import annotations

import argparse
import hashlib
import sys

import numpy as np

from experiments.common import REPO, data_root


def digest(atoms_list) -> str:
    h = hashlib.sha256()
    for a in atoms_list:
        h.update(np.ascontiguousarray(a.positions, np.float64).tobytes())
        h.update(np.asarray(a.numbers, np.int64).tobytes())
        h.update(np.ascontiguousarray(np.asarray(a.cell), np.float64).tobytes())
    return h.hexdigest()


def cases() -> dict:
    """case name -> list of generated ``ase.Atoms``."""
    from agedi_jax import load_model, sample_atoms
    from agedi_jax.data import load_c2db_csv

    out = {}
    m, p, _ = load_model(REPO / "experiments/clusters/runs/cpu_gm")
    out["gm_sizes"] = sample_atoms(m, p, n_atoms=[8, 13], num_samples=4, steps=40, seed=3)
    out["gm_comp"] = sample_atoms(m, p, compositions=["Pt6Cu7"], num_samples=4, steps=40, seed=1)
    out["gm_interp"] = sample_atoms(m, p, n_atoms=13, num_samples=4, steps=40, seed=2, interpolate=("Pt", "Cu"))
    out["gm_pc"] = sample_atoms(m, p, n_atoms=13, num_samples=4, steps=15, seed=4, sampler="pc")
    out["gm_ode_analytic"] = sample_atoms(m, p, n_atoms=13, num_samples=4, steps=15, seed=5, sampler="ode",
                                          type_sampler="analytic")
    m, p, _ = load_model(REPO / "experiments/two_d/runs/cpu_geo")
    ds = load_c2db_csv(data_root() / "c2db" / "val.csv")
    tm = ds.structures[:6]
    labels = [int(x) for x in ds.labels[:6]] if ds.labels is not None else None
    out["c2db_guided"] = sample_atoms(m, p, templates=tm, label=labels, guidance=2.0, steps=40, seed=0)
    out["c2db_cond"] = sample_atoms(m, p, templates=tm, label=labels, steps=40, seed=0)
    out["c2db_uncond"] = sample_atoms(m, p, templates=tm, steps=30, seed=7)
    m, p, _ = load_model(REPO / "experiments/bulk/runs/perov5_cpu")
    out["bulk_csp"] = sample_atoms(m, p, compositions=["SrTiO3", "BaZrO3", "KNbO3"], num_samples=2, steps=30, seed=11)
    out["bulk_denovo"] = sample_atoms(m, p, n_atoms=5, num_samples=4, steps=30, seed=12)
    return out


def save(path: str) -> None:
    arrays = {}
    for name, atoms in cases().items():
        arrays[f"{name}/sha256"] = np.array(digest(atoms))
        for i, a in enumerate(atoms):
            arrays[f"{name}/{i}/positions"] = np.asarray(a.positions, np.float64)
            arrays[f"{name}/{i}/numbers"] = np.asarray(a.numbers, np.int64)
        print(f"{name}: {arrays[f'{name}/sha256']}")
    np.savez_compressed(path, **arrays)


def compare(a_path: str, b_path: str, atol: float | None) -> int:
    a, b = np.load(a_path), np.load(b_path)
    names = sorted({k.split("/")[0] for k in a.files} & {k.split("/")[0] for k in b.files})
    for name in sorted({k.split("/")[0] for k in a.files} ^ {k.split("/")[0] for k in b.files}):
        print(f"{name:16s} in one file only (written by another version of this script): not compared")
    bad = 0
    for name in names:
        same = str(a[f"{name}/sha256"]) == str(b[f"{name}/sha256"])
        dx, dz = 0.0, 0
        i = 0
        while f"{name}/{i}/positions" in a.files:
            pa, pb = a[f"{name}/{i}/positions"], b[f"{name}/{i}/positions"]
            if pa.shape != pb.shape:
                dx, dz = float("inf"), -1
                break
            dx = max(dx, float(np.max(np.abs(pa - pb))) if pa.size else 0.0)
            dz += int(np.sum(a[f"{name}/{i}/numbers"] != b[f"{name}/{i}/numbers"]))
            i += 1
        ok = same or (atol is not None and dz == 0 and dx <= atol)
        bad += not ok
        print(f"{name:16s} bitwise {'equal' if same else 'DIFFERENT'}  max |dx| {dx:.3g} Å  elements differ on {dz} atoms"
              f"  {'ok' if ok else 'FAIL'}")
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the fingerprints and samples here (.npz)")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    ap.add_argument("--atol", type=float, default=None, help="accept position differences up to this (Å)")
    args = ap.parse_args(argv)
    if args.compare:
        return compare(*args.compare, args.atol)
    if not args.out:
        ap.error("give --out FILE or --compare BEFORE AFTER")
    save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
