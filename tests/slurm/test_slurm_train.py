"""Training on the real SLURM test cluster, the real package, through `profiles/slurm`.

One workflow of two runs on the tiny city (tests/slurm/README.md):
- `resnet18-none-fp32-s0`: a training far longer than its 2-minute job, with a 1-minute stop
  margin and `slurm_extra` replacing the workflow's USR1 with a signal nobody acts on, so the
  training's own clock alone (the job's time left, read from squeue) stops it: a checkpoint,
  exit 3, the job requeues itself. The test then gives the pending job a longer time limit
  (as a user would with `scontrol update`), so its second start resumes and finishes.
- `resnet18-none-fp32-s0-ddp`: `training.gpus_per_run: 2`, one job of two tasks whose ranks
  train on the CPU with gloo (the node's GPUs are fake).
Both end with the usual outputs: model.pt, train.json, recall CSVs, recalls.csv, the report.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from support.slurm import (
    SCRATCH_RUN,
    TRAINING,
    Invocation,
    held_after_requeue,
    make_workdir,
    sbatch_calls,
    slurm_jobs,
    start_now,
    wait_for,
    workflow_in_background,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow(minutes=5)]

DDP_RUN = f"{SCRATCH_RUN}-ddp"
RUNS = (SCRATCH_RUN, DDP_RUN)
# At 6 to 10 iterations/s here, 900 outlast the minute the first job has, were this machine
# twice as fast; the second start has 20 minutes.
LONG_TRAINING = {**TRAINING, "iterations_per_epoch": 900, "checkpoint_every": 100, "stop_margin_minutes": 1}
TIME_LIMIT_MINUTES, LONGER_LIMIT_MINUTES = 2, 20
# SIGURG's default action is to do nothing: the workflow's --signal=USR1@60 is replaced by it.
OTHER_SIGNAL = "--signal=URG@1"
WORKFLOW_TIMEOUT_S = 1800
STOPPED = re.compile(
    r"geoloc train: error: stopped at epoch 0 iteration (\d+), 60 s before the SLURM job's "
    r"time limit \(--stop-margin-seconds\); checkpoint saved, rerun to resume"
)


class Finished:
    def __init__(self, workdir: Path, invocation: Invocation, first_log: str, train_job: str) -> None:
        self.workdir, self.invocation, self.first_log, self.train_job = workdir, invocation, first_log, train_job
        self.results = workdir / "results"

    def summary(self, run: str) -> dict:
        return json.loads((self.results / "runs" / run / "train.json").read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_city) -> Finished:
    workdir = make_workdir(
        tmp_path_factory.mktemp("slurm-train"),
        tiny_city,
        LONG_TRAINING,
        ["none"],
        grid=[
            {"backbones": ["resnet18"], "pretrainings": ["none"], "precisions": ["fp32"], "seeds": [0]},
            {
                "backbones": ["resnet18"],
                "pretrainings": ["none"],
                "precisions": ["fp32"],
                "seeds": [0],
                "tag": "ddp",
                "training": {"gpus_per_run": 2, "iterations_per_epoch": 4},
            },
        ],
        # One CPU per training process, so that every job fits on the node at once.
        resources={
            "train": {"threads": 1, "mem_mb": 1000, "runtime": TIME_LIMIT_MINUTES, "slurm_extra": OTHER_SIGNAL},
            "evaluate": {"threads": 1, "mem_mb": 1000},
            "cache_images": {"threads": 1, "mem_mb": 1000},
        },
    )
    train_log = workdir / "results" / "logs" / "train" / f"{SCRATCH_RUN}.log"
    log_file = workdir.parent / "snakemake.log"
    with workflow_in_background(workdir, log_file, "--verbose") as running:
        train_job = wait_for(
            lambda: held_after_requeue(workdir).get(f"rule_train_wildcards_{SCRATCH_RUN}"), "requeued training", 600, 1
        )
        # Read while SLURM holds the requeued job: its second start rewrites the log. Then the
        # job gets more time and starts at once.
        first_log = wait_for(
            lambda: text if "requeue-on-stop: " in (text := train_log.read_text()) else None, "requeue message", 60, 0.2
        )
        start_now(train_job, f"TimeLimit={LONGER_LIMIT_MINUTES}")
        running.wait(timeout=WORKFLOW_TIMEOUT_S)
    return Finished(workdir, Invocation(running.returncode, log_file.read_text()), first_log, train_job)


def test_both_runs_finish_with_the_usual_outputs(finished):
    assert finished.invocation.returncode == 0, finished.invocation.log[-5000:]
    results = finished.results
    for run in RUNS:
        for name in ("model.pt", "train.json", "recalls/sf_xs.csv", "recalls/sf_xs.queries.csv"):
            assert (results / "runs" / run / name).is_file(), (run, name)
    rows = (results / "recalls.csv").read_text().splitlines()[1:]
    assert sorted(row.split(",")[0] for row in rows) == sorted([*RUNS, "resnet18-none-baseline"])
    assert (results / "report.html").stat().st_size > 0
    jobs = [
        (job.rule, job.wildcards, job.state)
        for job in slurm_jobs(workdir=finished.workdir)
        if job.rule in ("train", "evaluate")
    ]
    assert sorted(jobs) == sorted([(rule, run, "COMPLETED") for rule in ("train", "evaluate") for run in RUNS])


def test_the_training_stopped_by_its_own_clock_before_the_limit_and_its_job_resumed_it(finished):
    stopped = STOPPED.search(finished.first_log)
    assert stopped, finished.first_log[-3000:]
    assert "stopped by signal" not in finished.first_log  # no signal came: the clock did it
    assert f"requeued SLURM job {finished.train_job} (1 of 10)" in finished.first_log
    runs = subprocess.run(
        ["sacct", "-X", "-D", "-n", "-P", "-j", finished.train_job, "-o", "State,ElapsedRaw"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.splitlines()
    (first_state, first_elapsed), (last_state, _) = runs[0].split("|"), runs[-1].split("|")
    assert first_state == "REQUEUED" and int(first_elapsed) < 60 * TIME_LIMIT_MINUTES  # not TIMEOUT
    assert last_state == "COMPLETED" and len(runs) == 2
    summary = finished.summary(SCRATCH_RUN)
    assert summary["resumed_from_iteration"] == int(stopped.group(1)) > 0
    assert summary["world_size"] == 1


def test_the_two_gpu_run_was_one_job_of_two_tasks_asked_for_as_such(finished):
    submitted = sbatch_calls(finished.invocation.log)[f"train_wildcards_{DDP_RUN}"]
    for option in ("--nodes=1", "--ntasks=2", "--ntasks-per-gpu=1", "--gpus=2", "--cpus-per-task=1"):
        assert option in submitted.split(), submitted
    [job] = [job for job in slurm_jobs(workdir=finished.workdir) if job.rule == "train" and job.wildcards == DDP_RUN]
    steps = subprocess.run(
        ["sacct", "-n", "-P", "-j", job.job_id, "-o", "JobName,NTasks"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.splitlines()
    assert any(step.split("|") == ["geoloc", "2"] for step in steps), steps  # ranks.sh's srun: a task per GPU
    summary = finished.summary(DDP_RUN)
    assert (summary["world_size"], summary["device_type"], summary["gpus"]) == (2, "cpu", 0)
    assert summary["fingerprint"]["settings"]["iterations_per_epoch"] == 4
