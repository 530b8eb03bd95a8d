"""The workflow on a real SLURM cluster, through the shipped profile `profiles/slurm` or none.

Needs the single-node cluster of `tests/slurm/start.sh` (these tests skip, with the reason,
without one). The first tests run the workflow with the fake `geoloc` of tests/fake_geoloc.py and
assert what reached sbatch (resources, GPU type, --gres, tasks of a run on two GPUs, job arrays)
and how a training that stopped at its time limit (exit 3) requeues its own job while bad input
(exit 2) fails once. The others run the real package on a copy of the tiny synthetic city with
two small runs, one from random initialisation and one from (broken, then repaired) pretrained
weights. Only test-only settings are added on the command line: fast status polling.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
PROFILE = REPO / "profiles" / "slurm"
WEIGHTS_REGISTRY = REPO / "resources" / "weights.yaml"

SCRATCH_RUN = "resnet18-none-fp32-s0"
PRETRAINED_RUN = "resnet18-imagenet-fp32-s0"  # its weights file is broken at first
WEIGHTS_FILE = "weights/resnet18-imagenet.pth"  # config weights.dir is "weights"
TEST_SETS = ["sf_xs"]
TRAINING = {
    "epochs": 1, "iterations_per_epoch": 4, "batch_size": 4, "image_size": 32, "lr": 1e-3,
    "M": 10, "alpha": 45, "N": 2, "L": 1, "min_images_per_class": 3, "groups_num": 1,
    "fc_output_dim": 16, "num_workers": 0, "checkpoint_every": 100,
}
# Signalled right after its first checkpoint (iteration 2); the 38 iterations left outlast the
# signal's delivery on a fast machine and stay short when resumed on a slow one.
SIGNALLED_TRAINING = {**TRAINING, "iterations_per_epoch": 120, "checkpoint_every": 2}
TOTAL_SIGNALLED_ITERATIONS = SIGNALLED_TRAINING["epochs"] * SIGNALLED_TRAINING["iterations_per_epoch"]
TEST_ONLY_ARGS = ["--slurm-init-seconds-before-status-checks", "1"]
FAKE_GEOLOC = Path(__file__).resolve().parent / "fake_geoloc.py"
SNAKEMAKE_TIMEOUT_S = 400


def _cluster_problem() -> str | None:
    """Why the SLURM tests cannot run here, or None."""
    if shutil.which("sinfo") is None or shutil.which("sacct") is None:
        return "no SLURM client on this machine; start the test cluster with tests/slurm/start.sh"
    # A node still cleaning up after the previous module's last job is "completing" for a while.
    deadline = time.monotonic() + 60
    while True:
        sinfo = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=30)
        if sinfo.returncode != 0:
            return f"SLURM does not answer ({_last_line(sinfo.stderr)}); run tests/slurm/start.sh"
        states = sinfo.stdout.split()
        if "idle" in states:
            break
        if not any(state.startswith("completing") for state in states) or time.monotonic() > deadline:
            return f"no idle SLURM node (node states: {states}); run tests/slurm/start.sh"
        time.sleep(1)
    sacct = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True, timeout=30)
    if sacct.returncode != 0:
        return f"SLURM accounting does not answer ({_last_line(sacct.stderr)}); run tests/slurm/start.sh"
    return None


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no message"


def _workflow_problem() -> str | None:
    for path in (SNAKEFILE, PROFILE / "config.yaml", WEIGHTS_REGISTRY):
        if not path.is_file():
            return f"{path.relative_to(REPO)} is not written yet"
    return None


# Session scope: checked before the session-scoped tiny_city is generated for nothing.
@pytest.fixture(scope="session", autouse=True)
def slurm_cluster():
    problem = _workflow_problem() or _cluster_problem()
    if problem:
        pytest.skip(problem)


@dataclass
class Invocation:
    returncode: int
    log: str  # Snakemake's stdout and stderr

    @property
    def slurm_run_id(self) -> str:
        """The plugin's run id: the SLURM job name of every job this invocation submitted."""
        match = re.search(r"SLURM run ID: (\S+)", self.log)
        assert match, f"not a SLURM executor run:\n{self.log}"
        return match.group(1)


@dataclass(frozen=True)
class SlurmJob:
    job_id: str
    rule: str
    wildcards: str
    state: str
    requested: str  # sacct ReqTRES, e.g. "billing=1,cpu=1,gres/gpu=1,mem=1G,node=1"
    restarts: int = 0  # times SLURM requeued it (sacct lists each run; this is the last)


def snakemake_command(workdir: Path, *args: str, profile: bool = True) -> list[str]:
    """The workflow in `workdir`, with its config.yaml, through profiles/slurm (or no profile)."""
    site = ["--profile", str(PROFILE)] if profile else ["--executor", "slurm", "--jobs", "10"]
    return [
        sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
        *site, "--configfile", str(workdir / "config.yaml"), *TEST_ONLY_ARGS, *args,
    ]


def job_environment(**variables: str) -> dict[str, str]:
    # Jobs inherit this environment (sbatch --export=ALL): they find `geoloc` in the virtualenv.
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **variables}


def snakemake(workdir: Path, *args: str, env: dict | None = None, profile: bool = True) -> Invocation:
    try:
        done = subprocess.run(snakemake_command(workdir, *args, profile=profile), cwd=workdir,
                              env=env or job_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=SNAKEMAKE_TIMEOUT_S)
    finally:
        cancel_leftover_jobs(workdir)
    return Invocation(done.returncode, done.stdout)


def held_after_requeue(workdir: Path) -> dict[str, str]:
    """{rule_<rule>_wildcards_<values>: job id} of the jobs from `workdir` that SLURM requeued and
    now holds (it holds a requeued job about two minutes before it may start again; accounting
    shows the requeue only once it has started again)."""
    queue = subprocess.run(["squeue", "-h", "-t", "PENDING", "-o", "%i|%Z|%r|%k"], capture_output=True, text=True,
                           check=True, timeout=30).stdout
    return {comment: job_id for job_id, job_workdir, reason, comment in (line.split("|") for line in queue.splitlines())
            if reason == "BeginTime" and Path(job_workdir) == workdir.resolve()}


def start_now(job_id: str, *changes: str) -> None:
    """Start a held job at once (users wait for SLURM's hold; the tests need not), with `changes`."""
    subprocess.run(["scontrol", "update", f"JobId={job_id}", *changes, "StartTime=now"], check=True, timeout=30)


@contextlib.contextmanager
def requeued_jobs_released(workdir: Path):
    """While inside, each requeued job of `workdir` is started again at once."""
    done = threading.Event()

    def release() -> None:
        while not done.wait(0.5):
            for job_id in held_after_requeue(workdir).values():
                start_now(job_id)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@contextlib.contextmanager
def workflow_in_background(workdir: Path, log_path: Path, *args: str):
    """Snakemake on `workdir` in the background, its output in `log_path`; killed, and its jobs
    cancelled, if it still runs at the end."""
    with log_path.open("w") as log:
        process = subprocess.Popen(snakemake_command(workdir, *args), cwd=workdir, env=job_environment(),
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            cancel_leftover_jobs(workdir)


def queued_jobs(workdir: Path, rule: str | None = None) -> list[str]:
    """Ids of the pending or running jobs from `workdir` (of `rule` only, if given), as squeue
    lists them."""
    queue = subprocess.run(["squeue", "-h", "-o", "%i|%Z|%k"], capture_output=True, text=True, check=True,
                           timeout=30).stdout
    return [job_id for job_id, job_workdir, comment in (line.split("|") for line in queue.splitlines())
            if Path(job_workdir) == workdir.resolve()
            and rule in (None, comment.removeprefix("rule_").split("_wildcards_")[0])]


def slurm_jobs(*, workdir: Path | None = None, run_id: str | None = None) -> list[SlurmJob]:
    """Jobs SLURM accounting knows, of one workflow directory or one Snakemake invocation."""
    # -D: every run of a requeued job, oldest first
    command = ["sacct", "-X", "-D", "-n", "-P", "-S", "now-6hours", "-o",
               "JobIDRaw,JobName,WorkDir,Comment,State,ReqTRES"]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout
    jobs: dict[str, SlurmJob] = {}
    for line in output.splitlines():
        job_id, name, job_workdir, comment, state, requested = line.split("|")
        if workdir is not None and Path(job_workdir) != workdir.resolve():
            continue
        if run_id is not None and name != run_id:
            continue
        # The plugin writes rule and wildcards into the comment: rule_<rule>[_wildcards_<values>].
        rule, _, wildcards = comment.removeprefix("rule_").partition("_wildcards_")
        restarts = jobs[job_id].restarts + 1 if job_id in jobs else 0
        jobs[job_id] = SlurmJob(job_id, rule, wildcards, state.split()[0], requested, restarts)
    return list(jobs.values())


def cancel_leftover_jobs(workdir: Path) -> None:
    """Cancel jobs of `workdir` that a failed or timed-out test left on the cluster."""
    leftover = queued_jobs(workdir)
    if leftover:
        subprocess.run(["scancel", *leftover], check=True, timeout=30)


def make_workdir(root: Path, city: Path, training: dict, pretrainings: list[str], **extra) -> Path:
    """A workflow directory with its own copy of the city and a config of resnet18 runs.

    Its weights registry is the shipped one without the pinned digest of ResNet-18's ImageNet
    weights: the tests write their own file (random weights) in place of the download.
    """
    workdir = root / "work"
    workdir.mkdir()
    shutil.copytree(city, workdir / "data")
    registry = yaml.safe_load(WEIGHTS_REGISTRY.read_text(encoding="utf-8"))
    registry["resnet18"]["imagenet"]["sha256"] = None
    (workdir / "weights.yaml").write_text(yaml.safe_dump(registry), encoding="utf-8")
    config = {
        "datasets_root": str(workdir / "data"),
        "test_sets": TEST_SETS,
        "weights": {"registry": str(workdir / "weights.yaml"), "dir": "weights"},
        "device": "cpu",
        "training": training,
        "evaluation": {"batch_size": 16, "num_workers": 0},
        "grid": [{"backbones": ["resnet18"], "pretrainings": pretrainings, "precisions": ["fp32"], "seeds": [0]}],
        "reference": SCRATCH_RUN,
        "report": {"published": None},
        **extra,
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return workdir


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

SBATCH = re.compile(r"(?:sbatch call|Submitting array job with sbatch call): (sbatch .*)$", re.MULTILINE)


def sbatch_calls(log: str) -> dict[str, str]:
    """The sbatch command line of every submission, by the job comment the plugin gives it."""
    calls = {}
    for call in SBATCH.findall(log):
        comment = re.search(r"--comment (\S+)", call).group(1)
        calls[comment.removeprefix("rule_")] = call
    return calls


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
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "geoloc").write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE_GEOLOC} "$@"\n')
    (bin_dir / "geoloc").chmod(0o755)
    calls = root / "calls.jsonl"
    env = job_environment(FAKE_GEOLOC_CALLS=str(calls))
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    (workdir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return workdir, env, calls


def fake_calls(calls: Path, command: str) -> list[dict]:
    return [call for call in map(json.loads, calls.read_text().splitlines()) if call["args"][0] == command]


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


def wait_for(condition, what: str, timeout_s: float, interval_s: float):
    """Poll `condition()` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(interval_s)
    raise AssertionError(f"no {what} after {timeout_s} s")


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
