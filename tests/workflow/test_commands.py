"""Jobs run with the fake `geoloc` (tests/fake_geoloc.py): what reaches each command, its threads,
its signals."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from support.workflow import (
    BLOCK,
    REPO,
    calls_of,
    calls_with_env,
    fake_geoloc_env,
    flag,
    flags,
    job_counts,
    recorded_calls,
    small_config,
    snakemake,
    snakemake_command,
    write_yaml,
)


def test_paths_with_shell_metacharacters_reach_every_command_intact(tmp_path, tiny_city):
    """Nothing in a config path is run by the shell: each arrives as one argument, unchanged."""
    env, calls = fake_geoloc_env(tmp_path)
    root = tmp_path / "data $(touch PWNED) 'a' \"b\";touch PWNED"
    shutil.copytree(tiny_city, root)
    results = tmp_path / "out `touch PWNED` & $HOME"
    config = small_config(root, results, image_cache={"dir": str(tmp_path / "cache ;touch PWNED")})
    result = snakemake(tmp_path, "--cores", "1", "--configfile", str(write_yaml(tmp_path / "c.yaml", config)), env=env)
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
    assert called["aggregate"] == [
        "--out",
        f"{results}/recalls.csv",
        f"{results}/runs/{run}",
        f"{results}/baselines/resnet18-none",
        "--threads",
        "1",
    ]
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
    config = small_config(
        tiny_city,
        tmp_path / "results",
        grid=[
            {
                **BLOCK,
                "precisions": ["amp"],
                "seeds": [7],
                "tag": "big",
                "training": {"image_size": 320, "lr": 0.002, "trainable_blocks": 3},
            }
        ],
        reference="resnet18-none-amp-s7-big",
        test_sets=["sf_xs", "tokyo_night"],
        device="cpu",
        evaluation={"batch_size": 5, "k": 25, "resize": [480, 640], "autocast": True},
        training={"num_workers": 3, "compile": True, "stop_margin_minutes": 4},
        image_cache={"copy_to": "$FAKE_SCRATCH/geoloc"},
        resources={"train": {"threads": 4}, "evaluate": {"threads": 3}},
    )
    env["FAKE_SCRATCH"] = str(tmp_path / "node local")
    result = snakemake(
        tmp_path,
        str(tmp_path / "results" / "recalls.csv"),
        "--cores",
        "4",
        "--configfile",
        str(write_yaml(tmp_path / "c.yaml", config)),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    called = {args[0]: args[1:] for args in recorded_calls(calls) if "--untrained" not in args}
    train = called["train"]
    expected = {
        "--run-name": "resnet18-none-amp-s7-big",
        "--backbone": "resnet18",
        "--pretraining": "none",
        "--tag": "big",
        "--precision": "amp",
        "--seed": "7",
        "--image-size": "320",
        "--lr": "0.002",
        "--trainable-blocks": "3",
        "--epochs": "3",
        "--iterations-per-epoch": "10000",
        "--loss": "cosface",
        "--positive-dist-threshold": "25",
        "--device": "cpu",
        "--num-workers": "3",
        "--stop-margin-seconds": "240",
        "--threads": "4",
        "--image-cache-copy-to": f"{tmp_path}/node local/geoloc",
    }
    assert {name: flag(train, name) for name in expected} == expected
    assert "--compile" in train and "--nproc" not in train
    evaluate = called["evaluate"]
    assert {name: flag(evaluate, name) for name in ("--batch-size", "--k", "--threads", "--device")} == {
        "--batch-size": "5",
        "--k": "25",
        "--threads": "3",
        "--device": "cpu",
    }
    assert flags(evaluate, "--resize") == ["480"] and evaluate[evaluate.index("--resize") + 2] == "640"
    assert "--autocast" in evaluate and "--image-size" not in evaluate and "--precision" not in evaluate
    assert sorted(flags(evaluate, "--test-set")) == [
        f"sf_xs={tiny_city}/sf_xs/test",
        f"tokyo_night={tiny_city}/tokyo_night/test",
    ]
    baseline = [args for args in calls_of(calls, "evaluate") if "--untrained" in args][0]
    assert {
        name: flag(baseline, name)
        for name in ("--backbone", "--pretraining", "--seed", "--fc-output-dim", "--summary-out")
    } == {
        "--backbone": "resnet18",
        "--pretraining": "none",
        "--seed": "7",
        "--fc-output-dim": "512",
        "--summary-out": f"{tmp_path}/results/baselines/resnet18-none/baseline.json",
    }
    assert "--weights" not in baseline and "--model" not in baseline

    # The settings param, Snakemake's rerun trigger, holds what makes the model and nothing else.
    train_settings = next(p for p in snakemake_params(tmp_path, "train") if "--lr" in p)
    assert "--device" not in train_settings and "--num-workers" not in train_settings
    assert str(tiny_city) not in train_settings and "--threads" not in train_settings


@pytest.fixture(scope="module")
def every_rule_run(tmp_path_factory, tiny_city) -> list[dict]:
    """Every rule once with the fake geoloc: the synthetic city, a download, a run from scratch
    (fp32), a pretrained run (amp), a run on two GPUs, their baselines; the calls it recorded."""
    workdir = tmp_path_factory.mktemp("every-rule")
    source = workdir / "resnet18.pth"
    source.write_bytes(b"weights")
    write_yaml(
        workdir / "weights.yaml",
        {"resnet18": {"imagenet": {"url": source.as_uri(), "sha256": None, "size": None, "format": "torchvision"}}},
    )
    config = small_config(
        workdir / "data",
        "results",
        synthetic={"enabled": True, "size": "tiny"},
        weights={"registry": str(workdir / "weights.yaml"), "dir": "weights"},
        grid=[
            BLOCK,
            {**BLOCK, "pretrainings": ["imagenet"], "precisions": ["amp"]},
            {**BLOCK, "tag": "ddp", "training": {"gpus_per_run": 2}},
        ],
        training={"image_size": 32},
        evaluation={"autocast": True},
        resources={"train": {"threads": 3}, "evaluate": {"threads": 2}, "cache_images": {"threads": 2}},
    )
    # an installed copy first on PYTHONPATH, as a shared conda prefix or a user's shell may have it
    env, calls = fake_geoloc_env(workdir, FAKE_GEOLOC_CITY=str(tiny_city), PYTHONPATH="/stale/site-packages")
    done = snakemake(workdir, "--cores", "4", "--configfile", str(write_yaml(workdir / "c.yaml", config)), env=env)
    assert done.returncode == 0, done.stderr
    return calls_with_env(calls)


def jobs_args(calls: list[dict]) -> list[list[str]]:
    return [call["args"] for call in calls]


def test_every_job_imports_the_workflows_own_package_first(every_rule_run):
    assert {call["env"]["PYTHONPATH"] for call in every_rule_run} == {f"{REPO / 'src'}{os.pathsep}/stale/site-packages"}


def test_every_geoloc_command_gets_the_threads_of_its_rule(every_rule_run):
    """Contract C6: without --threads a command would take every CPU it may run on."""
    threads = sorted(
        (args[0], args[args.index("--run-name") + 1] if "--run-name" in args else "", flags(args, "--threads"))
        for args in jobs_args(every_rule_run)
    )
    assert threads == sorted(
        [
            ("synth", "", ["4"]),
            ("fetch-weights", "", ["1"]),
            ("cache-images", "", ["2"]),
            ("train", "resnet18-none-fp32-s0", ["3"]),
            ("train", "resnet18-imagenet-amp-s0", ["3"]),
            # 2 GPUs x 3 threads, within the 4 cores Snakemake has: --nproc 2 gives each process 2
            ("train", "resnet18-none-fp32-s0-ddp", ["4"]),
            *[("evaluate", "", ["2"])] * 5,  # three runs, two baselines
            ("aggregate", "", ["1"]),
            ("report", "", ["1"]),
        ]
    )
    [ddp] = [args for args in jobs_args(every_rule_run) if "resnet18-none-fp32-s0-ddp" in args and args[0] == "train"]
    assert ddp[-4:] == ["--threads", "4", "--nproc", "2"]


def test_evaluation_autocast_reaches_only_the_evaluations_of_runs_trained_with_amp(every_rule_run):
    autocast = {
        (flag(args, "--out-dir").split("/")[2], "--autocast" in args)
        for args in jobs_args(every_rule_run)
        if args[0] == "evaluate"
    }
    assert autocast == {
        ("resnet18-none-fp32-s0", False),
        ("resnet18-imagenet-amp-s0", True),
        ("resnet18-none-fp32-s0-ddp", False),
        ("resnet18-none", False),
        ("resnet18-imagenet", False),
    }


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
    command = snakemake_command(tmp_path, "--cores", "1", "--configfile", str(write_yaml(tmp_path / "c.yaml", config)))
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
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


def test_a_second_snakemake_on_the_same_results_folder_stops_with_one_line_naming_the_first(tmp_path, tiny_city):
    """Two clones (two working directories) on one `results:` folder: the second stops at once."""
    signals = tmp_path / "signals"
    signals.mkdir()
    env, _ = fake_geoloc_env(tmp_path, FAKE_GEOLOC_SIGNALS=str(signals))
    config = write_yaml(tmp_path / "c.yaml", small_config(tiny_city, tmp_path / "results"))
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir(), second_dir.mkdir()
    first = subprocess.Popen(
        snakemake_command(first_dir, "--cores", "1", "--configfile", str(config)),
        cwd=first_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (signals / "ready").exists():  # the first one trains (the fake waits for USR1)
            assert first.poll() is None and time.monotonic() < deadline, "training never started"
            time.sleep(0.1)
        second = snakemake(second_dir, "--cores", "1", "--configfile", str(config), env=env)
    finally:
        first.kill()
        first.communicate()
    assert second.returncode != 0
    assert f"results folder {tmp_path / 'results'} is in use by process {first.pid}" in second.stdout + second.stderr


def test_published_models_are_fetched_and_evaluated_on_every_test_set_and_aggregated_apart(tmp_path, tiny_city):
    config = small_config(
        tmp_path / "data",
        "results",
        synthetic={"enabled": True, "size": "tiny"},
        test_sets=["sf_xs", "tokyo_night"],
        published_models=["cosplace-resnet50-2048"],
    )
    env, calls = fake_geoloc_env(tmp_path, FAKE_GEOLOC_CITY=str(tiny_city))
    path = str(write_yaml(tmp_path / "c.yaml", config))
    planned = snakemake(tmp_path, "-n", "--configfile", path, env=env)
    assert planned.returncode == 0, planned.stderr
    counts = job_counts(planned.stdout + planned.stderr)
    assert (counts["fetch_published"], counts["published"], counts["evaluate"], counts["baseline"]) == (1, 1, 1, 1)
    done = snakemake(tmp_path, "--cores", "2", "--configfile", path, env=env)
    assert done.returncode == 0, done.stderr
    [fetched] = [args for args in calls_of(calls, "fetch-weights") if "--published" in args]
    assert flag(fetched, "--published") == "cosplace-resnet50-2048"
    [evaluated] = [args for args in calls_of(calls, "evaluate") if "--published" in args]
    assert flag(evaluated, "--published") == "cosplace-resnet50-2048"
    assert flag(evaluated, "--weights") == flag(fetched, "--out")
    assert [test_set.split("=")[0] for test_set in flags(evaluated, "--test-set")] == ["sf_xs", "tokyo_night"]
    assert flag(evaluated, "--out-dir") == "results/published/cosplace-resnet50-2048/recalls"
    [aggregated] = calls_of(calls, "aggregate")
    assert "results/published/cosplace-resnet50-2048" in aggregated
    assert job_counts(snakemake(tmp_path, "-n", "--configfile", path, env=env).stdout) == {}
