"""Sweeps in the grid: one line of config plans one run per value, named by its values."""

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


BLOCK = {"backbones": ["resnet18"], "pretrainings": ["none"], "precisions": ["fp32"], "seeds": [0, 1],
         "training": {"lr": [1.0e-5, 3.0e-5], "image_size": [32, 64]}}


def test_a_sweep_block_plans_every_value_under_its_own_name_and_identical_blocks_are_refused(tmp_path):
    config = {"datasets_root": "data", "synthetic": {"enabled": True, "size": "tiny"}, "test_sets": ["sf_xs"],
              "report": {"published": None}, "grid": [BLOCK]}
    result = dry_run(tmp_path, config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    names = sorted(set(line.split("--run-name ")[1].split()[0] for line in result.stdout.splitlines()
                       if "--run-name " in line))
    assert names == sorted(f"resnet18-none-fp32-s{seed}-lr{lr}-px{px}"
                           for seed in (0, 1) for lr in ("1e-05", "3e-05") for px in (32, 64))
    trained = [line for line in result.stdout.splitlines() if "--run-name resnet18-none-fp32-s1-lr3e-05-px64 " in line]
    assert "--lr 3e-05" in trained[0] and "--image-size 64" in trained[0]
    # no reference given: the first run is the report's
    assert "--reference resnet18-none-fp32-s0-lr1e-05-px32 " in result.stdout

    result = dry_run(tmp_path, {**config, "grid": [BLOCK, BLOCK]})
    assert result.returncode != 0
    assert "config key grid[1]: the same block as grid[0]" in result.stdout + result.stderr
