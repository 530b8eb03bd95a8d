"""What dry runs plan: the study's jobs, their SLURM resources, and configs refused before any job."""

import re
from pathlib import Path

import pytest

from support.workflow import (
    BLOCK,
    STUDY_CONFIG,
    dataset_layout,
    job_counts,
    job_resources,
    planned_jobs,
    small_config,
    snakemake,
    write_yaml,
)


def study_site_config(tmp_path: Path, **extra) -> Path:
    return write_yaml(tmp_path / "site.yaml", {"datasets_root": str(dataset_layout(tmp_path / "datasets")), **extra})


def test_study_dry_run_without_a_profile_plans_14_trainings_14_evaluations_11_baselines(tmp_path):
    """`--executor slurm` and no profile: the workflow alone asks SLURM for what each job needs."""
    site = study_site_config(tmp_path, resources={"train": {"slurm_extra": "--qos=high"}, "max_runtime": 300})
    result = snakemake(
        tmp_path, "-n", "--executor", "slurm", "--jobs", "10", "--configfile", str(STUDY_CONFIG), str(site)
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert job_counts(output) == {
        "train": 14,
        "evaluate": 14,
        "baseline": 11,
        "fetch_weights": 11,
        "datasets": 1,
        "cache_images": 1,
        "aggregate": 1,
        "effective_config": 1,
        "report": 1,
        "all": 1,
    }
    train = job_resources(planned_jobs(output, "train")[0])
    # runtime capped at resources.max_runtime; the user's slurm_extra keeps the workflow's signal
    assert {k: train[k] for k in ("gpu", "mem_mb", "runtime", "cpus_per_task", "slurm_extra")} == {
        "gpu": "1",
        "mem_mb": "48000",
        "runtime": "300",
        "cpus_per_task": "8",
        "slurm_extra": "--signal=USR1@600 --requeue --qos=high",
    }
    evaluate = job_resources(planned_jobs(output, "evaluate")[0])
    assert {k: evaluate[k] for k in ("gpu", "mem_mb", "runtime")} == {"gpu": "1", "mem_mb": "32000", "runtime": "120"}
    assert "slurm_extra" not in evaluate
    baseline = job_resources(planned_jobs(output, "baseline")[0])
    assert baseline["gpu"] == "1" and baseline["runtime"] == "120"
    cache = job_resources(planned_jobs(output, "cache_images")[0])
    assert "gpu" not in cache and cache["mem_mb"] == "16000" and cache["runtime"] == "240"


def test_gpu_type_gres_sites_and_runs_on_several_gpus_ask_slurm_accordingly(tmp_path):
    config = small_config(
        dataset_layout(tmp_path / "datasets"),
        tmp_path / "results",
        grid=[BLOCK, {**BLOCK, "tag": "ddp", "training": {"gpus_per_run": 2, "nodes_per_run": 2}}],
        resources={"gpu_model": "a100", "train": {"threads": 6, "mem_mb": 1000}},
    )
    plan = snakemake(
        tmp_path,
        "-n",
        "-p",
        "--executor",
        "slurm",
        "--jobs",
        "10",
        "--configfile",
        str(write_yaml(tmp_path / "c.yaml", config)),
    )
    assert plan.returncode == 0, plan.stderr
    trains = {re.search(r"wildcards: run=(\S+)", b).group(1): b for b in planned_jobs(plan.stdout, "train")}
    single, ddp = job_resources(trains["resnet18-none-fp32-s0"]), job_resources(trains["resnet18-none-fp32-s0-ddp"])
    assert (single["gpu"], single["gpu_model"], single["mem_mb"]) == ("1", "a100", "1000")
    assert not {"tasks", "mpi", "nodes"} & set(single)
    # one SLURM job: a task per GPU (2 per node x 2 nodes), memory per node for its two processes
    assert {
        k: ddp[k] for k in ("gpu", "gpu_model", "tasks", "tasks_per_gpu", "nodes", "mpi", "cpus_per_task", "mem_mb")
    } == {
        "gpu": "4",
        "gpu_model": "a100",
        "tasks": "4",
        "tasks_per_gpu": "1",
        "nodes": "2",
        "mpi": "srun",
        "cpus_per_task": "6",
        "mem_mb": "2000",
    }
    assert "scripts/ranks.sh 2 2 " in trains["resnet18-none-fp32-s0-ddp"]
    assert "ranks.sh" not in trains["resnet18-none-fp32-s0"]

    config["resources"]["gpu_request"] = "gres"
    plan = snakemake(
        tmp_path,
        "-n",
        "--executor",
        "slurm",
        "--jobs",
        "10",
        "--configfile",
        str(write_yaml(tmp_path / "c.yaml", config)),
    )
    assert plan.returncode == 0, plan.stderr
    gres = {
        re.search(r"wildcards: run=(\S+)", b).group(1): job_resources(b) for b in planned_jobs(plan.stdout, "train")
    }
    assert gres["resnet18-none-fp32-s0"]["gres"] == "gpu:a100:1" and "gpu" not in gres["resnet18-none-fp32-s0"]
    assert gres["resnet18-none-fp32-s0-ddp"]["gres"] == "gpu:a100:2"  # --gres counts per node
    assert job_resources(planned_jobs(plan.stdout, "evaluate")[0])["gres"] == "gpu:a100:1"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"foo": 1}, "config: unknown key 'foo'"),
        ({"grid": [{**BLOCK, "backbones": ["resnet19"]}]}, "config key grid[0].backbones: unknown backbone 'resnet19'"),
        ({"grid": [{**BLOCK, "pretrainings": ["instagram"]}]}, "config key grid[0].pretrainings: "),
        ({"reference": "resnet18-imagenet-fp32-s0"}, "config key reference: 'resnet18-imagenet-fp32-s0' is not a run"),
        ({"grid": [{**BLOCK, "tag": "x;touch PWNED"}]}, "config key grid[0].tag: 'x;touch PWNED' is not allowed"),
        # what JSON Schema lets through and the commands would refuse
        ({"resources": {"gpu_model": "a100\n"}}, "config key resources.gpu_model: 'a100\\n' does not match"),
        ({"test_sets": ["sf_xs\n"]}, "config key test_sets[0]: 'sf_xs\\n' does not match"),
        ({"training": {"batch_size": 4.0}}, "config key training.batch_size: 4.0 is not of type 'integer'"),
        ({"grid": [{**BLOCK, "seeds": [1.0]}]}, "config key grid[0].seeds[0]: 1.0 is not of type 'integer'"),
        (
            {"evaluation": {"positive_dist_threshold": float("inf")}},
            "config key evaluation.positive_dist_threshold: inf is not a finite number",
        ),
        # what the grid alone rules out
        (
            {"grid": [{**BLOCK, "tag": "g", "training": {"groups_num": 9, "N": 2}}]},
            "config key grid[0].training.groups_num: 9 is more than the N*N*L = 8 groups",
        ),
        (
            {"grid": [{**BLOCK, "tag": "t", "training": {"trainable_blocks": 7}}]},
            "config key grid[0].training.trainable_blocks: 7 is more than the 6 blocks of resnet18",
        ),
        (
            {
                "grid": [{**BLOCK, "backbones": ["timm:vit_tiny_patch16_224"]}],
                "training": {"image_size": 50},
                "reference": "timm_vit_tiny_patch16_224-none-fp32-s0",
            },
            "config key training.image_size: timm model vit_tiny_patch16_224 cannot take 50x50 images: "
            "Input height (50) should be divisible by patch size (16)",
        ),
        (
            {"resources": {"train": {"runtime": 10}}},
            "config key training.stop_margin_minutes: 10 minutes leave no time",
        ),
    ],
)
def test_bad_config_fails_before_any_job_with_the_key_named(tmp_path, change, message):
    config = small_config(
        dataset_layout(tmp_path / "datasets"),
        tmp_path / "results",
        weights={"registry": str(tmp_path / "weights.yaml")},
        **change,
    )
    write_yaml(
        tmp_path / "weights.yaml",
        {"resnet18": {"imagenet": {"url": "file:///nowhere", "sha256": None, "size": None, "format": "torchvision"}}},
    )
    result = snakemake(tmp_path, "--cores", "1", "--configfile", str(write_yaml(tmp_path / "c.yaml", config)))
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Job stats" not in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()
    assert not list(tmp_path.rglob("PWNED"))


def test_missing_datasets_root_fails_before_any_job(tmp_path):
    config = small_config(tmp_path, tmp_path / "results")
    del config["datasets_root"]
    result = snakemake(tmp_path, "-n", "--configfile", str(write_yaml(tmp_path / "c.yaml", config)))
    assert result.returncode != 0
    assert "config key datasets_root is required" in result.stdout + result.stderr


def test_datasets_root_missing_a_test_set_fails_before_any_job(tmp_path):
    root = dataset_layout(tmp_path / "datasets", test_sets=("sf_xs",))
    config = small_config(root, tmp_path / "results", test_sets=["sf_xs", "tokyo_night"])
    result = snakemake(tmp_path, "-n", "--configfile", str(write_yaml(tmp_path / "c.yaml", config)))
    assert result.returncode != 0
    assert f"dataset tokyo_night: test folder {root / 'tokyo_night/test'} does not exist" in result.stdout


def test_a_mistyped_published_results_path_fails_before_any_job(tmp_path):
    root = dataset_layout(tmp_path / "datasets", test_sets=("sf_xs",))
    config = small_config(root, tmp_path / "results", report={"published": "resources/publshed-results.csv"})
    result = snakemake(tmp_path, "-n", "--configfile", str(write_yaml(tmp_path / "c.yaml", config)))
    assert result.returncode != 0
    assert "config key report.published: resources/publshed-results.csv is no file" in result.stdout + result.stderr
