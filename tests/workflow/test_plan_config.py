"""Studies planned from config alone (dry runs): datasets from the catalog, and sweeps.

The dataset tests use the tiny city rearranged into VPR-datasets-downloader's layout
(`<set>/images/{train,val,test}`) under another name, with no `sf_xs` folder anywhere: the
catalog's folders reach the commands, and a bad set fails at parse time. A sweep is one line
of config that plans one run per value, named by its values.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def dry_run(workdir: Path, config: dict) -> subprocess.CompletedProcess:
    (workdir / "c.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "workflow" / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "c.yaml"),
        "--dry-run",
        "--printshellcmds",
        "--cores",
        "1",
    ]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300)


def my_city(tiny_city: Path, root: Path, *parts: str) -> Path:
    """The tiny city's SF-XS splits as `mycity/images/<part>`, nothing else."""
    for part in parts:
        shutil.copytree(tiny_city / "sf_xs" / part, root / "mycity" / "images" / part)
    return root


def study(root: Path, **overrides) -> dict:
    return {
        "datasets_root": str(root),
        "results": "results",
        "report": {"published": None},
        "datasets": {
            "mycity": {
                "label": "My City",
                "test": "mycity/images/test",
                "train": "mycity/images/train",
                "val": "mycity/images/val",
                "positive_dist_threshold": 40,
            }
        },
        "test_sets": ["mycity"],
        "training": {"dataset": "mycity"},
        "grid": [{"backbones": ["resnet18"], "pretrainings": ["none"], "precisions": ["fp32"], "seeds": [0]}],
        **overrides,
    }


def test_a_study_trains_and_tests_on_a_set_not_named_sf_xs_without_any_sf_xs_folder(tmp_path, tiny_city):
    root = my_city(tiny_city, tmp_path / "data", "train", "val", "test")
    result = dry_run(tmp_path, study(root))  # no `reference`: the first run is the reference
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"--train-dir {root}/mycity/images/train --val-dir {root}/mycity/images/val" in out
    assert "--dataset mycity" in out and "--run-name resnet18-none-fp32-s0 " in out  # today's name
    assert f"--test-set mycity={root}/mycity/images/test" in out
    assert out.count("--set-threshold mycity=40") == 2  # the run's evaluation and its baseline's
    # no `reference`: the report is given none, picks the first expected run and says so
    report = next(line for line in out.splitlines() if "geoloc report " in line)
    assert "--expected resnet18-none-fp32-s0 " in report and "--reference" not in report
    assert "--datasets results/datasets.json " in report
    assert "sf_xs" not in out.replace("--dataset mycity", "")


def test_an_evaluation_only_study_plans_baselines_only_and_needs_no_training_set(tmp_path, tiny_city):
    root = my_city(tiny_city, tmp_path / "data", "test")
    config = study(
        root,
        grid=[
            {"backbones": ["resnet18"], "pretrainings": ["none"], "precisions": ["fp32"], "seeds": [0], "train": False}
        ],
        training={},
    )
    result = dry_run(tmp_path, config)
    assert result.returncode == 0, result.stderr
    assert "rule baseline:" in result.stdout
    for rule in ("train", "evaluate", "cache_images"):
        assert f"rule {rule}:" not in result.stdout


def test_a_count_other_than_the_expected_one_fails_before_any_job_naming_set_folder_and_counts(tmp_path, tiny_city):
    root = my_city(tiny_city, tmp_path / "data", "train", "val", "test")
    queries = len(list((root / "mycity/images/test/queries").iterdir()))
    config = study(root)
    config["datasets"]["mycity"]["expected"] = {"database": 3, "queries": queries}
    result = dry_run(tmp_path, config)
    said = result.stdout + result.stderr
    assert result.returncode != 0
    assert "mycity" in said and f"{root}/mycity/images/test" in said and "3" in said, said[-2000:]
    assert "rule train:" not in said and not (tmp_path / "results").exists()


BLOCK = {
    "backbones": ["resnet18"],
    "pretrainings": ["none"],
    "precisions": ["fp32"],
    "seeds": [0, 1],
    "training": {"lr": [1.0e-5, 3.0e-5], "image_size": [32, 64]},
}


def test_a_sweep_block_plans_every_value_under_its_own_name_and_identical_blocks_are_refused(tmp_path):
    config = {
        "datasets_root": "data",
        "synthetic": {"enabled": True, "size": "tiny"},
        "test_sets": ["sf_xs"],
        "report": {"published": None},
        "grid": [BLOCK],
    }
    result = dry_run(tmp_path, config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    names = sorted(
        set(line.split("--run-name ")[1].split()[0] for line in result.stdout.splitlines() if "--run-name " in line)
    )
    assert names == sorted(
        f"resnet18-none-fp32-s{seed}-lr{lr}-px{px}" for seed in (0, 1) for lr in ("1e-05", "3e-05") for px in (32, 64)
    )
    trained = [line for line in result.stdout.splitlines() if "--run-name resnet18-none-fp32-s1-lr3e-05-px64 " in line]
    assert "--lr 3e-05" in trained[0] and "--image-size 64" in trained[0]
    # no reference given: the report's is the first expected run
    assert "--expected resnet18-none-fp32-s0-lr1e-05-px32 " in result.stdout

    result = dry_run(tmp_path, {**config, "grid": [BLOCK, BLOCK]})
    assert result.returncode != 0
    assert "config key grid[1]: the same block as grid[0]" in result.stdout + result.stderr


def test_a_blocks_resources_reach_its_training_jobs_only(tmp_path):
    big = {
        "backbones": ["resnet18"],
        "pretrainings": ["none"],
        "precisions": ["amp"],
        "seeds": [0],
        "resources": {"mem_mb": 90000, "runtime": 900, "gpu_model": "a100", "threads": 3, "gpus": 2},
    }
    config = {
        "datasets_root": "data",
        "synthetic": {"enabled": True, "size": "tiny"},
        "test_sets": ["sf_xs"],
        "report": {"published": None},
        "resources": {"retries": 2, "gpu_model": "v100"},
        "grid": [{**big, "precisions": ["fp32"], "resources": {}}, big],
    }
    result = dry_run(tmp_path, config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    asked = {}
    for block in result.stdout.split("\n\n"):
        if "rule train:" in block:
            run = block.split("wildcards: run=")[1].split()[0]
            line = next(line for line in block.splitlines() if line.strip().startswith("resources:"))
            items = (item.split("=", 1) for item in line.split(": ", 1)[1].split(", "))
            asked[run] = {
                key: value
                for key, value in items
                if key in ("mem_mb", "runtime", "gpu_model", "cpus_per_task", "gpu", "tasks")
            }
    assert asked == {
        "resnet18-none-fp32-s0": {
            "mem_mb": "48000",
            "runtime": "480",
            "gpu_model": "v100",
            "cpus_per_task": "8",
            "gpu": "1",
        },
        "resnet18-none-amp-s0": {
            "mem_mb": "180000",
            "runtime": "900",
            "gpu_model": "a100",
            "cpus_per_task": "3",
            "gpu": "2",
            "tasks": "2",
        },
    }
