"""The ablation driver of issue 16: train each row of :mod:`experiments.ablations.rows` to
the same wall-time budget, evaluate it by one protocol, and keep one results file and one
results page.

    python -m experiments.ablations.run --rows base weight_decay --minutes 25
    python -m experiments.ablations.run --rows em300 pc100        # sampler rows: no training
    python -m experiments.ablations.run --report                   # rewrite README.md only

C2DB protocol: every structure of ``val.csv`` (250, never seen in training) is a template
(cell, composition) with its layer group (spglib, symprec 0.1) as the label; positions are
sampled at guidance weights w = 0, 1, 3 (Euler–Maruyama, 100 steps unless the row says
otherwise, the same seed for every row) and the layer group of the raw sampler output —
no symmetrisation — is compared with the label. Rows train into
``experiments/ablations/runs/c2db/<row>`` (resumed if present) and their results (with the
resolved config) accumulate in ``results/c2db.json``; the page ``README.md`` is rewritten
from it after every row.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from experiments.ablations.rows import COMMITTED, final_checkpoint, BASE, STUDIES
from experiments.common import REPO, pyplot, write_json

HERE = Path(__file__).resolve().parent
WEIGHTS = (0.0, 1.0, 3.0)


def train_row(study: str, name: str, row, minutes: float, steps: int | None = None, quiet: bool = True) -> Path:
    """Train (or resume) a row to ``minutes`` of wall time — or to ``steps`` steps, the fair
    comparison when the shared machine's load varies; returns its run directory."""
    from experiments.two_d import train as two_d_train

    out = HERE / "runs" / study / name
    budget = ["--set", f"train.steps={steps}"] if steps else ["--seconds", str(60.0 * minutes)]
    argv = ["--preset", "c2db", "--out", str(out), *budget]
    for item in (*BASE, *row.overrides):
        argv += ["--set", item]
    if quiet:
        argv.append("--quiet")
    if (out / "checkpoints" / "latest" / "meta.json").exists():
        meta = json.loads((out / "checkpoints" / "latest" / "meta.json").read_text())
        cfg = meta["config"]["train"]
        if meta["step"] >= cfg["steps"]:
            return out  # finished
    two_d_train.main(argv)
    return out


def evaluate_row(run: Path, evaluation: dict, num: int | None = None, seed: int = 0) -> dict:
    """The C2DB protocol (module docstring) on ``run``'s final checkpoint."""
    from agedi_jax.checkpoint import load_model
    from experiments.two_d.evaluate_cfg import accuracy_table
    from experiments.two_d.guided_sampling import (
        labelled_val,
        layer_groups,
        sample_templates,
        validity_summary,
    )

    structures, targets = labelled_val(num)
    model, params, config = load_model(final_checkpoint(run))
    seed = int(evaluation.get("seed", seed))
    steps = int(evaluation.get("steps", 100))
    sampler = evaluation.get("sampler", "em")
    weights = tuple(float(w) for w in evaluation.get("weights", WEIGHTS))
    t0 = time.perf_counter()
    samples = sample_templates(model, params, structures, targets, weights, steps=steps, seed=seed,
                               sampler=sampler, grid=evaluation.get("grid", "uniform"), progress=False,
                               options=evaluation.get("options"))
    seconds = time.perf_counter() - t0
    predicted = {w: layer_groups(s) for w, s in samples.items()}
    acc = accuracy_table(targets, predicted)
    valid = {str(w): validity_summary(s)["frac_valid"] for w, s in samples.items()}
    return dict(n=len(structures), steps=steps, sampler=sampler, options=evaluation.get("options"), seed=seed,
                sample_seconds=round(seconds, 1),
                accuracy={str(w): round(acc["table"][w]["all"], 4) for w in weights},
                accuracy_by_group={str(w): {g: round(v, 4) for g, v in acc["table"][w].items() if g != "all"}
                                   for w in weights},
                valid=valid)


def training_summary(run: Path) -> dict:
    from agedi_jax.runlog import read_metrics

    recs = read_metrics(run / "metrics.jsonl")
    train = [r for r in recs if r.get("split") == "train"]
    val = [r for r in recs if r.get("split") == "val"]
    meta = json.loads((run / "checkpoints" / "latest" / "meta.json").read_text())
    best = min(val, key=lambda r: r["loss"]) if val else None
    return dict(steps=int(meta["step"]), final_train_loss=round(train[-1]["loss"], 4) if train else None,
                final_val_loss=round(val[-1]["loss"], 4) if val else None,
                best_val_loss=round(best["loss"], 4) if best else None, best_val_step=best["step"] if best else None,
                config=meta["config"])


def report(study: str, results: dict) -> Path:
    """Rewrite the results page (README.md) and the plot from the results file."""
    rows = STUDIES[study]
    lines = [
        "# Ablations: sample quality per unit of compute (issue 16)",
        "",
        "Generated by `python -m experiments.ablations.run` from `results/c2db.json` (do not edit the table by",
        "hand). Protocol: all 250 structures of the C2DB `val.csv` (never seen in training) as templates with",
        "their layer group as the label; positions sampled at w = 0, 1, 3; the layer group (spglib, symprec",
        "0.1) of the raw sampler output compared with the label. Every trained row has the same wall-time",
        "budget on the project's 2-core CPU (shared with other jobs: the step counts say how much each got).",
        "",
        "| row | change | budget (min) | steps | best val loss (step) | final val loss | w = 0 | w = 1 | w = 3 | best w: accuracy | valid (w = 1) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        tr = r.get("training") or results.get(r.get("of") or "", {}).get("training") or {}
        a = r["evaluation"]["accuracy"]
        best = max(a, key=a.get)
        cell = lambda w: f"{a[w]:.3f}" if w in a else "—"  # noqa: E731
        steps = tr.get("steps", "30,744 (committed)" if r.get("of") == COMMITTED else "")
        lines.append(
            f"| {name} | {rows[name].note if name in rows else ''} | {r.get('minutes') or '—'} | {steps} | "
            f"{tr.get('best_val_loss', '')} ({tr.get('best_val_step', '')}) | {tr.get('final_val_loss', '')} | "
            f"{cell('0.0')} | {cell('1.0')} | {cell('3.0')} | {float(best):g}: {a[best]:.3f} | "
            f"{next(iter(r['evaluation']['valid'].values())) if '1.0' not in r['evaluation']['valid'] else r['evaluation']['valid']['1.0']:.3f} |"
        )
    lines += ["", "![accuracy per row](results/c2db.png)", ""]
    notes = HERE / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    page = HERE / "README.md"
    page.write_text("\n".join(lines))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(results)), 3.4))
    names = list(results)
    for k, w in enumerate(("0.0", "1.0", "3.0")):
        ax.bar(np.arange(len(names)) + (k - 1) * 0.27, [results[n]["evaluation"]["accuracy"].get(w, np.nan) for n in names],
               0.27, label=f"w = {float(w):g}")
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("layer-group accuracy (val, 250)")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    (HERE / "results").mkdir(exist_ok=True)
    fig.savefig(HERE / "results" / f"{study}.png", dpi=120)
    plt.close(fig)
    return page


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", choices=sorted(STUDIES), default="c2db")
    ap.add_argument("--rows", nargs="*", default=[], help="rows to run (default: none; see rows.py)")
    ap.add_argument("--minutes", type=float, default=25.0, help="training wall-time budget per row")
    ap.add_argument("--steps", type=int, default=None,
                    help="train every row for this many steps instead of a wall-time budget (fair under varying load)")
    ap.add_argument("--num", type=int, default=None, help="evaluate on the first NUM val structures only (smoke test)")
    ap.add_argument("--report", action="store_true", help="only rewrite the results page")
    args = ap.parse_args(argv)
    rows = STUDIES[args.study]
    unknown = [r for r in args.rows if r not in rows]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {sorted(rows)}")
    path = HERE / "results" / f"{args.study}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in args.rows:
        row = rows[name]
        t0 = time.perf_counter()
        if row.of is None:
            run = train_row(args.study, name, row, args.minutes, row.steps or args.steps)
            training = training_summary(run)
        else:
            run = HERE / "runs" / args.study / row.of if row.of in rows else REPO / row.of
            if not (run / "checkpoints").is_dir():
                raise SystemExit(f"row {name} evaluates {row.of!r}, which has no checkpoint yet (train that row first)")
            training = None
        evaluation = evaluate_row(run, row.evaluation, args.num)
        entry = dict(minutes=None if row.of is not None or row.steps or args.steps else args.minutes,
                     overrides=list(row.overrides),
                     of=row.of, note=row.note, training=training, evaluation=evaluation,
                     wall_s=round(time.perf_counter() - t0), load=round(os.getloadavg()[0], 2),
                     run=str(run.relative_to(REPO)), time=time.strftime("%Y-%m-%d %H:%M"))
        # re-read before writing: another driver may have finished a row meanwhile
        results = json.loads(path.read_text()) if path.exists() else {}
        results[name] = entry
        write_json(path, results)
        print(f"{name}: accuracy {evaluation['accuracy']}; valid {evaluation['valid']}", flush=True)
        report(args.study, results)
    if args.report and results:
        print(f"wrote {report(args.study, results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
