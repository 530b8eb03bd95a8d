#!/usr/bin/env bash
# requeue-on-stop.sh MAX COMMAND...: run COMMAND (a training); if it exits 3, it stopped
# before its time limit after writing a checkpoint, and inside a SLURM job this asks SLURM to
# requeue the same job, which then resumes from the checkpoint, at most MAX times (SLURM counts
# them as the job's Restarts; the job step Snakemake starts does not see SLURM_RESTART_COUNT).
# Snakemake keeps waiting for a requeued job as for a pending one. Any other exit code ends the
# job with that code: a bad input (2) or a bug (1) would fail the same way again, so it never
# queues for a GPU twice.
set -uo pipefail
max=$1
shift
"$@"
status=$?
if [[ $status -eq 3 && -n ${SLURM_JOB_ID:-} ]]; then
    restarts=$(scontrol show job "$SLURM_JOB_ID" | grep -o 'Restarts=[0-9]*' | cut -d= -f2)
    restarts=${restarts:-0}
    if ((restarts >= max)); then
        echo "requeue-on-stop: job $SLURM_JOB_ID was requeued $max times (resources.requeues);" \
            "run Snakemake again to resume" >&2
    elif scontrol requeue "$SLURM_JOB_ID"; then
        echo "requeue-on-stop: stopped after a checkpoint; requeued SLURM job $SLURM_JOB_ID" \
            "($((restarts + 1)) of $max), it resumes when it starts again" >&2
        # SLURM ends this run of the job now; until then there is nothing to report.
        sleep 600
    else
        echo "requeue-on-stop: could not requeue SLURM job $SLURM_JOB_ID; run Snakemake" \
            "again to resume" >&2
    fi
fi
exit "$status"
