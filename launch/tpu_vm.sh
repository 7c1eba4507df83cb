#!/usr/bin/env bash
# adjax on a Cloud TPU VM (one host, or every worker of a slice), driven from your checkout.
# adjax reads and writes local paths only (a gs:// --workdir would be a local folder "gs:"):
# code, data and work directories live on each worker's disk under ~/adjax; a bucket is
# reached only by the explicit copy steps below (the TPU's service account needs access).
#
#   bash launch/tpu_vm.sh NAME ZONE setup                # committed checkout (git archive HEAD)
#                                                        # -> ~/adjax; pip install -U "jax[tpu]" -e .
#   bash launch/tpu_vm.sh NAME ZONE data gs://B/mvtec_ad # gcloud storage cp -r -> ~/adjax/data/
#   WORKER=0 bash launch/tpu_vm.sh NAME ZONE run "bash launch/matrix.sh configs/efficientad.py:s data/mvtec_ad runs/ead-s"
#   WORKER=0 bash launch/tpu_vm.sh NAME ZONE save runs gs://B/adjax  # rsync -> gs://B/adjax/<host>
#   gcloud storage rsync -r gs://B/adjax runs/tpu && adjax tables --results=runs/tpu  # here
#
# `run` runs COMMAND in ~/adjax on WORKER (default all: the same command on every worker, as
# `adjax train ... --distributed` needs; evaluate afterwards with WORKER=0 ... run "adjax eval
# --workdir=..."). Work directories stay local to each worker, so resuming a multi-host run
# from its checkpoints is untested; for a matrix, rather give each worker its own categories:
# WORKER=1 ... run "CATEGORIES='cable grid' bash launch/matrix.sh ..." &  (then `wait`).
# DRY_RUN=1 prints the commands instead. Workers need Python >= 3.11 (PYTHON=python3.11).
set -euo pipefail
die() { echo "tpu_vm.sh: $*" >&2; exit 2; }
(($# >= 3)) || die "usage: bash launch/tpu_vm.sh NAME ZONE setup|data GS_URL|run COMMAND|save FOLDER GS_URL"
name=$1 zone=$2 step=$3
shift 3
worker=${WORKER:-all} python=${PYTHON:-python3} dry=${DRY_RUN:-0}
[[ $worker == all || $worker =~ ^[0-9]+$ ]] || die "WORKER must be all or a worker number, not '$worker'."
case $step in
  setup) (($# == 0)) || die "setup takes no arguments." ;;
  data) [[ $# == 1 && $1 == gs://* ]] || die "data takes one gs:// URL (or copy the data to ~/adjax/data yourself)." ;;
  run) [[ $# == 1 && -n $1 ]] || die "run takes one quoted command." ;;
  save) [[ $# == 2 && $2 == gs://* && $1 != /* ]] || die "save takes a folder under ~/adjax (e.g. runs) and a gs:// URL." ;;
  *) die "unknown step '$step' (setup, data, run or save)." ;;
esac
((dry)) || command -v gcloud > /dev/null || die "gcloud is not on PATH (install the Google Cloud CLI)."

# shellcheck source=launch/run.sh
source "$(dirname "${BASH_SOURCE[0]}")/run.sh"
on_workers() { run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker="$worker" --command="$1"; }
in_checkout='export PATH=$HOME/.local/bin:$PATH && cd ~/adjax && '
case $step in
  setup)
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    [[ -z $(git -C "$repo" status --porcelain --untracked-files=no) ]] \
      || echo "tpu_vm.sh: uncommitted changes in $repo are not copied (commit them first)." >&2
    tarball=${TMPDIR:-/tmp}/adjax-checkout.tar.gz
    run git -C "$repo" archive --format=tar.gz -o "$tarball" HEAD
    run gcloud compute tpus tpu-vm scp "$tarball" "$name:adjax.tar.gz" --zone="$zone" --worker="$worker"
    on_workers "mkdir -p ~/adjax && tar -xzf ~/adjax.tar.gz -C ~/adjax && $python -m pip install -q -U 'jax[tpu]' -e ~/adjax" ;;
  data) on_workers "${in_checkout}mkdir -p data && gcloud storage cp -r $1 data/" ;;
  run) on_workers "$in_checkout$1" ;;
  save) on_workers "${in_checkout}gcloud storage rsync -r $1 $2/\$(hostname)" ;;
esac
