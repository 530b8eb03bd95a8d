# Config validation, the run table, wildcard constraints, and the helpers the rules call.
# Every value that reaches a shell command is quoted here (shlex) or with {...:q} in the rule.
#
# Reruns follow results. Snakemake compares each job's non-derived params (functions of the
# wildcards only) with its last run, and the paths of its inputs; params computed from
# input/output/threads are "derived" and never compared. So each rule has a `settings` param,
# a function of the wildcards holding exactly the settings that change its result (the keys
# the schema marks `changes: model`, or `recalls` for evaluations), and a `runtime` param,
# derived on purpose, carrying paths and runtime knobs (device, loader workers, checkpoint
# interval, cache locations, batch size, threads): a new value of those reruns nothing.
import os
import re
import shlex
import signal
from functools import partial
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from geoloc import grid
from geoloc.atomic import atomic_write_text
from geoloc.errors import GeolocError
from geoloc.model import backbones
from geoloc.model.weights import lookup

# SLURM sends USR1 to every process of a job step shortly before its time limit. Snakemake
# would die of it, taking the job step down; ignored here (and, inherited, in the job's shell)
# it only reaches `geoloc train`, which installs its own handler: it writes a checkpoint and
# exits 3, and the job requeues itself (workflow/scripts/requeue-on-stop.sh).
signal.signal(signal.SIGUSR1, signal.SIG_IGN)

# The workflow's own folder (this file's parent), also when it is used as a module.
WORKFLOW_DIR = Path(workflow.current_basedir).parent
REPO = WORKFLOW_DIR.parent
SCRIPTS = WORKFLOW_DIR / "scripts"
SCHEMA_FILE = WORKFLOW_DIR / "schemas" / "config.schema.yaml"
# workflow/envs/geoloc.post-deploy.sh installs the package from here: Snakemake runs a copy of
# that script from the conda prefix, which says nothing about where the workflow is.
os.environ.update(GEOLOC_SOURCE=str(REPO))
SCHEMA = yaml.safe_load(SCHEMA_FILE.read_text(encoding="utf-8"))
# The training settings that change a run's model, from the schema (the one place that says so).
MODEL_TRAINING_KEYS = grid.keys_that_change(SCHEMA, "training", "model")


def workflow_file(path: str) -> str:
    """A relative path of the config: the working directory's file, else the workflow's own."""
    if Path(path).is_absolute() or Path(path).exists():
        return path
    return str(REPO / path)


def is_timm_model(name: str) -> bool:
    import timm  # slow to import: only grids naming a timm: backbone pay for it

    return timm.is_model(name)


def blocks_of(backbone: str) -> int | None:
    """The blocks `trainable_blocks` counts. None for a timm model: its blocks are its feature
    stages, known only once it is built, so `geoloc train` refuses too many there."""
    if backbone.startswith(backbones.TIMM_PREFIX):
        return None
    return backbones.STUDY_BACKBONES[backbone].blocks


def load_study(config: dict) -> grid.Study:
    """Validate the config (filling in defaults) and expand its grid; errors name the key."""
    try:
        validate(config, schema=str(SCHEMA_FILE))
    except WorkflowError as error:
        if not isinstance(error.__context__, jsonschema.ValidationError):
            raise
        raise WorkflowError(grid.describe_schema_error(error.__context__)) from None
    try:
        return grid.plan_study(
            config,
            schema=SCHEMA,
            known_backbones=backbones.STUDY_BACKBONES,
            is_timm_model=is_timm_model,
            lookup_weights=partial(
                lookup, Path(workflow_file(config["weights"]["registry"]))
            ),
            blocks_of=blocks_of,
            input_size_problem=backbones.input_size_problem,
        )
    except GeolocError as error:
        raise WorkflowError(str(error)) from None


STUDY = load_study(config)
WEIGHTS_REGISTRY = workflow_file(config["weights"]["registry"])
RUNS = STUDY.runs
BASELINES = STUDY.baselines
TEST_SETS = config["test_sets"]
RESULTS = config["results"]
IMAGE_CACHE_DIR = config["image_cache"]["dir"] or f"{RESULTS}/cache/images"
# The image sizes some run reads from the decoded-image cache (rule cache_images builds those).
CACHED_SIZES = {
    run.training["image_size"] for run in RUNS.values() if run.training["image_cache"]
}


pathvars:
    results=RESULTS,
    logs="<results>/logs",
    benchmarks="<results>/benchmarks",
    datasets=config["datasets_root"],
    weights=config["weights"]["dir"],


wildcard_constraints:
    run="|".join(map(re.escape, RUNS)),
    baseline="|".join(map(re.escape, BASELINES)),
    test_set="|".join(map(re.escape, TEST_SETS)),
    size=r"\d+",
    backbone="|".join(sorted({re.escape(w.slug) for w in STUDY.weights.values()})),
    pretraining="|".join(
        sorted({re.escape(w.pretraining) for w in STUDY.weights.values()})
    ),


def quoted(arguments: dict) -> str:
    """`--key value` pairs for a command line, each shell-quoted.

    None leaves the flag out; True gives the bare flag; a list gives one value per word.
    """
    words = []
    for flag, value in arguments.items():
        if value is None or value is False:
            continue
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def node_path(text: str) -> str:
    """A path for the job's shell, quoted, where a leading `$VAR` is expanded on the node.

    `image_cache.copy_to` names node-local scratch, which is often only known inside the job
    (`$TMPDIR`); the schema allows nothing else a shell would act on.
    """
    match = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)(.*)", text)
    if not match:
        return shlex.quote(text)
    rest = shlex.quote(match.group(2)) if match.group(2) else ""
    return f'"${match.group(1)}"{rest}'


# ---------------------------------------------------------------- data


def synth_arguments(wildcards) -> str:
    return quoted(
        {
            "--seed": config["synthetic"]["seed"],
            "--size": config["synthetic"]["size"],
        }
    )


def synthetic_datasets(wildcards) -> str | list:
    """The generated datasets, so that the city comes first (and another city retrains); nothing
    for real datasets, which are there before the workflow starts."""
    return "<datasets>" if config["synthetic"]["enabled"] else []


def datasets_root(wildcards) -> str:
    """The root in use: a params trigger of the local datasets rule only."""
    return config["datasets_root"]


def fetch_arguments(wildcards, output) -> str:
    # Derived from output on purpose: the registry's path is no reason to download again.
    weights = STUDY.weights[f"{wildcards.backbone}-{wildcards.pretraining}"]
    return quoted(
        {
            "--registry": WEIGHTS_REGISTRY,
            "--backbone": weights.backbone,
            "--pretraining": weights.pretraining,
            "--out": output[0],
        }
    )


# ---------------------------------------------------------------- image cache


def cache_images_command(wildcards, output, threads) -> str:
    # Derived on purpose: paths and runtime knobs; and whether a run caches this size decides
    # only if the job builds (a cache turned on later is built by its first training).
    size = int(wildcards.size)
    if size not in CACHED_SIZES:
        return f"echo no run caches its images at {size} px"
    options = quoted(
        {
            "--train-dir": f"{config['datasets_root']}/sf_xs/train",
            "--image-size": size,
            "--cache-dir": IMAGE_CACHE_DIR,
            "--num-workers": max(0, threads - 1),
            "--threads": threads,
        }
    )
    return f"geoloc cache-images {options}"


def image_cache_marker(wildcards):
    """What a training waits for: the image cache of its size (see rule cache_images)."""
    size = RUNS[wildcards.run].training["image_size"]
    return ancient(f"<results>/markers/image-cache-{size}px")


# ---------------------------------------------------------------- train


def train_weights(wildcards) -> str | list:
    """The run's pretrained weights file; nothing for random initialisation."""
    weights_id = RUNS[wildcards.run].weights_id
    return [] if weights_id is None else f"<weights>/{weights_id}.pth"


def option_of(key: str) -> str:
    return f"--{key.replace('_', '-')}"


def train_settings(wildcards) -> str:
    """Exactly what makes the run's model: a params trigger."""
    run = RUNS[wildcards.run]
    weights = STUDY.weights.get(run.weights_id)
    return quoted(
        {
            "--backbone": run.backbone,
            "--pretraining": run.pretraining,
            "--tag": run.tag,
            "--weights-format": weights.format if weights else None,
            "--precision": run.precision,
            "--seed": run.seed,
            **{option_of(key): run.training[key] for key in MODEL_TRAINING_KEYS},
            "--positive-dist-threshold": config["evaluation"][
                "positive_dist_threshold"
            ],
        }
    )


def ranks(run: grid.Run) -> tuple[int, int]:
    """(training processes per node, nodes) of one run."""
    return run.training["gpus_per_run"], run.training["nodes_per_run"]


def train_runtime(wildcards, input, output, threads) -> str:
    # Derived from input/output on purpose (see the top of this file): paths and runtime
    # knobs must never retrain a run.
    run = RUNS[wildcards.run]
    settings = run.training
    weights = STUDY.weights.get(run.weights_id)
    copy_to = config["image_cache"]["copy_to"]
    words = quoted(
        {
            "--run-name": run.name,
            "--train-dir": f"{config['datasets_root']}/sf_xs/train",
            "--val-dir": f"{config['datasets_root']}/sf_xs/val",
            "--weights": input.weights if weights else "none",
            "--weights-sha256": weights.sha256 if weights else None,
            "--out-dir": Path(output.model).parent,
            "--checkpoint-dir": f"{RESULTS}/checkpoints/{wildcards.run}",
            "--cache-dir": f"{RESULTS}/cache",
            "--image-cache": IMAGE_CACHE_DIR if settings["image_cache"] else None,
            "--device": config["device"],
            "--num-workers": settings["num_workers"],
            "--checkpoint-every": settings["checkpoint_every"],
            "--max-bad-steps": settings["max_bad_steps"],
            "--max-bad-images": settings["max_bad_images"],
            "--compile": settings["compile"],
            "--stop-margin-seconds": 60 * settings["stop_margin_minutes"],
            # A run on several GPUs gets its threads per process from ranks.sh.
            "--threads": threads if ranks(run) == (1, 1) else None,
        }
    )
    if copy_to and settings["image_cache"]:
        words = f"{words} --image-cache-copy-to {node_path(copy_to)}"
    return words


def train_launch(wildcards, threads) -> str:
    """How `geoloc train` starts: once, or once per rank (workflow/scripts/ranks.sh)."""
    per_node, nodes = ranks(RUNS[wildcards.run])
    requeue = f"bash {shlex.quote(str(SCRIPTS / 'requeue-on-stop.sh'))} {config['resources']['requeues']}"
    if per_node * nodes == 1:
        return requeue
    launcher = shlex.quote(str(SCRIPTS / "ranks.sh"))
    return f"{requeue} bash {launcher} {per_node} {nodes} {max(1, threads // per_node)}"


# ---------------------------------------------------------------- resources
# What each job asks of SLURM, from config `resources` (schema-validated); the site profile
# adds only the site's own settings. Resources that are None are not asked for.


def job_resources(rule: str) -> dict:
    return config["resources"][rule]


def runtime_of(rule: str):
    """Minutes per attempt: the same every attempt, never above resources.max_runtime."""
    minutes = min(job_resources(rule)["runtime"], config["resources"]["max_runtime"])
    return lambda wildcards: minutes


def gpus(wildcards) -> int | None:
    """GPUs of one job in `gpus` mode (the plugin's --gpus=[model:]N is per job)."""
    if config["resources"]["gpu_request"] != "gpus":
        return None
    per_node, nodes = (
        ranks(RUNS[wildcards.run]) if "run" in wildcards.keys() else (1, 1)
    )
    return per_node * nodes


def gpu_model(wildcards) -> str | None:
    if config["resources"]["gpu_request"] != "gpus":
        return None
    return config["resources"]["gpu_model"]


def gres(wildcards) -> str | None:
    """--gres=gpu[:model]:N, per node, for sites that take GPUs only that way."""
    if config["resources"]["gpu_request"] != "gres":
        return None
    per_node = ranks(RUNS[wildcards.run])[0] if "run" in wildcards.keys() else 1
    model = config["resources"]["gpu_model"]
    return f"gpu:{model}:{per_node}" if model else f"gpu:{per_node}"


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


def train_mem_mb(wildcards) -> int:
    """Memory per node: resources.train.mem_mb for each training process on it."""
    return job_resources("train")["mem_mb"] * ranks(RUNS[wildcards.run])[0]


def train_threads(wildcards) -> int:
    return job_resources("train")["threads"] * ranks(RUNS[wildcards.run])[0]


def train_slurm_extra(wildcards) -> str:
    # The workflow's own options come first and stay whatever the user adds: USR1 at the
    # stop margin (a second way in beside training's own clock), and a job that may be
    # requeued (requeue-on-stop.sh, node failures, preemption).
    margin = 60 * RUNS[wildcards.run].training["stop_margin_minutes"]
    own = f"--signal=USR1@{margin} --requeue"
    extra = job_resources("train")["slurm_extra"]
    return f"{own} {extra}" if extra else own


def slurm_extra_of(rule: str):
    extra = job_resources(rule)["slurm_extra"]
    return lambda wildcards: extra or None


# ---------------------------------------------------------------- evaluate and baselines


def evaluation_options(precision: str) -> str:
    """What changes the recalls of a model trained in `precision`, beside the model itself."""
    evaluation = config["evaluation"]
    return quoted(
        {
            "--k": evaluation["k"],
            "--positive-dist-threshold": evaluation["positive_dist_threshold"],
            "--resize": evaluation["resize"],
            "--autocast": grid.evaluated_under_autocast(
                precision, evaluation["autocast"]
            ),
        }
    )


def evaluation_settings(wildcards) -> str:
    """What changes a run's recalls beside its model: a params trigger."""
    return evaluation_options(RUNS[wildcards.run].precision)


def evaluation_runtime(output, threads) -> str:
    # Derived (output, threads): paths and runtime knobs, never a reason to re-evaluate.
    evaluation = config["evaluation"]
    test_sets = [
        word
        for name in TEST_SETS
        for word in ("--test-set", f"{name}={config['datasets_root']}/{name}/test")
    ]
    options = quoted(
        {
            "--out-dir": Path(output.recalls[0]).parent,
            "--batch-size": evaluation["batch_size"],
            "--num-workers": evaluation["num_workers"],
            "--device": config["device"],
            "--threads": threads,
        }
    )
    return f"{options} {shlex.join(test_sets)}"


def evaluate_runtime(wildcards, output, threads) -> str:
    return evaluation_runtime(output, threads)


def baseline_weights(wildcards) -> str | list:
    weights_id = BASELINES[wildcards.baseline].weights_id
    return [] if weights_id is None else f"<weights>/{weights_id}.pth"


def baseline_settings(wildcards) -> str:
    """What makes the untrained network and its recalls: a params trigger."""
    baseline = BASELINES[wildcards.baseline]
    weights = STUDY.weights.get(baseline.weights_id)
    network = quoted(
        {
            "--untrained": True,
            "--backbone": baseline.backbone,
            "--pretraining": baseline.pretraining,
            "--weights-format": weights.format if weights else None,
            "--fc-output-dim": baseline.fc_output_dim,
            "--seed": baseline.seed,
        }
    )
    return f"{network} {evaluation_options(grid.BASELINE_PRECISION)}"


def baseline_runtime(wildcards, input, output, threads) -> str:
    weights = input.weights if BASELINES[wildcards.baseline].weights_id else None
    paths = quoted({"--weights": weights, "--summary-out": output.summary})
    return f"{paths} {evaluation_runtime(output, threads)}"


# ---------------------------------------------------------------- aggregate and report


def result_folders(wildcards, input) -> str:
    """The folder of every run and baseline, from their summary inputs."""
    summaries = [*input.train, *input.baselines]
    return shlex.join(str(Path(path).parent) for path in summaries)


def config_as_yaml(wildcards) -> str:
    """The config as validated, defaults filled in, for the report to show."""
    return yaml.safe_dump(config, sort_keys=False)


def published_results(wildcards) -> str | list:
    published = config["report"]["published"]
    return [] if published is None else workflow_file(published)


def report_arguments(wildcards, input, output) -> str:
    words = ["--runs-dir", str(Path(input.train[0]).parent.parent)]
    words += ["--templates", str(WORKFLOW_DIR / "report")]
    words += [
        "--positive-dist-threshold",
        str(config["evaluation"]["positive_dist_threshold"]),
    ]
    words += ["--published", input.published] if input.published else []
    words += ["--conclusions-out", output.conclusions]
    words += ["--reference", config["reference"], "--expected", *RUNS]
    return shlex.join(words)


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
