#!/usr/bin/env bash
# Submits an rlpost training job to SLURM: a Ray cluster over NODES nodes, then `rlpost train RECIPE [overrides]`.
#   launch/slurm/submit.sh RECIPE NODES [key=value ...]
# Extra sbatch options go in SBATCH_ARGS, e.g. SBATCH_ARGS="--partition=gpu --gpus-per-node=8 --time=24:00:00".
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 RECIPE NODES [key=value ...]" >&2
  exit 2
fi
recipe=$1
nodes=$2
shift 2
if [ ! -f "$recipe" ]; then
  echo "$0: recipe '$recipe' not found" >&2
  exit 2
fi
case $nodes in
  '' | *[!0-9]* | 0) echo "$0: NODES must be a positive integer, got '$nodes'" >&2; exit 2 ;;
esac
rlpost config "$recipe" "$@" --no-check-files >/dev/null  # a typo in an override fails here, not on the cluster
read -r -a extra <<< "${SBATCH_ARGS:-}"
exec sbatch --nodes="$nodes" "${extra[@]}" "$(dirname "$0")/rlpost.sbatch" "$recipe" "$@"
