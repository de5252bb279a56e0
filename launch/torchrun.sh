#!/usr/bin/env bash
# Jobs that need no Ray (checkpoint conversion, megatron-only evaluation, benchmarks): torchrun with the rendezvous
# taken from SLURM when inside a job, else one node.
#   launch/torchrun.sh SCRIPT.py [args ...]           one process per GPU (NPROC_PER_NODE overrides)
# Inside an allocation run it once per node: srun --ntasks-per-node=1 launch/torchrun.sh SCRIPT.py ...
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 SCRIPT.py [args ...]" >&2
  exit 2
fi
if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  nnodes=${SLURM_JOB_NUM_NODES:-1}
  node_rank=${SLURM_NODEID:-0}
  master_addr=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
else
  nnodes=${NNODES:-1}
  node_rank=${NODE_RANK:-0}
  master_addr=${MASTER_ADDR:-127.0.0.1}
fi
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)
nproc=${NPROC_PER_NODE:-$(( gpus > 0 ? gpus : 1 ))}

exec torchrun --nnodes="$nnodes" --node-rank="$node_rank" --nproc-per-node="$nproc" \
  --master-addr="$master_addr" --master-port="${MASTER_PORT:-29500}" "$@"
