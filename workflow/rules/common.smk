# Config validation, the run table, wildcard constraints, input functions and resources. Every
# job's command line comes from geoloc.jobs (JOBS), which quotes each value (shlex); paths the
# rules write themselves are quoted with {...:q}.
#
# Reruns follow results. Snakemake compares each job's non-derived params (functions of the
# wildcards only) with its last run, and the paths of its inputs; params computed from
# input/output/threads are "derived" and never compared. So each rule has a `settings` param,
# a function of the wildcards holding exactly the settings that change its result (the keys
# the schema marks `changes: model`, or `recalls` for evaluations), and a `runtime` param,
# derived on purpose (a function of input/output/threads), carrying paths and runtime knobs
# (device, loader workers, checkpoint interval, cache locations, batch size, threads): a new
# value of those reruns nothing.
import dataclasses
import os
import re
import signal
import sys
from functools import partial
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The workflow's own folder (this file's parent), also when it is used as a module.
WORKFLOW_DIR = Path(workflow.current_basedir).parent
REPO = WORKFLOW_DIR.parent
# The workflow and every job it starts (local, SLURM, in a container binding the repository, in
# a conda prefix shared with another checkout) import the workflow's own package first, never a
# stale installed copy.
SOURCE = str(REPO / "src")
sys.path.insert(0, SOURCE)
IMPORTED = [
    p
    for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if p not in ("", SOURCE)
]
os.environ.update(PYTHONPATH=os.pathsep.join([SOURCE, *IMPORTED]))

from geoloc import grid, jobs, locking
from geoloc.atomic import atomic_write_text
from geoloc.data.catalog import load_catalog
from geoloc.errors import GeolocError
from geoloc.jobs import ranks
from geoloc.model import backbones
from geoloc.model.aggregators import sizes as aggregator_sizes
from geoloc.model.weights import lookup
from geoloc.provenance.schema import pattern_problems
from geoloc.provenance.stamps import expected, write_stamps

# SLURM sends USR1 to every process of a job step shortly before its time limit. Snakemake
# would die of it, taking the job step down; ignored here (and, inherited, in the job's shell)
# it only reaches `geoloc train`, which installs its own handler: it writes a checkpoint and
# exits 3, and the job requeues itself (workflow/scripts/requeue-on-stop.sh).
signal.signal(signal.SIGUSR1, signal.SIG_IGN)

SCRIPTS = WORKFLOW_DIR / "scripts"
SCHEMA_FILE = WORKFLOW_DIR / "schemas" / "config.schema.yaml"
# workflow/envs/geoloc.post-deploy.sh installs the package from here: Snakemake runs a copy of
# that script from the conda prefix, which says nothing about where the workflow is.
os.environ.update(GEOLOC_SOURCE=str(REPO))
SCHEMA = yaml.safe_load(SCHEMA_FILE.read_text(encoding="utf-8"))


def workflow_file(path: str) -> str:
    """A relative path of the config: the working directory's file, else the workflow's own."""
    if Path(path).is_absolute() or Path(path).exists():
        return path
    return str(REPO / path)


def is_timm_model(name: str) -> bool:
    import timm  # slow to import: only grids naming a timm: backbone pay for it

    return timm.is_model(name)


def load_study(config: dict) -> tuple[grid.Study, dict]:
    """Validate the config (filling in defaults), read the dataset catalog and expand the grid;
    errors name the key."""
    try:
        validate(config, schema=str(SCHEMA_FILE))
    except WorkflowError as error:
        if not isinstance(error.__context__, jsonschema.ValidationError):
            raise
        raise WorkflowError(grid.describe_schema_error(error.__context__)) from None
    # jsonschema's re.search lets a trailing line break through; a pattern holds for the whole string.
    for problem in pattern_problems(config, SCHEMA, SCHEMA):
        raise WorkflowError(problem)
    try:
        catalog = load_catalog(REPO / "resources" / "datasets.yaml", config["datasets"])
        study = grid.plan_study(
            config,
            schema=SCHEMA,
            known_backbones=backbones.STUDY_BACKBONES,
            is_timm_model=is_timm_model,
            lookup_weights=partial(
                lookup, Path(workflow_file(config["weights"]["registry"]))
            ),
            blocks_of=backbones.block_count,
            input_size_problem=aggregator_sizes.input_size_problem,
            catalog=catalog,
        )
    except GeolocError as error:
        raise WorkflowError(str(error)) from None
    return study, catalog


STUDY, CATALOG = load_study(config)
WEIGHTS_REGISTRY = workflow_file(config["weights"]["registry"])
RUNS = STUDY.runs
BASELINES = STUDY.baselines
PUBLISHED_MODELS = config["published_models"]
TEST_SETS = config["test_sets"]
RESULTS = config["results"]
# Checked here: a mistyped path would otherwise go unnoticed while a report exists.
PUBLISHED_RESULTS = config["report"]["published"] and workflow_file(
    config["report"]["published"]
)
if PUBLISHED_RESULTS and not Path(PUBLISHED_RESULTS).is_file():
    raise WorkflowError(
        f"config key report.published: {config['report']['published']} is no file, here or in the "
        "workflow's folder; give the published results table (resources/published-results.csv) or null"
    )
# Every job's command line (geoloc.jobs); the rules pass its parts as params `settings` and `runtime`.
JOBS = jobs.Jobs(config, STUDY, registry=WEIGHTS_REGISTRY, catalog=CATALOG)


pathvars:
    results=RESULTS,
    logs="<results>/logs",
    benchmarks="<results>/benchmarks",
    datasets=config["datasets_root"],
    weights=config["weights"]["dir"],


def one_of(names) -> str:
    """A wildcard constraint matching exactly one of `names` (nothing when there are none)."""
    return "|".join(map(re.escape, names)) or "(?!)"


wildcard_constraints:
    run=one_of(RUNS),
    baseline=one_of(BASELINES),
    test_set=one_of(TEST_SETS),
    published=one_of(PUBLISHED_MODELS),
    size=r"\d+",
    backbone=one_of(sorted({w.slug for w in STUDY.weights.values()})),
    pretraining=one_of(sorted({w.pretraining for w in STUDY.weights.values()})),


# ---------------------------------------------------------------- inputs


def synthetic_datasets(wildcards) -> str | list:
    """The generated datasets, so that the city comes first (and another city retrains); nothing
    for real datasets, which are there before the workflow starts."""
    return "<datasets>" if config["synthetic"]["enabled"] else []


def datasets_root(wildcards) -> str:
    """The root in use: a params trigger of the local datasets rule only."""
    return config["datasets_root"]


def dataset_fields(names) -> dict:
    """Catalog entries as workflow/scripts/datasets.py takes them (a params trigger of rule datasets)."""
    return {name: dataclasses.asdict(CATALOG[name]) for name in sorted(names)}


def image_cache_marker(wildcards):
    """What a training waits for: the image cache of its size (see rule cache_images)."""
    size = RUNS[wildcards.run].training["image_size"]
    return ancient(f"<results>/markers/image-cache-{size}px")


def weights_of(table: dict, key: str):
    """The input function of a run's or baseline's pretrained weights; nothing for random init."""

    def weights(wildcards) -> str | list:
        weights_id = table[wildcards[key]].weights_id
        return [] if weights_id is None else f"<weights>/{weights_id}.pth"

    return weights


def published_results(wildcards) -> str | list:
    return [] if PUBLISHED_RESULTS is None else PUBLISHED_RESULTS


# ---------------------------------------------------------------- resources
# What each job asks of SLURM, from config `resources` (schema-validated); the site profile
# adds only the site's own settings. Resources that are None are not asked for.


def job_resources(rule: str) -> dict:
    return config["resources"][rule]


def resource_of(rule: str, key: str):
    """A resource of the jobs of `rule`: a training's block's own, else the config's; memory and
    time grow with each attempt (grid.job_resource)."""

    def value(wildcards, attempt):
        run = RUNS[wildcards.run] if rule == "train" else None
        return grid.job_resource(config["resources"], rule, key, run, attempt)

    return value


def gpus(wildcards) -> int | None:
    """GPUs of an evaluation or baseline job in `gpus` mode: one (the plugin's --gpus=[model:]N)."""
    return 1 if config["resources"]["gpu_request"] == "gpus" else None


def train_gpus(wildcards) -> int | None:
    """GPUs of a training job in `gpus` mode: one per process, on every node (--gpus is per job)."""
    if config["resources"]["gpu_request"] != "gpus":
        return None
    per_node, nodes = ranks(RUNS[wildcards.run])
    return per_node * nodes


def model_of_gpu(wildcards) -> str | None:
    """The GPU type a job asks for: its run's block's, else resources.gpu_model."""
    run = RUNS[wildcards.run] if "run" in wildcards.keys() else None
    return grid.job_resource(config["resources"], "train", "gpu_model", run)


def gpu_model(wildcards) -> str | None:
    if config["resources"]["gpu_request"] != "gpus":
        return None
    return model_of_gpu(wildcards)


def gres_of(wildcards, per_node: int) -> str | None:
    """--gres=gpu[:model]:N, per node, for sites that take GPUs only that way."""
    if config["resources"]["gpu_request"] != "gres":
        return None
    model = model_of_gpu(wildcards)
    return f"gpu:{model}:{per_node}" if model else f"gpu:{per_node}"


def gres(wildcards) -> str | None:
    """An evaluation or baseline job's one GPU as --gres."""
    return gres_of(wildcards, 1)


def train_gres(wildcards) -> str | None:
    """A training job's GPUs per node as --gres."""
    return gres_of(wildcards, ranks(RUNS[wildcards.run])[0])


def multi_rank(resource: str):
    """A resource only a run on several GPUs asks for: one SLURM task per GPU, which
    workflow/scripts/ranks.sh starts with srun (`mpi` keeps the plugin from wrapping the job
    in a one-task srun of its own)."""

    def value(wildcards):
        per_node, nodes = ranks(RUNS[wildcards.run])
        if per_node * nodes == 1:
            return None
        return {
            "tasks": per_node * nodes,
            "tasks_per_gpu": 1,
            "nodes": nodes,
            "mpi": "srun",
        }[resource]

    return value


def train_mem_mb(wildcards, attempt) -> int:
    """Memory per node: a training process's memory for each one on it."""
    per_process = resource_of("train", "mem_mb")(wildcards, attempt)
    return per_process * ranks(RUNS[wildcards.run])[0]


def train_threads(wildcards) -> int:
    """CPUs per node: a training process's threads for each one on it."""
    return resource_of("train", "threads")(wildcards, 1) * ranks(RUNS[wildcards.run])[0]


def train_slurm_extra(wildcards) -> str:
    # The workflow's own options come first and stay whatever the user adds: USR1 at the
    # stop margin (a second way in beside training's own clock), and a job that may be
    # requeued (requeue-on-stop.sh, node failures, preemption).
    margin = 60 * RUNS[wildcards.run].training["stop_margin_minutes"]
    own = f"--signal=USR1@{margin} --requeue"
    extra = job_resources("train")["slurm_extra"]
    return f"{own} {extra}" if extra else own


def slurm_extra_of(rule: str):
    def slurm_extra(wildcards) -> str | None:
        return job_resources(rule)["slurm_extra"] or None

    return slurm_extra


# ---------------------------------------------------------------- params
# Each rule's `settings` take the wildcards only (rerun triggers); `runtime` and `launch` take
# input, output or threads too, which makes them derived: never a reason to rerun.


def synth_settings(wildcards) -> str:
    return JOBS.synth_settings()


def test_set_fields(wildcards) -> dict:
    return dataset_fields(TEST_SETS)


def training_set_fields(wildcards) -> dict:
    return dataset_fields({run.training["dataset"] for run in RUNS.values()})


def fetch_runtime(wildcards, output) -> str:
    return JOBS.fetch_runtime(wildcards.backbone, wildcards.pretraining, output[0])


def cache_images_runtime(wildcards, threads) -> str:
    return JOBS.cache_images_runtime(int(wildcards.size), threads)


def train_settings(wildcards) -> str:
    return JOBS.train_settings(wildcards.run)


def train_runtime(wildcards, input, output, threads) -> str:
    return JOBS.train_runtime(wildcards.run, input.weights, output.model, threads)


def train_launch(wildcards, threads) -> str:
    return JOBS.train_launch(wildcards.run, SCRIPTS, threads)


def evaluate_settings(wildcards) -> str:
    return JOBS.evaluate_settings(wildcards.run)


def evaluate_runtime(wildcards, output, threads) -> str:
    return JOBS.evaluate_runtime(output.recalls, threads)


def baseline_settings(wildcards) -> str:
    return JOBS.baseline_settings(wildcards.baseline)


def baseline_runtime(wildcards, input, output, threads) -> str:
    return JOBS.baseline_runtime(
        wildcards.baseline, input.weights, output.summary, output.recalls, threads
    )


def fetch_published_runtime(wildcards, output) -> str:
    return JOBS.fetch_published_runtime(wildcards.published, output[0])


def published_settings(wildcards) -> str:
    return JOBS.published_settings(wildcards.published)


def published_runtime(wildcards, input, output, threads) -> str:
    return JOBS.published_runtime(input.weights, output.recalls, threads)


def aggregate_runtime(wildcards, input) -> str:
    return JOBS.aggregate_runtime([*input.train, *input.baselines])


def report_settings(wildcards) -> str:
    return JOBS.report_settings()


def report_runtime(wildcards, input, output) -> str:
    return JOBS.report_runtime(
        input.datasets, input.published, output.conclusions, WORKFLOW_DIR / "report"
    )


# ---------------------------------------------------------------- aggregate and report


def config_as_yaml(wildcards) -> str:
    """The config as validated, defaults filled in, for the report to show."""
    return yaml.safe_dump(config, sort_keys=False)


def print_conclusion() -> None:
    """Where the report is and its first conclusion, at the end of a successful run."""
    page = Path(RESULTS) / "report.html"
    conclusions = Path(RESULTS) / "conclusions.txt"
    if not (page.is_file() and conclusions.is_file()):
        return
    lines = conclusions.read_text(encoding="utf-8").splitlines()
    print(f"\nThe report: {page.resolve()}")
    if lines:
        print(f"Its first conclusion: {lines[0]}")


# ---------------------------------------------------------------- stamps
# Each training, evaluation and baseline, and the config the report shows, takes its stamp
# (geoloc.provenance.stamps) as input: a stamp rewritten because a setting or a dataset changed
# reruns its job, whatever the rerun triggers or Snakemake's metadata. The synthetic city is an
# input of those jobs already.
# A job's own Snakemake (on a SLURM node) reads the stamps the main process wrote.
if workflow.is_main_process:
    try:
        write_stamps(
            Path(RESULTS) / "stamps",
            {
                **JOBS.stamps(data=not config["synthetic"]["enabled"]),
                "effective_config/config": expected(config_as_yaml(None)),
            },
        )
    except GeolocError as error:
        raise WorkflowError(str(error)) from None


def hold_results_lock() -> None:
    """One Snakemake at a time writes a results folder, also from another clone or --directory
    (Snakemake's own lock covers one working directory); the kernel releases it when it ends.
    """
    if not workflow.is_main_process:
        return
    try:
        locking.hold(RESULTS, "results folder")
    except GeolocError as error:
        raise WorkflowError(str(error)) from None
