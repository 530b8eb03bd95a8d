"""The real package, end to end, on the tiny city, through the workflow used as a module."""

import json
import re

import pytest

from support.workflow import (
    job_counts,
    module_snakefile,
    snakemake,
    venv_env,
    write_yaml,
)


@pytest.mark.slow
def test_tiny_city_end_to_end_as_a_module_then_a_deleted_model_retrains_only_its_run(tmp_path):
    config = {
        "datasets_root": "results/data",
        "synthetic": {"enabled": True, "size": "tiny", "seed": 0},
        "test_sets": ["sf_xs", "tokyo_night"],
        "device": "cpu",
        "training": {
            "epochs": 1,
            "iterations_per_epoch": 2,
            "batch_size": 4,
            "image_size": 32,
            "lr": 1e-3,
            "alpha": 45,
            "N": 2,
            "L": 1,
            "min_images_per_class": 2,
            "num_workers": 0,
            "checkpoint_every": 1,
        },
        "evaluation": {"batch_size": 16, "num_workers": 0},
        "grid": [
            {"backbones": ["mobilenet_v3_small"], "pretrainings": ["none"], "precisions": ["fp32", "amp"], "seeds": [0]}
        ],
        "reference": "mobilenet_v3_small-none-fp32-s0",
        "report": {"published": None},
        "resources": {"train": {"threads": 2}, "evaluate": {"threads": 2}, "cache_images": {"threads": 2}},
    }
    write_yaml(tmp_path / "config.yaml", config)
    snakefile = module_snakefile(tmp_path, "config.yaml")
    env = venv_env()
    args = ["--cores", "2", "--resources", "gpu=1"]
    result = snakemake(tmp_path, *args, env=env, timeout=1200, snakefile=snakefile)
    assert result.returncode == 0, result.stderr[-5000:]

    results = tmp_path / "results"
    rows = (results / "recalls.csv").read_text().splitlines()
    header = rows[0].split(",")
    cells = [dict(zip(header, row.split(","))) for row in rows[1:]]
    runs = ("mobilenet_v3_small-none-fp32-s0", "mobilenet_v3_small-none-amp-s0", "mobilenet_v3_small-none-baseline")
    assert sorted((c["run"], c["test_set"]) for c in cells) == sorted(
        (run, test) for run in runs for test in ("sf_xs", "tokyo_night")
    )
    assert all(0 <= float(c[r]) <= 100 for c in cells for r in ("r1", "r5", "r10", "r20"))
    train = json.loads((results / "runs/mobilenet_v3_small-none-amp-s0/train.json").read_text())
    assert train["run"]["precision"] == "amp" and len(train["epochs"]) == 1
    assert "mobilenet_v3_small-none-amp-s0" in (results / "report.html").read_text()
    assert (results / "logs/train/mobilenet_v3_small-none-amp-s0.log").exists()
    assert (results / "benchmarks/evaluate/mobilenet_v3_small-none-amp-s0.tsv").exists()
    first_conclusion = (results / "conclusions.txt").read_text().splitlines()[0]
    assert f"Its first conclusion: {first_conclusion}" in result.stdout

    (results / "runs/mobilenet_v3_small-none-amp-s0/model.pt").unlink()
    plan = snakemake(tmp_path, "-n", *args, env=env, snakefile=snakefile)
    assert plan.returncode == 0, plan.stderr
    output = plan.stdout + plan.stderr
    assert job_counts(output) == {"train": 1, "evaluate": 1, "aggregate": 1, "report": 1, "all": 1}
    assert set(re.findall(r"wildcards: run=([^,\s]+)", output)) == {"mobilenet_v3_small-none-amp-s0"}
