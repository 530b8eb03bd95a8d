#!/usr/bin/env bash
# ranks.sh PER_NODE NODES CPUS COMMAND...: start COMMAND once per training process (contract
# C8) for a run on PER_NODE x NODES GPUs, each process with CPUS threads (contract C6).
# Inside a SLURM job, one srun task per GPU with CPUS CPUs: `geoloc train` reads its rank from
# SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID. Elsewhere `COMMAND --nproc N` spawns the N
# processes on this machine and shares its --threads among them.
set -euo pipefail
per_node=$1 nodes=$2 cpus=$3
shift 3
processes=$((per_node * nodes))
if [[ -n ${SLURM_JOB_ID:-} ]]; then
    exec srun --nodes="$nodes" --ntasks="$processes" --ntasks-per-node="$per_node" \
        --cpus-per-task="$cpus" --kill-on-bad-exit=1 "$@" --threads "$cpus"
fi
exec "$@" --threads $((cpus * processes)) --nproc "$processes"
