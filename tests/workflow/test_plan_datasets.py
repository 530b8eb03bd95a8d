"""Datasets by config: the catalog's folders reach the commands, and a bad set fails at parse time.

Dry runs of the workflow on the tiny city rearranged into VPR-datasets-downloader's layout
(`<set>/images/{train,val,test}`) under another name, with no `sf_xs` folder anywhere.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def dry_run(workdir: Path, config: dict) -> subprocess.CompletedProcess:
    (workdir / "c.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory",
               str(workdir), "--configfile", str(workdir / "c.yaml"), "--dry-run", "--printshellcmds", "--cores", "1"]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300)


def my_city(tiny_city: Path, root: Path, *parts: str) -> Path:
    """The tiny city's SF-XS splits as `mycity/images/<part>`, nothing else."""
    for part in parts:
        shutil.copytree(tiny_city / "sf_xs" / part, root / "mycity" / "images" / part)
    return root


def study(root: Path, **overrides) -> dict:
    return {"datasets_root": str(root), "results": "results", "report": {"published": None},
            "datasets": {"mycity": {"label": "My City", "test": "mycity/images/test", "train": "mycity/images/train",
                                    "val": "mycity/images/val", "positive_dist_threshold": 40}},
            "test_sets": ["mycity"], "training": {"dataset": "mycity"},
            "grid": [{"backbones": ["resnet18"], "pretrainings": ["none"], "precisions": ["fp32"], "seeds": [0]}],
            **overrides}


def test_a_study_trains_and_tests_on_a_set_not_named_sf_xs_without_any_sf_xs_folder(tmp_path, tiny_city):
    root = my_city(tiny_city, tmp_path / "data", "train", "val", "test")
    result = dry_run(tmp_path, study(root))  # no `reference`: the first run is the reference
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"--train-dir {root}/mycity/images/train --val-dir {root}/mycity/images/val" in out
    assert "--dataset mycity" in out and "--run-name resnet18-none-fp32-s0 " in out  # today's name
    assert f"--test-set mycity={root}/mycity/images/test" in out
    assert out.count("--set-threshold mycity=40") == 2  # the run's evaluation and its baseline's
    assert "--reference resnet18-none-fp32-s0 --expected resnet18-none-fp32-s0" in out
    assert "sf_xs" not in out.replace("--dataset mycity", "")


def test_an_evaluation_only_study_plans_baselines_only_and_needs_no_training_set(tmp_path, tiny_city):
    root = my_city(tiny_city, tmp_path / "data", "test")
    config = study(root, grid=[{"backbones": ["resnet18"], "pretrainings": ["none"], "precisions": ["fp32"],
                                "seeds": [0], "train": False}], training={})
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
