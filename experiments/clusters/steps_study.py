"""How many Euler–Maruyama steps (Eq. 9) does the GM model need? A small study that chooses
the step count of ``sample.py``.

    python -m experiments.clusters.steps_study --budget cpu --steps 50 100 200 500

Samples ``--per-size`` clusters of every training size (3–29 atoms) for each step count (same
seed) and reports: validity (no pair closer than max(0.5 Å, half the covalent-radius sum),
one connected component), the mono-element fraction, the median shortest distance, the
median distance in element-agnostic SOAP space from each sample to its nearest training
cluster of the same size (a fidelity proxy), and the wall time. Writes
``results/<budget>/steps_study.json``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from experiments.clusters import settings


def nearest_same_size(samples, reference) -> np.ndarray:
    """Euclidean distance from each sample's element-agnostic SOAP vector to the nearest
    reference structure with the same number of atoms."""
    from agedi_jax.evaluation import soap_features

    f_s = soap_features(samples, element_agnostic=True)
    f_r = soap_features(reference, element_agnostic=True)
    n_s = np.array([len(a) for a in samples])
    n_r = np.array([len(a) for a in reference])
    out = np.empty(len(samples))
    for i in range(len(samples)):
        cand = f_r[n_r == n_s[i]]
        out[i] = np.sqrt(((cand - f_s[i]) ** 2).sum(1)).min()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    settings.add_study_arguments(ap, seed=3, quick="1 per size, steps 10 and 20")
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 100, 200, 500])
    ap.add_argument("--per-size", type=int, default=4)
    args = ap.parse_args(argv)

    from agedi_jax.checkpoint import load_model
    from agedi_jax.evaluation import composition_stats, validity

    results = args.results or settings.results_dir(args.budget)
    results.mkdir(parents=True, exist_ok=True)
    steps_list, per_size = (args.steps, args.per_size) if not args.quick else ([10, 20], 1)
    model, params, config = load_model(args.run or settings.run_dir(args.budget, "gm"))
    reference = settings.reference_set(config, None)
    sizes = sorted({len(a) for a in reference})
    from agedi_jax.generate import sample_atoms

    rows = []
    for steps in steps_list:
        t0 = time.perf_counter()
        samples = sample_atoms(model, params, n_atoms=sizes, num_samples=per_size, steps=steps,
                               seed=args.seed, batch_size=len(sizes) * per_size)
        dt = time.perf_counter() - t0
        for a in samples:
            a.pbc = False
        v = validity(samples)
        d_nn = nearest_same_size(samples, reference)
        row = dict(steps=steps, n=len(samples), wall_s=round(dt, 1), frac_valid=v["frac_valid"],
                   frac_distance_ok=v["frac_distance_ok"], frac_connected=v["frac_connected"],
                   fraction_monoelement=composition_stats(samples)["fraction_monoelement"],
                   median_min_distance=round(float(np.median(v["min_distance"])), 3),
                   median_soap_nn_distance=round(float(np.median(d_nn)), 4))
        rows.append(row)
        print(json.dumps(row), flush=True)
    # for scale: the same distance for training clusters moved by σ Å of noise (their nearest
    # neighbour is then usually their own clean version)
    from agedi_jax.evaluation import noised_baseline

    scale = {}
    for sigma in (0.05, 0.1, 0.2):
        base = noised_baseline(reference, 1.0, sigma, seed=0)
        pick = np.random.default_rng(0).choice(len(base), min(len(base), len(samples)), replace=False)
        scale[str(sigma)] = round(float(np.median(nearest_same_size([base[i] for i in pick], reference))), 4)
    out = dict(rows=rows, soap_nn_distance_of_noised_training_data=scale, per_size=per_size, sizes=sizes)
    (results / "steps_study.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(scale))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
