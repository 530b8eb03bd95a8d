"""The Snakemake workflow: config validation, the study's plan, quoting, signals, and real runs.

Most tests run Snakemake in a temporary working folder. Those that execute jobs put a fake
`geoloc` first on PATH that records its arguments and writes the outputs (fast, and it shows
exactly what reached the command); the end-to-end test runs the real package on the tiny city.
"""

import json
import os
import re
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
VENV_BIN = Path(sys.executable).parent
TEST_SETS = ("sf_xs", "tokyo_xs", "tokyo_night")

STUDY_RUNS = [
    "resnet18-imagenet-fp32-s0", "resnet18-places365-fp32-s0", "resnet18-gldv2-fp32-s0",
    "resnet18-imagenet-amp-s0", "efficientnet_b0-imagenet-amp-s0", "efficientnet_b1-imagenet-amp-s0",
    "efficientnet_b2-imagenet-amp-s0", "efficientnet_v2_s-imagenet-amp-s0", "mobilenet_v3_small-imagenet-amp-s0",
    "mobilenet_v3_large-imagenet-amp-s0", "convnext_tiny-imagenet-amp-s0", "swin_tiny-imagenet-amp-s0",
    "efficientnet_v2_s-imagenet-amp-s0-sphereface", "mobilenet_v3_large-imagenet-amp-s0-4ep",
]

# A fake `geoloc`: appends its arguments to $FAKE_GEOLOC_CALLS and writes each command's outputs.
# With $FAKE_GEOLOC_SIGNALS set, `train` waits for SIGUSR1 the way the real trainer handles it.
FAKE_GEOLOC = """\
#!{python}
import json, os, signal, sys, time
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["FAKE_GEOLOC_CALLS"], "a") as calls:
    calls.write(json.dumps(args) + "\\n")


def value(flag):
    return args[args.index(flag) + 1]


if args[0] == "train":
    signals = os.environ.get("FAKE_GEOLOC_SIGNALS")
    if signals:
        received = []
        signal.signal(signal.SIGUSR1, lambda *_: received.append(True))
        Path(signals, "ready").write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        Path(signals, "checkpointed").write_text("yes" if received else "no signal")
        sys.exit(3)
    out = Path(value("--out-dir"))
    (out / "model.pt").write_text("model")
    (out / "train.json").write_text("{{}}")
elif args[0] == "evaluate":
    Path(value("--out")).write_text("recalls")
    Path(value("--queries-out")).write_text("queries")
else:  # aggregate, report
    Path(value("--out")).write_text(args[0])
"""


# ---------------------------------------------------------------- helpers


def snakemake(workdir: Path, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir), *args]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The job-count table Snakemake prints ("Job stats:"), without the total."""
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE))
    counts.pop("total")
    return {name: int(count) for name, count in counts.items()}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def dataset_layout(root: Path, test_sets=TEST_SETS) -> Path:
    """The folders of the real datasets (empty: enough to plan, not to train)."""
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


def fake_geoloc_env(tmp_path: Path) -> tuple[dict, Path]:
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    script = bin_dir / "geoloc"
    script.write_text(FAKE_GEOLOC.format(python=sys.executable))
    script.chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_GEOLOC_CALLS": str(calls)}
    return env, calls


def recorded_calls(calls: Path) -> dict[str, list[str]]:
    """The arguments of each fake geoloc command (commands run once each here)."""
    return {args[0]: args[1:] for args in map(json.loads, calls.read_text().splitlines())}


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def schema_error(config: dict) -> str:
    """What the workflow says about `config` (common.smk wraps Snakemake's validate the same way)."""
    try:
        validate(config, schema=str(SCHEMA))
    except WorkflowError as error:
        assert isinstance(error.__context__, jsonschema.ValidationError)
        return grid.describe_schema_error(error.__context__)
    return ""


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


# ---------------------------------------------------------------- the configs as shipped


def load_validated(path: Path, **site) -> dict:
    config = {**yaml.safe_load(path.read_text()), **site}
    assert schema_error(config) == ""
    return config


def test_study_config_is_the_fourteen_runs_of_the_published_study():
    assert "datasets_root" not in yaml.safe_load(STUDY_CONFIG.read_text())  # the user sets it
    config = load_validated(STUDY_CONFIG, datasets_root="/datasets")
    runs = grid.expand_grid(config["grid"], config["training"])
    assert list(runs) == STUDY_RUNS
    assert config["reference"] == "resnet18-imagenet-fp32-s0"
    assert config["test_sets"] == list(TEST_SETS)
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


def test_shipped_weights_registry_covers_every_pretrained_study_run():
    if not WEIGHTS_REGISTRY.exists():
        pytest.skip("resources/weights.yaml is not written yet")
    from geoloc.model.network import BACKBONES
    from geoloc.model.weights import lookup

    config = load_validated(STUDY_CONFIG, datasets_root="/datasets")
    runs = grid.expand_grid(config["grid"], config["training"])
    files = grid.weights_files(runs.values(), lambda b, p: lookup(WEIGHTS_REGISTRY, b, p))
    assert len(files) == 11  # ResNet-18 x 3 pretrainings + 8 other backbones with ImageNet
    assert {f.format for name, f in files.items() if name.startswith("resnet18-")} == {
        "torchvision", "places365", "gldv2"}
    assert set(BACKBONES) == {run.backbone for run in runs.values()}


def test_demo_config_is_random_initialisation_of_three_backbones():
    config = load_validated(DEMO_CONFIG)
    runs = grid.expand_grid(config["grid"], config["training"])
    assert list(runs) == ["resnet18-none-fp32-s0", "resnet18-none-amp-s0", "mobilenet_v3_small-none-amp-s0",
                          "efficientnet_b0-none-amp-s0"]
    assert config["synthetic"]["enabled"] and config["results"] == "results/demo"
    assert config["datasets_root"].startswith("results/demo/")


def test_schema_fills_in_the_defaults():
    config = {"datasets_root": "/d", "grid": [{"backbones": ["resnet18"], "pretrainings": ["none"],
                                               "precisions": ["fp32"], "seeds": [0]}],
              "reference": "resnet18-none-fp32-s0"}
    assert schema_error(config) == ""
    assert config["results"] == "results"
    assert config["test_sets"] == list(TEST_SETS)
    assert config["training"]["iterations_per_epoch"] == 10000 and config["training"]["trainable_blocks"] is None
    assert config["evaluation"] == {"batch_size": 32, "num_workers": 8, "k": 20, "positive_dist_threshold": 25}
    assert config["weights"] == {"registry": "resources/weights.yaml", "dir": "resources/weights"}
    assert config["synthetic"] == {"enabled": False, "size": "demo", "seed": 0}
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
    ({"grid": [{**BLOCK, "training": {"lr": 0}}]}, "config key grid[0].training.lr: 0 is less than or equal"),
    ({"grid": [{**BLOCK, "tag": "x;touch PWNED"}]}, "config key grid[0].tag: 'x;touch PWNED' is not allowed: suffix"),
    ({"grid": [{**BLOCK, "backbones": ["ResNet-18"]}]}, "config key grid[0].backbones[0]: 'ResNet-18' is not allowed"),
    ({"results": "out/{run}"}, "config key results: 'out/{run}' is not allowed"),
    ({"datasets_root": None}, "config key datasets_root: None is not of type 'string'"),
])
def test_bad_config_values_are_named_by_key(change, message):
    config = {"datasets_root": "/d", "grid": [BLOCK], "reference": "resnet18-none-fp32-s0", **change}
    assert schema_error(config).startswith(message)


def test_missing_datasets_root_says_what_to_set():
    error = schema_error({"grid": [BLOCK], "reference": "resnet18-none-fp32-s0"})
    assert error.startswith("config key datasets_root is required: folder holding sf_xs/")


# ---------------------------------------------------------------- planning (dry runs)


def test_study_dry_run_on_slurm_plans_14_trainings_42_evaluations_and_the_downloads(tmp_path):
    if not WEIGHTS_REGISTRY.exists():
        pytest.skip("resources/weights.yaml is not written yet")
    override = write_yaml(tmp_path / "site.yaml", {
        "datasets_root": str(dataset_layout(tmp_path / "datasets")),
        "weights": {"registry": str(WEIGHTS_REGISTRY)},
        "report": {"published": str(REPO / "resources" / "published-results.csv")},
    })
    result = snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / "slurm"),
                       "--configfile", str(STUDY_CONFIG), str(override))
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout + result.stderr) == {
        "train": 14, "evaluate": 42, "fetch_weights": 11, "aggregate": 1, "effective_config": 1, "report": 1,
        "all": 1,
    }
    # what the SLURM executor gets for a training job
    output = result.stdout + result.stderr
    train_job = output[output.index("rule train:"):].split("\n\n", 1)[0]
    assert "gpu=1" in train_job and "runtime=480" in train_job and "slurm_extra=--signal=USR1@300" in train_job


@pytest.mark.parametrize("change, message", [
    ({"foo": 1}, "config: unknown key 'foo'"),
    ({"grid": [{**BLOCK, "backbones": ["resnet19"]}]}, "config key grid[0].backbones: unknown backbone 'resnet19'"),
    ({"grid": [{**BLOCK, "pretrainings": ["instagram"]}]}, "config key grid[0].pretrainings: "),
    ({"reference": "resnet18-imagenet-fp32-s0"}, "config key reference: 'resnet18-imagenet-fp32-s0' is not a run"),
    ({"grid": [{**BLOCK, "tag": "x;touch PWNED"}]}, "config key grid[0].tag: 'x;touch PWNED' is not allowed"),
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


def test_paths_with_shell_metacharacters_reach_every_command_intact(tmp_path):
    """Nothing in a config path is run by the shell: each arrives as one argument, unchanged."""
    env, calls = fake_geoloc_env(tmp_path)
    root = dataset_layout(tmp_path / "data $(touch PWNED) 'a' \"b\";touch PWNED")
    results = tmp_path / "out `touch PWNED` & $HOME"
    config = small_config(root, results)
    result = snakemake(tmp_path, "--cores", "1", "--configfile", str(write_yaml(tmp_path / "c.yaml", config)),
                       env=env)
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.rglob("PWNED")) and not (REPO / "PWNED").exists()

    run = "resnet18-none-fp32-s0"
    called = recorded_calls(calls)
    assert set(called) == {"train", "evaluate", "aggregate", "report"}
    assert flag(called["train"], "--train-dir") == f"{root}/sf_xs/train"
    assert flag(called["train"], "--val-dir") == f"{root}/sf_xs/val"
    assert flag(called["train"], "--out-dir") == f"{results}/runs/{run}"
    assert flag(called["train"], "--checkpoint-dir") == f"{results}/checkpoints/{run}"
    assert flag(called["train"], "--run-name") == run
    assert flag(called["train"], "--weights") == "none" and "--weights-format" not in called["train"]
    assert flag(called["evaluate"], "--test-dir") == f"{root}/sf_xs/test"
    assert flag(called["evaluate"], "--out") == f"{results}/runs/{run}/recalls/sf_xs.csv"
    assert called["aggregate"] == ["--out", f"{results}/recalls.csv", f"{results}/runs/{run}"]
    assert flag(called["report"], "--runs-dir") == f"{results}/runs"
    assert flag(called["report"], "--expected") == run
    assert (results / "report.html").read_text() == "report"
    assert yaml.safe_load((results / "config.yaml").read_text())["datasets_root"] == str(root)


def test_every_setting_of_a_run_reaches_its_training_command(tmp_path):
    env, calls = fake_geoloc_env(tmp_path)
    config = small_config(dataset_layout(tmp_path / "datasets"), tmp_path / "results", grid=[
        {**BLOCK, "precisions": ["amp"], "seeds": [7], "tag": "big", "training": {"image_size": 320, "lr": 0.002,
                                                                                   "trainable_blocks": 3}}],
        reference="resnet18-none-amp-s7-big", evaluation={"batch_size": 5, "k": 25})
    result = snakemake(tmp_path, str(tmp_path / "results" / "recalls.csv"), "--cores", "1",
                       "--configfile", str(write_yaml(tmp_path / "c.yaml", config)), env=env)
    assert result.returncode == 0, result.stderr
    called = recorded_calls(calls)
    expected = {"--run-name": "resnet18-none-amp-s7-big", "--backbone": "resnet18", "--pretraining": "none",
                "--tag": "big", "--precision": "amp", "--seed": "7", "--image-size": "320", "--lr": "0.002",
                "--trainable-blocks": "3", "--epochs": "3", "--iterations-per-epoch": "10000", "--loss": "cosface"}
    assert {name: flag(called["train"], name) for name in expected} == expected
    assert {name: flag(called["evaluate"], name) for name in ("--image-size", "--precision", "--batch-size", "--k")} \
        == {"--image-size": "320", "--precision": "amp", "--batch-size": "5", "--k": "25"}


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


def test_sigusr1_before_a_time_limit_reaches_training_and_not_snakemake(tmp_path):
    """As SLURM's --signal=USR1@300 does, signal every process; only the trainer may act on it."""
    env, _ = fake_geoloc_env(tmp_path)
    signals = tmp_path / "signals"
    signals.mkdir()
    env["FAKE_GEOLOC_SIGNALS"] = str(signals)
    config = small_config(dataset_layout(tmp_path / "datasets"), tmp_path / "results")
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


# ---------------------------------------------------------------- the real package, end to end


@pytest.mark.slow
def test_tiny_city_end_to_end_then_a_deleted_model_retrains_only_its_run(tmp_path):
    config = {
        "datasets_root": "results/data",
        "synthetic": {"enabled": True, "size": "tiny", "seed": 0},
        "test_sets": ["sf_xs", "tokyo_night"],
        "training": {"epochs": 1, "iterations_per_epoch": 2, "batch_size": 4, "image_size": 32, "lr": 1e-3,
                     "alpha": 45, "N": 2, "L": 1, "min_images_per_class": 2, "num_workers": 0,
                     "checkpoint_every": 1},
        "evaluation": {"batch_size": 16, "num_workers": 0},
        "grid": [{"backbones": ["mobilenet_v3_small"], "pretrainings": ["none"], "precisions": ["fp32", "amp"],
                  "seeds": [0]}],
        "reference": "mobilenet_v3_small-none-fp32-s0",
        "report": {"published": None},
    }
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    args = ["--cores", "2", "--resources", "gpu=1", "--configfile", str(write_yaml(tmp_path / "c.yaml", config))]
    result = snakemake(tmp_path, *args, env=env, timeout=1200)
    assert result.returncode == 0, result.stderr[-5000:]

    results = tmp_path / "results"
    rows = (results / "recalls.csv").read_text().splitlines()
    header = rows[0].split(",")
    cells = [dict(zip(header, row.split(","))) for row in rows[1:]]
    assert sorted((c["run"], c["test_set"]) for c in cells) == sorted(
        (run, test) for run in ("mobilenet_v3_small-none-fp32-s0", "mobilenet_v3_small-none-amp-s0")
        for test in ("sf_xs", "tokyo_night"))
    assert all(0 <= float(c[r]) <= 100 for c in cells for r in ("r1", "r5", "r10", "r20"))
    train = json.loads((results / "runs/mobilenet_v3_small-none-amp-s0/train.json").read_text())
    assert train["run"]["precision"] == "amp" and len(train["epochs"]) == 1
    assert "mobilenet_v3_small-none-amp-s0" in (results / "report.html").read_text()
    assert (results / "logs/train/mobilenet_v3_small-none-amp-s0.log").exists()
    assert (results / "benchmarks/evaluate/mobilenet_v3_small-none-amp-s0/sf_xs.tsv").exists()

    (results / "runs/mobilenet_v3_small-none-amp-s0/model.pt").unlink()
    plan = snakemake(tmp_path, "-n", *args, env=env)
    assert plan.returncode == 0, plan.stderr
    output = plan.stdout + plan.stderr
    assert job_counts(output) == {"train": 1, "evaluate": 2, "aggregate": 1, "report": 1, "all": 1}
    assert set(re.findall(r"wildcards: run=([^,\s]+)", output)) == {"mobilenet_v3_small-none-amp-s0"}
