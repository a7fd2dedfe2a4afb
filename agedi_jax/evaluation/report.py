"""One-call evaluation of generated structures against a reference set, and its command line
(``agedi-jax evaluate SAMPLES --reference DATA --out DIR``).

:func:`evaluate` computes, in the paper's protocol (Sec. II G, III A, III B):

* SOAP features of samples, reference and the synthetic baselines (one species list);
* PRD curves (k-means histograms, averaged runs) of the samples and of every baseline
  against the reference, their AUC and (F_8, F_1/8);
* validity and composition statistics of samples (and of the reference, for comparison);
* layer-group accuracy when the samples carry target labels (2D);

and writes ``evaluation.json`` (figures plus the full configuration), ``prd_curves.npz``,
``validity.npz`` and the plots ``prd.png`` / ``tsne.png`` to the output directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from agedi_jax.evaluation.baselines import baseline_family
from agedi_jax.evaluation.descriptors import (
    SOAP_DEFAULTS,
    soap_features,
    species_of,
    tsne_map,
)
from agedi_jax.evaluation.prd import (
    compute_prd_from_embedding,
    max_f_beta_pair,
    prd_auc,
)
from agedi_jax.evaluation.validity import composition_stats, layer_groups, validity

__all__ = ["evaluate", "load_structures", "add_evaluate_arguments", "run_evaluate"]

DEFAULT_SIGMAS = (0.0, 0.05, 0.1, 0.2, 0.3)
DEFAULT_FRACTIONS = (1.0, 0.5)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def _is_2d(structures: Sequence[Any]) -> bool:
    return all(tuple(bool(p) for p in a.pbc) == (True, True, False) for a in structures)


def _target_labels(samples: Sequence[Any], target_labels: Any, label_key: str | None) -> np.ndarray | None:
    if target_labels is not None:
        return np.asarray(target_labels, dtype=int)
    if label_key is None:
        return None
    values = [a.info.get(label_key) for a in samples]
    if any(v is None for v in values):
        return None
    try:
        labels = np.asarray(values, dtype=int).reshape(len(samples))
    except (TypeError, ValueError):
        return None
    return labels if np.all((labels >= 1) & (labels <= 80)) else None


def _summary_validity(v: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v[k] for k in v if k.startswith("frac_") or k == "n_structures"}
    d = np.asarray(v["min_distance"], float)
    d = d[np.isfinite(d)]
    if d.size:
        out["min_distance_stats"] = dict(min=float(d.min()), median=float(np.median(d)), max=float(d.max()))
    return out


def _summary_composition(c: Mapping[str, Any], top: int = 20) -> dict[str, Any]:
    return dict(
        fraction_monoelement=c["fraction_monoelement"],
        element_atom_counts=c["element_atom_counts"],
        element_structure_counts=c["element_structure_counts"],
        size_counts=c["size_counts"],
        top_formulas=dict(list(c["formula_counts"].items())[:top]),
    )


def evaluate(
    samples: Sequence[Any],
    reference: Sequence[Any],
    out_dir: str | Path | None = None,
    *,
    num_clusters: int = 20,
    num_runs: int = 10,
    num_angles: int = 1001,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    r_cut: float = SOAP_DEFAULTS["r_cut"],
    n_max: int = SOAP_DEFAULTS["n_max"],
    l_max: int = SOAP_DEFAULTS["l_max"],
    soap_sigma: float = SOAP_DEFAULTS["sigma"],
    periodic: bool | None = None,
    n_jobs: int = 1,
    element_agnostic: bool = False,
    target_labels: Any = None,
    label_key: str | None = "label",
    symprec: float = 0.1,
    plots: bool = True,
    tsne: bool = True,
    sample_name: str = "samples",
    config: Mapping[str, Any] | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Evaluate generated structures against a reference (training) set.

    PRD curves use ``enforce_balance=False``: samples and reference may differ in size (as
    the 50 % baselines do); histograms are normalised, so only the statistics change.
    The 100 %, σ = 0 baseline is the reference itself and is drawn as the ideal curve.

    Args:
      samples, reference: lists of ``ase.Atoms`` (clusters with pbc False; 2D with
        pbc (T, T, F)).
      out_dir: where to write the JSON, npz files and plots; None writes nothing.
      num_clusters, num_runs, num_angles: PRD settings (Sajjadi et al. defaults).
      sigmas, fractions: the baseline family (Å, shares of the reference).
      seed: seed of baselines, k-means and t-SNE.
      r_cut, n_max, l_max, soap_sigma, periodic, n_jobs, element_agnostic: SOAP settings
        (see :func:`~agedi_jax.evaluation.descriptors.soap_features`; element-agnostic
        features react far more to geometry when the data hold many elements).
      target_labels: ``[n_samples]`` layer groups the samples were conditioned on; if None,
        read from ``atoms.info[label_key]`` when every sample has it (values 1–80).
      symprec: spglib tolerance (Å) for layer groups.
      plots, tsne: write ``prd.png`` / ``tsne.png`` (t-SNE costs ~a minute for thousands).
      config: extra entries stored under ``"config"`` in the JSON (e.g. the command line).

    Returns:
      the JSON dict (``config``, ``sizes``, ``prd`` {name: {auc, f_beta, f_beta_inv,
      n_eval}}, ``validity``, ``validity_reference``, ``composition``,
      ``composition_reference``, optional ``symmetry``, ``timing_s``) plus ``curves``
      {name: (precision, recall)} (numpy, not in the JSON).
    """
    samples, reference = list(samples), list(reference)
    if not samples:
        raise ValueError("evaluate: no samples given")
    if not reference:
        raise ValueError("evaluate: no reference structures given")
    t0 = time.perf_counter()
    log = print if verbose else (lambda *a, **k: None)
    species = species_of(samples, reference)
    if periodic is None:
        periodic = any(bool(np.any(a.pbc)) for a in reference)
    soap_kw = dict(species=species, r_cut=r_cut, n_max=n_max, l_max=l_max, sigma=soap_sigma,
                   periodic=periodic, sparse=True, n_jobs=n_jobs, element_agnostic=element_agnostic)
    cfg = dict(
        num_clusters=num_clusters, num_runs=num_runs, num_angles=num_angles, sigmas=list(sigmas),
        fractions=list(fractions), seed=seed, r_cut=r_cut, n_max=n_max, l_max=l_max,
        soap_sigma=soap_sigma, periodic=bool(periodic), species=species,
        element_agnostic=bool(element_agnostic), symprec=symprec,
        label_key=label_key, enforce_balance=False, sample_name=sample_name,
    )
    cfg.update(dict(config or {}))

    log(f"SOAP features: {len(samples)} samples, {len(reference)} reference, {len(species)} species")
    f_ref = soap_features(reference, **soap_kw)
    f_samples = soap_features(samples, **soap_kw)
    prd_kw = dict(num_clusters=num_clusters, num_angles=num_angles, num_runs=num_runs,
                  enforce_balance=False, seed=seed)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    sizes = {sample_name: len(samples), "reference": len(reference)}
    curves[sample_name] = compute_prd_from_embedding(f_samples, f_ref, **prd_kw)
    baseline_names = []
    for label, structures in baseline_family(reference, fractions, sigmas, seed=seed).items():
        log(f"baseline {label}")
        curves[label] = compute_prd_from_embedding(soap_features(structures, **soap_kw), f_ref, **prd_kw)
        sizes[label] = len(structures)
        baseline_names.append(label)
    t_prd = time.perf_counter()
    prd = {}
    for name, (p, r) in curves.items():
        fb, fbi = max_f_beta_pair(p, r, beta=8.0)
        prd[name] = dict(auc=prd_auc(p, r), f_beta=fb, f_beta_inv=fbi, n_eval=sizes[name])

    v_samples = validity(samples)
    v_reference = validity(reference)
    result: dict[str, Any] = dict(
        config=cfg,
        sizes=sizes,
        prd=prd,
        validity=_summary_validity(v_samples),
        validity_reference=_summary_validity(v_reference),
        composition=_summary_composition(composition_stats(samples)),
        composition_reference=_summary_composition(composition_stats(reference)),
    )
    labels = _target_labels(samples, target_labels, label_key)
    if _is_2d(samples):
        lg_samples = layer_groups(samples, symprec)
        sym: dict[str, Any] = dict(layer_group_counts=dict(Counter(lg_samples.tolist()).most_common(20)))
        if labels is not None:
            if labels.shape[0] != len(samples):
                raise ValueError(f"evaluate: {len(samples)} samples but {labels.shape[0]} target labels")
            sym["layer_group_accuracy"] = float(np.mean(lg_samples == labels))
        result["symmetry"] = sym
    elif target_labels is not None:
        raise ValueError("evaluate: target_labels given but the samples are not 2D (pbc (T, T, F))")

    t_end = time.perf_counter()
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(
            out / "prd_curves.npz",
            names=np.array(list(curves)),
            precision=np.stack([c[0] for c in curves.values()]),
            recall=np.stack([c[1] for c in curves.values()]),
        )
        np.savez(out / "validity.npz", **{k: np.asarray(v) for k, v in v_samples.items() if isinstance(v, np.ndarray)})
        if plots:
            from agedi_jax.evaluation.plots import (
                _pyplot,
                plot_embedding,
                plot_prd_curves,
            )

            plt = _pyplot()
            fig = plot_prd_curves(
                {sample_name: curves[sample_name]},
                baselines={k: curves[k] for k in baseline_names},
                path=out / "prd.png",
            )
            plt.close(fig)
            if tsne and len(samples) + len(reference) >= 4:
                log("t-SNE")
                e_ref, e_samples = tsne_map(f_ref, f_samples, seed=seed)
                fig = plot_embedding({"reference": e_ref, sample_name: e_samples}, path=out / "tsne.png")
                plt.close(fig)
    result["timing_s"] = dict(prd=t_prd - t0, total=time.perf_counter() - t0, other=t_end - t_prd)
    result = _jsonable(result)
    if out_dir is not None:
        with open(Path(out_dir) / "evaluation.json", "w") as fh:
            json.dump(result, fh, indent=2)
    result["curves"] = curves
    return result


# --------------------------------------------------------------------------------------
# Loading and the command line
# --------------------------------------------------------------------------------------


def _as_cluster(atoms: Any) -> Any:
    a = atoms.copy()
    a.pbc = False
    a.cell = np.zeros((3, 3))
    a.positions = a.positions - a.positions.mean(axis=0)
    return a


def load_structures(spec: str, clusters: bool = False) -> list[Any]:
    """Structures from a file, a directory of xyz files, or a data-loader spec.

    With the package's data loaders available (``agedi_jax.data.load_dataset``) every spec
    they know is accepted ("builtin", a QCD directory, "qcd:PATH:gm", a C2DB csv, an ASE
    db, any ase-readable file); otherwise an ase-readable file or a directory of
    ``*.xyz`` / ``*.extxyz`` files. ``clusters=True`` makes every structure a cluster (pbc
    False, no cell, centred) — needed for raw QCD files, whose box is only a container.
    """
    try:
        from agedi_jax.data import load_dataset  # type: ignore[attr-defined]
    except ImportError:
        load_dataset = None
    if load_dataset is not None:
        structures = list(load_dataset(spec).structures)
    else:
        import ase.io

        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"data path {spec} does not exist")
        files = sorted([*path.glob("*.xyz"), *path.glob("*.extxyz")]) if path.is_dir() else [path]
        if not files:
            raise ValueError(f"no *.xyz / *.extxyz files in {spec}")
        structures = []
        for f in files:
            try:
                structures.extend(ase.io.read(f, ":"))
            except Exception as err:  # ase raises many types for bad files
                raise ValueError(f"cannot read structures from {f}: {err}") from None
    if not structures:
        raise ValueError(f"no structures in {spec}")
    return [_as_cluster(a) for a in structures] if clusters else structures


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``evaluate`` command's arguments to ``parser`` (for ``agedi-jax evaluate``)."""
    parser.add_argument("samples", help="generated structures (extxyz or any spec load_structures accepts)")
    parser.add_argument("--reference", required=True,
                        help="reference (training) data: file, directory or data-loader spec (e.g. qcd:PATH:gm)")
    parser.add_argument("--out", default="evaluation", help="output directory (default: %(default)s)")
    parser.add_argument("--clusters", action="store_true",
                        help="treat all structures as clusters (pbc off, cell dropped, centred); use for raw QCD files")
    parser.add_argument("--max-reference", type=int, default=None,
                        help="random subsample of at most this many reference structures (seeded)")
    g = parser.add_argument_group("precision-recall")
    g.add_argument("--num-clusters", type=int, default=20)
    g.add_argument("--num-runs", type=int, default=10)
    g.add_argument("--num-angles", type=int, default=1001)
    g.add_argument("--sigmas", type=float, nargs="+", default=list(DEFAULT_SIGMAS),
                   help="baseline noise levels in Å (default: %(default)s)")
    g.add_argument("--fractions", type=float, nargs="+", default=list(DEFAULT_FRACTIONS),
                   help="baseline subsample fractions (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0)
    d = parser.add_argument_group("SOAP descriptor")
    d.add_argument("--r-cut", type=float, default=SOAP_DEFAULTS["r_cut"], help="Å")
    d.add_argument("--n-max", type=int, default=SOAP_DEFAULTS["n_max"])
    d.add_argument("--l-max", type=int, default=SOAP_DEFAULTS["l_max"])
    d.add_argument("--soap-sigma", type=float, default=SOAP_DEFAULTS["sigma"], help="Å")
    d.add_argument("--periodic", choices=["auto", "yes", "no"], default="auto")
    d.add_argument("--n-jobs", type=int, default=1)
    d.add_argument("--element-agnostic", action="store_true",
                   help="SOAP of the geometry only (all atoms one species): far more sensitive to "
                        "positions when the data hold many elements; pair with more --num-clusters")
    s = parser.add_argument_group("symmetry")
    s.add_argument("--label-key", default="label",
                   help="info key holding each sample's target layer group (default: %(default)s)")
    s.add_argument("--symprec", type=float, default=0.1, help="spglib tolerance in Å")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-tsne", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    return parser


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``evaluate`` from parsed arguments; prints a summary, returns the exit code
    (0 success, 2 bad input)."""
    try:
        from agedi_jax.runlog import check_writable

        check_writable(args.out, "output directory")  # before any work
        samples = load_structures(args.samples, clusters=args.clusters)
        reference = load_structures(args.reference, clusters=args.clusters)
        if args.max_reference is not None and len(reference) > args.max_reference:
            keep = np.sort(np.random.default_rng(args.seed).choice(len(reference), args.max_reference, replace=False))
            reference = [reference[i] for i in keep]
        periodic = {"auto": None, "yes": True, "no": False}[args.periodic]
        config = {k: v for k, v in vars(args).items() if not callable(v)}
        result = evaluate(
            samples, reference, args.out,
            num_clusters=args.num_clusters, num_runs=args.num_runs, num_angles=args.num_angles,
            sigmas=args.sigmas, fractions=args.fractions, seed=args.seed,
            r_cut=args.r_cut, n_max=args.n_max, l_max=args.l_max, soap_sigma=args.soap_sigma,
            periodic=periodic, n_jobs=args.n_jobs, element_agnostic=args.element_agnostic,
            label_key=args.label_key, symprec=args.symprec,
            plots=not args.no_plots, tsne=not args.no_tsne, config={"command_line": config},
            verbose=not args.quiet,
        )
    except (ValueError, OSError, KeyError) as err:
        print(f"agedi-jax evaluate: error: {err}", file=sys.stderr)
        return 2
    for name, row in result["prd"].items():
        print(f"{name:>20s}  AUC {row['auc']:.3f}  F8 {row['f_beta']:.3f}  F1/8 {row['f_beta_inv']:.3f}  (n={row['n_eval']})")
    v = result["validity"]
    print(f"valid {v['frac_valid']:.3f}  (distance {v['frac_distance_ok']:.3f}, connected {v['frac_connected']:.3f}, "
          f"inside cell {v['frac_inside_cell']:.3f})  mono-element {result['composition']['fraction_monoelement']:.3f}")
    if "symmetry" in result and "layer_group_accuracy" in result["symmetry"]:
        print(f"layer-group accuracy {result['symmetry']['layer_group_accuracy']:.3f}")
    print(f"wrote {Path(args.out) / 'evaluation.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agedi_jax.evaluation.report SAMPLES --reference DATA`` (until the CLI wires it)."""
    parser = add_evaluate_arguments(argparse.ArgumentParser(prog="agedi-jax evaluate", description=__doc__.split("\n")[0]))
    return run_evaluate(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
