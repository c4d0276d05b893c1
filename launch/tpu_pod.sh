#!/usr/bin/env bash
# Runs one config on every host of a Cloud TPU VM pod slice. Usage:
#   launch/tpu_pod.sh <tpu-name> <zone> configs/cifar10_afnc.py gs://bucket/runs/afnc [--config.x=y ...]
# The workdir must be shared storage (GCS) so every host sees the same checkpoints.
set -euo pipefail
TPU=$1 ZONE=$2 CONFIG=$3 WORKDIR=$4; shift 4
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  cd ~/csl_jax && pip install -q -e . 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html &&
  python -m csl_jax.main --multihost --config $CONFIG --workdir $WORKDIR $*"
