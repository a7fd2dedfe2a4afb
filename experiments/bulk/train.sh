#!/usr/bin/env bash
# CPU-budget models of the bulk case study (issue 18), trained on one core with a wall-time
# budget (SIGTERM at the budget; the trainer saves checkpoints/latest on the way out).
# Run from the repository root with AGEDI_JAX_DATA set:
#   bash experiments/bulk/train.sh            # perov5: PaiNN 32x2, batch 16, <= 35 min -> runs/perov5_cpu
#   bash experiments/bulk/train.sh carbon24   # carbon24: PaiNN 64x3, batch 16, <= 88 min -> runs/carbon24_cpu
# carbon24 runs the network on the compacted edge list (model.edges_per_atom = 128, the
# preset's): its edge template holds ~55,000 candidates per 24-atom cell for ~1,900 real edges.
set -euo pipefail
PRESET=${1:-perov5}
PY=${PY:-.venv/bin/python}
case "$PRESET" in
  perov5)
    OUT=${OUT:-experiments/bulk/runs/perov5_cpu}; BUDGET=${BUDGET:-35m}
    ARGS=(--set model.features=32 --set model.num_layers=2
          --set train.batch_size=16 --set train.learning_rate=2e-3 --set train.warmup_steps=100
          --set train.ema_decay=0.995 --set train.steps=5000
          --set train.val_every=500 --set train.checkpoint_every=500 --set train.checkpoint_minutes=3) ;;
  carbon24)
    OUT=${OUT:-experiments/bulk/runs/carbon24_cpu}; BUDGET=${BUDGET:-88m}
    ARGS=(--set train.batch_size=16 --set train.learning_rate=1e-3 --set train.warmup_steps=500
          --set train.ema_decay=0.999 --set train.steps=27000
          --set train.val_every=2500 --set train.checkpoint_every=2500 --set train.checkpoint_minutes=5) ;;
  *) echo "unknown preset $PRESET (perov5 | carbon24)" >&2; exit 2 ;;
esac
timeout -s TERM "$BUDGET" taskset -c 1 nice -n 5 "$PY" -m agedi_jax.cli train --preset "$PRESET" \
  "${ARGS[@]}" --out "$OUT" || rc=$?
# timeout exits 124 when the budget ran out (the run stopped cleanly at SIGTERM)
[ "${rc:-0}" = 0 ] || [ "${rc:-0}" = 124 ] || exit "$rc"
