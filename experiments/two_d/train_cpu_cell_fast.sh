#!/usr/bin/env bash
# The second CPU model that generates the in-plane cell (preset c2db_cell): as train_cpu_cell.sh,
# but on the compacted edge list (the preset's model.edges_per_atom = 32: ~10x cheaper steps than
# the whole template) and with the best position lever of the ablations (training times ~
# Beta(3, 2)), 40,000 steps within a 60-min budget on one core:
#   taskset -c 0 bash experiments/two_d/train_cpu_cell_fast.sh
#   python -m experiments.two_d.cell_generation experiments/two_d/runs/cpu_cell_fast
cd "$(dirname "$0")" || exit 1
SECONDS_BUDGET=${SECONDS_BUDGET:-3600} exec bash train_cpu_geo.sh --preset c2db_cell \
  --set process.t_beta_a=3 --set process.t_beta_b=2 --set train.steps=40000 \
  --out experiments/two_d/runs/cpu_cell_fast "$@"
