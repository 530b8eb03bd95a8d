"""The Snakemake workflow: config validation, the study's plan, reruns, resources, and real runs.

Most tests run Snakemake in a temporary working folder. Those that execute jobs put a fake
`geoloc` (tests/fake_geoloc.py) first on PATH that records its arguments and writes the
outputs: fast, and it shows exactly what reached each command. The rerun tests run a small
workflow once with it, then assert what dry runs plan after each change. The end-to-end test
runs the real package on the tiny city, through the workflow used as a Snakemake module.
"""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from geoloc import grid

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
STUDY_CONFIG = REPO / "config" / "config.yaml"
DEMO_CONFIG = REPO / "config" / "demo.yaml"
WEIGHTS_REGISTRY = REPO / "resources" / "weights.yaml"
FAKE_GEOLOC = Path(__file__).resolve().parent / "fake_geoloc.py"
VENV_BIN = Path(sys.executable).parent
TEST_SETS = ("sf_xs", "tokyo_xs", "tokyo_night")
GPU_RULES = {"train", "evaluate", "baseline"}

STUDY_RUNS = [
    "resnet18-imagenet-fp32-s0", "resnet18-places365-fp32-s0", "resnet18-gldv2-fp32-s0",
    "resnet18-imagenet-amp-s0", "efficientnet_b0-imagenet-amp-s0", "efficientnet_b1-imagenet-amp-s0",
    "efficientnet_b2-imagenet-amp-s0", "efficientnet_v2_s-imagenet-amp-s0", "mobilenet_v3_small-imagenet-amp-s0",
    "mobilenet_v3_large-imagenet-amp-s0", "convnext_tiny-imagenet-amp-s0", "swin_tiny-imagenet-amp-s0",
    "efficientnet_v2_s-imagenet-amp-s0-sphereface", "mobilenet_v3_large-imagenet-amp-s0-4ep",
]


# ---------------------------------------------------------------- helpers


def snakemake(workdir: Path, *args: str, env: dict | None = None, timeout: int = 300,
              snakefile: Path | None = SNAKEFILE) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--directory", str(workdir), *args]
    if snakefile is not None:
        command[3:3] = ["--snakefile", str(snakefile)]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The job-count table Snakemake prints ("Job stats:"), without the total; {} for nothing to do."""
    if "Job stats:" not in output:
        assert "Nothing to be done" in output, output[-3000:]
        return {}
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE))
    counts.pop("total")
    return {name: int(count) for name, count in counts.items()}


def planned_jobs(output: str, rule: str) -> list[str]:
    """The blocks Snakemake prints for each planned job of `rule`."""
    return [block.split("\n\n", 1)[0] for block in re.split(r"^\[.*\]\n", output, flags=re.MULTILINE)
            if re.match(rf"(local)?rule {rule}:", block)]


def job_resources(block: str) -> dict[str, str]:
    line = re.search(r"^\s+resources: (.*)$", block, flags=re.MULTILINE).group(1)
    return dict(item.split("=", 1) for item in re.split(r", (?=\w+=)", line))


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def dataset_layout(root: Path, test_sets=TEST_SETS) -> Path:
    """The folders of the real datasets (empty: enough to plan, not to run)."""
    for folder in ("sf_xs/train", "sf_xs/val", *(f"{name}/test" for name in test_sets)):
        (root / folder).mkdir(parents=True, exist_ok=True)
    return root


def small_config(datasets_root: Path, results: Path, **overrides) -> dict:
    """One run, one test set, real datasets layout (no synthetic city)."""
    return {
        "datasets_root": str(datasets_root),
        "results": str(results),
        "test_sets": ["sf_xs"],
        "grid": [{"backbones": ["resnet18"], "pretrainings": ["none"], "precisions": ["fp32"], "seeds": [0]}],
        "reference": "resnet18-none-fp32-s0",
        "report": {"published": None},
        **overrides,
    }


def fake_geoloc_env(tmp_path: Path, **variables: str) -> tuple[dict, Path]:
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "geoloc"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE_GEOLOC} \"$@\"\n")
    script.chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_GEOLOC_CALLS": str(calls),
           **variables}
    return env, calls


def recorded_calls(calls: Path) -> list[list[str]]:
    return [json.loads(line)["args"] for line in calls.read_text().splitlines()]


def calls_of(calls: Path, command: str) -> list[list[str]]:
    return [args[1:] for args in recorded_calls(calls) if args[0] == command]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def flags(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == name]


def schema_error(config: dict) -> str:
    """What the schema says about `config` (common.smk wraps Snakemake's validate the same way)."""
    try:
        validate(config, schema=str(SCHEMA))
    except WorkflowError as error:
        assert isinstance(error.__context__, jsonschema.ValidationError)
        return grid.describe_schema_error(error.__context__)
    return ""


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


# ---------------------------------------------------------------- style


def test_snakefmt_finds_nothing_to_change():
    result = subprocess.run([str(VENV_BIN / "snakefmt"), "--check", "workflow"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
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
    assert in_job.stdout.split() == ["srun", "--nodes=3", "--ntasks=6", "--ntasks-per-node=2", "--cpus-per-task=4",
                                     "--kill-on-bad-exit=1", "echo", "geoloc", "train", "--threads", "4"]


def test_workflow_scripts_are_valid_shell():
    for script in (REPO / "workflow" / "scripts").glob("*.sh"):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, (script, result.stderr)


# ---------------------------------------------------------------- the schema says what reruns


def leaf_annotations(node: dict, root: dict, path: str = "") -> dict[str, str | None]:
    """`changes` of every config key that holds a value, by dotted path (grid blocks as grid[])."""
    node = grid._dereferenced(root, node)
    found = {}
    for name, sub in node.get("properties", {}).items():
        key = f"{path}.{name}" if path else name
        sub = grid._dereferenced(root, sub)
        items = grid._dereferenced(root, sub.get("items", {}))
        if "properties" in sub:
            found |= leaf_annotations(sub, root, key)
        else:
            found[key] = sub.get("changes")
            if "properties" in items:
                found |= leaf_annotations(items, root, f"{key}[]")
    return found


def test_every_config_key_says_what_a_change_reruns_in_its_description():
    schema = load_schema()
    annotations = leaf_annotations(schema, schema)
    assert len(annotations) > 60
    assert {key for key, changes in annotations.items() if changes not in ("model", "recalls", "nothing")} == set()
    words = {"model": "Changes the model", "recalls": "Changes the recalls", "nothing": "Changes nothing"}
    for key, changes in annotations.items():
        parts = key.replace("[]", "").split(".")
        node = schema
        for part in parts:
            node = grid._dereferenced(schema, node)
            node = node["properties"][part] if "properties" in node else grid._dereferenced(
                schema, node["items"])["properties"][part]
        description = grid._dereferenced(schema, node)["description"]
        assert words[changes] in description, key


def test_schema_model_keys_are_exactly_the_training_settings_the_trainer_fingerprints():
    from geoloc.train.settings import TrainSettings

    schema = load_schema()
    model_keys = set(grid.keys_that_change(schema, "training", "model"))
    model_keys |= {key for key in grid.keys_that_change(schema, "evaluation", "model")}
    # The grid gives the rest: a block's backbone, precision and seed, and the weights format
    # of its pretraining (from the weights registry).
    model_keys |= {"backbone", "precision", "seed", "weights_format"}
    fields = {field.name for field in dataclasses.fields(TrainSettings)}
    assert model_keys == fields


def test_config_readme_tells_what_each_key_reruns_as_the_schema_says():
    schema = load_schema()
    readme = (REPO / "config" / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([\w.]+)` \| [^|]* \| (model|recalls|nothing) \|", readme, flags=re.MULTILINE))
    told = {key: changes for key, changes in leaf_annotations(schema, schema).items() if "[]" not in key}
    assert rows == told


def test_recalls_keys_are_exactly_what_evaluate_takes_beside_the_model():
    schema = load_schema()
    assert grid.keys_that_change(schema, "evaluation", "recalls") == ["k", "resize", "autocast"]
    assert grid.keys_that_change(schema, "evaluation", "nothing") == ["batch_size", "num_workers"]


# ---------------------------------------------------------------- the configs as shipped


def load_validated(path: Path, **site) -> dict:
    config = {**yaml.safe_load(path.read_text()), **site}
    assert schema_error(config) == ""
    return config


def test_study_config_is_the_fourteen_runs_of_the_published_study_on_cuda():
    assert "datasets_root" not in yaml.safe_load(STUDY_CONFIG.read_text())  # the user sets it
    config = load_validated(STUDY_CONFIG, datasets_root="/datasets")
    runs = grid.expand_grid(config["grid"], config["training"])
    assert list(runs) == STUDY_RUNS
    assert config["reference"] == "resnet18-imagenet-fp32-s0"
    assert config["test_sets"] == list(TEST_SETS)
    assert config["device"] == "cuda"  # a GPU job never trains on a CPU by accident
    study = {"epochs": 3, "iterations_per_epoch": 10000, "batch_size": 32, "image_size": 512, "lr": 1e-5,
             "classifier_lr": 0.01, "loss": "cosface", "M": 10, "alpha": 30, "N": 5, "L": 2,
             "min_images_per_class": 10, "groups_num": 1, "fc_output_dim": 512}
    for name, run in runs.items():
        expected = dict(study)
        if name.endswith("-sphereface"):
            expected["loss"] = "sphereface"
        if name.endswith("-4ep"):
            expected["epochs"] = 4
        assert {key: run.training[key] for key in study} == expected, name
    assert list(grid.baselines_of(runs.values())) == [
        "resnet18-imagenet", "resnet18-places365", "resnet18-gldv2", "efficientnet_b0-imagenet",
        "efficientnet_b1-imagenet", "efficientnet_b2-imagenet", "efficientnet_v2_s-imagenet",
        "mobilenet_v3_small-imagenet", "mobilenet_v3_large-imagenet", "convnext_tiny-imagenet", "swin_tiny-imagenet"]


def test_shipped_weights_registry_covers_every_pretrained_study_run():
    from geoloc.model.network import BACKBONES
    from geoloc.model.weights import lookup

    config = load_validated(STUDY_CONFIG, datasets_root="/datasets")
    runs = grid.expand_grid(config["grid"], config["training"])
    files = grid.weights_files(runs.values(), lambda b, p: lookup(WEIGHTS_REGISTRY, b, p))
    assert len(files) == 11  # ResNet-18 x 3 pretrainings + 8 other backbones with ImageNet
    assert {f.format for name, f in files.items() if name.startswith("resnet18-")} == {
        "torchvision", "places365", "gldv2"}
    assert set(BACKBONES) == {run.backbone for run in runs.values()}


def test_demo_config_is_random_initialisation_of_two_backbones_in_both_precisions():
    config = load_validated(DEMO_CONFIG)
    runs = grid.expand_grid(config["grid"], config["training"])
    assert list(runs) == ["resnet18-none-fp32-s0", "mobilenet_v3_small-none-fp32-s0-short",
                          "mobilenet_v3_small-none-amp-s0-short"]
    assert {run.pretraining for run in runs.values()} == {"none"}
    assert config["synthetic"]["enabled"] and config["results"] == "results/demo"
    assert config["datasets_root"].startswith("results/demo/")


def test_schema_fills_in_the_defaults():
    config = {"datasets_root": "/d", "grid": [{"backbones": ["resnet18"], "pretrainings": ["none"],
                                               "precisions": ["fp32"], "seeds": [0]}],
              "reference": "resnet18-none-fp32-s0", "resources": {"train": {"mem_mb": 64000}}}
    assert schema_error(config) == ""
    assert config["results"] == "results"
    assert config["test_sets"] == list(TEST_SETS)
    assert config["training"]["iterations_per_epoch"] == 10000 and config["training"]["trainable_blocks"] is None
    assert config["training"]["gpus_per_run"] == 1 and config["training"]["stop_margin_minutes"] == 10
    assert config["evaluation"] == {"batch_size": 32, "num_workers": 8, "k": 20, "positive_dist_threshold": 25,
                                    "resize": None, "autocast": False}
    assert config["weights"] == {"registry": "resources/weights.yaml", "dir": "resources/weights"}
    assert config["synthetic"] == {"enabled": False, "size": "demo", "seed": 0}
    assert config["image_cache"] == {"dir": None, "copy_to": None}
    # a key given for one job keeps the defaults of the others
    assert config["resources"]["train"] == {"threads": 8, "mem_mb": 64000, "runtime": 480, "slurm_extra": ""}
    assert config["resources"]["max_runtime"] == 1440 and config["resources"]["gpu_request"] == "gpus"
    assert "training" not in config["grid"][0]  # blocks override only what they name


BLOCK = {"backbones": ["resnet18"], "pretrainings": ["none"], "precisions": ["fp32"], "seeds": [0]}


@pytest.mark.parametrize("change, message", [
    ({"foo": 1}, "config: unknown key 'foo'"),
    ({"training": {"batch_size": "32"}}, "config key training.batch_size: '32' is not of type 'integer'"),
    ({"training": {"iterations_per_epoch": -5}}, "config key training.iterations_per_epoch: -5 is less than"),
    ({"training": {"epoch": 3}}, "config key training: unknown key 'epoch'"),
    ({"test_sets": ["pitts30k"]}, "config key test_sets[0]: 'pitts30k' is not one of"),
    ({"grid": [{**BLOCK, "precisions": ["fp16"]}]}, "config key grid[0].precisions[0]: 'fp16' is not one of"),
    ({"grid": [{**BLOCK, "seeds": ["0"]}]}, "config key grid[0].seeds[0]: '0' is not of type 'integer'"),
    ({"grid": [{**BLOCK, "seeds": [2**64]}]}, "config key grid[0].seeds[0]: 18446744073709551616 is greater than"),
    ({"grid": [{**BLOCK, "training": {"lr": 0}}]}, "config key grid[0].training.lr: 0 is less than or equal"),
    ({"grid": [{**BLOCK, "tag": "x;touch PWNED"}]}, "config key grid[0].tag: 'x;touch PWNED' is not allowed: suffix"),
    ({"grid": [{**BLOCK, "backbones": ["ResNet-18"]}]}, "config key grid[0].backbones[0]: 'ResNet-18' is not allowed"),
    ({"results": "out/{run}"}, "config key results: 'out/{run}' is not allowed"),
    ({"datasets_root": None}, "config key datasets_root: None is not of type 'string'"),
    ({"image_cache": {"copy_to": "$(touch PWNED)"}}, "config key image_cache.copy_to: '$(touch PWNED)' is not allowed"),
    ({"image_cache": {"copy_to": "scratch"}}, "config key image_cache.copy_to: 'scratch' is not allowed"),
    ({"resources": {"train": {"slurm_extra": "'--qos=high'"}}}, "config key resources.train.slurm_extra: "),
    ({"resources": {"gpu_request": "gpu"}}, "config key resources.gpu_request: 'gpu' is not one of"),
    ({"evaluation": {"resize": [480]}}, "config key evaluation.resize: [480] is too short"),
])
def test_bad_config_values_are_named_by_key(change, message):
    config = {"datasets_root": "/d", "grid": [BLOCK], "reference": "resnet18-none-fp32-s0", **change}
    assert schema_error(config).startswith(message)


def command_refuses(command: str, *argv: str) -> bool:
    """Whether `geoloc <command> <argv>` stops at its command line (exit code 2)."""
    from geoloc.cli import build_parser

    try:
        build_parser(command).parse_args([command, *argv])
    except SystemExit as stop:
        assert stop.code == 2
        return True
    return False


SEEDS = [-1, 0, 2**63 - 1, 2**63, 2**64 - 1, 2**64]


def test_grid_seeds_are_refused_by_the_schema_exactly_where_train_and_the_baseline_refuse_them(tmp_path, capsys):
    def refused_by_schema(seed):
        return schema_error({"datasets_root": "/d", "grid": [{**BLOCK, "seeds": [seed]}],
                             "reference": f"resnet18-none-fp32-s{seed}"}) != ""

    train = ["--train-dir", "t", "--val-dir", "v", "--out-dir", "o", "--checkpoint-dir", "c", "--run-name", "r"]
    baseline = ["--untrained", "--test-set", f"sf_xs={tmp_path}", "--out-dir", "o"]
    refused = [seed for seed in SEEDS if refused_by_schema(seed)]
    assert refused == [-1, 2**64]  # torch.manual_seed takes 0 to 2**64 - 1
    assert [seed for seed in SEEDS if command_refuses("train", "--seed", str(seed), *train)] == refused
    assert [seed for seed in SEEDS if command_refuses("evaluate", "--seed", str(seed), *baseline)] == refused
    assert "argument --seed" in capsys.readouterr().err


def test_the_synthetic_citys_seed_is_refused_by_the_schema_exactly_where_synth_refuses_it(capsys):
    def refused_by_schema(seed):
        return schema_error({"datasets_root": "/d", "grid": [BLOCK], "reference": "resnet18-none-fp32-s0",
                             "synthetic": {"enabled": True, "seed": seed}}) != ""

    refused = [seed for seed in SEEDS if refused_by_schema(seed)]
    assert refused == [-1, 2**63, 2**64 - 1, 2**64]  # synthetic.json's numbers read back as int64
    assert [seed for seed in SEEDS if command_refuses("synth", "out", "--size", "tiny", "--seed", str(seed))] == refused
    assert "argument --seed" in capsys.readouterr().err


def test_missing_datasets_root_says_what_to_set():
    error = schema_error({"grid": [BLOCK], "reference": "resnet18-none-fp32-s0"})
    assert error.startswith("config key datasets_root is required: folder holding sf_xs/")


# ---------------------------------------------------------------- planning (dry runs)


def study_site_config(tmp_path: Path, **extra) -> Path:
    return write_yaml(tmp_path / "site.yaml", {"datasets_root": str(dataset_layout(tmp_path / "datasets")), **extra})


def test_study_dry_run_without_a_profile_plans_14_trainings_14_evaluations_11_baselines(tmp_path):
    """`--executor slurm` and no profile: the workflow alone asks SLURM for what each job needs."""
    site = study_site_config(tmp_path, resources={"train": {"slurm_extra": "--qos=high"}, "max_runtime": 300})
    result = snakemake(tmp_path, "-n", "--executor", "slurm", "--jobs", "10", "--configfile", str(STUDY_CONFIG),
                       str(site))
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert job_counts(output) == {
        "train": 14, "evaluate": 14, "baseline": 11, "fetch_weights": 11, "datasets": 1, "cache_images": 1,
        "aggregate": 1, "effective_config": 1, "report": 1, "all": 1,
    }
    train = job_resources(planned_jobs(output, "train")[0])
    # runtime capped at resources.max_runtime; the user's slurm_extra keeps the workflow's signal
    assert {k: train[k] for k in ("gpu", "mem_mb", "runtime", "cpus_per_task", "slurm_extra")} == {
        "gpu": "1", "mem_mb": "48000", "runtime": "300", "cpus_per_task": "8",
        "slurm_extra": "--signal=USR1@600 --requeue --qos=high"}
    evaluate = job_resources(planned_jobs(output, "evaluate")[0])
    assert {k: evaluate[k] for k in ("gpu", "mem_mb", "runtime")} == {"gpu": "1", "mem_mb": "32000", "runtime": "120"}
    assert "slurm_extra" not in evaluate
    baseline = job_resources(planned_jobs(output, "baseline")[0])
    assert baseline["gpu"] == "1" and baseline["runtime"] == "120"
    cache = job_resources(planned_jobs(output, "cache_images")[0])
    assert "gpu" not in cache and cache["mem_mb"] == "16000" and cache["runtime"] == "240"


def test_gpu_type_gres_sites_and_runs_on_several_gpus_ask_slurm_accordingly(tmp_path):
    config = small_config(dataset_layout(tmp_path / "datasets"), tmp_path / "results", grid=[
        BLOCK, {**BLOCK, "tag": "ddp", "training": {"gpus_per_run": 2, "nodes_per_run": 2}}],
        resources={"gpu_model": "a100", "train": {"threads": 6, "mem_mb": 1000}})
    plan = snakemake(tmp_path, "-n", "-p", "--executor", "slurm", "--jobs", "10", "--configfile",
                     str(write_yaml(tmp_path / "c.yaml", config)))
    assert plan.returncode == 0, plan.stderr
    trains = {re.search(r"wildcards: run=(\S+)", b).group(1): b for b in planned_jobs(plan.stdout, "train")}
    single, ddp = job_resources(trains["resnet18-none-fp32-s0"]), job_resources(trains["resnet18-none-fp32-s0-ddp"])
    assert (single["gpu"], single["gpu_model"], single["mem_mb"]) == ("1", "a100", "1000")
    assert not {"tasks", "mpi", "nodes"} & set(single)
    # one SLURM job: a task per GPU (2 per node x 2 nodes), memory per node for its two processes
    assert {k: ddp[k] for k in ("gpu", "gpu_model", "tasks", "tasks_per_gpu", "nodes", "mpi", "cpus_per_task",
                                "mem_mb")} == {
        "gpu": "4", "gpu_model": "a100", "tasks": "4", "tasks_per_gpu": "1", "nodes": "2", "mpi": "srun",
        "cpus_per_task": "6", "mem_mb": "2000"}
    assert "scripts/ranks.sh 2 2 " in trains["resnet18-none-fp32-s0-ddp"]
    assert "ranks.sh" not in trains["resnet18-none-fp32-s0"]

    config["resources"]["gpu_request"] = "gres"
    plan = snakemake(tmp_path, "-n", "--executor", "slurm", "--jobs", "10", "--configfile",
                     str(write_yaml(tmp_path / "c.yaml", config)))
    assert plan.returncode == 0, plan.stderr
    gres = {re.search(r"wildcards: run=(\S+)", b).group(1): job_resources(b) for b in planned_jobs(plan.stdout, "train")}
    assert gres["resnet18-none-fp32-s0"]["gres"] == "gpu:a100:1" and "gpu" not in gres["resnet18-none-fp32-s0"]
    assert gres["resnet18-none-fp32-s0-ddp"]["gres"] == "gpu:a100:2"  # --gres counts per node
    assert job_resources(planned_jobs(plan.stdout, "evaluate")[0])["gres"] == "gpu:a100:1"


@pytest.mark.parametrize("change, message", [
    ({"foo": 1}, "config: unknown key 'foo'"),
    ({"grid": [{**BLOCK, "backbones": ["resnet19"]}]}, "config key grid[0].backbones: unknown backbone 'resnet19'"),
    ({"grid": [{**BLOCK, "pretrainings": ["instagram"]}]}, "config key grid[0].pretrainings: "),
    ({"reference": "resnet18-imagenet-fp32-s0"}, "config key reference: 'resnet18-imagenet-fp32-s0' is not a run"),
    ({"grid": [{**BLOCK, "tag": "x;touch PWNED"}]}, "config key grid[0].tag: 'x;touch PWNED' is not allowed"),
    # what JSON Schema lets through and the commands would refuse
    ({"training": {"batch_size": 4.0}}, "config key training.batch_size: 4.0 is not of type 'integer'"),
    ({"grid": [{**BLOCK, "seeds": [1.0]}]}, "config key grid[0].seeds[0]: 1.0 is not of type 'integer'"),
    ({"evaluation": {"positive_dist_threshold": float("inf")}},
     "config key evaluation.positive_dist_threshold: inf is not a finite number"),
    # what the grid alone rules out
    ({"grid": [{**BLOCK, "tag": "g", "training": {"groups_num": 9, "N": 2}}]},
     "config key grid[0].training.groups_num: 9 is more than the N*N*L = 8 groups"),
    ({"grid": [{**BLOCK, "tag": "t", "training": {"trainable_blocks": 7}}]},
     "config key grid[0].training.trainable_blocks: 7 is more than the 6 blocks of resnet18"),
    ({"grid": [{**BLOCK, "backbones": ["timm:vit_tiny_patch16_224"]}], "training": {"image_size": 50},
      "reference": "timm_vit_tiny_patch16_224-none-fp32-s0"},
     "config key training.image_size: timm model vit_tiny_patch16_224 cannot take 50x50 images: Input height (50) "
     "should be divisible by patch size (16)"),
    ({"resources": {"train": {"runtime": 10}}}, "config key training.stop_margin_minutes: 10 minutes leave no time"),
])
def test_bad_config_fails_before_any_job_with_the_key_named(tmp_path, change, message):
    config = small_config(dataset_layout(tmp_path / "datasets"), tmp_path / "results",
                          weights={"registry": str(tmp_path / "weights.yaml")}, **change)
    write_yaml(tmp_path / "weights.yaml", {"resnet18": {"imagenet": {
        "url": "file:///nowhere", "sha256": None, "size": None, "format": "torchvision"}}})
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
    assert f"config key datasets_root: {root} has no tokyo_night/test" in result.stdout + result.stderr


# ---------------------------------------------------------------- running jobs with a fake geoloc


def test_paths_with_shell_metacharacters_reach_every_command_intact(tmp_path, tiny_city):
    """Nothing in a config path is run by the shell: each arrives as one argument, unchanged."""
    env, calls = fake_geoloc_env(tmp_path)
    root = tmp_path / "data $(touch PWNED) 'a' \"b\";touch PWNED"
    shutil.copytree(tiny_city, root)
    results = tmp_path / "out `touch PWNED` & $HOME"
    config = small_config(root, results, image_cache={"dir": str(tmp_path / "cache ;touch PWNED")})
    result = snakemake(tmp_path, "--cores", "1", "--configfile", str(write_yaml(tmp_path / "c.yaml", config)),
                       env=env)
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.rglob("PWNED")) and not (REPO / "PWNED").exists()

    run = "resnet18-none-fp32-s0"
    called = {args[0]: args[1:] for args in recorded_calls(calls) if "--untrained" not in args}
    assert set(called) == {"cache-images", "train", "evaluate", "aggregate", "report"}
    assert flag(called["cache-images"], "--train-dir") == f"{root}/sf_xs/train"
    assert flag(called["cache-images"], "--cache-dir") == f"{tmp_path}/cache ;touch PWNED"
    assert flag(called["train"], "--image-cache") == f"{tmp_path}/cache ;touch PWNED"
    assert flag(called["train"], "--train-dir") == f"{root}/sf_xs/train"
    assert flag(called["train"], "--val-dir") == f"{root}/sf_xs/val"
    assert flag(called["train"], "--out-dir") == f"{results}/runs/{run}"
    assert flag(called["train"], "--checkpoint-dir") == f"{results}/checkpoints/{run}"
    assert flag(called["train"], "--run-name") == run
    assert flag(called["train"], "--weights") == "none" and "--weights-format" not in called["train"]
    assert flags(called["evaluate"], "--test-set") == [f"sf_xs={root}/sf_xs/test"]
    assert flag(called["evaluate"], "--out-dir") == f"{results}/runs/{run}/recalls"
    assert called["aggregate"] == ["--out", f"{results}/recalls.csv", f"{results}/runs/{run}",
                                   f"{results}/baselines/resnet18-none", "--threads", "1"]
    assert flag(called["report"], "--runs-dir") == f"{results}/runs"
    assert flag(called["report"], "--expected") == run
    assert (results / "report.html").read_text() == "report"
    assert yaml.safe_load((results / "config.yaml").read_text())["datasets_root"] == str(root)
    datasets = json.loads((results / "datasets.json").read_text())
    assert datasets["root"] == str(root.resolve())
    assert datasets["images"]["sf_xs/train"] == len(list((root / "sf_xs" / "train").rglob("*.jpg")))
    # the end of a successful run says where the report is and its first conclusion
    assert f"The report: {(results / 'report.html').resolve()}" in result.stdout
    assert "Its first conclusion: The first conclusion." in result.stdout


def test_every_setting_reaches_its_command_and_only_results_reach_the_settings_param(tmp_path, tiny_city):
    env, calls = fake_geoloc_env(tmp_path)
    config = small_config(tiny_city, tmp_path / "results", grid=[
        {**BLOCK, "precisions": ["amp"], "seeds": [7], "tag": "big", "training": {"image_size": 320, "lr": 0.002,
                                                                                   "trainable_blocks": 3}}],
        reference="resnet18-none-amp-s7-big", test_sets=["sf_xs", "tokyo_night"], device="cpu",
        evaluation={"batch_size": 5, "k": 25, "resize": [480, 640], "autocast": True},
        training={"num_workers": 3, "compile": True, "stop_margin_minutes": 4},
        image_cache={"copy_to": "$FAKE_SCRATCH/geoloc"},
        resources={"train": {"threads": 4}, "evaluate": {"threads": 3}})
    env["FAKE_SCRATCH"] = str(tmp_path / "node local")
    result = snakemake(tmp_path, str(tmp_path / "results" / "recalls.csv"), "--cores", "4",
                       "--configfile", str(write_yaml(tmp_path / "c.yaml", config)), env=env)
    assert result.returncode == 0, result.stderr
    called = {args[0]: args[1:] for args in recorded_calls(calls) if "--untrained" not in args}
    train = called["train"]
    expected = {"--run-name": "resnet18-none-amp-s7-big", "--backbone": "resnet18", "--pretraining": "none",
                "--tag": "big", "--precision": "amp", "--seed": "7", "--image-size": "320", "--lr": "0.002",
                "--trainable-blocks": "3", "--epochs": "3", "--iterations-per-epoch": "10000", "--loss": "cosface",
                "--positive-dist-threshold": "25", "--device": "cpu", "--num-workers": "3",
                "--stop-margin-seconds": "240", "--threads": "4",
                "--image-cache-copy-to": f"{tmp_path}/node local/geoloc"}
    assert {name: flag(train, name) for name in expected} == expected
    assert "--compile" in train and "--nproc" not in train
    evaluate = called["evaluate"]
    assert {name: flag(evaluate, name) for name in ("--batch-size", "--k", "--threads", "--device")} == {
        "--batch-size": "5", "--k": "25", "--threads": "3", "--device": "cpu"}
    assert flags(evaluate, "--resize") == ["480"] and evaluate[evaluate.index("--resize") + 2] == "640"
    assert "--autocast" in evaluate and "--image-size" not in evaluate and "--precision" not in evaluate
    assert sorted(flags(evaluate, "--test-set")) == [f"sf_xs={tiny_city}/sf_xs/test",
                                                    f"tokyo_night={tiny_city}/tokyo_night/test"]
    baseline = [args for args in calls_of(calls, "evaluate") if "--untrained" in args][0]
    assert {name: flag(baseline, name) for name in ("--backbone", "--pretraining", "--seed", "--fc-output-dim",
                                                    "--summary-out")} == {
        "--backbone": "resnet18", "--pretraining": "none", "--seed": "7", "--fc-output-dim": "512",
        "--summary-out": f"{tmp_path}/results/baselines/resnet18-none/baseline.json"}
    assert "--weights" not in baseline and "--model" not in baseline

    # The settings param, Snakemake's rerun trigger, holds what makes the model and nothing else.
    train_settings = next(p for p in snakemake_params(tmp_path, "train") if "--lr" in p)
    assert "--device" not in train_settings and "--num-workers" not in train_settings
    assert str(tiny_city) not in train_settings and "--threads" not in train_settings


@pytest.fixture(scope="module")
def every_rule_run(tmp_path_factory, tiny_city) -> list[list[str]]:
    """Every rule once with the fake geoloc: the synthetic city, a download, a run from scratch
    (fp32), a pretrained run (amp), a run on two GPUs, their baselines; the calls it recorded."""
    workdir = tmp_path_factory.mktemp("every-rule")
    source = workdir / "resnet18.pth"
    source.write_bytes(b"weights")
    write_yaml(workdir / "weights.yaml", {"resnet18": {"imagenet": {
        "url": source.as_uri(), "sha256": None, "size": None, "format": "torchvision"}}})
    config = small_config(workdir / "data", "results", synthetic={"enabled": True, "size": "tiny"},
                          weights={"registry": str(workdir / "weights.yaml"), "dir": "weights"},
                          grid=[BLOCK, {**BLOCK, "pretrainings": ["imagenet"], "precisions": ["amp"]},
                                {**BLOCK, "tag": "ddp", "training": {"gpus_per_run": 2}}],
                          training={"image_size": 32}, evaluation={"autocast": True},
                          resources={"train": {"threads": 3}, "evaluate": {"threads": 2},
                                     "cache_images": {"threads": 2}})
    env, calls = fake_geoloc_env(workdir, FAKE_GEOLOC_CITY=str(tiny_city))
    done = snakemake(workdir, "--cores", "4", "--configfile", str(write_yaml(workdir / "c.yaml", config)), env=env)
    assert done.returncode == 0, done.stderr
    return recorded_calls(calls)


def test_every_geoloc_command_gets_the_threads_of_its_rule(every_rule_run):
    """Contract C6: without --threads a command would take every CPU it may run on."""
    threads = sorted((args[0], args[args.index("--run-name") + 1] if "--run-name" in args else "",
                      flags(args, "--threads")) for args in every_rule_run)
    assert threads == sorted([
        ("synth", "", ["4"]), ("fetch-weights", "", ["1"]), ("cache-images", "", ["2"]),
        ("train", "resnet18-none-fp32-s0", ["3"]), ("train", "resnet18-imagenet-amp-s0", ["3"]),
        # 2 GPUs x 3 threads, within the 4 cores Snakemake has: --nproc 2 gives each process 2
        ("train", "resnet18-none-fp32-s0-ddp", ["4"]),
        *[("evaluate", "", ["2"])] * 5,  # three runs, two baselines
        ("aggregate", "", ["1"]), ("report", "", ["1"])])
    [ddp] = [args for args in every_rule_run if "resnet18-none-fp32-s0-ddp" in args and args[0] == "train"]
    assert ddp[-4:] == ["--threads", "4", "--nproc", "2"]


def test_evaluation_autocast_reaches_only_the_evaluations_of_runs_trained_with_amp(every_rule_run):
    autocast = {(flag(args, "--out-dir").split("/")[2], "--autocast" in args)
                for args in every_rule_run if args[0] == "evaluate"}
    assert autocast == {("resnet18-none-fp32-s0", False), ("resnet18-imagenet-amp-s0", True),
                        ("resnet18-none-fp32-s0-ddp", False), ("resnet18-none", False), ("resnet18-imagenet", False)}


def snakemake_params(workdir: Path, rule: str) -> list[str]:
    """The non-derived params Snakemake recorded for the jobs of `rule` (its rerun trigger)."""
    found = []
    for record in (workdir / ".snakemake" / "metadata").iterdir():
        data = json.loads(record.read_text())
        if data.get("rule") == rule:
            found += data.get("params") or []
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (what SLURM signals is every process of the job step)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_sigusr1_before_a_time_limit_reaches_training_and_not_snakemake(tmp_path, tiny_city):
    """As SLURM's --signal=USR1@... does, signal every process; only the trainer may act on it."""
    signals = tmp_path / "signals"
    signals.mkdir()
    env, _ = fake_geoloc_env(tmp_path, FAKE_GEOLOC_SIGNALS=str(signals))
    config = small_config(tiny_city, tmp_path / "results")
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(tmp_path),
               "--cores", "1", "--configfile", str(write_yaml(tmp_path / "c.yaml", config))]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 120
        while not (signals / "ready").exists():
            assert process.poll() is None and time.monotonic() < deadline, "training never started"
            time.sleep(0.1)
        for pid in [process.pid, *descendants(process.pid)]:
            os.kill(pid, signal.SIGUSR1)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert (signals / "checkpointed").read_text() == "yes"
    assert process.returncode == 1, stderr  # Snakemake reports the failed job; it was not killed by the signal
    assert "Error in rule train" in stderr
    assert not (tmp_path / "results" / "runs" / "resnet18-none-fp32-s0" / "model.pt").exists()


# ---------------------------------------------------------------- reruns follow results

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

    def plan(self, config: dict | None = None) -> dict[str, int]:
        """Job counts of a dry run with `config` (default: the one that ran)."""
        path = write_yaml(self.workdir / "plan.yaml", config or self.config)
        result = snakemake(self.workdir, "-n", "--configfile", str(path), env=self.env)
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
    write_yaml(workdir / "weights.yaml", {"resnet18": {"imagenet": {
        "url": source.as_uri(), "sha256": None, "size": None, "format": "torchvision"}}})
    config = {**RERUN_CONFIG, "datasets_root": str(workdir / "data"), "weights": {
        "registry": str(workdir / "weights.yaml"), "dir": "weights"}}
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
        "train": 1, "evaluate": 1, "aggregate": 1, **SHOWN}


def test_a_block_override_retrains_only_that_blocks_runs(finished_workflow):
    config = json.loads(json.dumps(finished_workflow.config))
    config["grid"][1]["training"]["lr"] = 2e-4
    assert finished_workflow.plan(config) == {
        "train": 1, "evaluate": 1, "aggregate": 1, **SHOWN}


def test_the_positive_threshold_retrains_every_run_and_re_evaluates_the_baselines(finished_workflow):
    # in-loop validation uses it, and its R@1 picks the model that is kept
    assert finished_workflow.changed("evaluation", "positive_dist_threshold", value=30) == {
        "train": 2, "evaluate": 2, "baseline": 2, "aggregate": 1, **SHOWN}


def test_an_evaluation_setting_re_evaluates_without_retraining(finished_workflow):
    assert finished_workflow.changed("evaluation", "k", value=25) == {
        "evaluate": 2, "baseline": 2, "aggregate": 1, **SHOWN}


def test_evaluation_autocast_re_evaluates_neither_fp32_runs_nor_baselines(finished_workflow):
    assert finished_workflow.changed("evaluation", "autocast", value=True) == SHOWN


def test_other_weights_retrain_the_pretrained_run_and_its_baseline(finished_workflow):
    weights = finished_workflow.workdir / "weights" / "resnet18-imagenet.pth"
    before = weights.read_bytes(), weights.stat()
    try:
        weights.write_bytes(b"other weights")
        assert finished_workflow.plan() == {
            "train": 1, "evaluate": 1, "baseline": 1, "aggregate": 1, "report": 1, "all": 1}
    finally:
        weights.write_bytes(before[0])
        os.utime(weights, ns=(before[1].st_atime_ns, before[1].st_mtime_ns))


@pytest.mark.parametrize("path, value", [(("evaluation", "num_workers"), 4), (("device",), "cpu")])
def test_a_runtime_knob_plans_no_gpu_job(finished_workflow, path, value):
    assert finished_workflow.changed(*path, value=value) == SHOWN


def test_every_other_runtime_knob_at_once_plans_no_gpu_job(finished_workflow):
    config = json.loads(json.dumps(finished_workflow.config))
    config["evaluation"]["batch_size"] = 7
    config["training"] |= {"num_workers": 2, "checkpoint_every": 3, "image_cache": False, "max_bad_steps": 4,
                           "max_bad_images": 5, "stop_margin_minutes": 20, "gpus_per_run": 2, "nodes_per_run": 2,
                           "compile": True}
    config["image_cache"] = {"dir": "elsewhere", "copy_to": "$TMPDIR/cache"}
    config["resources"] = {"max_runtime": 100, "gpu_model": "a100", "gpu_request": "gres", "requeues": 1,
                           "train": {"threads": 3, "mem_mb": 100, "runtime": 60, "slurm_extra": "--qos=high"},
                           "evaluate": {"threads": 2}, "cache_images": {"mem_mb": 10}}
    assert finished_workflow.plan(config) == SHOWN


def test_a_new_image_size_builds_its_cache_in_a_cpu_job_before_the_training(finished_workflow):
    config = json.loads(json.dumps(finished_workflow.config))
    config["grid"][1]["training"]["image_size"] = 48
    assert finished_workflow.plan(config) == {
        "cache_images": 1, "train": 1, "evaluate": 1, "aggregate": 1, **SHOWN}


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


# ---------------------------------------------------------------- the workflow as a module


def module_snakefile(workdir: Path, config_name: str) -> Path:
    """A project of a user's own that uses the workflow as a Snakemake module, as README.md says
    (Snakemake runs the onsuccess handler of the main Snakefile only: it calls the module's)."""
    snakefile = workdir / "Snakefile"
    snakefile.write_text(
        f'configfile: "{config_name}"\n\n\n'
        "module geoloc:\n"
        f'    snakefile: "{SNAKEFILE}"\n'
        "    config: config\n\n\n"
        "use rule * from geoloc\n\n\n"
        "onsuccess:\n"
        "    geoloc.onsuccess()\n", encoding="utf-8")
    return snakefile


def test_the_workflow_runs_as_a_module_from_another_folder_with_its_own_resources(tmp_path, tiny_city):
    env, calls = fake_geoloc_env(tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    config = small_config(tiny_city, "results", grid=[{**BLOCK, "pretrainings": ["imagenet"]}],
                          reference="resnet18-imagenet-fp32-s0", report={})
    write_yaml(project / "config.yaml", config)
    weights = project / "resources" / "weights" / "resnet18-imagenet.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")  # in place: not downloaded
    result = snakemake(project, "--cores", "1", env=env, snakefile=module_snakefile(project, "config.yaml"))
    assert result.returncode == 0, result.stderr
    called = {args[0]: args[1:] for args in recorded_calls(calls)}
    # defaults that name the workflow's own files resolve from its folder, not the working directory
    assert flag(called["report"], "--published") == str(REPO / "resources" / "published-results.csv")
    assert flag(called["report"], "--templates") == str(REPO / "workflow" / "report")
    assert flag(called["train"], "--weights-sha256") == yaml.safe_load(WEIGHTS_REGISTRY.read_text())[
        "resnet18"]["imagenet"]["sha256"]
    assert (project / "results" / "report.html").is_file()


# ---------------------------------------------------------------- the real package, end to end


@pytest.mark.slow
def test_tiny_city_end_to_end_as_a_module_then_a_deleted_model_retrains_only_its_run(tmp_path):
    config = {
        "datasets_root": "results/data",
        "synthetic": {"enabled": True, "size": "tiny", "seed": 0},
        "test_sets": ["sf_xs", "tokyo_night"],
        "device": "cpu",
        "training": {"epochs": 1, "iterations_per_epoch": 2, "batch_size": 4, "image_size": 32, "lr": 1e-3,
                     "alpha": 45, "N": 2, "L": 1, "min_images_per_class": 2, "num_workers": 0,
                     "checkpoint_every": 1},
        "evaluation": {"batch_size": 16, "num_workers": 0},
        "grid": [{"backbones": ["mobilenet_v3_small"], "pretrainings": ["none"], "precisions": ["fp32", "amp"],
                  "seeds": [0]}],
        "reference": "mobilenet_v3_small-none-fp32-s0",
        "report": {"published": None},
        "resources": {"train": {"threads": 2}, "evaluate": {"threads": 2}, "cache_images": {"threads": 2}},
    }
    write_yaml(tmp_path / "config.yaml", config)
    snakefile = module_snakefile(tmp_path, "config.yaml")
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    args = ["--cores", "2", "--resources", "gpu=1"]
    result = snakemake(tmp_path, *args, env=env, timeout=1200, snakefile=snakefile)
    assert result.returncode == 0, result.stderr[-5000:]

    results = tmp_path / "results"
    rows = (results / "recalls.csv").read_text().splitlines()
    header = rows[0].split(",")
    cells = [dict(zip(header, row.split(","))) for row in rows[1:]]
    runs = ("mobilenet_v3_small-none-fp32-s0", "mobilenet_v3_small-none-amp-s0", "mobilenet_v3_small-none-baseline")
    assert sorted((c["run"], c["test_set"]) for c in cells) == sorted(
        (run, test) for run in runs for test in ("sf_xs", "tokyo_night"))
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


# ---------------------------------------------------------------- software on compute nodes


def test_conda_env_pins_the_tested_versions_with_cuda_builds_of_pytorch_and_faiss():
    from importlib.metadata import version

    env = yaml.safe_load((REPO / "workflow" / "envs" / "geoloc.yaml").read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"]
    pins = dict(re.fullmatch(r"(\S+) =(\S+)(?: =(\S+))?", spec).group(1, 2) for spec in env["dependencies"]
                if spec not in ("pip",))
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
    assert (tmp_path / "pip-args").read_text().split() == ["-m", "pip", "install", "--no-deps", str(REPO)]
    del env["GEOLOC_SOURCE"]
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "GEOLOC_SOURCE is set by workflow/rules/common.smk" in done.stderr


def test_a_container_image_runs_every_job_with_apptainer(tmp_path):
    bin_dir = tmp_path / "bin"  # a stand-in apptainer: Snakemake only asks its version here
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text('#!/bin/sh\necho "apptainer version 1.3.4"\n')
    (bin_dir / "apptainer").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    config = small_config(dataset_layout(tmp_path / "datasets"), tmp_path / "results",
                          container="docker://ghcr.io/me/geoloc:0.1")
    plan = snakemake(tmp_path, "-n", "--sdm", "apptainer", "--configfile", str(write_yaml(tmp_path / "c.yaml", config)),
                     env=env)
    assert plan.returncode == 0, plan.stderr
    assert "Singularity image docker://ghcr.io/me/geoloc:0.1 will be pulled." in plan.stdout + plan.stderr
