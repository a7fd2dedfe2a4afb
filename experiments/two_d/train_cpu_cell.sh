#!/usr/bin/env bash
# The CPU-budget C2DB model that also generates the in-plane cell (preset c2db_cell, issue 18):
# the committed cpu_geo settings (train_cpu_geo.sh: PaiNN 64 x 3, geometric VE 0.01-5 A) plus the
# log-lattice process on the layers, trained to a wall-time budget (default 45 min; one core of
# the 2-core CPU: taskset -c 0 bash experiments/two_d/train_cpu_cell.sh), then
#   python -m experiments.two_d.cell_generation experiments/two_d/runs/cpu_cell
cd "$(dirname "$0")" || exit 1
SECONDS_BUDGET=${SECONDS_BUDGET:-2700} exec bash train_cpu_geo.sh --preset c2db_cell --out experiments/two_d/runs/cpu_cell "$@"
