#!/usr/bin/env bash
# Train, evaluate and benchmark one config over every category of a data set, on whatever JAX
# sees on this machine (CPU, one or several GPUs, a TPU host), then print the tables.
#
#   bash launch/matrix.sh CONFIG ROOT RUNS [RESULTS] [--config.key=value ...] [--dry-run]
#   bash launch/matrix.sh configs/efficientad.py:s /data/mvtec_ad runs/ead-s
#   CATEGORIES="tiles disc" BENCH=0 bash launch/matrix.sh configs/efficientad.py:quick embedded runs/quick
#
# Work directories: RUNS/<category>; records: RESULTS (default RUNS/results; keep them out of
# the repository's committed results/). Categories: ROOT's subfolders, or $CATEGORIES (needed
# for ROOT=embedded). Arguments after RESULTS go to `adjax train`. Resumable: rerun after a
# kill and each category resumes from its last checkpoint (finished ones are only re-evaluated).
# DRY_RUN=1 (or --dry-run): print every command, run nothing. BENCH=0: no benchmark;
# BENCH_ARGS: extra `adjax bench` flags, e.g. "--batch_sizes=1 --repeats=2 --precision=fp32".
# SEEDS="0 1 2": every category with every seed (work directories RUNS/<category>-seed<seed>).
# MODE=program: all runs in ONE compiled program (`adjax train --runs=...`, the fastest for a
# small model); MODE=jobs (default): one `adjax train` per run, DEVICES="0 1 2 3" placing one
# job per device at a time (through $DEVICE_VAR, default CUDA_VISIBLE_DEVICES) until all are
# done; without DEVICES, one job after the other.
# The last table puts the repository's published numbers (results/paper) beside the runs.
set -euo pipefail
die() { echo "matrix.sh: $*" >&2; exit 2; }
dry=${DRY_RUN:-0}
args=()
for arg in "$@"; do
  if [[ $arg == --dry-run ]]; then dry=1; else args+=("$arg"); fi
done
set -- ${args[@]+"${args[@]}"}
(($# >= 3)) || die "usage: bash launch/matrix.sh CONFIG ROOT RUNS [RESULTS] [--config.key=value ...]"
config=$1 root=$2 runs=$3
shift 3
results=$runs/results
if (($#)) && [[ $1 != -* ]]; then results=$1; shift; fi
bench=${BENCH:-1}
read -ra bench_args <<< "${BENCH_ARGS:-}"
read -ra categories <<< "${CATEGORIES:-}"
read -ra seeds <<< "${SEEDS:-}"
read -ra devices <<< "${DEVICES:-}"
mode=${MODE:-jobs}
device_var=${DEVICE_VAR:-CUDA_VISIBLE_DEVICES}
paper=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/results/paper

[[ -f ${config%%:*} ]] || die "no config file ${config%%:*} (give F.py:VARIANT, e.g. configs/efficientad.py:s)."
[[ $bench == [01] ]] || die "BENCH must be 0 or 1, not '$bench'."
[[ $dry == [01] ]] || die "DRY_RUN must be 0 or 1, not '$dry'."
[[ $mode == jobs || $mode == program ]] || die "MODE must be jobs or program, not '$mode'."
for seed in ${seeds[@]+"${seeds[@]}"}; do
  [[ $seed =~ ^[0-9]+$ ]] || die "SEEDS holds numbers, not '$seed'."
done
for folder in "$runs" "$results"; do
  [[ ! -e $folder || -d $folder ]] || die "$folder exists and is not a folder."
done
if [[ $root == embedded ]]; then
  ((${#categories[@]})) || die "ROOT=embedded has no folders to list: set CATEGORIES (e.g. CATEGORIES=\"tiles disc\")."
else
  [[ -d $root ]] || die "the data root $root is not a folder."
  if ((${#categories[@]} == 0)); then
    for folder in "$root"/*/; do
      [[ -d $folder ]] && categories+=("$(basename "$folder")")
    done
  fi
  ((${#categories[@]})) || die "the data root $root has no category folders (or set CATEGORIES)."
  for category in "${categories[@]}"; do
    [[ -d $root/$category ]] || die "no category folder $root/$category."
  done
fi
((dry)) || command -v adjax > /dev/null || die "adjax is not on PATH (activate the environment it is installed in)."

# shellcheck source=launch/run.sh
source "$(dirname "${BASH_SOURCE[0]}")/run.sh"
join() { local IFS=,; echo "$*"; }
if [[ $mode == program ]]; then
  spec=categories=$(join "${categories[@]}")
  ((${#seeds[@]})) && spec+=,seeds=$(join "${seeds[@]}")
  run adjax train --config="$config" --workdir="$runs" --config.data.root="$root" \
    --runs="$spec" "$@"
  run adjax eval --workdir="$runs" --results_dir="$results"
else
  jobs=()  # "category seed" pairs; seed "-" keeps the config's
  for category in "${categories[@]}"; do
    if ((${#seeds[@]})); then
      for seed in "${seeds[@]}"; do jobs+=("$category $seed"); done
    else
      jobs+=("$category -")
    fi
  done
  one_job() {  # category seed device [train flags]: train then evaluate one run
    local category=$1 seed=$2 device=$3 workdir=$runs/$1 extra=()
    shift 3
    [[ $seed != - ]] && { workdir+=-seed$seed; extra=(--config.seed="$seed"); }
    local env=()
    [[ -n $device ]] && env=(env "$device_var=$device")
    run ${env[@]+"${env[@]}"} adjax train --config="$config" --workdir="$workdir" \
      --config.data.root="$root" --config.data.category="$category" \
      ${extra[@]+"${extra[@]}"} "$@"
    run ${env[@]+"${env[@]}"} adjax eval --workdir="$workdir" --results_dir="$results"
  }
  if ((${#devices[@]} == 0 || dry)); then
    i=0
    for job in "${jobs[@]}"; do
      device=""
      ((${#devices[@]})) && device=${devices[i++ % ${#devices[@]}]}
      one_job $job "$device" "$@"
    done
  else
    declare -A busy=()  # pid -> device
    failed=0
    for job in "${jobs[@]}"; do
      while ((${#busy[@]} == ${#devices[@]})); do  # every device busy: wait for one
        wait -n || failed=1
        for pid in "${!busy[@]}"; do kill -0 "$pid" 2> /dev/null || unset "busy[$pid]"; done
      done
      for device in "${devices[@]}"; do
        [[ " ${busy[*]} " == *" $device "* ]] || break
      done
      one_job $job "$device" "$@" &
      busy[$!]=$device
    done
    for pid in "${!busy[@]}"; do wait "$pid" || failed=1; done
    ((failed == 0)) || die "some runs failed (see above); rerun to resume them."
  fi
fi
if ((bench)); then
  run adjax bench --config="$config" --results_dir="$results" --precision=fp32,bf16 \
    ${bench_args[@]+"${bench_args[@]}"}
  run adjax tables --results="$results" --kind=bench
fi
run adjax tables --results="$results" --source=adjax
if [[ -d $paper ]]; then
  run adjax tables --results="$results" --results="$paper" --source=all
else
  echo "matrix.sh: no published records at $paper; the table above has the runs only." >&2
fi
