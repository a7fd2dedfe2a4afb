"""Crystal structure prediction (CSP) with a trained perov5 (or carbon24) model, evaluated as
the crystal-generation literature reports it (CDVAE / DiffCSP / FlowMM): for every structure
of the validation split, generate one structure with its composition and match it against
the reference with pymatgen's ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``.

The validation split is the one the training run held out (``data.val_fraction`` and
``data.split_seed`` of the run's config, :func:`agedi_jax.data.bulk.split_indices`): the
data directory holds only the published *validation* CSV of each benchmark, which is used
as training data, so there is no separate test CSV here.

Reported (``experiments/bulk/results/<name>.json``):

* match rate and RMSE, one sample per validation structure, at the config's sampler steps,
  also split into validation structures that have / do not have a duplicate in the
  training split (:func:`agedi_jax.data.bulk.cross_duplicates`);
* structural validity of the samples; sampling time per structure (compilation excluded:
  a warm-up call with the same batch shape runs first);
* a match-rate vs sampler-steps sweep (``--sweep``), and best-of-k (``--k``) on the first
  ``--k-subset`` validation structures;
* plots (match rate vs steps, RMSE histogram, a few generated cells next to their
  references).

Run from the repository root::

    python -m experiments.bulk.evaluate experiments/bulk/runs/perov5_cpu --sweep 100,250 --k 5 --k-subset 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from experiments.common import REPO, pyplot, save_figure, write_json

HERE = Path(__file__).resolve().parent


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _formula(atoms) -> str:
    return atoms.get_chemical_formula(mode="metal")


def _sample(model, params, formulas, steps, seed, bs, num_samples=1):
    """(structures, seconds per batch) for ``formulas``, in batches of ``bs`` compositions
    (``num_samples`` each), one sample_atoms call per batch (seed ``seed + batch index``).
    The last batch is padded to ``bs`` with repeated compositions (dropped afterwards) so
    that every call has the same shape and compiles once; the first call's time includes
    the compilation."""
    from agedi_jax.generate import sample_atoms

    out, times = [], []
    for b, i in enumerate(range(0, len(formulas), bs)):
        chunk = list(formulas[i:i + bs])
        real = len(chunk)
        chunk += [formulas[0]] * (bs - real)
        t0 = time.perf_counter()
        gen = sample_atoms(model, params, compositions=chunk, num_samples=num_samples, steps=steps, seed=seed + b,
                           batch_size=bs * num_samples)
        times.append(time.perf_counter() - t0)
        out += gen[: real * num_samples]
    return out, times


def _summ(res: dict) -> dict:
    return {k: v for k, v in res.items() if k not in ("matched", "rms", "best")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="training run directory")
    ap.add_argument("--name", default="perov5", help="results name (results/<name>.json, plots)")
    ap.add_argument("--rows", default="0:0", help="comma-separated STEPS:N rows: sampler steps (0 = the config's) "
                    "on the first N validation structures (0 = all); the first row is the main one, and rows on the "
                    "same or more structures make the match-rate vs steps sweep, e.g. 500:100,100:0,250:100")
    best = ap.add_argument_group("best of k (CSP)")
    best.add_argument("--k", type=int, default=0, help="best-of-k samples per structure (0 = skip)")
    best.add_argument("--k-subset", type=int, default=50, help="first this many validation structures for best-of-k")
    best.add_argument("--k-steps", type=int, default=0, help="sampler steps of best-of-k and de novo (0 = the config's)")
    novo = ap.add_argument_group("de novo generation")
    novo.add_argument("--de-novo", type=int, default=0, help="de novo samples (number of atoms given; 0 = skip)")
    novo.add_argument("--de-novo-only", action="store_true",
                      help="keep results/<name>.json and recompute only its de novo part (same seed: same samples)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--no-dedup", action="store_true", help="skip the train/val duplicate analysis")
    args = ap.parse_args(argv)

    import jax

    from agedi_jax.checkpoint import load_model
    from agedi_jax.data.bulk import cross_duplicates, split_indices
    from agedi_jax.evaluation.crystals import (
        MATCHER_TOLERANCES,
        best_of_k,
        crystal_validity_batch,
        match_rate,
    )
    from agedi_jax.train import load_training_data

    t_start = time.perf_counter()
    run = Path(args.run)
    ckpt = run / "checkpoints" / "latest" if (run / "checkpoints" / "latest").is_dir() else run
    model, params, cfg = load_model(ckpt)  # the latest checkpoint (EMA parameters), not "best"
    meta_path = ckpt / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    steps = cfg.sample.steps
    ds = load_training_data(cfg)
    train_idx, val_idx = split_indices(len(ds), cfg.data.val_fraction, cfg.data.split_seed)
    structures = ds.structures
    val = [structures[i] for i in val_idx]
    train = [structures[i] for i in train_idx]
    n = len(val)
    ref = val[:n]
    formulas = [_formula(a) for a in ref]
    print(f"{len(ds)} structures: {len(train_idx)} train, {len(val_idx)} val; evaluating {n}", flush=True)
    if args.de_novo_only:
        out_json = HERE / "results" / f"{args.name}.json"
        results = json.loads(out_json.read_text())
        if results.get("run") != _rel(run):
            raise SystemExit(f"{out_json} holds run {results.get('run')!r}, not {_rel(run)!r}")
        count = args.de_novo or results.get("de_novo", {}).get("n") or 100
        results["de_novo"] = de_novo(model, params, ref, train, count, args.k_steps or steps, args.seed + 2,
                                     args.batch_size)
        results.setdefault("commands", []).append(
            "python -m experiments.bulk.evaluate " + " ".join(sys.argv[1:] if argv is None else argv))
        write_json(out_json, results)
        print(f"wrote {_rel(out_json)} (de novo part)")
        return

    results: dict = {
        "run": _rel(run),
        "checkpoint": _rel(ckpt),
        "checkpoint_step": meta.get("step"),
        "config": cfg.to_dict(),
        "data": {"dataset": cfg.data.dataset, "n": len(ds), "n_train": len(train_idx), "n_val": len(val_idx),
                 "val_fraction": cfg.data.val_fraction, "split_seed": cfg.data.split_seed,
                 "evaluated": "each row: the first N structures of the validation split (sorted indices)"},
        "matcher": dict(MATCHER_TOLERANCES),
        "device": str(jax.devices()[0]),
        "seed": args.seed,
        "command": "python -m experiments.bulk.evaluate " + " ".join(sys.argv[1:] if argv is None else argv),
    }

    # duplicates of the evaluated validation structures in the training split
    dup = np.zeros(n, bool)
    if not args.no_dedup:
        t0 = time.perf_counter()
        dup = np.asarray(cross_duplicates(train, ref), bool)
        results["duplicates"] = {"n_val_with_train_duplicate": int(dup.sum()), "n": n,
                                 "fraction": float(dup.mean()), "seconds": round(time.perf_counter() - t0, 1)}
        print(f"val structures with a training duplicate: {int(dup.sum())}/{n}", flush=True)

    bs = args.batch_size
    out_json = HERE / "results" / f"{args.name}.json"

    def row(step_count: int, nn: int) -> tuple[dict, list]:
        gen, times = _sample(model, params, formulas[:nn], step_count, args.seed, bs)
        mr = match_rate(gen, ref[:nn])
        val_ = crystal_validity_batch(gen)
        warm = times[1:]  # the first call compiles
        out = {"steps": step_count, **_summ(mr), "validity": val_["rate"], "validity_reasons": val_["reason_counts"],
               "batch_size": bs, "batch_seconds": [round(t, 2) for t in times],
               "seconds_per_structure": (float(np.median(warm)) / bs) if warm else None,
               "timing": "median wall time of a batch of batch_size structures after the first (compiling) one, "
                         "divided by batch_size; null when there was only one batch"}
        if not args.no_dedup:
            d = dup[:nn]
            m = np.asarray(mr["matched"], bool)
            rms = np.asarray(mr["rms"], float)
            for key, sel in (("with_train_duplicate", d), ("without_train_duplicate", ~d)):
                out[key] = {"n": int(sel.sum()), "n_matched": int(m[sel].sum()),
                            "match_rate": float(m[sel].mean()) if sel.any() else float("nan"),
                            "rmse": float(np.nanmean(rms[sel & m])) if (sel & m).any() else float("nan")}
        if nn > n_main:  # the same samples restricted to the main row's structures (same seeds per batch)
            m = np.asarray(mr["matched"], bool)[:n_main]
            rms = np.asarray(mr["rms"], float)[:n_main]
            out["first_n_main"] = {"n": n_main, "n_matched": int(m.sum()), "match_rate": float(m.mean()),
                                   "rmse": float(rms[m].mean()) if m.any() else float("nan")}
        spp = out["seconds_per_structure"]
        print(f"steps {step_count}: match {out['n_matched']}/{nn} = {out['match_rate']:.3f}, RMSE {out['rmse']:.4f}, "
              f"valid {out['validity']:.3f}, batches {out['batch_seconds']} s"
              + (f", {spp:.2f} s/structure" if spp else ""), flush=True)
        return out, [gen, mr]

    rows = [tuple(int(x) for x in r.split(":")) for r in args.rows.split(",") if r.strip()]
    rows = [(st or steps, min(nn, n) if nn > 0 else n) for st, nn in rows]
    n_main = rows[0][1]
    results["rows"] = []
    gen_main = mr_main = None
    for k, (st, nn) in enumerate(rows):
        r, (gen, mr) = row(st, nn)
        results["rows"].append(r)
        if k == 0:
            gen_main, mr_main = gen, mr
            results["csp"] = r
            results["per_structure"] = {
                "val_index": [int(i) for i in val_idx[:nn]],
                "formula": formulas[:nn],
                "rms": [None if not np.isfinite(x) else float(x) for x in mr["rms"]],
                "train_duplicate": [bool(x) for x in dup[:nn]],
            }
            _plots(args.name, results, ref, gen_main, mr_main)
        write_json(out_json, results)
    # match rate vs steps on the main row's structures
    sweep = []
    for r in results["rows"]:
        if r["n"] == n_main:
            sweep.append({"steps": r["steps"], "n": n_main, "n_matched": r["n_matched"], "match_rate": r["match_rate"],
                          "rmse": r["rmse"]})
        elif "first_n_main" in r:
            sweep.append({"steps": r["steps"], **r["first_n_main"]})
    results["sweep"] = sorted(sweep, key=lambda r: r["steps"])
    write_json(out_json, results)

    if args.k > 1:
        kn = min(args.k_subset, n)
        ks = args.k_steps or steps
        gen_k, times = _sample(model, params, formulas[:kn], ks, args.seed + 100, max(1, bs // args.k),
                               num_samples=args.k)
        lists = [gen_k[i * args.k:(i + 1) * args.k] for i in range(kn)]
        bk = best_of_k(lists, ref[:kn])
        one = match_rate([g[0] for g in lists], ref[:kn])
        results["best_of_k"] = {"k": args.k, "n": kn, "steps": ks, **_summ(bk), "first_sample_match_rate":
                                one["match_rate"], "first_sample_n_matched": one["n_matched"],
                                "first_sample_rmse": one["rmse"], "seed": args.seed + 100,
                                "batch_seconds": [round(t, 2) for t in times]}
        print(f"best of {args.k} on {kn} at {ks} steps: {bk['n_matched']}/{kn} = {bk['match_rate']:.3f}, "
              f"RMSE {bk['rmse']:.4f} (first sample {one['n_matched']}/{kn})", flush=True)
        write_json(out_json, results)

    if args.de_novo > 0:
        results["de_novo"] = de_novo(model, params, ref, train, args.de_novo, args.k_steps or steps, args.seed + 2, bs)

    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(HERE / "results" / f"{args.name}.json", results)
    _plots(args.name, results, ref, gen_main, mr_main)
    print(f"wrote {_rel(HERE / 'results' / (args.name + '.json'))} ({results['total_seconds']} s)")


def de_novo(model, params, ref: list, train: list, count: int, steps: int, seed: int, bs: int) -> dict:
    """De novo generation (number of atoms given): ``count`` samples with the size mix of
    ``ref``; validity, density and element-count Wasserstein distances to ``ref``, and
    coverage (COV-R / COV-P) with cutoffs calibrated on the data
    (:func:`agedi_jax.evaluation.crystals.coverage_cutoffs`: the median distance of a
    held-out structure to its nearest structure in a random training subset as large as the
    generated set), next to the same figures of another such subset (the "copy the training
    set" baseline; coverage grows with the set's size, so both have the generated set's)."""
    from agedi_jax.evaluation.crystals import (
        coverage_cutoffs,
        crystal_coverage,
        crystal_validity_batch,
        de_novo_metrics,
    )
    from agedi_jax.generate import sample_atoms

    n = len(ref)
    sizes = sorted({len(a) for a in ref})
    t0 = time.perf_counter()
    gen = []
    for size in sizes:  # as many per size as the evaluated references have
        reps = max(1, round(count * sum(len(a) == size for a in ref) / n))
        gen += sample_atoms(model, params, n_atoms=size, num_samples=reps, steps=steps, seed=seed, batch_size=bs)
    secs = time.perf_counter() - t0
    # coverage depends on the size of the generated set: calibrate on, and compare with, random
    # training subsets of that size (two different ones)
    m = min(len(gen), len(train))
    calib = [train[i] for i in np.random.default_rng(seed + 1).choice(len(train), size=m, replace=False)]
    copies = [train[i] for i in np.random.default_rng(seed).choice(len(train), size=m, replace=False)]
    cut = coverage_cutoffs(ref, calib, quantile=0.5)
    dn = de_novo_metrics(gen, ref, struct_cutoff=cut["struct_cutoff"], comp_cutoff=cut["comp_cutoff"])
    base = crystal_coverage(copies, ref, struct_cutoff=cut["struct_cutoff"], comp_cutoff=cut["comp_cutoff"])
    valid = [g for g, ok in zip(gen, crystal_validity_batch(gen)["valid"]) if ok]
    for name, pool in (("model", valid), ("baseline", copies)):  # which fingerprint fails
        split = {"structure_only": crystal_coverage(pool, ref, struct_cutoff=cut["struct_cutoff"]),
                 "composition_only": crystal_coverage(pool, ref, struct_cutoff=np.inf, comp_cutoff=cut["comp_cutoff"])}
        (dn if name == "model" else base)["by_fingerprint"] = split
    out = {**dn, "n_atoms": sizes, "reference": "the evaluated validation structures", "steps": steps, "seed": seed,
           "sample_seconds_with_compile": round(secs, 2),
           "coverage_cutoffs": {**cut, "calibrated_on": f"{m} random training structures (seed {seed + 1})"},
           "coverage_baseline": {"what": f"{m} other random training structures (seed {seed})", **base}}
    print(f"de novo {len(gen)}: validity {dn['validity']:.3f}, wdist density {dn['wdist_density']:.3f}, "
          f"wdist #elements {dn['wdist_num_elements']:.3f}, COV-R {dn['cov_recall']:.3f}, COV-P "
          f"{dn['cov_precision']:.3f} (training copies: {base['cov_recall']:.3f} / {base['cov_precision']:.3f}; "
          f"cutoffs {cut['struct_cutoff']:.4f} / {cut['comp_cutoff']:.3f}); by fingerprint: model "
          f"{dn['by_fingerprint']}, training copies {base['by_fingerprint']}", flush=True)
    return out


def plot_sweep(name: str, results: dict) -> None:
    """``results/<name>_match_vs_steps.png``: match rate (0–100 %) and RMSE vs sampler steps
    (from the results dict alone: ``python -c "from experiments.bulk.evaluate import replot; replot()"``)."""
    plt = pyplot()
    pts = results.get("sweep") or [results["csp"]]
    xs = [p["steps"] for p in pts]
    fig, ax = plt.subplots(figsize=(4.4, 3.2))
    ax.plot(xs, [100 * p["match_rate"] for p in pts], "o-", color="C0")
    ax.set_ylim(0, 100)
    ax.set_xlabel("sampler steps")
    ax.set_ylabel("match rate (%)", color="C0")
    ax2 = ax.twinx()
    ax2.plot(xs, [p["rmse"] for p in pts], "s--", color="C1")
    ax2.set_ylim(0, 0.5)
    ax2.set_ylabel("RMSE of the matches", color="C1")
    ax.set_title(f"{name}: CSP, first {pts[0]['n']} val structures", fontsize=10)
    ax.grid(alpha=0.3)
    save_figure(fig, HERE / "results" / f"{name}_match_vs_steps.png", dpi=120)


def replot(name: str = "perov5") -> None:
    """Redraw the match-rate vs steps plot from ``results/<name>.json``."""
    plot_sweep(name, json.loads((HERE / "results" / f"{name}.json").read_text()))


def _plots(name: str, results: dict, ref: list, gen: list, mr: dict) -> None:
    plt = pyplot()
    out = HERE / "results"
    plot_sweep(name, results)
    # RMSE histogram
    rms = np.asarray(mr["rms"], float)
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    ax.hist(rms[np.isfinite(rms)], bins=25, color="C0")
    ax.set_xlabel("normalised RMS displacement (matched)")
    ax.set_ylabel("structures")
    ax.set_title(f"{name}: {int(np.isfinite(rms).sum())}/{len(rms)} matched")
    save_figure(fig, out / f"{name}_rmse_hist.png", dpi=120)
    # a few generated cells next to their references: 3 matched, 2 unmatched
    from ase.visualize.plot import plot_atoms

    matched = [i for i in range(len(rms)) if np.isfinite(rms[i])][:3]
    unmatched = [i for i in range(len(rms)) if not np.isfinite(rms[i])][:2]
    picks = matched + unmatched
    if not picks:
        return
    fig, axes = plt.subplots(2, len(picks), figsize=(2.6 * len(picks), 5.4), squeeze=False)
    for c, i in enumerate(picks):
        for r, (atoms, label) in enumerate(((gen[i], "generated"), (ref[i], "reference"))):
            ax = axes[r, c]
            plot_atoms(atoms, ax, rotation="10x,20y,0z", radii=0.5)
            ax.set_axis_off()
            tag = f"rms {rms[i]:.3f}" if np.isfinite(rms[i]) else "no match"
            ax.set_title(f"{label} {_formula(ref[i])}\n{tag}" if r == 0 else f"{label}", fontsize=8)
    save_figure(fig, out / f"{name}_structures.png")


if __name__ == "__main__":
    main()
