#!/usr/bin/env bash
# Run an adjax command on every worker of a Cloud TPU VM slice (the same command on each host;
# --distributed makes them one JAX program). The checkout and the data must be on every worker.
#   bash launch/tpu_vm.sh my-tpu us-central2-b \
#     "adjax train --config=configs/efficientad.py:s --workdir=gs-or-local-dir --distributed ..."
set -euo pipefail
name=${1:?TPU name}
zone=${2:?zone}
command=${3:?the adjax command to run}
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all \
  --command="cd ~/adjax && pip install -q -e . 'jax[tpu]' && $command"
