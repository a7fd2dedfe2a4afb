"""Shared settings of the QCD cluster case study (paper Sec. III A, Fig. 4 and 5).

Two budgets, one set of scripts:

* ``cpu`` — what finishes in about two hours of wall time on a shared 2-core machine
  (PaiNN, 64 features, 3 layers; see README.md for the timing that chose it);
* ``gpu`` — paper-scale settings (the ``qcd_gm`` / ``qcd_de200`` presets: 100 k steps,
  batch 64) for one GPU.

The data directory is ``$AGEDI_JAX_DATA/qcd_gap_relaxed`` (default ``../shared/data``
relative to the repository root, the project's convention).
"""

from __future__ import annotations

from pathlib import Path

from experiments.common import data_path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def data_dir() -> str:
    """The QCD directory, portable: ``$AGEDI_JAX_DATA/qcd_gap_relaxed``."""
    return data_path("qcd_gap_relaxed")


SUBSETS = ("gm", "de200")
BUDGETS = ("cpu", "gpu")

# `--set` overrides on top of the presets qcd_gm / qcd_de200 (agedi_jax/config.py).
_CPU_MODEL = [
    "model.network=painn",
    "model.features=64",
    "model.num_layers=3",
    "model.cutoff=6.0",
]
OVERRIDES: dict[tuple[str, str], list[str]] = {
    ("cpu", "gm"): _CPU_MODEL + [
        "train.steps=12000",
        "train.batch_size=32",
        "train.learning_rate=1e-3",
        "train.warmup_steps=200",
        "train.ema_decay=0.999",
        "train.log_every=100",
        "train.val_every=1000",
        "train.checkpoint_every=1000",
    ],
    ("cpu", "de200"): _CPU_MODEL + [
        "train.steps=4000",
        "train.batch_size=32",
        "train.learning_rate=1e-3",
        "train.warmup_steps=200",
        "train.ema_decay=0.999",
        "train.log_every=50",
        "train.val_every=500",
        "train.checkpoint_every=500",
    ],
    # Paper scale: the presets as they are (NequIP 64/32 features, 3 layers, l_max 2,
    # 100 k steps of 64 structures), only logging adapted.
    ("gpu", "gm"): ["train.log_every=200", "train.val_every=2000", "train.checkpoint_every=2000"],
    ("gpu", "de200"): ["train.log_every=200", "train.val_every=2000", "train.checkpoint_every=2000"],
}

# Sampling: Euler–Maruyama (Eq. 9) with this many steps, τ-leaping types (steps_study.py:
# 500 steps give clearly more valid, more mono-metallic and closer-to-data clusters than 200).
SAMPLE_STEPS = {"cpu": 500, "gpu": 500}
# At most this many reference (training) structures per subset in the PRD evaluation; the
# same number of samples is drawn with the same atom counts. None = the whole training split.
MAX_REFERENCE = {("cpu", "gm"): None, ("cpu", "de200"): 500, ("gpu", "gm"): None, ("gpu", "de200"): None}


def run_dir(budget: str, subset: str) -> Path:
    """``experiments/clusters/runs/<budget>_<subset>`` (checkpoints, metrics)."""
    return HERE / "runs" / f"{budget}_{subset}"


def results_dir(budget: str) -> Path:
    """``experiments/clusters/results/<budget>`` (samples, JSON, figures)."""
    return HERE / "results" / budget


def train_argv(budget: str, subset: str, quick: bool = False, out: Path | None = None) -> list[str]:
    """Arguments of ``agedi-jax train`` for one model (``--quick``: a 30-step smoke run)."""
    argv = ["train", "--preset", f"qcd_{subset}", "--set", f"data.dataset={data_dir()}"]
    for item in OVERRIDES[(budget, subset)]:
        argv += ["--set", item]
    if quick:
        for item in ("train.steps=30", "train.log_every=10", "train.val_every=30", "train.checkpoint_every=30"):
            argv += ["--set", item]
    argv += ["--out", str(out or run_dir(budget, subset)), "--quiet"]
    return argv


def reference_set(config, max_structures: int | None, seed: int = 0) -> list:
    """The training split of a run (rebuilt deterministically from its config), or a seeded
    random subset of ``max_structures`` of it: the reference P of the PRD evaluation."""
    import numpy as np

    from agedi_jax.train import prepare_data

    train_atoms = list(prepare_data(config).train_atoms)
    if max_structures is not None and len(train_atoms) > max_structures:
        keep = np.sort(np.random.default_rng(seed).choice(len(train_atoms), max_structures, replace=False))
        train_atoms = [train_atoms[i] for i in keep]
    return train_atoms


def add_study_arguments(ap, *, seed: int, quick: str, run: bool = True, results: bool = True,
                        steps: bool = False) -> None:
    """The arguments every cluster script shares: ``--budget``, ``--run`` (a run directory,
    default ``runs/<budget>_<subset>``), ``--steps`` (Euler–Maruyama steps, default
    :data:`SAMPLE_STEPS`), ``--seed``, ``--results`` (default ``results/<budget>``) and
    ``--quick`` (a smoke test: ``quick`` says what it does)."""
    from pathlib import Path as _Path

    ap.add_argument("--budget", choices=BUDGETS, default="cpu")
    if run:
        ap.add_argument("--run", type=_Path, default=None, help="run directory (default runs/<budget>_<subset>)")
    if steps:
        ap.add_argument("--steps", type=int, default=None, help="Euler–Maruyama steps (default settings.SAMPLE_STEPS)")
    ap.add_argument("--seed", type=int, default=seed)
    if results:
        ap.add_argument("--results", type=_Path, default=None, help="default results/<budget>")
    ap.add_argument("--quick", action="store_true", help=quick)
