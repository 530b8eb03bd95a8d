"""A training signalled before its SLURM time limit, the real package on the test cluster:
it checkpoints, its job requeues itself and, started again, resumes, in one Snakemake invocation.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from support.slurm import (
    SCRATCH_RUN,
    SNAKEMAKE_TIMEOUT_S,
    TRAINING,
    held_after_requeue,
    make_workdir,
    queued_jobs,
    slurm_jobs,
    start_now,
    wait_for,
    workflow_in_background,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# Signalled right after its first checkpoint (iteration 2); the 38 iterations left outlast the
# signal's delivery on a fast machine and stay short when resumed on a slow one.
SIGNALLED_TRAINING = {**TRAINING, "iterations_per_epoch": 120, "checkpoint_every": 2}
TOTAL_SIGNALLED_ITERATIONS = SIGNALLED_TRAINING["epochs"] * SIGNALLED_TRAINING["iterations_per_epoch"]


def checkpoint_iterations(folder: Path) -> list[int]:
    return [int(m.group(1)) for p in folder.glob("ckpt-*.pt") if (m := re.fullmatch(r"ckpt-(\d+)\.pt", p.name))]


def test_training_signalled_before_its_time_limit_requeues_its_job_and_resumes(tmp_path, tiny_city):
    # `scancel --signal=USR1` is what SLURM does before a time limit with the workflow's
    # --signal=USR1@<margin>, without waiting minutes for one. Training writes a checkpoint and
    # exits 3; the job requeues itself and, started again, resumes, all within one Snakemake
    # invocation.
    workdir = make_workdir(tmp_path, tiny_city, SIGNALLED_TRAINING, ["none"])
    target = f"results/runs/{SCRATCH_RUN}/model.pt"
    checkpoints = workdir / "results" / "checkpoints" / SCRATCH_RUN
    first_log = tmp_path / "first.log"
    with workflow_in_background(workdir, first_log, target) as first:
        # Signal once the first checkpoint is written: the job is then mid-run.
        checkpointed = max(wait_for(lambda: checkpoint_iterations(checkpoints), "checkpoint", 300, 0.05))
        # squeue, not sacct: accounting may learn of a running job only seconds later
        [train_job] = wait_for(lambda: queued_jobs(workdir, "train"), "training job", 30, 0.2)
        subprocess.run(["scancel", "--signal=USR1", train_job], check=True, timeout=30)
        wait_for(lambda: train_job in held_after_requeue(workdir).values(), "requeued training", 120, 0.5)
        interrupted_at = max(checkpoint_iterations(checkpoints))  # before the job starts again
        start_now(train_job)
        first.wait(timeout=SNAKEMAKE_TIMEOUT_S)
    assert first.returncode == 0, first_log.read_text()
    [requeued] = [job for job in slurm_jobs(workdir=workdir) if job.rule == "train"]
    assert (requeued.job_id, requeued.state, requeued.restarts) == (train_job, "COMPLETED", 1)
    assert checkpointed <= interrupted_at < TOTAL_SIGNALLED_ITERATIONS
    summary = json.loads((workdir / "results" / "runs" / SCRATCH_RUN / "train.json").read_text())
    assert summary["resumed_from_iteration"] == interrupted_at
