"""Software on compute nodes: the conda environment, the SLURM plugin's pins, containers."""

import os
import re
import shutil
import subprocess
import sys

import yaml

from support.workflow import (
    REPO,
    dataset_layout,
    small_config,
    snakemake,
    write_yaml,
)


def test_conda_env_pins_the_tested_versions_with_cuda_builds_of_pytorch_and_faiss():
    from importlib.metadata import version

    env = yaml.safe_load((REPO / "workflow" / "envs" / "geoloc.yaml").read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"]
    pins = dict(
        re.fullmatch(r"(\S+) =(\S+)(?: =(\S+))?", spec).group(1, 2)
        for spec in env["dependencies"]
        if spec not in ("pip",)
    )
    builds = {spec.split()[0]: spec.split()[2] for spec in env["dependencies"] if len(spec.split()) == 3}
    assert builds == {"pytorch": "=cuda*"}
    assert "faiss-gpu" in pins and "faiss-cpu" not in pins
    # the versions the test suite runs (conda and PyPI names differ for two of them)
    installed = {"pytorch": "torch", "faiss-gpu": "faiss-cpu", "pyyaml": "PyYAML", "pillow": "pillow"}
    for package, pinned in pins.items():
        if package != "python":
            assert version(installed.get(package, package)) == pinned, package
    assert pins["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_the_slurm_plugin_is_pinned_to_the_tested_range():
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = {Requirement(spec).name: Requirement(spec).specifier for spec in extras["workflow"]}
    for package in ("snakemake", "snakemake-executor-plugin-slurm", "snakemake-executor-plugin-slurm-jobstep"):
        assert version(package) in pins[package], package
    assert "2.9.0" not in pins["snakemake-executor-plugin-slurm"]  # untested behaviour is refused


def test_post_deploy_installs_the_workflow_from_a_copy_anywhere_in_a_conda_prefix(tmp_path):
    """Snakemake runs a copy of the script from the conda prefix, in the working directory."""
    prefix = tmp_path / "elsewhere" / "conda-envs"
    prefix.mkdir(parents=True)
    script = prefix / "0123abcd_.post-deploy.sh"
    shutil.copy(REPO / "workflow" / "envs" / "geoloc.post-deploy.sh", script)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "pip-args"}\n')
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "GEOLOC_SOURCE": str(REPO)}
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pip-args").read_text().split() == [
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--editable",
        str(REPO),
    ]
    del env["GEOLOC_SOURCE"]
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "GEOLOC_SOURCE is set by workflow/rules/common.smk" in done.stderr


def test_a_container_image_runs_every_job_with_apptainer(tmp_path):
    bin_dir = tmp_path / "bin"  # a stand-in apptainer: Snakemake only asks its version here
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text('#!/bin/sh\necho "apptainer version 1.3.4"\n')
    (bin_dir / "apptainer").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    config = small_config(
        dataset_layout(tmp_path / "datasets"), tmp_path / "results", container="docker://ghcr.io/me/geoloc:0.1"
    )
    plan = snakemake(
        tmp_path, "-n", "--sdm", "apptainer", "--configfile", str(write_yaml(tmp_path / "c.yaml", config)), env=env
    )
    assert plan.returncode == 0, plan.stderr
    assert "Singularity image docker://ghcr.io/me/geoloc:0.1 will be pulled." in plan.stdout + plan.stderr
