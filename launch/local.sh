#!/usr/bin/env bash
# Training on one machine: a local Ray cluster sized to it, started and stopped by `rlpost train` itself.
#   launch/local.sh RECIPE [key=value ...]
# GPUs come from CUDA_VISIBLE_DEVICES (else every GPU); on a machine without GPUs each configured device is a worker
# process. A RAY_ADDRESS in the environment would make rlpost join that cluster instead, so it is cleared here.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 RECIPE [key=value ...]" >&2
  exit 2
fi
recipe=$1
shift
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  IFS=, read -r -a visible <<< "$CUDA_VISIBLE_DEVICES"
  gpus=${#visible[@]}
fi
overrides=()
if [ "$gpus" -gt 0 ]; then
  overrides+=("cluster.n_nodes=1" "cluster.n_gpus_per_node=$gpus")
fi
unset RAY_ADDRESS
exec rlpost train "$recipe" "${overrides[@]}" "$@"
