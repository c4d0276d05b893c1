#!/usr/bin/env bash
# Multi-node GPU job under SLURM: one process per node, jax.distributed.initialize() reads SLURM's env.
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#   sbatch launch/slurm.sh configs/cifar10_afnc.py /shared/runs/afnc
set -euo pipefail
srun python -m csl_jax.main --multihost --config "$1" --workdir "$2" --config.model.dtype=bfloat16 "${@:3}"
