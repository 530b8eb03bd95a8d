"""The real package on the SLURM test cluster, through the shipped profile `profiles/slurm`: a
copy of the tiny synthetic city, two small runs, one from random initialisation and one from
(broken, then repaired) pretrained weights: what fails, what is reported, what a rerun reruns.
Only test-only settings are added on the command line: fast status polling.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.slurm import (
    SCRATCH_RUN,
    TEST_SETS,
    TRAINING,
    Invocation,
    SlurmJob,
    make_workdir,
    slurm_jobs,
    snakemake,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow(minutes=3)]

PRETRAINED_RUN = "resnet18-imagenet-fp32-s0"  # its weights file is broken at first
WEIGHTS_FILE = "weights/resnet18-imagenet.pth"  # config weights.dir is "weights"


def write_resnet18_weights(path: Path) -> None:
    """A torchvision-format ResNet-18 state dict (random: only its format matters here)."""
    import torch
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), path)


def reported_logs(invocation: Invocation, rule: str, workdir: Path) -> dict[Path, str]:
    """The log files Snakemake names in its error report for `rule`, with their text now."""
    report = invocation.log[invocation.log.index(f"Error in rule {rule}:") :]
    logs = re.search(r"^\s*log: (.*) \(check log file", report, re.MULTILINE)
    assert logs, report
    paths = [workdir / path for path in logs.group(1).split(", ")]
    return {path: path.read_text() for path in paths}


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
        [("train", run) for run in runs]
        + [("evaluate", run) for run in runs]
        + [("baseline", SCRATCH_BASELINE), ("baseline", PRETRAINED_BASELINE), ("cache_images", "32")]
    )
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
    assert f"SLURM-job '{failed.job_id}' failed" in broken.log[broken.log.index("Error in rule train:") :]
    [(rule_log, rule_text), (slurm_log, slurm_text)] = fail_and_recover.broken_logs.items()
    assert rule_log == fail_and_recover.workdir / "results" / "logs" / "train" / f"{PRETRAINED_RUN}.log"
    assert f"weights file {WEIGHTS_FILE} is not a readable PyTorch file" in rule_text
    assert slurm_log.name == f"{failed.job_id}.log"
    assert "Error in rule train" in slurm_text
    # --keep-going: the other run was still trained and evaluated.
    assert _jobs_in_state(jobs, "COMPLETED") == [
        ("baseline", SCRATCH_BASELINE),
        ("cache_images", "32"),
        ("evaluate", SCRATCH_RUN),
        ("train", SCRATCH_RUN),
    ]
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
