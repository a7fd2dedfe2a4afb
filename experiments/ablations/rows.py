"""The rows of the ablation study: each a named change of the CPU-budget C2DB model
(``experiments/two_d/train_cpu_geo.sh``) or of its sampler, trained to the same wall-time
budget and evaluated by the same protocol (:mod:`experiments.ablations.run`).

A row is ``Row(overrides, evaluation, of, note, steps)``: ``overrides`` are ``--set``
assignments on top of :data:`BASE`; a row with ``of`` set trains nothing and evaluates the
checkpoint of that row (or of a run directory given relative to the repository, e.g.
:data:`COMMITTED`) with its own sampler settings (``evaluation``: ``steps``, ``sampler``,
``grid``, ``weights``).
"""

from __future__ import annotations

from typing import NamedTuple

from experiments.common import data_path


class Row(NamedTuple):
    overrides: tuple[str, ...] = ()
    evaluation: dict = {}
    of: str | None = None
    note: str = ""
    steps: int | None = None
    """Training steps of this row (overrides the driver's ``--steps``)."""


BASE = (
    f"data.dataset={data_path('c2db/train.csv')}",
    "data.val_fraction=0.05",
    "process.schedule=geometric",
    "model.network=painn", "model.features=64", "model.num_layers=3", "model.cutoff=5.0",
    "train.batch_size=32", "train.learning_rate=1e-3", "train.warmup_steps=200", "train.ema_decay=0.999",
    "train.label_dropout=0.1", "train.log_every=100", "train.val_every=1000", "train.checkpoint_every=1000",
    "train.val_batches=6",
)
"""The committed CPU model's settings (``experiments/two_d/runs/cpu_geo``), preset ``c2db``."""

def final_checkpoint(run):
    """The end-of-training checkpoint of a run directory: ``checkpoints/latest``, or the
    parameters-only export ``checkpoints/params`` of a committed run."""
    latest = run / "checkpoints" / "latest"
    return latest if latest.exists() else run / "checkpoints" / "params"


COMMITTED = "experiments/two_d/runs/cpu_geo"
"""The committed C2DB model (BASE settings, 30,744 steps): the sampler rows evaluate it."""

C2DB: dict[str, Row] = {
    "base": Row(note="the committed model's settings (PaiNN 64x3, geometric VE 0.01-5 A)"),
    "weight_decay": Row(("train.weight_decay=0.05",), note="AdamW weight decay 0.05 (against the overfitting)"),
    "t_beta": Row(("process.t_beta_a=3", "process.t_beta_b=2"),
                  note="training times ~ Beta(3, 2): effort on sigma ~ 0.2-1.5 A, where the registry is decided"),
    "t_beta_30k": Row(("process.t_beta_a=3", "process.t_beta_b=2"), steps=30_000,
                      note="t_beta trained 30,000 steps (the committed model's length, ~1 h on one core)"),
    "t_beta_film_30k": Row(("process.t_beta_a=3", "process.t_beta_b=2", "model.network_params.film=true"), steps=30_000,
                           note="t_beta_30k with FiLM conditioning (label and time scale the block inputs; the label was weak)"),
    "t_beta_film_30k_seed1": Row(evaluation={"seed": 1}, of="t_beta_film_30k",
                                 note="t_beta_film_30k (EM 100) with another sampling seed (the repeat noise)"),
    "t_beta_30k_seed1": Row(evaluation={"seed": 1}, of="t_beta_30k",
                            note="t_beta_30k (EM 100) with another sampling seed: the reference of the FiLM rows"),
    "t_beta_film_30k_pc100_c6": Row(evaluation={"steps": 100, "sampler": "pc", "options": {"corrector_steps": 6}},
                                    of="t_beta_film_30k", note="t_beta_film_30k model, predictor-corrector, 6 Langevin steps, 100 steps"),
    "t_beta_film_30k_pc100_c12": Row(evaluation={"steps": 100, "sampler": "pc", "options": {"corrector_steps": 12},
                                                 "weights": (0, 1, 2)},
                                     of="t_beta_film_30k", note="t_beta_film_30k model, predictor-corrector, 12 Langevin steps, 100 steps"),
    "t_beta_film_30k_pc100_c12_seed1": Row(evaluation={"steps": 100, "sampler": "pc", "options": {"corrector_steps": 12},
                                                       "weights": (1, 2), "seed": 1},
                                           of="t_beta_film_30k", note="t_beta_film_30k_pc100_c12 at w = 1 and 2, another sampling seed"),
    "t_beta_film_30k_em300": Row(evaluation={"steps": 300}, of="t_beta_film_30k",
                                 note="t_beta_film_30k model, 300 Euler-Maruyama steps"),
    "t_beta_film_30k_em300_seed1": Row(evaluation={"steps": 300, "seed": 1}, of="t_beta_film_30k",
                                       note="t_beta_film_30k_em300 with another sampling seed"),
    "wide": Row(("model.features=96",), note="PaiNN 96x3 (capacity at equal wall time)"),
    "nequip": Row(("model.network=nequip", "model.features=64", "model.vector_features=32", "model.l_max=2"),
                  note="NequIP 64x3, l_max 2 (higher l at equal wall time)"),
    "em300": Row(evaluation={"steps": 300}, of="base", note="base model, 300 Euler-Maruyama steps"),
    "pc100": Row(evaluation={"steps": 100, "sampler": "pc"}, of="base",
                 note="base model, predictor-corrector (1 Langevin step, snr 0.16), 100 steps"),
    "cpu_geo_w": Row(evaluation={"weights": (0, 1, 3, 5, 8)}, of=COMMITTED,
                     note="committed model, EM 100 steps, guidance weights up to 8"),
    "cpu_geo_em300": Row(evaluation={"steps": 300, "weights": (0, 1, 3, 5)}, of=COMMITTED,
                         note="committed model, 300 Euler-Maruyama steps"),
    "cpu_geo_pc100": Row(evaluation={"steps": 100, "sampler": "pc", "weights": (0, 1, 3, 5)}, of=COMMITTED,
                         note="committed model, predictor-corrector (1 Langevin step, snr 0.16), 100 steps"),
    "cpu_geo_ode100": Row(evaluation={"steps": 100, "sampler": "ode", "weights": (0, 1, 3, 5)}, of=COMMITTED,
                          note="committed model, probability-flow ODE (Heun), 100 steps"),
    "cpu_geo_pc100_snr008": Row(evaluation={"steps": 100, "sampler": "pc", "weights": (0, 1, 3, 5),
                                            "options": {"snr": 0.08}}, of=COMMITTED,
                                note="committed model, predictor-corrector, snr 0.08, 100 steps"),
    "cpu_geo_pc100_snr032": Row(evaluation={"steps": 100, "sampler": "pc", "weights": (0, 1, 3, 5),
                                            "options": {"snr": 0.32}}, of=COMMITTED,
                                note="committed model, predictor-corrector, snr 0.32, 100 steps"),
    "cpu_geo_pc100_c3": Row(evaluation={"steps": 100, "sampler": "pc", "weights": (0, 1, 3, 5),
                                        "options": {"corrector_steps": 3}}, of=COMMITTED,
                            note="committed model, predictor-corrector, 3 Langevin steps (snr 0.16), 100 steps"),
    "cpu_geo_pc100_seed1": Row(evaluation={"steps": 100, "sampler": "pc", "weights": (0, 1, 3, 5), "seed": 1},
                               of=COMMITTED, note="cpu_geo_pc100 with another sampling seed (the repeat noise)"),
    "cpu_geo_em100_seed1": Row(evaluation={"weights": (0, 1, 3, 5), "seed": 1}, of=COMMITTED,
                               note="cpu_geo_w (EM 100) with another sampling seed (the repeat noise)"),
    "cpu_geo_pc100_c6": Row(evaluation={"steps": 100, "sampler": "pc", "options": {"corrector_steps": 6}},
                            of=COMMITTED, note="committed model, predictor-corrector, 6 Langevin steps (snr 0.16), 100 steps"),
    "cpu_geo_pc50_c6": Row(evaluation={"steps": 50, "sampler": "pc", "options": {"corrector_steps": 6}},
                           of=COMMITTED, note="committed model, predictor-corrector, 6 Langevin steps (snr 0.16), 50 steps"),
    "cpu_geo_pc100_c12": Row(evaluation={"steps": 100, "sampler": "pc", "options": {"corrector_steps": 12}, "weights": (1, 3)},
                             of=COMMITTED, note="committed model, predictor-corrector, 12 Langevin steps (snr 0.16), 100 steps"),
    "t_beta_30k_pc100_c6": Row(evaluation={"steps": 100, "sampler": "pc", "options": {"corrector_steps": 6}},
                               of="t_beta_30k", note="t_beta_30k model, predictor-corrector, 6 Langevin steps, 100 steps"),
    "t_beta_30k_pc100_c12": Row(evaluation={"steps": 100, "sampler": "pc", "options": {"corrector_steps": 12},
                                            "weights": (1, 2, 3)},
                                of="t_beta_30k", note="t_beta_30k model, predictor-corrector, 12 Langevin steps, 100 steps"),
    "t_beta_30k_pc100_c12_seed1": Row(evaluation={"steps": 100, "sampler": "pc", "options": {"corrector_steps": 12},
                                                  "weights": (0, 2), "seed": 1},
                                      of="t_beta_30k", note="t_beta_30k_pc100_c12 at w = 0 and 2, another sampling seed"),
}

STUDIES = {"c2db": C2DB}
