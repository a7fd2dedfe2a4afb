"""The quick start: train a small joint model on the built-in EMT clusters and sample.

``agedi-jax quickstart`` (or :func:`quickstart` from Python) writes into ``OUT``::

    run/                 the training run (config.json, metrics.jsonl, loss.png, checkpoints/)
    samples.extxyz       generated clusters (seed, config hash, sampler in every frame's info)
    samples.extxyz.config.json
    summary.json         what was generated: compositions, validity, timings

It finishes in a few minutes on 2 CPU cores (and resumes if interrupted).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np


def _min_distance(atoms) -> float:
    if len(atoms) < 2:
        return float("inf")
    d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
    return float(d[np.triu_indices(len(atoms), 1)].min())


def _emt_gaps(samples, training) -> np.ndarray:
    """EMT energy per atom of each (unrelaxed) sample minus the lowest EMT energy per atom of
    a training structure of the same composition (NaN where none exists or EMT lacks an
    element). A direct quality figure: 0 means as good as the best training minimum."""
    from ase.calculators.emt import EMT

    best: dict[str, float] = {}
    for a in training:
        e = a.info.get("energy")
        if e is not None:
            f = a.get_chemical_formula()
            best[f] = min(best.get(f, np.inf), float(e) / len(a))
    out = np.full(len(samples), np.nan)
    for k, a in enumerate(samples):
        f = a.get_chemical_formula()
        if f not in best:
            continue
        try:
            b = a.copy()
            b.calc = EMT()
            out[k] = b.get_potential_energy() / len(b) - best[f]
        except NotImplementedError:
            continue
    return out


def quickstart(
    out: str | Path = "runs/quickstart",
    overrides: Sequence[str] = (),
    num_samples: int = 32,
    progress: bool = True,
) -> dict:
    """Train the ``quickstart`` preset on the built-in data, sample ``num_samples`` clusters
    with sizes drawn from the training data, write them, print where everything went."""
    import jax

    from agedi_jax.config import config_hash, override, preset
    from agedi_jax.generate import sample_atoms
    from agedi_jax.results import write_extxyz
    from agedi_jax.train import fit, load_training_data

    out = Path(out)
    cfg = override(preset("quickstart"), list(overrides))
    t0 = time.perf_counter()
    result = fit(cfg, out / "run", progress=progress)
    t_train = time.perf_counter() - t0
    model = result.model
    params = result.state.ema_params if cfg.sample.use_ema else result.state.params
    cfg = model.config

    # sizes and their frequencies as in the training data, drawn with the sampling seed
    data = load_training_data(cfg)
    sizes = np.array([len(a) for a in data.structures])
    rng = np.random.default_rng(cfg.sample.seed)
    wanted = np.sort(rng.choice(sizes, size=num_samples))
    t0 = time.perf_counter()
    structures = sample_atoms(model, params, n_atoms=[int(n) for n in wanted], num_samples=1, progress=progress)
    t_sample = time.perf_counter() - t0
    path = write_extxyz(out / "samples.extxyz", structures, cfg)

    gaps = _emt_gaps(structures, data.structures)
    formulas = Counter(a.get_chemical_formula() for a in structures)
    mono = float(np.mean([len(set(a.get_chemical_symbols())) == 1 for a in structures]))
    dmin = np.array([_min_distance(a) for a in structures])
    summary = {
        "config_hash": config_hash(cfg),
        "train_seconds": round(t_train, 1),
        "sample_seconds": round(t_sample, 1),
        "num_samples": len(structures),
        "final_train_loss": next((r["loss"] for r in reversed(result.metrics) if r.get("split") == "train"), None),
        "final_val_loss": next((r["loss"] for r in reversed(result.metrics) if r.get("split") == "val"), None),
        "monometallic_fraction": mono,
        "min_distance_median": float(np.median(dmin)),
        "min_distance_fraction_above_1.8A": float(np.mean(dmin > 1.8)),
        "emt_gap_median_eV_per_atom": float(np.nanmedian(gaps)) if np.isfinite(gaps).any() else None,
        "emt_gap_fraction_below_0.1eV_per_atom": float(np.nanmean(gaps < 0.1)) if np.isfinite(gaps).any() else None,
        "most_common": formulas.most_common(8),
        "device": str(jax.devices()[0]),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print(f"quick start done in {t_train + t_sample:.0f} s (training {t_train:.0f} s, sampling {t_sample:.0f} s)")
    print(f"  training run:   {(out / 'run').resolve()}")
    print(f"  loss plot:      {(out / 'run' / 'loss.png').resolve()}")
    print(f"  checkpoints:    {(out / 'run' / 'checkpoints').resolve()}  (latest, best)")
    print(f"  samples:        {path.resolve()}  ({len(structures)} clusters)")
    print(f"  summary:        {(out / 'summary.json').resolve()}")
    print(f"  mono-metallic:  {100 * mono:.0f} % of samples; median shortest bond {np.median(dmin):.2f} Å")
    if np.isfinite(gaps).any():
        print(f"  EMT energy:     median {np.nanmedian(gaps):.3f} eV/atom above the lowest training minimum of the same "
              f"composition (unrelaxed samples; {100 * np.nanmean(gaps < 0.1):.0f} % within 0.1 eV/atom)")
    print(f"  examples:       {', '.join(f for f, _ in formulas.most_common(6))}")
    print(f"  sample more:    agedi-jax sample {out / 'run'} --n-atoms 13 --num 16 --out more.extxyz")
    return summary
