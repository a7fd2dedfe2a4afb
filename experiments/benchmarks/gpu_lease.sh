#!/usr/bin/env bash
# Everything this project measures on a lent GPU, in one call of at most ~9.5 minutes:
#
#   1. the headline sampling benchmark (10,000 13-atom clusters x 500 EM steps, gpu.py);
#   2. the C2DB model with a GPU budget (experiments/two_d/train.py --seconds), then its
#      CFG accuracy table on val.csv, the SnBr2/MX2 case and the samples for the PRD plot
#      (scored later on a CPU: prd_tsne.py --samples);
#   3. the 64 x Pt13 step timings and the scaling curves (gpu.py), in the time left.
#
# Usage on the device machine (repository root; the C2DB CSVs copied to .gpu_data/c2db/ and
# the wheels missing there (ase, e3nn-jax, spglib) to .whl/, both carried):
#     OUT=/path/to/out bash experiments/benchmarks/gpu_lease.sh
# Outputs in $OUT: gpu.log, results.tar.gz (refreshed after every stage), c2db_gpu_run.tar.gz.
set -u
LIMIT=${LIMIT:-560}
DATA=${DATA:-.gpu_data/c2db}
RES=/tmp/gpu_results
# SMOKE=1: the same stages at toy sizes (a CPU check of the script before a lease)
if [ "${SMOKE:-0}" = 1 ]; then
  H="--num 64 --steps 5"; SEC=30; F=16; EV="--num 8 --steps 5 --weights 0 1"; SN="--copies 2 --steps 5 --weights 0 1"
  PR="--num-templates 16 --steps 5"; J="--repeats 2"; SC="--batches 16 32 --atoms 13 19 --repeats 2"
else
  H=""; SEC=140; F=128; EV="--steps 100"; SN=""; PR=""; J=""; SC="--batches 16 256 4096 16384 --atoms 13 55 --repeats 6"
fi
mkdir -p "$RES" "$OUT"
exec > >(tee -a "$OUT/gpu.log") 2>&1
export PYTHONUNBUFFERED=1
if [ -d .whl ] && [ "${SMOKE:-0}" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
  export PYTHONPATH=$PWD
fi
python3 -c "import jax, flax, optax, chex, orbax.checkpoint as o, e3nn_jax, ase, spglib; \
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, jax.devices())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

pack() { tar -C "$RES" -czf "$OUT/results.tar.gz" . ; }
left() { echo $(( LIMIT - SECONDS )); }
stage() { echo "=== [$SECONDS s] $*"; }

stage headline
timeout 120 python3 -m experiments.benchmarks.gpu --sections headline --out "$RES/gpu_headline.json" $H \
  --save "$RES/headline_samples.extxyz"
gzip -f "$RES/headline_samples.extxyz" 2>/dev/null; pack

stage c2db training
timeout 190 python3 -m experiments.two_d.train --preset c2db --seconds $SEC --quiet \
  --set data.dataset=$DATA/train.csv --set data.val_fraction=0.05 \
  --set model.network=painn --set model.features=$F --set model.num_layers=3 --set model.cutoff=5.0 \
  --set train.batch_size=64 --set train.learning_rate=1e-3 --set train.warmup_steps=400 \
  --set train.ema_decay=0.999 --set train.label_dropout=0.1 --set train.log_every=100 \
  --set train.val_every=2000 --set train.checkpoint_every=2000 --set train.val_batches=6 \
  --out /tmp/c2db_gpu
tar -C /tmp -czf "$OUT/c2db_gpu_run.tar.gz" --exclude='*/latest' c2db_gpu

stage c2db CFG accuracy on val.csv
timeout 70 python3 -m experiments.two_d.evaluate_cfg /tmp/c2db_gpu --data $DATA/val.csv $EV \
  --out "$RES/cfg_val.json" --plot "$RES/cfg_val.png" --samples-out "$RES/cfg_val_samples.extxyz"
gzip -f "$RES/cfg_val_samples.extxyz" 2>/dev/null; pack

stage c2db SnBr2 / MX2
timeout 45 python3 -m experiments.two_d.snbr2 /tmp/c2db_gpu --data $DATA/train.csv $SN --out "$RES/snbr2.json"; pack

stage c2db PRD samples
timeout 45 python3 -m experiments.two_d.prd_tsne /tmp/c2db_gpu --data $DATA/train.csv $PR \
  --save-samples "$RES/prd_samples.extxyz"
gzip -f "$RES/prd_samples.extxyz" 2>/dev/null; pack

stage 64 x Pt13 step timings
[ "$(left)" -gt 30 ] && timeout "$(left)" python3 -m experiments.benchmarks.gpu --sections jax $J --out "$RES/gpu_jax.json"
pack
stage scaling
[ "$(left)" -gt 30 ] && timeout "$(left)" python3 -m experiments.benchmarks.gpu --sections scaling --networks painn \
  $SC --out "$RES/gpu_scaling.json"
pack
stage done
