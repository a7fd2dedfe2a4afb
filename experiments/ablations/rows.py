"""The rows of the ablation study: each a named change of the CPU-budget C2DB model
(``experiments/two_d/train_cpu_geo.sh``) or of its sampler, trained to the same wall-time
budget and evaluated by the same protocol (:mod:`experiments.ablations.run`).

A row is ``Row(overrides, evaluation, of, note)``: ``overrides`` are ``--set`` assignments on
top of :data:`BASE`; a row with ``of`` set trains nothing and evaluates the checkpoint of
that row with its own sampler settings (``evaluation``).
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

C2DB: dict[str, Row] = {
    "base": Row(note="the committed model's settings (PaiNN 64x3, geometric VE 0.01-5 A)"),
    "weight_decay": Row(("train.weight_decay=0.05",), note="AdamW weight decay 0.05 (against the overfitting)"),
    "t_beta": Row(("process.t_beta_a=3", "process.t_beta_b=2"),
                  note="training times ~ Beta(3, 2): effort on sigma ~ 0.2-1.5 A, where the registry is decided"),
    "t_beta_30k": Row(("process.t_beta_a=3", "process.t_beta_b=2"), steps=30_000,
                      note="t_beta trained 30,000 steps (the committed model's length, ~1 h on one core)"),
    "wide": Row(("model.features=96",), note="PaiNN 96x3 (capacity at equal wall time)"),
    "nequip": Row(("model.network=nequip", "model.features=64", "model.vector_features=32", "model.l_max=2"),
                  note="NequIP 64x3, l_max 2 (higher l at equal wall time)"),
    "em300": Row(evaluation={"steps": 300}, of="base", note="base model, 300 Euler-Maruyama steps"),
    "pc100": Row(evaluation={"steps": 100, "sampler": "pc"}, of="base",
                 note="base model, predictor-corrector (1 Langevin step, snr 0.16), 100 steps"),
}

STUDIES = {"c2db": C2DB}
