#!/bin/sh
# The second CPU-budget model of the 2D study: as train_cpu.sh but with the geometric VE
# schedule (log-uniform σ from 0.01 to 5 Å: equal training effort per decade of noise, so the
# 0.01–0.5 Å range gets 63 % of the samples instead of 10 %) and a
# wall-time budget of 90 min instead of a step count. Rerun the same command to resume.
cd "$(dirname "$0")/../.." || exit 1
exec python -m experiments.two_d.train --preset c2db \
  --set data.dataset=${AGEDI_JAX_DATA:-../shared/data}/c2db/train.csv --set data.val_fraction=0.05 \
  --set process.schedule=geometric \
  --set model.network=painn --set model.features=64 --set model.num_layers=3 --set model.cutoff=5.0 \
  --set train.batch_size=32 --set train.learning_rate=1e-3 \
  --set train.warmup_steps=200 --set train.ema_decay=0.999 --set train.label_dropout=0.1 \
  --set train.log_every=100 --set train.val_every=1000 --set train.checkpoint_every=1000 \
  --set train.val_batches=6 --seconds ${SECONDS_BUDGET:-5400} --out experiments/two_d/runs/cpu_geo --quiet "$@"
