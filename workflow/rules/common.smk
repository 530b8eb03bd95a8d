# Config validation, the run table, wildcard constraints, and the helpers the rules call.
# Every value that reaches a shell command is quoted here (shlex) or with {...:q} in the rule.
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
from geoloc.model.backbones import STUDY_BACKBONES
from geoloc.model.weights import lookup

# SLURM sends USR1 to every process of a job step shortly before its time limit
# (profiles/slurm). Snakemake would die of it, taking the job step down; ignored here (and,
# inherited, in the job's shell) it only reaches `geoloc train`, which installs its own
# handler: it writes a checkpoint and exits non-zero, and the retry resumes from it.
signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def is_timm_model(name: str) -> bool:
    import timm  # slow to import: only grids naming a timm: backbone pay for it

    return timm.is_model(name)


def load_study(config: dict) -> grid.Study:
    """Validate the config (filling in defaults) and expand its grid; errors name the key."""
    try:
        validate(config, schema="../schemas/config.schema.yaml")
    except WorkflowError as error:
        if not isinstance(error.__context__, jsonschema.ValidationError):
            raise
        raise WorkflowError(grid.describe_schema_error(error.__context__)) from None
    try:
        return grid.plan_study(
            config,
            known_backbones=STUDY_BACKBONES,
            is_timm_model=is_timm_model,
            lookup_weights=partial(lookup, Path(config["weights"]["registry"])),
        )
    except GeolocError as error:
        raise WorkflowError(str(error)) from None


STUDY = load_study(config)
RUNS = STUDY.runs
TEST_SETS = config["test_sets"]


pathvars:
    results=config["results"],
    logs="<results>/logs",
    benchmarks="<results>/benchmarks",
    datasets=config["datasets_root"],
    weights=config["weights"]["dir"],


wildcard_constraints:
    run="|".join(map(re.escape, RUNS)),
    test_set="|".join(map(re.escape, TEST_SETS)),
    backbone="|".join(sorted({re.escape(w.slug) for w in STUDY.weights.values()})),
    pretraining="|".join(
        sorted({re.escape(w.pretraining) for w in STUDY.weights.values()})
    ),


def quoted(arguments: dict) -> str:
    """`--key value` pairs for a command line, each shell-quoted; None values are left out."""
    words = []
    for flag, value in arguments.items():
        if value is not None:
            words += [flag, str(value)]
    return shlex.join(words)


# ---------------------------------------------------------------- data


def synth_arguments(wildcards) -> str:
    return quoted(
        {
            "--seed": config["synthetic"]["seed"],
            "--size": config["synthetic"]["size"],
        }
    )


def fetch_arguments(wildcards) -> str:
    weights = STUDY.weights[f"{wildcards.backbone}-{wildcards.pretraining}"]
    return quoted(
        {
            "--registry": config["weights"]["registry"],
            "--backbone": weights.backbone,
            "--pretraining": weights.pretraining,
        }
    )


# ---------------------------------------------------------------- train


def train_weights(wildcards) -> str | list:
    """The run's pretrained weights file; nothing for random initialisation."""
    weights_id = RUNS[wildcards.run].weights_id
    return [] if weights_id is None else f"<weights>/{weights_id}.pth"


def train_folders(wildcards, input) -> str:
    return quoted(
        {
            "--train-dir": f"{input.data}/sf_xs/train",
            "--val-dir": f"{input.data}/sf_xs/val",
        }
    )


def train_work_folders(wildcards, output) -> str:
    """Outputs next to model.pt; resumable state and the class cache outside the outputs."""
    return quoted(
        {
            "--out-dir": Path(output.model).parent,
            "--checkpoint-dir": f"{config['results']}/checkpoints/{wildcards.run}",
            "--cache-dir": f"{config['results']}/cache",
            "--image-cache": (
                f"{config['results']}/cache/images"
                if RUNS[wildcards.run].training["image_cache"]
                else None
            ),
        }
    )


def train_settings(wildcards, input) -> str:
    run = RUNS[wildcards.run]
    settings = run.training
    weights = STUDY.weights.get(run.weights_id)
    return quoted(
        {
            "--run-name": run.name,
            "--backbone": run.backbone,
            "--pretraining": run.pretraining,
            "--tag": run.tag,
            "--weights": input.weights if weights else "none",
            "--weights-format": weights.format if weights else None,
            "--precision": run.precision,
            "--seed": run.seed,
            "--device": config["device"],
            "--epochs": settings["epochs"],
            "--iterations-per-epoch": settings["iterations_per_epoch"],
            "--batch-size": settings["batch_size"],
            "--image-size": settings["image_size"],
            "--lr": settings["lr"],
            "--classifier-lr": settings["classifier_lr"],
            "--loss": settings["loss"],
            "--M": settings["M"],
            "--alpha": settings["alpha"],
            "--N": settings["N"],
            "--L": settings["L"],
            "--min-images-per-class": settings["min_images_per_class"],
            "--groups-num": settings["groups_num"],
            "--fc-output-dim": settings["fc_output_dim"],
            "--trainable-blocks": settings["trainable_blocks"],
            "--max-bad-steps": settings["max_bad_steps"],
            "--num-workers": settings["num_workers"],
            "--checkpoint-every": settings["checkpoint_every"],
            "--max-bad-images": settings["max_bad_images"],
            "--positive-dist-threshold": config["evaluation"][
                "positive_dist_threshold"
            ],
        }
    )


# ---------------------------------------------------------------- evaluate


def test_folder(wildcards, input) -> str:
    return f"{input.data}/{wildcards.test_set}/test"


def evaluate_settings(wildcards) -> str:
    run = RUNS[wildcards.run]
    evaluation = config["evaluation"]
    return quoted(
        {
            "--image-size": run.training["image_size"],
            "--batch-size": evaluation["batch_size"],
            "--precision": run.precision,
            "--device": config["device"],
            "--num-workers": evaluation["num_workers"],
            "--k": evaluation["k"],
            "--positive-dist-threshold": evaluation["positive_dist_threshold"],
        }
    )


# ---------------------------------------------------------------- aggregate and report


def run_folders(wildcards, input) -> str:
    """The folder of every run, from the train.json inputs."""
    return shlex.join(str(Path(path).parent) for path in input.train)


def config_as_yaml(wildcards) -> str:
    """The config as validated, defaults filled in, for the report to show."""
    return yaml.safe_dump(config, sort_keys=False)


def published_results(wildcards) -> str | list:
    published = config["report"]["published"]
    return [] if published is None else published


def report_arguments(wildcards, input) -> str:
    words = ["--runs-dir", str(Path(input.train[0]).parent.parent)]
    words += ["--templates", str(Path(workflow.basedir) / "report")]
    words += [
        "--positive-dist-threshold",
        str(config["evaluation"]["positive_dist_threshold"]),
    ]
    words += ["--published", input.published] if input.published else []
    words += ["--reference", config["reference"], "--expected", *RUNS]
    return shlex.join(words)
