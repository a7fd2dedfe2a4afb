#!/bin/sh
# The first CPU-budget model of the 2D study (linear VE schedule, as the paper; 58 min on 2
# shared CPU cores); rerun to resume. The c2db preset's schedule is now geometric: see
# train_cpu_geo.sh.
cd "$(dirname "$0")/../.." || exit 1
exec python -m experiments.two_d.train --preset c2db \
  --set data.dataset=${AGEDI_JAX_DATA:-../shared/data}/c2db/train.csv --set data.val_fraction=0.05 \
  --set process.schedule=linear \
  --set model.network=painn --set model.features=64 --set model.num_layers=3 --set model.cutoff=5.0 \
  --set train.steps=16000 --set train.batch_size=32 --set train.learning_rate=1e-3 \
  --set train.warmup_steps=200 --set train.ema_decay=0.999 --set train.label_dropout=0.1 \
  --set train.log_every=100 --set train.val_every=1000 --set train.checkpoint_every=1000 \
  --set train.val_batches=6 --out experiments/two_d/runs/cpu --quiet "$@"
