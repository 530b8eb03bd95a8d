"""What a cluster site relies on (docs/cluster.md): the locked venv, the profile template, the
Apptainer definition, ranks.sh inside a container, the controller job and the training log kept
across requeues. SLURM commands are stand-ins here (the real cluster: tests/slurm/test_slurm*.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from support.workflow import dataset_layout

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "venv.txt"
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
CONTROLLER = REPO / "profiles" / "slurm" / "controller.sbatch"
DEFINITION = REPO / "containers" / "geoloc.def"
RANKS = REPO / "workflow" / "scripts" / "ranks.sh"
SNAKEFILE = REPO / "workflow" / "Snakefile"
FAKE_GEOLOC = Path(__file__).resolve().parent / "fake_geoloc.py"
RUN = "resnet18-none-fp32-s0"


def stand_ins(folder: Path, **scripts: str) -> dict[str, str]:
    """An environment whose PATH finds these shell scripts first, by name."""
    folder.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (folder / name).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def locked() -> dict[str, tuple[str, list[str]]]:
    """requirements/venv.txt as {name: (version, hashes)}."""
    pins = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text()):
        if match := re.match(r"([A-Za-z0-9._-]+)==(\S+)", entry):
            pins[canonicalize_name(match[1])] = (match[2], re.findall(r"--hash=sha256:([0-9a-f]{64})", entry))
    return pins


# ---------------------------------------------------------------- the locked venv


def test_the_lock_pins_every_requirement_with_hashes_and_is_what_the_suite_runs():
    pins = locked()
    assert len(pins) > 100 and all(hashes for _, hashes in pins.values())
    assert pins["torch"][0] == "2.14.1" and pins["torchvision"][0] == "0.29.1"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [
        *project["dependencies"],
        *extras["workflow"],
        *extras["dev"],
        *(
            line
            for line in (REPO / "requirements" / "venv.in").read_text().splitlines()
            if line and not line.startswith("#")
        ),
    ]
    for spec in map(Requirement, wanted):
        name = canonicalize_name(spec.name)
        assert name in pins, f"{spec} is not in {LOCK.name}: make lock"
        assert spec.specifier.contains(pins[name][0], prereleases=True), f"{spec} but the lock pins {pins[name][0]}"
    # the venv running this suite is the lock's (make installs it with --require-hashes)
    installed = {}
    for name in pins:
        try:
            installed[name] = version(name)
        except PackageNotFoundError:
            installed[name] = None
    assert {name: v for name, v in installed.items() if (v or "").split("+")[0] != pins[name][0]} == {}


def test_make_installs_the_lock_with_hashes_then_geoloc_alone_editable(tmp_path):
    plan = subprocess.run(
        ["make", "-n", "-B", "VENV=" + str(tmp_path / "venv"), str(tmp_path / "venv/.installed")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert plan.returncode == 0, plan.stderr
    pips = [line.split("pip install", 1)[1].split() for line in plan.stdout.splitlines() if "pip install" in line]
    assert pips == [
        ["--quiet", "--require-hashes", "-r", "requirements/venv.txt"],
        ["--quiet", "--no-deps", "--no-build-isolation", "-e", "."],
    ]


# ---------------------------------------------------------------- the profile template


def site_profile(tmp_path: Path) -> Path:
    """profiles/slurm with every commented site setting filled in, as a site admin would."""
    text = re.sub(r"^# ?(?=[a-z-]+:|  )", "", PROFILE.read_text(), flags=re.MULTILINE)
    text = text.replace("/scratch/me/datasets", str(tmp_path / "datasets"))
    text = text.replace("/scratch/me/geoloc-results", str(tmp_path / "results"))
    folder = tmp_path / "mysite"
    folder.mkdir()
    (folder / "config.yaml").write_text(text)
    return folder


def job_resources(plan: str, rule: str) -> dict[str, str]:
    block = plan.split(f"\nrule {rule}:", 1)[1].split("\n\n", 1)[0]
    line = re.search(r"^\s+resources: (.*)$", block, flags=re.MULTILINE)[1]
    return dict(re.findall(r"(\w+)=((?:[^,]|, (?!\w+=))*)", line))


def test_the_template_filled_in_sends_each_rule_to_its_partition_qos_and_constraint(tmp_path):
    dataset_layout(tmp_path / "datasets")
    env = stand_ins(tmp_path / "bin", apptainer='echo "apptainer version 1.3.4"')
    plan = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(SNAKEFILE),
            "--directory",
            str(tmp_path),
            "--profile",
            str(site_profile(tmp_path)),
            "--configfile",
            str(REPO / "config" / "config.yaml"),
            "-n",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    train, cache = job_resources(plan.stdout, "train"), job_resources(plan.stdout, "cache_images")
    evaluate = job_resources(plan.stdout, "evaluate")
    assert {k: train[k] for k in ("slurm_partition", "slurm_account", "qos", "constraint", "gres", "mem_mb")} == {
        "slurm_partition": "gpu",
        "slurm_account": "my_account",
        "qos": "long",
        "constraint": "a100|h100",
        "gres": "gpu:a100:1",
        "mem_mb": "48000",
    }  # the config entry merged into config.yaml's resources
    assert (cache["slurm_partition"], "gpu" in cache) == ("cpu", False)
    assert (evaluate["slurm_partition"], "qos" in evaluate) == ("gpu", False)
    # the training keeps the workflow's own signal and requeue beside the plugin's qos
    assert train["slurm_extra"] == "--signal=USR1@600 --requeue"


def test_slurm_logs_go_under_the_results_folder():
    profile = yaml.safe_load(PROFILE.read_text())
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert profile["slurm-logdir"] == f"{schema['properties']['results']['default']}/logs/slurm"
    example = re.search(r"results=(\S+) +# then: slurm-logdir: (\S+)", PROFILE.read_text())
    assert example[2] == f"{example[1]}/logs/slurm"


# ---------------------------------------------------------------- the container


def sections(definition: str) -> dict[str, list[str]]:
    parts: dict[str, list[str]] = {"header": []}
    current = "header"
    for line in definition.splitlines():
        if line.startswith("%"):
            current = line.split()[0][1:]
            parts[current] = []
        elif line.strip() and not line.lstrip().startswith("#"):
            parts[current].append(line.strip())
    return parts


def test_the_apptainer_definition_installs_the_lock_with_hashes_and_geoloc():
    """Apptainer is not in Debian: the image itself is a manual check at each site (docs/cluster.md)."""
    parts = sections(DEFINITION.read_text())
    header = dict(line.split(":", 1) for line in parts["header"])
    assert header["Bootstrap"].strip() == "docker" and "python:3.11" in header["From"]
    copied = dict(line.split() for line in parts["files"])
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # everything building geoloc needs is copied, and exists here (the build runs from the repository root)
    for source in ("requirements/venv.txt", "pyproject.toml", "src", pyproject["readme"], "LICENSE"):
        assert source in copied and (REPO / source).exists(), source
    post = " ".join(parts["post"])
    assert f"--require-hashes -r {copied['requirements/venv.txt']}" in post
    assert re.search(rf"pip install [^;]*--no-deps [^;]*{copied['pyproject.toml'].rsplit('/', 1)[0]}\b", post)
    assert "geoloc --help" in " ".join(parts["test"])
    assert "PATH=/opt/venv/bin" in " ".join(parts["environment"])


def test_ranks_inside_a_container_start_every_task_in_the_same_image_with_the_gpus(tmp_path):
    env = stand_ins(tmp_path / "bin", srun='printf "%s\\n" "$@" > "$SRUN_ARGS"')
    env.update(SLURM_JOB_ID="7", SRUN_ARGS=str(tmp_path / "srun"), APPTAINER_CONTAINER="/images/geoloc.sif")

    def task(**variables) -> list[str]:
        done = subprocess.run(
            ["bash", str(RANKS), "2", "1", "4", "geoloc", "train", "--epochs", "1"],
            env={**env, **variables},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        return (tmp_path / "srun").read_text().split("\n")[5:-1]  # after srun's own options

    assert task() == [
        "apptainer",
        "exec",
        "--nv",
        "/images/geoloc.sif",
        "geoloc",
        "train",
        "--epochs",
        "1",
        "--threads",
        "4",
    ]
    assert task(GEOLOC_APPTAINER_ARGS="--nv --bind /scratch")[:5] == ["apptainer", "exec", "--nv", "--bind", "/scratch"]
    assert task(APPTAINER_CONTAINER="")[:2] == ["geoloc", "train"]


# ---------------------------------------------------------------- the controller job


def controller(tmp_path: Path, snakemake_exit: str = "", **variables: str) -> subprocess.Popen:
    """controller.sbatch as SLURM would run it, with stand-in sbatch, scontrol, squeue and snakemake."""
    env = stand_ins(
        tmp_path / "bin",
        sbatch='echo "$*" >> "$RECORD/sbatch"; echo "Submitted batch job 43"',
        scontrol=f'echo "JobId=42 JobName=geoloc-controller"; echo "   Command={CONTROLLER}"',
        squeue='echo "3-00:00:00"',
        snakemake=f'echo "$*" >> "$RECORD/snakemake"\n[[ " $* " == *" --unlock "* ]] && exit 0\n'
        f"trap 'echo interrupted >> \"$RECORD/snakemake\"; exit 130' INT\n"
        f'{snakemake_exit}\ntouch "$RECORD/started"\nwhile true; do sleep 0.1; done',
    )
    env.update(
        RECORD=str(tmp_path),
        SLURM_JOB_ID="42",
        SLURM_SUBMIT_DIR=str(tmp_path),
        SLURM_JOB_PARTITION="cpu",
        SLURM_JOB_ACCOUNT="lab",
        **variables,
    )
    env.pop("SLURM_JOB_QOS", None)
    return subprocess.Popen(
        ["bash", str(CONTROLLER), "--keep-going", "-R", "report"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def signalled_at_time_limit(tmp_path: Path, running: subprocess.Popen) -> int:
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline and running.poll() is None, running.communicate()
        time.sleep(0.05)
    running.send_signal(signal.SIGUSR1)  # SLURM's --signal=B:USR1@900
    return running.wait(timeout=30)


def test_the_controller_runs_snakemake_with_its_profile_and_resubmits_itself_before_its_time_limit(tmp_path):
    assert signalled_at_time_limit(tmp_path, controller(tmp_path)) == 3
    profile = CONTROLLER.parent
    assert (tmp_path / "snakemake").read_text().splitlines() == [
        f"--profile {profile} --keep-going -R report",
        "interrupted",
    ]  # Ctrl-C: the plugin cancels its jobs
    assert (tmp_path / "sbatch").read_text().split() == [
        "--dependency=afterany:42",
        "--time=3-00:00:00",
        "--export=ALL,GEOLOC_CONTROLLER_ROUND=2",
        "--partition=cpu",
        "--account=lab",
        str(CONTROLLER),
        "--keep-going",
        "-R",
        "report",
    ]


def test_a_successor_unlocks_first_and_the_last_round_submits_none(tmp_path):
    running = controller(tmp_path, GEOLOC_CONTROLLER_ROUND="20")
    assert signalled_at_time_limit(tmp_path, running) == 3
    assert "round 20 of 20" in running.stderr.read()
    assert not (tmp_path / "sbatch").exists()
    assert (tmp_path / "snakemake").read_text().splitlines()[0] == (
        f"--profile {CONTROLLER.parent} --unlock --keep-going -R report"
    )


def test_a_controller_whose_snakemake_ends_by_itself_ends_with_its_exit_code_and_submits_nothing(tmp_path):
    assert controller(tmp_path, snakemake_exit="exit 1").wait(timeout=30) == 1
    assert not (tmp_path / "sbatch").exists()


# ---------------------------------------------------------------- the training log


def test_every_segment_of_a_training_stays_in_its_segments_log(tmp_path):
    """A training stopped at its time limit (exit 3) resumes when run again, as after a requeue;
    Snakemake deletes the rule's log at every start."""
    datasets = dataset_layout(tmp_path / "datasets", test_sets=("sf_xs",))
    config = {
        "datasets_root": str(datasets),
        "results": str(tmp_path / "results"),
        "test_sets": ["sf_xs"],
        "grid": [{"backbones": ["resnet18"], "pretrainings": ["none"], "precisions": ["fp32"], "seeds": [0]}],
        "reference": RUN,
        "report": {"published": None},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = stand_ins(tmp_path / "bin", geoloc=f'exec {sys.executable} {FAKE_GEOLOC} "$@"')
    env.update(FAKE_GEOLOC_CALLS=str(tmp_path / "calls.jsonl"), FAKE_GEOLOC_TRAIN_EXIT=f'{{"{RUN}": 3}}')
    command = [
        sys.executable,
        "-m",
        "snakemake",
        str(tmp_path / "results" / "runs" / RUN / "model.pt"),
        "--snakefile",
        str(SNAKEFILE),
        "--directory",
        str(tmp_path),
        "--cores",
        "1",
        "--configfile",
        str(tmp_path / "config.yaml"),
    ]
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert (first.returncode, second.returncode) == (1, 0), second.stderr[-3000:]
    log = tmp_path / "results" / "logs" / "train" / f"{RUN}.log"
    lines = Path(f"{log}.segments").read_text().splitlines()
    assert [re.sub(r"segment: \S+ on \S+,", "segment: TIME on HOST,", line) for line in lines] == [
        "=== geoloc train segment: TIME on HOST, SLURM job none ===",
        "geoloc train: error: exit 3 as asked",
        "=== geoloc train segment: TIME on HOST, SLURM job none ===",
    ]
    assert log.read_text() == ""  # the last segment's own output: the resumed fake training prints nothing
