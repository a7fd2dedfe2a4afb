"""Command line: ``agedi-jax quickstart | train | sample | predict | evaluate | data``.

Every subcommand that takes a configuration accepts ``--preset NAME`` and any number of
``--set section.field=value`` overrides (see :mod:`agedi_jax.config`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence


def _add_config_args(p: argparse.ArgumentParser, default_preset: str) -> None:
    from agedi_jax.config import PRESETS

    p.add_argument("--preset", default=default_preset, choices=PRESETS, help="named configuration")
    p.add_argument("--config", type=Path, default=None, help="a config.json to start from (instead of a preset)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config field, e.g. --set model.num_layers=4 (repeatable)",
    )


def _resolve_config(args: argparse.Namespace):
    from agedi_jax.config import Config, override, preset

    if args.config is not None:
        if not args.config.is_file():
            raise FileNotFoundError(f"config file {args.config} does not exist")
        cfg = Config.from_json(args.config.read_text())
    else:
        cfg = preset(args.preset)
    return override(cfg, args.overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    from agedi_jax.train import TrainingInterrupted, fit

    cfg = _resolve_config(args)
    try:
        result = fit(cfg, args.out, resume=not args.restart, progress=not args.quiet)
    except TrainingInterrupted as stop:
        print(f"agedi-jax train: {stop}; run the same command again to resume", file=sys.stderr)
        return 128 + stop.signum
    print(f"run directory: {result.run_dir}")
    print(f"  checkpoints: {result.run_dir / 'checkpoints'} (latest, best)")
    print(f"  metrics:     {result.run_dir / 'metrics.jsonl'}")
    print(f"  loss plot:   {result.run_dir / 'loss.png'}")
    return 0


def _parse_interpolate(text: str | None):
    if not text:
        return None
    parts = [p.strip() for p in text.replace(",", ":").split(":") if p.strip()]
    if len(parts) != 2:
        raise SystemExit(f"error: --interpolate takes two elements like Pt:Cu, got {text!r}")
    return tuple(parts)


def _cmd_sample(args: argparse.Namespace) -> int:
    from agedi_jax.checkpoint import load_model
    from agedi_jax.generate import sample_atoms
    from agedi_jax.results import write_extxyz
    from agedi_jax.runlog import check_writable

    if args.num is not None and args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    check_writable(args.out, "output file")  # before loading or sampling anything
    template = None
    if args.template:
        from agedi_jax.data import load_ase_file

        template = load_ase_file(args.template).structures
    model, params, cfg = load_model(args.checkpoint, overrides=args.overrides, use_ema=not args.no_ema)
    n_atoms = [int(x) for x in args.n_atoms.split(",")] if args.n_atoms else None
    compositions = args.composition.split(",") if args.composition else None
    passed = ("label", "guidance", "sampler", "steps", "grid", "seed", "batch_size", "energy_guidance",
              "guidance_potential", "z_window", "z_window_absolute")  # same name in sample_atoms
    structures = sample_atoms(
        model, params, n_atoms=n_atoms, compositions=compositions, templates=template, num_samples=args.num,
        interpolate=_parse_interpolate(args.interpolate), formula=args.formula.split(",") if args.formula else None,
        progress=not args.quiet, **{name: getattr(args, name) for name in passed},
    )
    path = write_extxyz(args.out, structures, model.config)
    print(f"wrote {len(structures)} structures to {path}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from ase.io import write

    from agedi_jax.checkpoint import load_model
    from agedi_jax.data import load_ase_file
    from agedi_jax.forcefield import predict_atoms
    from agedi_jax.runlog import check_writable

    check_writable(args.out, "output file")
    structures = load_ase_file(args.input).structures
    model, params, _ = load_model(args.checkpoint, use_ema=not args.no_ema)
    if not model.config.model.energy_head:
        raise ValueError(f"the model in {args.checkpoint} has no force field (model.energy_head is off)")
    atoms = predict_atoms(model, params, structures, batch_size=args.batch_size)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write(args.out, atoms, format="extxyz")
    print(f"wrote energies (eV) and forces (eV/Å) of {len(atoms)} structures to {args.out}")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from agedi_jax.quickstart import quickstart

    quickstart(args.out, overrides=args.overrides, num_samples=args.num, progress=not args.quiet)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from agedi_jax.evaluation.report import run_evaluate

    return int(run_evaluate(args) or 0)


def _cmd_data(args: argparse.Namespace) -> int:
    from agedi_jax.data import summary_main

    status = int(summary_main([*args.specs, *(["--validate"] if args.validate else [])]) or 0)
    return 2 if status else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from agedi_jax.checkpoint import export_params

    out = export_params(args.run, args.out, use_ema=not args.raw, overrides=args.overrides)
    print(f"wrote the {'raw' if args.raw else 'EMA'} parameters of {args.run} to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agedi-jax",
        description="Generative diffusion of atomistic structures in JAX (positions + atomic types).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quickstart", help="train a small model on the built-in clusters and sample from it")
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="output directory")
    p.add_argument("--num", type=int, default=32, help="number of clusters to sample")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser("train", help="train a diffusion model")
    _add_config_args(p, "quickstart")
    p.add_argument("--out", type=Path, required=True, help="run directory (resumed if it has a checkpoint)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="sample structures from a trained model")
    p.add_argument("checkpoint", type=Path, help="RUN directory or RUN/checkpoints/{latest,best}")
    p.add_argument("--out", type=Path, required=True, help="output extended XYZ file")
    p.add_argument("--num", type=int, default=None, help="number of structures (per size / composition)")
    p.add_argument("--n-atoms", default=None, help="atoms per structure, comma separated (types generated)")
    p.add_argument("--composition", default=None, help="formulas, comma separated, e.g. Pt13,Cu13 (types fixed)")
    p.add_argument("--template", default=None, help="file of template structures (FixAtoms atoms stay fixed)")
    p.add_argument("--formula", default=None,
                   help="with --template: atoms added to every template (e.g. Pt4; comma separated for several), "
                        "the template held fixed; --n-atoms N with --template adds N atoms of generated types")
    p.add_argument("--z-window", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                   help="confine the new atoms of slab templates (pbc T,T,F) to z in [LO, HI] Å above the topmost "
                        "fixed (with --formula: template) atom (default: the checkpoint's sample.z_window)")
    p.add_argument("--z-window-absolute", action="store_true",
                   help="--z-window LO HI are absolute Cartesian z (Å) in the template's cell")
    p.add_argument("--label", type=int, default=None, help="condition label (e.g. layer group)")
    p.add_argument("--guidance", type=float, default=None, help="guidance weight w (1 = conditional)")
    p.add_argument("--interpolate", default=None, help="type interpolation between two elements, e.g. Pt:Cu")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: sample.seed of the checkpoint)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: sample.steps of the checkpoint)")
    p.add_argument("--sampler", default=None, help="position sampler: em | pc | ode (default: the checkpoint's)")
    p.add_argument("--grid", default=None, help="time grid: uniform | quadratic | log (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=None, help="structures per compiled batch")
    p.add_argument("--energy-guidance", type=float, default=None,
                   help="force-field guidance scale λ (1/eV); 0 = off (default: the checkpoint's)")
    p.add_argument("--guidance-potential", default=None, help="model (learned force field) | emt")
    p.add_argument("--no-ema", action="store_true", help="use the raw parameters instead of the EMA")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="sample.FIELD=VALUE")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("predict", help="energies and forces of structures from a model's learned force field")
    p.add_argument("checkpoint", type=Path, help="RUN directory or RUN/checkpoints/{latest,best}")
    p.add_argument("input", help="structures (extxyz or any file ASE reads)")
    p.add_argument("--out", type=Path, required=True, help="output extended XYZ (energy, forces per frame)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-ema", action="store_true", help="use the raw parameters instead of the EMA")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("evaluate", help="precision-recall, validity, symmetry of generated structures")
    try:
        from agedi_jax.evaluation.report import add_evaluate_arguments

        add_evaluate_arguments(p)
    except ImportError:  # pragma: no cover - evaluation extras missing
        pass
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("export", help="write a parameters-only checkpoint (for sharing; samples like the run)")
    p.add_argument("run", help="run directory or checkpoint")
    p.add_argument("out", type=Path, help="new checkpoint directory (e.g. RUN/checkpoints/params)")
    p.add_argument("--raw", action="store_true", help="the raw parameters instead of their EMA")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="sample.FIELD=VALUE",
                   help="new default sampler settings saved with the export")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("data", help="one-line summaries of data sets")
    p.add_argument("action", choices=["summary"])
    p.add_argument("specs", nargs="+", help="builtin, a QCD directory, qcd:PATH:gm, a C2DB csv / db, an extxyz")
    p.add_argument("--validate", action="store_true", help="also check that every structure can be batched")
    p.set_defaults(func=_cmd_data)
    return parser


def enable_compile_cache() -> None:
    """JAX's persistent compilation cache (``$AGEDI_JAX_CACHE`` or ``~/.cache/agedi_jax/xla``)
    so that a second run of the same model does not compile again."""
    import os

    import jax

    path = os.environ.get("AGEDI_JAX_CACHE") or str(Path.home() / ".cache" / "agedi_jax" / "xla")
    if path.lower() in ("0", "off", "none") or jax.config.jax_compilation_cache_dir:
        return  # switched off, or already configured (e.g. by the test suite)
    try:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    except Exception:  # pragma: no cover - an old jax without the option
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status: 0 success, 2 for anything the user
    can fix (bad input, missing or corrupt files, unwritable outputs, a run directory in
    use), 128 + signal number when training was interrupted (after saving)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    enable_compile_cache()
    from agedi_jax.batch import StructureError
    from agedi_jax.checkpoint import CheckpointError
    from agedi_jax.runlog import RunInUseError

    try:
        return args.func(args)
    except (ValueError, KeyError, OSError, CheckpointError, StructureError, RunInUseError) as err:
        # Known user errors get one clear line, not a traceback.
        text = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"agedi-jax {args.command}: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
