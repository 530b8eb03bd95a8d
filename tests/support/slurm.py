"""The workflow on the SLURM test cluster of tests/slurm/start.sh: submit, watch the queue, read
accounting. Shared by the tests in tests/slurm/."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from support.workflow import REPO, SNAKEFILE, WEIGHTS_REGISTRY, snakemake_command, venv_env

PROFILE = REPO / "profiles" / "slurm"
SCRATCH_RUN = "resnet18-none-fp32-s0"
TEST_SETS = ["sf_xs"]
TRAINING = {
    "epochs": 1,
    "iterations_per_epoch": 4,
    "batch_size": 4,
    "image_size": 32,
    "lr": 1e-3,
    "M": 10,
    "alpha": 45,
    "N": 2,
    "L": 1,
    "min_images_per_class": 3,
    "groups_num": 1,
    "fc_output_dim": 16,
    "num_workers": 0,
    "checkpoint_every": 100,
}
TEST_ONLY_ARGS = ["--slurm-init-seconds-before-status-checks", "1"]
SNAKEMAKE_TIMEOUT_S = 400


def cluster_problem() -> str | None:
    """Why the SLURM tests cannot run here, or None."""
    for path in (SNAKEFILE, PROFILE / "config.yaml", WEIGHTS_REGISTRY):
        if not path.is_file():
            return f"{path.relative_to(REPO)} is not written yet"
    if shutil.which("sinfo") is None or shutil.which("sacct") is None:
        return "no SLURM client on this machine; start the test cluster with tests/slurm/start.sh"
    sinfo = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if sinfo.returncode != 0:
        return f"SLURM does not answer ({_last_line(sinfo.stderr)}); run tests/slurm/start.sh"
    states = sinfo.stdout.split()
    # Busy is fine (jobs of other tests, queued behind them); down or drained is not.
    if not any(state in ("idle", "mixed", "allocated") or state.startswith("completing") for state in states):
        return f"no usable SLURM node (node states: {states}); run tests/slurm/start.sh"
    sacct = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True, timeout=30)
    if sacct.returncode != 0:
        return f"SLURM accounting does not answer ({_last_line(sacct.stderr)}); run tests/slurm/start.sh"
    return None


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no message"


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


def slurm_command(workdir: Path, *args: str, profile: bool = True) -> list[str]:
    """The workflow in `workdir`, with its config.yaml, through profiles/slurm (or no profile)."""
    site = ["--profile", str(PROFILE)] if profile else ["--executor", "slurm", "--jobs", "10"]
    return snakemake_command(workdir, *site, "--configfile", str(workdir / "config.yaml"), *TEST_ONLY_ARGS, *args)


def snakemake(workdir: Path, *args: str, env: dict | None = None, profile: bool = True) -> Invocation:
    """The workflow to its end on the cluster (jobs inherit `env`: sbatch --export=ALL)."""
    try:
        done = subprocess.run(
            slurm_command(workdir, *args, profile=profile),
            cwd=workdir,
            env=env or venv_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=SNAKEMAKE_TIMEOUT_S,
        )
    finally:
        cancel_leftover_jobs(workdir)
    return Invocation(done.returncode, done.stdout)


def held_after_requeue(workdir: Path) -> dict[str, str]:
    """{rule_<rule>_wildcards_<values>: job id} of the jobs from `workdir` that SLURM requeued and
    now holds (it holds a requeued job about two minutes before it may start again; accounting
    shows the requeue only once it has started again)."""
    queue = subprocess.run(
        ["squeue", "-h", "-t", "PENDING", "-o", "%i|%Z|%r|%k"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return {
        comment: job_id
        for job_id, job_workdir, reason, comment in (line.split("|") for line in queue.splitlines())
        if reason == "BeginTime" and Path(job_workdir) == workdir.resolve()
    }


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
        process = subprocess.Popen(
            slurm_command(workdir, *args), cwd=workdir, env=venv_env(), stdout=log, stderr=subprocess.STDOUT
        )
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
    queue = subprocess.run(
        ["squeue", "-h", "-o", "%i|%Z|%k"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return [
        job_id
        for job_id, job_workdir, comment in (line.split("|") for line in queue.splitlines())
        if Path(job_workdir) == workdir.resolve()
        and rule in (None, comment.removeprefix("rule_").split("_wildcards_")[0])
    ]


def slurm_jobs(*, workdir: Path | None = None, run_id: str | None = None) -> list[SlurmJob]:
    """Jobs SLURM accounting knows, of one workflow directory or one Snakemake invocation."""
    # -D: every run of a requeued job, oldest first
    command = [
        "sacct",
        "-X",
        "-D",
        "-n",
        "-P",
        "-S",
        "now-6hours",
        "-o",
        "JobIDRaw,JobName,WorkDir,Comment,State,ReqTRES",
    ]
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


SBATCH = re.compile(r"(?:sbatch call|Submitting array job with sbatch call): (sbatch .*)$", re.MULTILINE)


def sbatch_calls(log: str) -> dict[str, str]:
    """The sbatch command line of every submission, by the job comment the plugin gives it."""
    calls = {}
    for call in SBATCH.findall(log):
        comment = re.search(r"--comment (\S+)", call).group(1)
        calls[comment.removeprefix("rule_")] = call
    return calls


def wait_for(condition, what: str, timeout_s: float, interval_s: float):
    """Poll `condition()` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(interval_s)
    raise AssertionError(f"no {what} after {timeout_s} s")
