"""What reaches sbatch, with the fake `geoloc` of tests/fake_geoloc.py in every job: resources,
GPU type, --gres, the tasks of a run on two GPUs, job arrays; and how a training that stopped at
its time limit (exit 3) requeues its own job while bad input (exit 2) fails once.
Only test-only settings are added on the command line: fast status polling.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.slurm import (
    SCRATCH_RUN,
    TEST_SETS,
    requeued_jobs_released,
    sbatch_calls,
    slurm_jobs,
    snakemake,
)
from support.workflow import calls_with_env, fake_geoloc_env, write_yaml

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def fake_config(city: Path, grid: list[dict], **resources) -> dict:
    """Small jobs on the tiny city; `resources` adds to config `resources`."""
    return {
        "datasets_root": str(city),
        "test_sets": TEST_SETS,
        "device": "cpu",
        "training": {"image_size": 32, "stop_margin_minutes": 2},
        "grid": grid,
        "reference": SCRATCH_RUN,
        "report": {"published": None},
        # one CPU per training process: this machine's cores cap Snakemake's threads inside a job
        "resources": {
            "train": {"threads": 1, "mem_mb": 1000, "runtime": 5},
            "evaluate": {"threads": 1, "mem_mb": 500, "runtime": 5},
            "cache_images": {"threads": 1, "mem_mb": 500, "runtime": 5},
            **resources,
        },
    }


def fake_workdir(root: Path, config: dict) -> tuple[Path, dict, Path]:
    """A workflow directory whose jobs run tests/fake_geoloc.py as `geoloc`, and its calls file."""
    workdir = root / "work"
    workdir.mkdir()
    env, calls = fake_geoloc_env(root)
    write_yaml(workdir / "config.yaml", config)
    return workdir, env, calls


def fake_calls(calls: Path, command: str) -> list[dict]:
    return [call for call in calls_with_env(calls) if call["args"][0] == command]


def run_of(call: dict) -> str:
    return call["args"][call["args"].index("--run-name") + 1]


BLOCK = {"backbones": ["resnet18"], "pretrainings": ["none"], "precisions": ["fp32"], "seeds": [0]}
DDP_RUN = f"{SCRATCH_RUN}-ddp"


def test_without_a_profile_jobs_ask_for_their_gpus_type_tasks_and_arrays(tmp_path, tiny_city):
    small = {**BLOCK, "backbones": ["mobilenet_v3_small"]}  # a second baseline, for the array
    config = fake_config(
        tiny_city, [BLOCK, {**BLOCK, "tag": "ddp", "training": {"gpus_per_run": 2}}, small], gpu_model="tgpu"
    )
    config["resources"]["train"]["slurm_extra"] = "--nice=1"
    workdir, env, calls = fake_workdir(tmp_path, config)
    done = snakemake(workdir, "--verbose", "--slurm-array-jobs", "baseline", env=env, profile=False)
    assert done.returncode == 0, done.log[-5000:]
    submitted = sbatch_calls(done.log)
    single, ddp = submitted[f"train_wildcards_{SCRATCH_RUN}"], submitted[f"train_wildcards_{DDP_RUN}"]
    for option in ("-t 5", "--mem 1000", "--cpus-per-task=1", "--gpus=tgpu:1", "--signal=USR1@120 --requeue --nice=1"):
        assert option in single, single
    assert "--ntasks-per-gpu" not in single and "--nodes" not in single
    # one job for the run on two GPUs: a task per GPU, each with its CPUs, memory for both
    for option in ("--nodes=1", "--ntasks-per-gpu=1", "--ntasks=2", "--cpus-per-task=1", "--gpus=tgpu:2", "--mem 2000"):
        assert option in ddp, ddp
    ranks = sorted(
        (run_of(c), c["env"].get("SLURM_PROCID"), c["env"].get("SLURM_NTASKS")) for c in fake_calls(calls, "train")
    )
    assert ranks == [
        ("mobilenet_v3_small-none-fp32-s0", "0", "1"),
        (SCRATCH_RUN, "0", "1"),
        (DDP_RUN, "0", "2"),
        (DDP_RUN, "1", "2"),
    ]
    assert {c["args"][c["args"].index("--threads") + 1] for c in fake_calls(calls, "train")} == {"1"}
    # both baselines in one array job (ready together, the same resources); the cache is a CPU job
    [array] = [call for comment, call in submitted.items() if comment.startswith("baseline")]
    assert "--array=1-2" in array and "--gpus=tgpu:1" in array
    cache = submitted["cache_images_wildcards_32"]
    assert "--gpus" not in cache and "--cpus-per-task=1" in cache
    jobs = slurm_jobs(workdir=workdir)
    assert sorted(job.rule for job in jobs) == [
        "baseline",
        "baseline",
        "cache_images",
        *["evaluate"] * 3,
        *["train"] * 3,
    ]
    assert {job.state for job in jobs} == {"COMPLETED"}


def test_a_training_stopped_at_its_time_limit_requeues_itself_and_bad_input_fails_once(tmp_path, tiny_city):
    config = fake_config(
        tiny_city, [BLOCK, {**BLOCK, "tag": "bad", "training": {"lr": 0.1}}], gpu_request="gres", gpu_model="tgpu"
    )
    workdir, env, calls = fake_workdir(tmp_path, config)
    bad_run = f"{SCRATCH_RUN}-bad"
    env["FAKE_GEOLOC_TRAIN_EXIT"] = json.dumps({SCRATCH_RUN: 3, bad_run: 2})
    # --slurm-requeue (the profile's slurm-requeue: true, for preemptible partitions): every job
    with requeued_jobs_released(workdir):
        done = snakemake(workdir, "--verbose", "--slurm-requeue", env=env)
    assert done.returncode != 0, done.log[-5000:]
    submitted = sbatch_calls(done.log)
    assert " --requeue" in submitted["cache_images_wildcards_32"]
    # one submission per training: the requeued job is the same job
    assert sorted(c for c in submitted if c.startswith("train")) == [
        f"train_wildcards_{SCRATCH_RUN}",
        f"train_wildcards_{bad_run}",
    ]
    for call in (submitted[f"train_wildcards_{SCRATCH_RUN}"], submitted[f"train_wildcards_{bad_run}"]):
        assert "--gres=gpu:tgpu:1" in call and "--gpus" not in call
    trains = {job.wildcards: job for job in slurm_jobs(workdir=workdir) if job.rule == "train"}
    assert (trains[SCRATCH_RUN].state, trains[SCRATCH_RUN].restarts) == ("COMPLETED", 1)
    assert (trains[bad_run].state, trains[bad_run].restarts) == ("FAILED", 0)
    attempts = sorted((run_of(c), c["env"]["SLURM_JOB_ID"]) for c in fake_calls(calls, "train"))
    assert attempts == sorted([(SCRATCH_RUN, trains[SCRATCH_RUN].job_id)] * 2 + [(bad_run, trains[bad_run].job_id)])
    assert (workdir / "results" / "runs" / SCRATCH_RUN / "recalls" / "sf_xs.csv").is_file()
    log = (workdir / "results" / "logs" / "train" / f"{SCRATCH_RUN}.log").read_text()
    assert log == ""  # the attempt that finished wrote this log; the first one said why it requeued
    # ... and that first segment is kept, after its marker line, in the log's .segments file
    segments = (workdir / "results" / "logs" / "train" / f"{SCRATCH_RUN}.log.segments").read_text()
    assert segments.count("=== geoloc train segment:") == 2
    assert f"requeued SLURM job {trains[SCRATCH_RUN].job_id}" in segments
