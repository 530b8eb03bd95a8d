"""Reruns follow results: a small workflow runs once with the fake `geoloc`, then dry runs show
what each config change reruns."""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

from support.workflow import (
    BLOCK,
    fake_geoloc_env,
    job_counts,
    snakemake,
    write_yaml,
)

SCRATCH, PRETRAINED = "resnet18-none-fp32-s0", "resnet18-imagenet-fp32-s0-ft"
RERUN_CONFIG = {
    "test_sets": ["sf_xs", "tokyo_night"],
    "training": {"image_size": 32, "lr": 1e-3, "num_workers": 0},
    "evaluation": {"num_workers": 0},
    "grid": [BLOCK, {**BLOCK, "pretrainings": ["imagenet"], "tag": "ft", "training": {"lr": 1e-4}}],
    "reference": SCRATCH,
    "report": {"published": None},
}
# What every change below reruns beside its GPU jobs: the config shown in the report, and the report.
SHOWN = {"effective_config": 1, "report": 1, "all": 1}


@dataclasses.dataclass
class FinishedWorkflow:
    workdir: Path
    config: dict
    env: dict

    def plan(self, config: dict | None = None, *options: str, workdir: Path | None = None) -> dict[str, int]:
        """Job counts of a dry run with `config` (default: the one that ran) in `workdir` (default:
        the one that ran). A dry run writes the stamps of the config it plans: they are put back
        after it, so that each plan starts from the finished run."""
        workdir = workdir or self.workdir
        stamps, kept = workdir / "results" / "stamps", workdir / "stamps-kept"
        shutil.copytree(stamps, kept)  # times kept
        try:
            path = write_yaml(workdir / "plan.yaml", config or self.config)
            result = snakemake(workdir, "-n", "--configfile", str(path), *options, env=self.env)
        finally:
            shutil.rmtree(stamps)
            kept.rename(stamps)
        assert result.returncode == 0, result.stderr
        return job_counts(result.stdout + result.stderr)

    def changed(self, *path, value) -> dict[str, int]:
        config = json.loads(json.dumps(self.config))
        node = config
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        return self.plan(config)


@pytest.fixture(scope="module")
def finished_workflow(tmp_path_factory, tiny_city) -> FinishedWorkflow:
    """The tiny city, a run from scratch and a pretrained one (file:// weights), run once."""
    workdir = tmp_path_factory.mktemp("reruns")
    shutil.copytree(tiny_city, workdir / "data")
    source = workdir / "downloads" / "resnet18.pth"
    source.parent.mkdir()
    source.write_bytes(b"weights")
    write_yaml(
        workdir / "weights.yaml",
        {"resnet18": {"imagenet": {"url": source.as_uri(), "sha256": None, "size": None, "format": "torchvision"}}},
    )
    config = {
        **RERUN_CONFIG,
        "datasets_root": str(workdir / "data"),
        "weights": {"registry": str(workdir / "weights.yaml"), "dir": "weights"},
    }
    env, _ = fake_geoloc_env(workdir)
    path = write_yaml(workdir / "c.yaml", config)
    done = snakemake(workdir, "--cores", "2", "--configfile", str(path), env=env)
    assert done.returncode == 0, done.stderr
    workflow = FinishedWorkflow(workdir, config, env)
    assert workflow.plan() == {}
    return workflow


def test_a_training_setting_retrains_and_re_evaluates_the_runs_it_applies_to(finished_workflow):
    # the pretrained run's block overrides lr: only the run from scratch uses training.lr
    assert finished_workflow.changed("training", "lr", value=3e-3) == {
        "train": 1,
        "evaluate": 1,
        "aggregate": 1,
        **SHOWN,
    }


def test_a_block_override_retrains_only_that_blocks_runs(finished_workflow):
    config = json.loads(json.dumps(finished_workflow.config))
    config["grid"][1]["training"]["lr"] = 2e-4
    assert finished_workflow.plan(config) == {"train": 1, "evaluate": 1, "aggregate": 1, **SHOWN}


def test_the_positive_threshold_retrains_every_run_and_re_evaluates_the_baselines(finished_workflow):
    # in-loop validation uses it, and its R@1 picks the model that is kept
    assert finished_workflow.changed("evaluation", "positive_dist_threshold", value=30) == {
        "train": 2,
        "evaluate": 2,
        "baseline": 2,
        "aggregate": 1,
        **SHOWN,
    }


def test_an_evaluation_setting_re_evaluates_without_retraining(finished_workflow):
    assert finished_workflow.changed("evaluation", "k", value=25) == {
        "evaluate": 2,
        "baseline": 2,
        "aggregate": 1,
        **SHOWN,
    }


def test_evaluation_autocast_re_evaluates_neither_fp32_runs_nor_baselines(finished_workflow):
    assert finished_workflow.changed("evaluation", "autocast", value=True) == SHOWN


def test_other_weights_retrain_the_pretrained_run_and_its_baseline(finished_workflow):
    weights = finished_workflow.workdir / "weights" / "resnet18-imagenet.pth"
    before = weights.read_bytes(), weights.stat()
    try:
        weights.write_bytes(b"other weights")
        assert finished_workflow.plan() == {
            "train": 1,
            "evaluate": 1,
            "baseline": 1,
            "aggregate": 1,
            "report": 1,
            "all": 1,
        }
    finally:
        weights.write_bytes(before[0])
        os.utime(weights, ns=(before[1].st_atime_ns, before[1].st_mtime_ns))


@pytest.mark.parametrize("path, value", [(("evaluation", "num_workers"), 4), (("device",), "cpu")])
def test_a_runtime_knob_plans_no_gpu_job(finished_workflow, path, value):
    assert finished_workflow.changed(*path, value=value) == SHOWN


def test_every_other_runtime_knob_at_once_plans_no_gpu_job(finished_workflow):
    config = json.loads(json.dumps(finished_workflow.config))
    config["evaluation"]["batch_size"] = 7
    config["training"] |= {
        "num_workers": 2,
        "checkpoint_every": 3,
        "image_cache": False,
        "max_bad_steps": 4,
        "max_bad_images": 5,
        "stop_margin_minutes": 20,
        "gpus_per_run": 2,
        "nodes_per_run": 2,
        "compile": True,
    }
    config["image_cache"] = {"dir": "elsewhere", "copy_to": "$TMPDIR/cache"}
    config["resources"] = {
        "max_runtime": 100,
        "gpu_model": "a100",
        "gpu_request": "gres",
        "requeues": 1,
        "train": {"threads": 3, "mem_mb": 100, "runtime": 60, "slurm_extra": "--qos=high"},
        "evaluate": {"threads": 2},
        "cache_images": {"mem_mb": 10},
    }
    assert finished_workflow.plan(config) == SHOWN


def test_a_new_image_size_builds_its_cache_in_a_cpu_job_before_the_training(finished_workflow):
    config = json.loads(json.dumps(finished_workflow.config))
    config["grid"][1]["training"]["image_size"] = 48
    assert finished_workflow.plan(config) == {"cache_images": 1, "train": 1, "evaluate": 1, "aggregate": 1, **SHOWN}


def test_the_same_datasets_elsewhere_rerun_only_the_datasets_rule(finished_workflow):
    data = finished_workflow.workdir / "data"
    moved = finished_workflow.workdir / "moved data"
    data.rename(moved)
    try:
        assert finished_workflow.changed("datasets_root", value=str(moved)) == {"datasets": 1, **SHOWN}
        # and a second change in the same invocation still reruns what it changes
        config = json.loads(json.dumps(finished_workflow.config))
        config["datasets_root"] = str(moved)
        config["training"]["lr"] = 3e-3
        assert finished_workflow.plan(config) == {"datasets": 1, "train": 1, "evaluate": 1, "aggregate": 1, **SHOWN}
    finally:
        moved.rename(data)


def test_a_query_image_added_to_a_test_set_re_evaluates_every_model_and_retrains_nothing(finished_workflow):
    queries = finished_workflow.workdir / "data" / "tokyo_night" / "test" / "queries"
    image = next(queries.iterdir())
    added = queries / image.name.replace("@", "@9", 1)
    shutil.copy(image, added)
    try:
        # every evaluation job tests every set: the runs' and the baselines', and the counts the report shows
        assert finished_workflow.plan() == {
            "evaluate": 2,
            "baseline": 2,
            "datasets": 1,
            "aggregate": 1,
            "report": 1,
            "all": 1,
        }
    finally:
        added.unlink()
    assert finished_workflow.plan() == {}


def test_a_training_setting_retrains_with_mtime_triggers_only(finished_workflow):
    config = json.loads(json.dumps(finished_workflow.config))
    config["training"]["lr"] = 3e-3
    assert finished_workflow.plan(config, "--rerun-triggers", "mtime") == {
        "train": 1,
        "evaluate": 1,
        "aggregate": 1,
        **SHOWN,
    }


def test_without_snakemake_metadata_elsewhere_nothing_reruns_and_a_setting_still_does(finished_workflow, tmp_path):
    clone = tmp_path / "clone"
    shutil.copytree(finished_workflow.workdir, clone, symlinks=True, ignore=shutil.ignore_patterns(".snakemake"))
    assert finished_workflow.plan(workdir=clone) == {}
    config = json.loads(json.dumps(finished_workflow.config))
    config["evaluation"]["k"] = 25
    assert finished_workflow.plan(config, workdir=clone) == {"evaluate": 2, "baseline": 2, "aggregate": 1, **SHOWN}
