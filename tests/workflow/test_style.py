"""Style and shell: snakefmt, `snakemake --lint`, the workflow's shell scripts."""

import os
import subprocess

from support.workflow import (
    DEMO_CONFIG,
    REPO,
    VENV_BIN,
    snakemake,
)


def test_snakefmt_finds_nothing_to_change():
    result = subprocess.run(
        [str(VENV_BIN / "snakefmt"), "--check", "workflow"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakemake_lint_is_clean_on_the_demo_config(tmp_path):
    result = snakemake(tmp_path, "--lint", "--configfile", str(DEMO_CONFIG))
    assert result.returncode == 0, result.stderr
    assert "Lints for" not in result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_a_run_on_several_gpus_starts_one_process_per_gpu_with_srun_in_slurm_and_nproc_elsewhere(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\necho srun "$@"\n')
    (bin_dir / "srun").chmod(0o755)
    ranks = ["bash", str(REPO / "workflow" / "scripts" / "ranks.sh"), "2", "3", "4", "echo", "geoloc", "train"]
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    local = subprocess.run(ranks, env=env, capture_output=True, text=True, check=True)
    # geoloc train --nproc shares its --threads among the processes it starts: 4 each
    assert local.stdout.split() == ["geoloc", "train", "--threads", "24", "--nproc", "6"]
    in_job = subprocess.run(ranks, env={**env, "SLURM_JOB_ID": "7"}, capture_output=True, text=True, check=True)
    assert in_job.stdout.split() == [
        "srun",
        "--nodes=3",
        "--ntasks=6",
        "--ntasks-per-node=2",
        "--cpus-per-task=4",
        "--kill-on-bad-exit=1",
        "echo",
        "geoloc",
        "train",
        "--threads",
        "4",
    ]


def test_workflow_scripts_are_valid_shell():
    for script in (REPO / "workflow" / "scripts").glob("*.sh"):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, (script, result.stderr)
