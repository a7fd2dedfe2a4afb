"""Evaluate the surface model on the held-out (substrate, formula) pairs: EMT adsorption
energies of relaxed samples vs random structure search in the same window vs the best
minimum of the data set's basin-hopping search; timings; pictures.

    nice -n 5 python -m experiments.surfaces.evaluate                 # all rows, ~20 min on 2 shared cores
    python -m experiments.surfaces.evaluate --rows model --num 4      # a quick look
    python -m experiments.surfaces.evaluate --report-only             # tables and figures from the saved rows
    python -m experiments.surfaces.evaluate --report-only --rescore   # re-score the saved rows against data/summary.json

``--rows`` recomputes only the rows named; the others stay as saved in ``results/evaluate.json``.

Rows (every one relaxed the same way as the data set's search: ASE FIRE + EMT to 0.05
eV/Å, then the adsorbate rattled by 0.1 Å and refined to 0.01 eV/Å; bottom two substrate
layers fixed, top layer and adsorbate free; at most 1,000 steps each):

* ``model`` — ``--num`` samples per pair from the trained model (formula given, every
  substrate atom held fixed, adsorbate confined to ``settings.WINDOW`` above the top);
* ``guided`` — the same with EMT force-field guidance (``sample.energy_guidance = 1``/eV,
  on x_t, ζ = 1: the setting that worked best for clusters);
* ``rss`` — ``2 × --num`` random structures: adsorbate atoms uniform in-plane and in the same
  window, at least 2.0 Å from every atom (the search's own ``place``);
* the reference: the best minimum the basin-hopping search found for the pair
  (``summary.json``), and its time per distinct minimum found.

A structure counts when its relaxation converged and it is valid by the data set's rules
(no desorbed / in-slab / unbound adsorbate atom). Writes ``results/evaluate.json``,
``results/energies.png``, ``results/structures.png`` and, per row, the relaxed structures
to ``runs/cpu/eval_<row>.extxyz`` (not committed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from experiments.common import pyplot, write_json
from experiments.surfaces import make_dataset as md
from experiments.surfaces import settings

ROWS = ("model", "guided", "rss")
WITHIN = 0.1  # eV: a structure "finds" the pair's minimum when E_ads <= best_BH + WITHIN
COMPARE_N = 16  # "found" is also scored on the first COMPARE_N structures of a pair (equal numbers per row)
GUIDANCE = {"energy_guidance": 1.0, "guidance_potential": "emt", "guidance_on": "xt", "guidance_zeta": 1.0}


def load_summary() -> dict:
    return json.loads((settings.DATA / "summary.json").read_text())


def clean_slabs(summary: dict) -> dict:
    """name -> (relaxed clean slab with the bottom two layers fixed, E_slab, top z)."""
    out = {}
    for name, info in summary["substrates"].items():
        element = info["element"]
        slab, energy, top = md.build_slab(name, summary["bulk"][element]["a"])
        if abs(energy - info["energy"]) > 1e-5:
            raise RuntimeError(f"{name}: clean-slab energy {energy} differs from summary.json's {info['energy']}")
        out[name] = (slab, energy, top)
    return out


def e_ads(energy: float, formula: str, e_slab: float, summary: dict) -> float:
    return float(energy - e_slab - sum(n * summary["bulk"][el]["mu"] for el, n in md.parse_formula(formula)))


# --------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------


def model_templates(pairs, slabs, num: int) -> list:
    """``num`` copies per pair of the clean slab with the formula's atoms added, every
    substrate atom fixed and the model's window in info (what the model samples from)."""
    from ase import Atoms
    from ase.constraints import FixAtoms

    from agedi_jax.surfaces import Z_WINDOW_KEY, add_atoms

    out = []
    for sub, formula in pairs:
        slab, _, top = slabs[sub]
        window = np.array([top + settings.WINDOW[0], top + settings.WINDOW[1]])
        s, fixed = add_atoms(slab, Atoms(md.adsorbate_symbols(formula)), window)
        s.set_constraint(FixAtoms(mask=fixed))
        s.info = {"substrate": sub, "formula": formula, Z_WINDOW_KEY: settings.WINDOW}
        out += [s.copy() for _ in range(num)]
    return out


def sample_model(model, params, templates: list, guided: bool, seed: int) -> tuple[list, dict]:
    """Samples of the templates in batches of ``sample.batch_size`` (one compilation), and
    timings: the first batch (with compilation) and the steady batches."""
    import jax
    import jax.numpy as jnp

    from agedi_jax.batch import collate, common_bucket
    from agedi_jax.generate import make_sampler, prepare_request

    req = prepare_request(model, templates=templates, seed=seed, **(GUIDANCE if guided else {}))
    s = req.config.sample
    n = len(templates)
    batches = [list(range(i, min(i + s.batch_size, n))) for i in range(0, n, s.batch_size)]
    bucket = common_bucket([[req.encoded[i] for i in c] for c in batches])
    run = make_sampler(model, guided=req.guided, config=req.config)
    root = jax.random.PRNGKey(s.seed)
    out, times = [], []
    for bi, idx in enumerate(batches):
        batch = collate([req.encoded[i] for i in idx], bucket)
        gen = np.zeros(bucket.n_graph, bool)
        t0, c0 = time.perf_counter(), time.process_time()
        result = run(params, jax.random.fold_in(root, bi), batch, jnp.asarray(gen), req.w)
        jax.block_until_ready(result.positions)
        times.append((time.perf_counter() - t0, len(idx), time.process_time() - c0))
        out += req.to_atoms(model, jax.device_get(result), idx)
    steady = times[1:] or times
    timing = {
        "batch_size": s.batch_size, "steps": s.steps, "sampler": s.sampler, "batches": len(batches),
        "first_batch_s": round(times[0][0], 2),
        "s_per_structure": round(sum(t for t, _, _ in steady) / sum(k for _, k, _ in steady), 3),
        "cpu_s_per_structure": round(sum(c for _, _, c in steady) / sum(k for _, k, _ in steady), 3),
        "edges_per_structure": int(np.mean([e.num_edges for e in req.encoded])),
    }
    for a, t in zip(out, templates):  # the data set's constraint for relaxing: bottom two layers fixed
        from ase.constraints import FixAtoms

        a.set_tags(t.get_tags())
        a.set_constraint(FixAtoms(mask=t.get_tags() >= 2))
        a.info.update({"substrate": t.info["substrate"], "formula": t.info["formula"]})
    return out, timing


def random_structures(pairs, slabs, num: int, seed: int) -> list:
    """``num`` random structures per pair: adsorbate atoms uniform in-plane and in the
    window, at least ``md.MIN_DIST`` from every atom (periodic images included)."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    out = []
    for sub, formula in pairs:
        slab, _, top = slabs[sub]
        symbols = md.adsorbate_symbols(formula)
        for _ in range(num):
            pos = slab.positions.copy()
            for _ in symbols:
                p = md.place(pos, slab.cell.array, slab.pbc, rng, top + settings.WINDOW[0], top + settings.WINDOW[1])
                if p is None:
                    raise RuntimeError(f"{sub} {formula}: could not place an atom 2 Å from the others")
                pos = np.vstack([pos, p])
            a = slab.copy() + Atoms(symbols, positions=pos[len(slab):])
            a.set_tags(list(slab.get_tags()) + [0] * len(symbols))
            a.info = {"substrate": sub, "formula": formula}
            out.append(a)
    return out


# --------------------------------------------------------------------------------------
# Relaxation (the data set's protocol) and scoring
# --------------------------------------------------------------------------------------


def relax_one(atoms, top: float, rng) -> dict:
    """FIRE + EMT to ``md.FMAX``, then (valid and converged) rattle the adsorbate by
    ``md.RATTLE`` and refine to ``md.FMAX_KEEP``; as ``make_dataset.basin_hopping``."""
    from ase.calculators.emt import EMT
    from ase.optimize import FIRE

    a = atoms.copy()
    n_sub = int(np.sum(a.get_tags() > 0))
    a.calc = EMT()
    opt = FIRE(a, logfile=None)
    converged = opt.run(fmax=md.FMAX, steps=md.MAX_RELAX_STEPS)
    steps = opt.nsteps
    status, _ = md.classify(a, n_sub, top)
    if converged and status == "ok":
        a.positions[n_sub:] += rng.normal(scale=md.RATTLE, size=(len(a) - n_sub, 3))
        opt = FIRE(a, logfile=None)
        converged = opt.run(fmax=md.FMAX_KEEP, steps=md.MAX_RELAX_STEPS)
        steps += opt.nsteps
        status, _ = md.classify(a, n_sub, top)
    a.wrap()
    energy = float(a.get_potential_energy())
    a.calc = None
    return {"atoms": a, "energy": energy, "status": "unconverged" if not converged else status, "steps": steps}


def relax_all(structures: list, slabs: dict, seed: int) -> tuple[list, float]:
    rng = np.random.default_rng(seed)
    t0 = time.process_time()
    out = [relax_one(a, slabs[a.info["substrate"]][2], rng) for a in structures]
    return out, time.process_time() - t0


def min_distance(atoms) -> float:
    """Smallest adsorbate–any distance (Å, periodic images included) before relaxation."""
    from ase.geometry import get_distances

    n_sub = int(np.sum(atoms.get_tags() > 0))
    _, d = get_distances(atoms.positions[n_sub:], atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    for k in range(len(atoms) - n_sub):
        d[k, n_sub + k] = np.inf
    return float(d.min())


def _best_of(items, formula: str, sub: str, summary: dict, slabs: dict) -> float:
    e = [e_ads(r["energy"], formula, slabs[sub][1], summary) for _, r in items if r["status"] == "ok"]
    return min(e) if e else np.inf


def score_row(pairs, raw: list, relaxed: list, summary: dict, slabs: dict) -> dict:
    """Per pair: E_ads of the valid relaxed structures against the search's best."""
    by_pair = {}
    for a, r in zip(raw, relaxed):
        by_pair.setdefault((a.info["substrate"], a.info["formula"]), []).append((a, r))
    out = {}
    for sub, formula in pairs:
        items = by_pair[(sub, formula)]
        best_bh = summary["pairs"][f"{sub} {formula}"]["best_adsorption_energy"]
        e = np.array([e_ads(r["energy"], formula, slabs[sub][1], summary) for _, r in items])
        ok = np.array([r["status"] == "ok" for _, r in items])
        ev = e[ok]
        out[f"{sub} {formula}"] = {
            "n": len(items), "valid": int(ok.sum()),
            "status": {s: sum(r["status"] == s for _, r in items) for s in sorted({r["status"] for _, r in items})},
            "best_bh": round(best_bh, 4),
            "best": round(float(ev.min()), 4) if ev.size else None,
            "median": round(float(np.median(ev)), 4) if ev.size else None,
            "frac_within": round(float(np.sum(ev <= best_bh + WITHIN)) / len(items), 4),
            "found": bool(ev.size and ev.min() <= best_bh + WITHIN),
            "lower_than_bh": bool(ev.size and ev.min() < best_bh - 1e-3),
            "fire_steps_median": int(np.median([r["steps"] for _, r in items])),
            # the first COMPARE_N structures only (random search makes twice the model's number)
            f"found_first{COMPARE_N}": bool(_best_of(items[:COMPARE_N], formula, sub, summary, slabs) <= best_bh + WITHIN),
            "min_distance_before_relax_median": round(float(np.median([min_distance(a) for a, _ in items])), 3),
            "e_ads_valid": [round(float(x), 4) for x in ev],
        }
    return out


def rescore_saved(name: str, pairs, summary: dict) -> dict:
    """A row's per-pair scores recomputed from its saved structures (``runs/cpu/eval_<row>.extxyz``
    and ``eval_<row>_raw.extxyz``) against the current ``summary.json`` — no sampling or
    relaxing; for when the data set (and so the basin-hopping reference) was regenerated
    after the row was run."""
    from ase.io import read

    relaxed = read(settings.RUN / f"eval_{name}.extxyz", ":")
    raw = read(settings.RUN / f"eval_{name}_raw.extxyz", ":")
    if len(relaxed) != len(raw):
        raise RuntimeError(f"row {name}: {len(relaxed)} relaxed vs {len(raw)} raw structures")
    slabs = {k: (None, v["energy"], v["top_z"]) for k, v in summary["substrates"].items()}
    rel = []
    for a in relaxed:
        sub, formula = a.info["substrate"], a.info["formula"]
        mu = sum(n * summary["bulk"][el]["mu"] for el, n in md.parse_formula(formula))
        rel.append({"energy": float(a.info["e_ads"]) + slabs[sub][1] + mu, "status": a.info["status"],
                    "steps": int(a.info["fire_steps"])})
    return score_row(pairs, raw, rel, summary, slabs)


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def bh_timing(summary: dict, pairs) -> dict:
    out = {}
    for sub, formula in pairs:
        p = summary["pairs"][f"{sub} {formula}"]
        key = "cpu_seconds" if "cpu_seconds" in p else "seconds"
        out[f"{sub} {formula}"] = {"seconds": p[key], "seconds_kind": key, "distinct_minima": p["distinct_minima"],
                                   "relaxations": p["relaxations"],
                                   "s_per_minimum": p[key] / max(p["distinct_minima"], 1)}
    return out


def aggregate(rows: dict, pairs) -> dict:
    out = {}
    for name, row in rows.items():
        per = [row["pairs"][f"{s} {f}"] for s, f in pairs]
        out[name] = {
            "pairs_found": sum(p["found"] for p in per),
            f"pairs_found_first{COMPARE_N}": sum(p.get(f"found_first{COMPARE_N}", False) for p in per),
            "pairs_lower_than_bh": sum(p["lower_than_bh"] for p in per),
            "frac_within_mean": round(float(np.mean([p["frac_within"] for p in per])), 4),
            "valid_frac": round(sum(p["valid"] for p in per) / sum(p["n"] for p in per), 4),
            "best_minus_bh_median": round(float(np.median([p["best"] - p["best_bh"] for p in per if p["best"] is not None])), 4),
            "fire_steps_median": float(np.median([p["fire_steps_median"] for p in per])),
        }
    return out


def figures(rows: dict, pairs, summary: dict) -> None:
    from ase.io import read

    plt = pyplot()
    colors = {"model": "C0", "guided": "C2", "rss": "C7"}
    fig, ax = plt.subplots(figsize=(12, 4.2))
    for k, (sub, formula) in enumerate(pairs):
        key = f"{sub} {formula}"
        for j, name in enumerate(r for r in ROWS if r in rows):
            e = np.array(rows[name]["pairs"][key]["e_ads_valid"])
            x = k + (j - 1) * 0.22 + np.random.default_rng(k + 7 * j).uniform(-0.06, 0.06, len(e))
            ax.scatter(x, e, s=9, color=colors[name], alpha=0.6, label=name if k == 0 else None)
        best = summary["pairs"][key]["best_adsorption_energy"]
        ax.plot([k - 0.4, k + 0.4], [best, best], color="C3", lw=2, label="basin hopping best" if k == 0 else None)
    ax.set_xticks(range(len(pairs)))
    ax.set_xticklabels([f"{f}\n{s}" for s, f in pairs], fontsize=8)
    ax.set_ylabel("EMT adsorption energy after relaxation (eV)")
    ax.set_title("Held-out pairs: relaxed samples (model, EMT-guided) vs random search in the same window")
    ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(settings.RESULTS / "energies.png", dpi=120)
    plt.close(fig)

    # structures: the best model sample (relaxed) of every pair, top and side view, and one raw sample
    from ase.visualize.plot import plot_atoms

    relaxed = read(settings.RUN / "eval_model.extxyz", ":")
    raw = read(settings.RUN / "eval_model_raw.extxyz", ":")
    fig, axes = plt.subplots(3, len(pairs), figsize=(2.0 * len(pairs), 6.0), gridspec_kw={"height_ratios": [1, 1, 0.6]})
    for k, (sub, formula) in enumerate(pairs):
        cand = [(a.info["e_ads"], i) for i, a in enumerate(relaxed)
                if a.info["substrate"] == sub and a.info["formula"] == formula and a.info["status"] == "ok"]
        if not cand:
            continue
        e_best, i = min(cand)
        for row, (atoms, rot) in enumerate([(raw[i], "0x,0y,0z"), (relaxed[i], "0x,0y,0z"), (relaxed[i], "-80x,0y,0z")]):
            ax = axes[row, k]
            view = atoms.copy()
            if row < 2:  # top view: top substrate layer and the adsorbate only
                keep = (view.get_tags() == 1) | (view.get_tags() == 0)
                view = view[keep]
            plot_atoms(view, ax, rotation=rot, radii=0.9, show_unit_cell=2 if row < 2 else 0)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(f"{formula} / {sub}", fontsize=8)
        axes[1, k].text(0.5, -0.05, f"{e_best:.2f} eV (BH {summary['pairs'][f'{sub} {formula}']['best_adsorption_energy']:.2f})",
                        transform=axes[1, k].transAxes, ha="center", va="top", fontsize=7)
    axes[0, 0].text(-0.1, 0.5, "sample", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.1, 0.5, "relaxed, top", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right")
    axes[2, 0].text(-0.1, 0.5, "relaxed, side", transform=axes[2, 0].transAxes, rotation=90, va="center", ha="right")
    fig.suptitle("Best model sample per held-out pair: as generated (top view), relaxed (top and side view)", fontsize=9)
    fig.tight_layout()
    fig.savefig(settings.RESULTS / "structures.png", dpi=90)
    plt.close(fig)


def table(result: dict, pairs) -> str:
    """The page's tables (markdown): per held-out pair, then the summary over the pairs."""
    rows = [r for r in ROWS if r in result["rows"]]
    lines = ["| pair | BH best | " + " | ".join(f"{r}: best / median / within {WITHIN} eV" for r in rows) + " |",
             "|" + "---|" * (2 + len(rows))]
    for sub, formula in pairs:
        key = f"{sub} {formula}"
        cells = []
        for r in rows:
            p = result["rows"][r]["pairs"][key]
            if p["best"] is None:
                cells.append(f"– / – / 0 (valid {p['valid']}/{p['n']})")
                continue
            mark = " ↓" if p["lower_than_bh"] else (" ✓" if p["found"] else "")
            valid = "" if p["valid"] == p["n"] else f" (valid {p['valid']}/{p['n']})"
            cells.append(f"{p['best']:.3f}{mark} / {p['median']:.3f} / {p['frac_within']:.2f}{valid}")
        lines.append(f"| {formula} on {sub} | {result['rows'][rows[0]]['pairs'][key]['best_bh']:.3f} | " + " | ".join(cells) + " |")
    agg, tim = result["aggregate"], result.get("timing", {})
    lines += ["", "| over the 12 pairs | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    spec = [("samples per pair", lambda r: str(result["rows"][r].get("num_per_pair", ""))),
            ("pairs found (best within 0.1 eV of BH)", lambda r: f"{agg[r]['pairs_found']}/{len(pairs)}"),
            (f"… with the first {COMPARE_N} structures only", lambda r: f"{agg[r][f'pairs_found_first{COMPARE_N}']}/{len(pairs)}"),
            ("pairs below BH's best (by > 1 meV)", lambda r: str(agg[r]["pairs_lower_than_bh"])),
            ("fraction within 0.1 eV (mean over pairs)", lambda r: f"{agg[r]['frac_within_mean']:.3f}"),
            ("valid after relaxation", lambda r: f"{agg[r]['valid_frac']:.3f}"),
            ("median over pairs of best − BH best (eV)", lambda r: f"{agg[r]['best_minus_bh_median']:.3f}"),
            ("FIRE steps per relaxation (median)", lambda r: f"{agg[r]['fire_steps_median']:.0f}"),
            ("generation, s per structure", lambda r: f"{tim.get(f'{r}_s_per_structure')}"),
            ("relaxation, CPU s per structure", lambda r: f"{tim.get(f'{r}_relax_cpu_s_per_structure')}"),
            ("structures within 0.1 eV (all pairs)", lambda r: f"{tim.get(f'{r}_structures_within')}"),
            ("s (generation + relaxation) per structure within 0.1 eV", lambda r: f"{tim.get(f'{r}_s_per_structure_within')}")]
    for label, f in spec:
        lines.append(f"| {label} | " + " | ".join(f(r) for r in rows) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def run_row(name: str, pairs, slabs, summary, num: int, model=None, params=None) -> dict:
    from ase.io import write

    t0 = time.perf_counter()
    if name == "rss":
        raw = random_structures(pairs, slabs, 2 * num, seed=2024)
        timing = {"s_per_structure": round((time.perf_counter() - t0) / len(raw), 4)}
    else:
        raw, timing = sample_model(model, params, model_templates(pairs, slabs, num), guided=name == "guided", seed=0)
    relaxed, relax_cpu = relax_all(raw, slabs, seed=7)
    timing["relax_cpu_s_per_structure"] = round(relax_cpu / len(raw), 3)
    for a, r in zip(raw, relaxed):
        r["atoms"].info.update(a.info)
        r["atoms"].info.update(status=r["status"], fire_steps=r["steps"],
                               e_ads=e_ads(r["energy"], a.info["formula"], slabs[a.info["substrate"]][1], summary))
    write(settings.RUN / f"eval_{name}.extxyz", [r["atoms"] for r in relaxed], format="extxyz")
    write(settings.RUN / f"eval_{name}_raw.extxyz", raw, format="extxyz")
    return {"timing": timing, "pairs": score_row(pairs, raw, relaxed, summary, slabs),
            "wall_s": round(time.perf_counter() - t0, 1)}


def _rel(path: Path) -> str:
    """``path`` relative to the repository when inside it (results carry no machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(settings.HERE.parents[1]))
    except ValueError:
        parts = Path(path).resolve().parts
        return str(Path(*parts[parts.index("experiments"):])) if "experiments" in parts else str(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=settings.RUN, help="run directory of the trained model")
    ap.add_argument("--checkpoint", default="latest", help="checkpoint of the run: latest (the end of training) | best")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"rows to (re)compute, comma separated ({', '.join(ROWS)})")
    ap.add_argument("--num", type=int, default=16, help="model samples per pair (random search: twice as many)")
    ap.add_argument("--report-only", action="store_true", help="only tables and figures from results/evaluate.json")
    ap.add_argument("--rescore", action="store_true",
                    help="with --report-only: re-score every saved row from runs/cpu/eval_<row>*.extxyz against the "
                         "current data/summary.json (after the data set was regenerated)")
    ap.add_argument("--results", type=Path, default=settings.RESULTS, help="output directory (default results/)")
    args = ap.parse_args(argv)
    settings.RUN = args.run
    settings.RESULTS = args.results
    args.results.mkdir(parents=True, exist_ok=True)
    summary = load_summary()
    pairs = [tuple(p) for p in summary["held_out"]]
    path = settings.RESULTS / "evaluate.json"
    result = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    if not args.report_only:
        t0 = time.perf_counter()
        slabs = clean_slabs(summary)
        wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
        model = params = None
        if any(r != "rss" for r in wanted):
            from agedi_jax import load_model

            model, params, _ = load_model(args.run / "checkpoints" / args.checkpoint)
        for name in wanted:
            if name not in ROWS:
                raise SystemExit(f"unknown row {name!r} ({', '.join(ROWS)})")
            print(f"row {name} …", flush=True)
            result["rows"][name] = run_row(name, pairs, slabs, summary, args.num, model, params)
            result["rows"][name]["num_per_pair"] = (2 if name == "rss" else 1) * args.num
            write_json(path, result)
        result.update({
            "command": "nice -n 5 python -m experiments.surfaces.evaluate",
            "run": _rel(args.run), "checkpoint": args.checkpoint,
            "window_above_top": settings.WINDOW, "within_eV": WITHIN, "guidance": GUIDANCE,
            "relaxation": {"fmax": md.FMAX, "rattle": md.RATTLE, "fmax_keep": md.FMAX_KEEP, "max_steps": md.MAX_RELAX_STEPS,
                           "fixed": "bottom two substrate layers"},
            "load_average": [round(x, 2) for x in __import__("os").getloadavg()],
            "last_wall_s": round(time.perf_counter() - t0, 1),
        })
    if args.rescore:
        for name in list(result["rows"]):
            result["rows"][name]["pairs"] = rescore_saved(name, pairs, summary)
            result["rows"][name]["rescored"] = "against data/summary.json of the reference below"
    result["reference"] = {"summary": "experiments/surfaces/data/summary.json", "n_structures": summary["n_structures"],
                           "relaxations": summary["relaxations"], "search_total_s": summary["timings"].get("total_s")}
    first = settings.DATA / "v1" / "summary.json"  # the data set's first version (the model was trained on it)
    if first.exists():
        v1 = json.loads(first.read_text())
        result["reference"]["first_version"] = {
            "summary": "experiments/surfaces/data/v1/summary.json", "n_structures": v1["n_structures"],
            "best_adsorption_energy": {f"{s} {f}": round(v1["pairs"][f"{s} {f}"]["best_adsorption_energy"], 4)
                                       for s, f in pairs}}
    result["basin_hopping"] = bh_timing(summary, pairs)
    result["aggregate"] = aggregate(result["rows"], pairs)
    bh = result["basin_hopping"].values()
    result["timing"] = {
        "basin_hopping_s_per_distinct_minimum": round(sum(b["seconds"] for b in bh) / sum(b["distinct_minima"] for b in bh), 3),
        "basin_hopping_seconds_kind": sorted({b["seconds_kind"] for b in bh}),
        "basin_hopping_s_per_pair_median": round(float(np.median([b["seconds"] for b in bh])), 1),
        **{f"{name}_s_per_structure": row["timing"].get("s_per_structure") for name, row in result["rows"].items()},
        **{f"{name}_relax_cpu_s_per_structure": row["timing"].get("relax_cpu_s_per_structure")
           for name, row in result["rows"].items()},
    }
    for name, row in result["rows"].items():  # generation + relaxation per structure within 0.1 eV of BH's best
        per = [row["pairs"][f"{s} {f}"] for s, f in pairs]
        hits = sum(round(p["frac_within"] * p["n"]) for p in per)
        cost = (row["timing"].get("s_per_structure") or 0) + row["timing"].get("relax_cpu_s_per_structure", 0)
        result["timing"][f"{name}_structures_within"] = hits
        result["timing"][f"{name}_s_per_structure_within"] = round(cost * sum(p["n"] for p in per) / hits, 2) if hits else None
    write_json(path, result)
    print(table(result, pairs))
    print(json.dumps(result["aggregate"], indent=1))
    print(json.dumps(result["timing"], indent=1))
    if all(r in result["rows"] for r in ("model",)):
        figures(result["rows"], pairs, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
