#!/usr/bin/env bash
# Train, evaluate and benchmark one config over every category of a data set, on whatever JAX
# sees on this machine (CPU, one or several GPUs, a TPU host). Resumable: rerun after a kill and
# each category resumes from its last checkpoint (finished ones are only re-evaluated).
#
#   bash launch/matrix.sh configs/efficientad.py:s /data/mvtec_ad runs/ead-s results/mvtec_ead-s
#
# Extra arguments after the fourth are passed to `adjax train` (e.g. --config.data.layout=btad).
set -euo pipefail
config=${1:?config, e.g. configs/efficientad.py:s}
root=${2:?data root}
runs=${3:?folder for work directories}
results=${4:?folder for results records}
shift 4
categories=${CATEGORIES:-$(find "$root" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort)}
for category in $categories; do
  workdir="$runs/$category"
  adjax train --config="$config" --workdir="$workdir" --config.data.root="$root" \
    --config.data.category="$category" "$@"
  adjax eval --workdir="$workdir" --results_dir="$results"
done
adjax bench --config="$config" --results_dir="$results" --precision=fp32,bf16
adjax tables --results="$results" --source=all
