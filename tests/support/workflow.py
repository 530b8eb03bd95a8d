"""Running the workflow in tests: Snakemake in a subprocess, configs, and the fake `geoloc`.

The fake (tests/fake_geoloc.py) records each call in a JSON-lines file; the readers below give
back its arguments (and the SLURM variables it saw).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "workflow" / "Snakefile"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
STUDY_CONFIG = REPO / "config" / "config.yaml"
DEMO_CONFIG = REPO / "config" / "demo.yaml"
WEIGHTS_REGISTRY = REPO / "resources" / "weights.yaml"
FAKE_GEOLOC = Path(__file__).resolve().parents[1] / "fake_geoloc.py"
VENV_BIN = Path(sys.executable).parent
TEST_SETS = ("sf_xs", "tokyo_xs", "tokyo_night")
BLOCK = {"backbones": ["resnet18"], "pretrainings": ["none"], "precisions": ["fp32"], "seeds": [0]}


def snakemake_command(workdir: Path, *args: str, snakefile: Path | None = SNAKEFILE) -> list[str]:
    """Snakemake on `workdir` (no --snakefile when `snakefile` is None: workdir's own)."""
    site = ["--snakefile", str(snakefile)] if snakefile is not None else []
    return [sys.executable, "-m", "snakemake", *site, "--directory", str(workdir), *args]


def snakemake(
    workdir: Path,
    *args: str,
    env: dict | None = None,
    timeout: int = 300,
    snakefile: Path | None = SNAKEFILE,
    merge_output: bool = False,
) -> subprocess.CompletedProcess:
    """Run Snakemake to its end; `merge_output` puts stderr into stdout (one log, in order)."""
    stderr = subprocess.STDOUT if merge_output else subprocess.PIPE
    return subprocess.run(
        snakemake_command(workdir, *args, snakefile=snakefile),
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        timeout=timeout,
    )


def venv_env(**variables: str) -> dict[str, str]:
    """This environment with the virtualenv's bin first on PATH (jobs find the real `geoloc`)."""
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **variables}


def fake_geoloc_env(folder: Path, **variables: str) -> tuple[dict, Path]:
    """An environment whose `geoloc` is tests/fake_geoloc.py, and the file its calls go to."""
    bin_dir = folder / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "geoloc"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE_GEOLOC} "$@"\n')
    script.chmod(0o755)
    calls = folder / "calls.jsonl"
    env = venv_env(FAKE_GEOLOC_CALLS=str(calls), **variables)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env, calls


def calls_with_env(calls: Path) -> list[dict]:
    """Every call the fake recorded: {"args": [command, ...], "env": {SLURM_* variables, PYTHONPATH}}."""
    return [json.loads(line) for line in calls.read_text().splitlines()]


def recorded_calls(calls: Path) -> list[list[str]]:
    return [call["args"] for call in calls_with_env(calls)]


def calls_of(calls: Path, command: str) -> list[list[str]]:
    """The arguments after `command` of each of its calls."""
    return [args[1:] for args in recorded_calls(calls) if args[0] == command]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def flags(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == name]


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def dataset_layout(root: Path, test_sets=TEST_SETS) -> Path:
    """The folders of the real datasets, each with one empty image file: enough to plan (planning
    counts the images of every test set), not to run."""
    folders = [
        "sf_xs/train",
        *(
            f"{name}/{part}"
            for name in ("sf_xs/val", *(f"{t}/test" for t in test_sets))
            for part in ("database", "queries")
        ),
    ]
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "@0@0@10@S@0@0@@@0@@@@@@.jpg").write_bytes(b"")
    return root


def small_config(datasets_root: Path, results: Path, **overrides) -> dict:
    """One run, one test set, real datasets layout (no synthetic city)."""
    return {
        "datasets_root": str(datasets_root),
        "results": str(results),
        "test_sets": ["sf_xs"],
        "grid": [BLOCK],
        "reference": "resnet18-none-fp32-s0",
        "report": {"published": None},
        **overrides,
    }


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
    return [
        block.split("\n\n", 1)[0]
        for block in re.split(r"^\[.*\]\n", output, flags=re.MULTILINE)
        if re.match(rf"(local)?rule {rule}:", block)
    ]


def job_resources(block: str) -> dict[str, str]:
    line = re.search(r"^\s+resources: (.*)$", block, flags=re.MULTILINE).group(1)
    return dict(item.split("=", 1) for item in re.split(r", (?=\w+=)", line))


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def schema_error(config: dict) -> str:
    """What the schema says about `config` (common.smk wraps Snakemake's validate the same way)."""
    import jsonschema
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    from geoloc import grid

    try:
        validate(config, schema=str(SCHEMA))
    except WorkflowError as error:
        assert isinstance(error.__context__, jsonschema.ValidationError)
        return grid.describe_schema_error(error.__context__)
    return ""


def module_snakefile(workdir: Path, config_name: str) -> Path:
    """A project of a user's own that uses the workflow as a Snakemake module, as docs/configuration.md says
    (Snakemake runs the onsuccess handler of the main Snakefile only: it calls the module's)."""
    snakefile = workdir / "Snakefile"
    snakefile.write_text(
        f'configfile: "{config_name}"\n\n\n'
        "module geoloc:\n"
        f'    snakefile: "{SNAKEFILE}"\n'
        "    config: config\n\n\n"
        "use rule * from geoloc\n\n\n"
        "onsuccess:\n"
        "    geoloc.onsuccess()\n",
        encoding="utf-8",
    )
    return snakefile
