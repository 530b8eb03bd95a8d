#!/usr/bin/env bash
# ranks.sh PER_NODE NODES CPUS COMMAND...: start COMMAND once per training process for a run on
# PER_NODE x NODES GPUs, each process with CPUS threads.
# Inside a SLURM job, one srun task per GPU with CPUS CPUs: `geoloc train` reads its rank from
# SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID. Elsewhere `COMMAND --nproc N` spawns the N
# processes on this machine and shares its --threads among them.
set -euo pipefail
per_node=$1 nodes=$2 cpus=$3
shift 3
processes=$((per_node * nodes))
if [[ -n ${SLURM_JOB_ID:-} ]]; then
    # srun starts its tasks on the host: inside an Apptainer container (Snakemake's --sdm
    # apptainer), each task enters the same image again, with the GPUs (docs/cluster.md).
    image=${APPTAINER_CONTAINER:-${SINGULARITY_CONTAINER:-}}
    if [[ -n $image ]]; then
        # shellcheck disable=SC2086 # the site's options, split into words on purpose
        set -- apptainer exec ${GEOLOC_APPTAINER_ARGS:---nv} "$image" "$@"
    fi
    exec srun --nodes="$nodes" --ntasks="$processes" --ntasks-per-node="$per_node" \
        --cpus-per-task="$cpus" --kill-on-bad-exit=1 "$@" --threads "$cpus"
fi
exec "$@" --threads $((cpus * processes)) --nproc "$processes"
