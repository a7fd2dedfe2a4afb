#!/usr/bin/env bash
# CPU-budget perov5 model of the bulk case study (issue 18): the perov5 preset with a smaller
# PaiNN (32 features, 2 layers) and batch 16, trained for at most 35 minutes of wall time on
# one core (SIGTERM at the budget; the trainer saves checkpoints/latest on the way out).
# Run from the repository root with AGEDI_JAX_DATA set:
#   bash experiments/bulk/train.sh            # -> experiments/bulk/runs/perov5_cpu
set -euo pipefail
OUT=${OUT:-experiments/bulk/runs/perov5_cpu}
BUDGET=${BUDGET:-35m}
PY=${PY:-.venv/bin/python}
timeout -s TERM "$BUDGET" taskset -c 1 nice -n 5 "$PY" -m agedi_jax.cli train --preset perov5 \
  --set model.features=32 --set model.num_layers=2 \
  --set train.batch_size=16 --set train.learning_rate=2e-3 --set train.warmup_steps=100 \
  --set train.ema_decay=0.995 --set train.steps=5000 \
  --set train.val_every=500 --set train.checkpoint_every=500 --set train.checkpoint_minutes=3 \
  --out "$OUT" || rc=$?
# timeout exits 124 when the budget ran out (the run stopped cleanly at SIGTERM)
[ "${rc:-0}" = 0 ] || [ "${rc:-0}" = 124 ] || exit "$rc"
