#!/usr/bin/env bash
# One machine, all its GPUs (one process drives every local GPU; the batch is sharded over them).
#   launch/multi_gpu.sh configs/cifar10_simclr.py runs/simclr [--config.x=y ...]
set -euo pipefail
CONFIG=$1 WORKDIR=$2; shift 2
python -m csl_jax.main --config "$CONFIG" --workdir "$WORKDIR" --config.model.dtype=bfloat16 "$@"
