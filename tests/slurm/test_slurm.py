"""The workflow on a real SLURM cluster, through the shipped profile `profiles/slurm` or none.

Needs the single-node cluster of `tests/slurm/start.sh` (these tests skip, with the reason,
without one: conftest.py). The first tests run the workflow with the fake `geoloc` of tests/fake_geoloc.py and
assert what reached sbatch (resources, GPU type, --gres, tasks of a run on two GPUs, job arrays)
and how a training that stopped at its time limit (exit 3) requeues its own job while bad input
(exit 2) fails once. The others run the real package on a copy of the tiny synthetic city with
two small runs, one from random initialisation and one from (broken, then repaired) pretrained
weights. Only test-only settings are added on the command line: fast status polling.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.slurm import (
    SCRATCH_RUN,
    SNAKEMAKE_TIMEOUT_S,
    TEST_SETS,
    TRAINING,
    Invocation,
    SlurmJob,
    held_after_requeue,
    make_workdir,
    queued_jobs,
    requeued_jobs_released,
    sbatch_calls,
    slurm_jobs,
    snakemake,
    start_now,
    wait_for,
    workflow_in_background,
)
from support.workflow import calls_with_env, fake_geoloc_env, write_yaml

pytestmark = pytest.mark.slurm

PRETRAINED_RUN = "resnet18-imagenet-fp32-s0"  # its weights file is broken at first
WEIGHTS_FILE = "weights/resnet18-imagenet.pth"  # config weights.dir is "weights"
# Signalled right after its first checkpoint (iteration 2); the 38 iterations left outlast the
# signal's delivery on a fast machine and stay short when resumed on a slow one.
SIGNALLED_TRAINING = {**TRAINING, "iterations_per_epoch": 120, "checkpoint_every": 2}
TOTAL_SIGNALLED_ITERATIONS = SIGNALLED_TRAINING["epochs"] * SIGNALLED_TRAINING["iterations_per_epoch"]


def write_resnet18_weights(path: Path) -> None:
    """A torchvision-format ResNet-18 state dict (random: only its format matters here)."""
    import torch
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), path)


def reported_logs(invocation: Invocation, rule: str, workdir: Path) -> dict[Path, str]:
    """The log files Snakemake names in its error report for `rule`, with their text now."""
    report = invocation.log[invocation.log.index(f"Error in rule {rule}:"):]
    logs = re.search(r"^\s*log: (.*) \(check log file", report, re.MULTILINE)
    assert logs, report
    paths = [workdir / path for path in logs.group(1).split(", ")]
    return {path: path.read_text() for path in paths}


# ---------------------------------------------------------------- what reaches sbatch (fake geoloc)


def fake_config(city: Path, grid: list[dict], **resources) -> dict:
    """Small jobs on the tiny city; `resources` adds to config `resources`."""
    return {
        "datasets_root": str(city), "test_sets": TEST_SETS, "device": "cpu",
        "training": {"image_size": 32, "stop_margin_minutes": 2},
        "grid": grid, "reference": SCRATCH_RUN, "report": {"published": None},
        # one CPU per training process: this machine's cores cap Snakemake's threads inside a job
        "resources": {"train": {"threads": 1, "mem_mb": 1000, "runtime": 5},
                      "evaluate": {"threads": 1, "mem_mb": 500, "runtime": 5},
                      "cache_images": {"threads": 1, "mem_mb": 500, "runtime": 5}, **resources},
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
    config = fake_config(tiny_city, [BLOCK, {**BLOCK, "tag": "ddp", "training": {"gpus_per_run": 2}}, small],
                         gpu_model="tgpu")
    config["resources"]["train"]["slurm_extra"] = "--nice=1"
    workdir, env, calls = fake_workdir(tmp_path, config)
    done = snakemake(workdir, "--verbose", "--slurm-array-jobs", "baseline", env=env, profile=False)
    assert done.returncode == 0, done.log[-5000:]
    submitted = sbatch_calls(done.log)
    single, ddp = submitted[f"train_wildcards_{SCRATCH_RUN}"], submitted[f"train_wildcards_{DDP_RUN}"]
    for option in ("-t 5", "--mem 1000", "--cpus-per-task=1", "--gpus=tgpu:1",
                   "--signal=USR1@120 --requeue --nice=1"):
        assert option in single, single
    assert "--ntasks-per-gpu" not in single and "--nodes" not in single
    # one job for the run on two GPUs: a task per GPU, each with its CPUs, memory for both
    for option in ("--nodes=1", "--ntasks-per-gpu=1", "--ntasks=2", "--cpus-per-task=1", "--gpus=tgpu:2",
                   "--mem 2000"):
        assert option in ddp, ddp
    ranks = sorted((run_of(c), c["env"].get("SLURM_PROCID"), c["env"].get("SLURM_NTASKS"))
                   for c in fake_calls(calls, "train"))
    assert ranks == [("mobilenet_v3_small-none-fp32-s0", "0", "1"), (SCRATCH_RUN, "0", "1"), (DDP_RUN, "0", "2"),
                     (DDP_RUN, "1", "2")]
    assert {c["args"][c["args"].index("--threads") + 1] for c in fake_calls(calls, "train")} == {"1"}
    # both baselines in one array job (ready together, the same resources); the cache is a CPU job
    [array] = [call for comment, call in submitted.items() if comment.startswith("baseline")]
    assert "--array=1-2" in array and "--gpus=tgpu:1" in array
    cache = submitted["cache_images_wildcards_32"]
    assert "--gpus" not in cache and "--cpus-per-task=1" in cache
    jobs = slurm_jobs(workdir=workdir)
    assert sorted(job.rule for job in jobs) == ["baseline", "baseline", "cache_images", *["evaluate"] * 3,
                                                *["train"] * 3]
    assert {job.state for job in jobs} == {"COMPLETED"}


def test_a_training_stopped_at_its_time_limit_requeues_itself_and_bad_input_fails_once(tmp_path, tiny_city):
    config = fake_config(tiny_city, [BLOCK, {**BLOCK, "tag": "bad", "training": {"lr": 0.1}}],
                         gpu_request="gres", gpu_model="tgpu")
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
        f"train_wildcards_{SCRATCH_RUN}", f"train_wildcards_{bad_run}"]
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


# ---------------------------------------------------------------- the real package


@dataclass
class FailAndRecover:
    workdir: Path
    broken: Invocation  # the whole workflow, the pretrained run's weights file unreadable
    broken_logs: dict[Path, str]  # the logs named in its error report, before the rerun rewrites them
    rerun: Invocation  # the failed target alone, after the weights file is repaired
    rest: Invocation  # the whole workflow again


@pytest.fixture(scope="module")
def fail_and_recover(tmp_path_factory, tiny_city) -> FailAndRecover:
    workdir = make_workdir(tmp_path_factory.mktemp("slurm"), tiny_city, TRAINING, ["none", "imagenet"])
    weights = workdir / WEIGHTS_FILE
    weights.parent.mkdir()
    # Present, so not downloaded (compute nodes and tests are offline), but unreadable.
    weights.write_bytes(b"not a weights file")
    broken = snakemake(workdir, "--keep-going")
    broken_logs = reported_logs(broken, "train", workdir) if "Error in rule train:" in broken.log else {}
    write_resnet18_weights(weights)
    rerun = snakemake(workdir, f"results/runs/{PRETRAINED_RUN}/model.pt")
    rest = snakemake(workdir)
    return FailAndRecover(workdir, broken, broken_logs, rerun, rest)


def _jobs_in_state(jobs: list[SlurmJob], state: str) -> list[tuple[str, str]]:
    return sorted((job.rule, job.wildcards) for job in jobs if job.state == state)


SCRATCH_BASELINE, PRETRAINED_BASELINE = "resnet18-none", "resnet18-imagenet"


def test_gpu_and_cache_jobs_run_on_slurm_while_datasets_aggregate_and_report_run_locally(fail_and_recover):
    assert fail_and_recover.rest.returncode == 0, fail_and_recover.rest.log
    jobs = slurm_jobs(workdir=fail_and_recover.workdir)
    runs = [PRETRAINED_RUN, SCRATCH_RUN]
    assert _jobs_in_state(jobs, "COMPLETED") == sorted(
        [("train", run) for run in runs] + [("evaluate", run) for run in runs]
        + [("baseline", SCRATCH_BASELINE), ("baseline", PRETRAINED_BASELINE), ("cache_images", "32")])
    for rule in ("datasets", "aggregate", "report"):
        assert f"localrule {rule}:" in fail_and_recover.broken.log + fail_and_recover.rest.log
    results = fail_and_recover.workdir / "results"
    recalls = (results / "recalls.csv").read_text()
    assert all(recalls.count(run) == len(TEST_SETS) for run in runs), recalls
    assert (results / "report.html").stat().st_size > 0


def test_every_gpu_job_asked_slurm_for_one_gpu_and_the_cache_for_none(fail_and_recover):
    jobs = slurm_jobs(workdir=fail_and_recover.workdir)
    assert {job.rule for job in jobs} == {"train", "evaluate", "baseline", "cache_images"}
    for job in jobs:
        assert ("gres/gpu=1" in job.requested.split(",")) == (job.rule != "cache_images"), job


def test_failed_job_is_reported_with_its_logs_and_the_other_run_still_finishes(fail_and_recover):
    broken = fail_and_recover.broken
    assert broken.returncode != 0
    jobs = slurm_jobs(run_id=broken.slurm_run_id)
    # the broken weights fail the training and the baseline that load them, each once
    assert _jobs_in_state(jobs, "FAILED") == [("baseline", PRETRAINED_BASELINE), ("train", PRETRAINED_RUN)]
    [failed] = [job for job in jobs if job.state == "FAILED" and job.rule == "train"]
    assert f"SLURM-job '{failed.job_id}' failed" in broken.log[broken.log.index("Error in rule train:"):]
    [(rule_log, rule_text), (slurm_log, slurm_text)] = fail_and_recover.broken_logs.items()
    assert rule_log == fail_and_recover.workdir / "results" / "logs" / "train" / f"{PRETRAINED_RUN}.log"
    assert f"weights file {WEIGHTS_FILE} is not a readable PyTorch file" in rule_text
    assert slurm_log.name == f"{failed.job_id}.log"
    assert "Error in rule train" in slurm_text
    # --keep-going: the other run was still trained and evaluated.
    assert _jobs_in_state(jobs, "COMPLETED") == [("baseline", SCRATCH_BASELINE), ("cache_images", "32"),
                                                 ("evaluate", SCRATCH_RUN), ("train", SCRATCH_RUN)]
    for test in TEST_SETS:
        assert (fail_and_recover.workdir / "results" / "runs" / SCRATCH_RUN / "recalls" / f"{test}.csv").is_file()


def test_rerunning_the_failed_target_reruns_only_that_job(fail_and_recover):
    rerun = fail_and_recover.rerun
    assert rerun.returncode == 0, rerun.log
    jobs = slurm_jobs(run_id=rerun.slurm_run_id)
    assert [(job.rule, job.wildcards, job.state) for job in jobs] == [("train", PRETRAINED_RUN, "COMPLETED")]
    assert "localrule" not in rerun.log
    summary = json.loads((fail_and_recover.workdir / "results" / "runs" / PRETRAINED_RUN / "train.json").read_text())
    assert summary["weights"]["path"] == WEIGHTS_FILE


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
