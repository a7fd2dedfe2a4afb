#!/usr/bin/env bash
# The CPU-budget C2DB model that also generates the in-plane cell (preset c2db_cell, issue 18):
# the committed cpu_geo settings (PaiNN 64 x 3, geometric VE 0.01-5 A) plus the log-lattice
# process on the layers. Trains to a wall-time budget (default 45 min; one core of the 2-core
# CPU: taskset -c 0 bash experiments/two_d/train_cpu_cell.sh), then
#   python -m experiments.two_d.cell_generation experiments/two_d/runs/cpu_cell
cd "$(dirname "$0")/../.." || exit 1
exec python -m experiments.two_d.train --preset c2db_cell \
  --set data.dataset=${AGEDI_JAX_DATA:-../shared/data}/c2db/train.csv --set data.val_fraction=0.05 \
  --set process.schedule=geometric \
  --set model.network=painn --set model.features=64 --set model.num_layers=3 --set model.cutoff=5.0 \
  --set train.batch_size=32 --set train.learning_rate=1e-3 \
  --set train.warmup_steps=200 --set train.ema_decay=0.999 --set train.label_dropout=0.1 \
  --set train.log_every=100 --set train.val_every=1000 --set train.checkpoint_every=1000 \
  --set train.val_batches=6 --seconds ${SECONDS_BUDGET:-2700} --out experiments/two_d/runs/cpu_cell --quiet "$@"
