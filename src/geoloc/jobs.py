"""The command line of every job of the workflow, built from the study's plan and its config.

Each job's arguments come in two parts, as the rules pass them to Snakemake: `settings`, exactly
what makes the job's result (Snakemake's rerun trigger, a function of the run alone), and
`runtime`, the paths and knobs that must never rerun it (Snakemake params derived from
input/output/threads). The training settings are read from `TrainSettings`, the table that
`geoloc train`'s parser reads too, so a setting is named once. Every value is shell-quoted here.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoloc.data.catalog import DatasetEntry, resolve_folder
from geoloc.grid import BASELINE_PRECISION, Baseline, Run, Study, evaluated_under_autocast
from geoloc.provenance import stamps
from geoloc.train.settings import EVALUATION, RUN, TRAINING, fields_from, option_of

# The training settings a config's `training` section (or a grid block) gives, in table order.
MODEL_TRAINING_KEYS = tuple(field.name for field in fields_from(TRAINING))


def quoted(arguments: Mapping[str, Any]) -> str:
    """`--flag value` pairs for a command line, each shell-quoted.

    None or False leaves the flag out; True gives the bare flag; a list gives one value per word.
    """
    words: list[str] = []
    for flag, value in arguments.items():
        if value is None or value is False:
            continue
        if value is True:
            words.append(flag)
        elif isinstance(value, (list, tuple)):
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


def ranks(run: Run) -> tuple[int, int]:
    """(training processes per node, nodes) of one run."""
    return run.training["gpus_per_run"], run.training["nodes_per_run"]


@dataclass(frozen=True)
class Jobs:
    """The argument lists of a study's jobs; `config` is the schema-validated config."""

    config: Mapping[str, Any]
    study: Study
    registry: str  # the weights registry's path, as the workflow resolved it
    catalog: Mapping[str, DatasetEntry]  # the datasets by name (the shipped catalog and config `datasets`)

    def folder(self, dataset: str, field: str) -> str:
        """A folder of a catalog entry (test, train or val) under datasets_root, in the layout found."""
        return str(resolve_folder(Path(self.config["datasets_root"]), getattr(self.catalog[dataset], field)))

    @property
    def image_cache_dir(self) -> str:
        return self.config["image_cache"]["dir"] or f"{self.config['results']}/cache/images"

    # ------------------------------------------------------------ train

    def train_settings(self, name: str) -> str:
        """Exactly what makes the run's model."""
        run = self.study.runs[name]
        weights = self.study.weights.get(run.weights_id)
        # The run's own axes by the table (backbone, precision, seed, aggregator where the table has it).
        axes = {field.name: getattr(run, field.name, None) for field in fields_from(RUN)}
        axes["weights_format"] = weights.format if weights else None
        return quoted(
            {
                "--backbone": run.backbone,
                "--pretraining": run.pretraining,
                "--tag": run.tag,
                **{option_of(name): value for name, value in axes.items()},
                **{option_of(key): run.training[key] for key in MODEL_TRAINING_KEYS},
                **{option_of(field.name): self.config["evaluation"][field.name] for field in fields_from(EVALUATION)},
            }
        )

    def train_runtime(self, name: str, weights_path: str | None, model: str, threads: int) -> str:
        """Paths and runtime knobs of a training: never a reason to retrain."""
        run = self.study.runs[name]
        settings = run.training
        weights = self.study.weights.get(run.weights_id)
        results = self.config["results"]
        train_dir, val_dir = (self.folder(settings["dataset"], field) for field in ("train", "val"))
        words = quoted(
            {
                "--run-name": run.name,
                "--train-dir": train_dir,
                "--val-dir": val_dir,
                "--weights": weights_path if weights else "none",
                "--weights-sha256": weights.sha256 if weights else None,
                "--out-dir": Path(model).parent,
                "--checkpoint-dir": f"{results}/checkpoints/{name}",
                "--cache-dir": f"{results}/cache",
                "--image-cache": self.image_cache_dir if settings["image_cache"] else None,
                "--device": self.config["device"],
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
        copy_to = self.config["image_cache"]["copy_to"]
        if copy_to and settings["image_cache"]:
            words = f"{words} --image-cache-copy-to {node_path(copy_to)}"
        return words

    def train_launch(self, name: str, scripts: Path, threads: int) -> str:
        """How `geoloc train` starts: once, or once per rank (workflow/scripts/ranks.sh)."""
        per_node, nodes = ranks(self.study.runs[name])
        requeue = f"bash {shlex.quote(str(scripts / 'requeue-on-stop.sh'))} {self.config['resources']['requeues']}"
        if per_node * nodes == 1:
            return requeue
        launcher = shlex.quote(str(scripts / "ranks.sh"))
        return f"{requeue} bash {launcher} {per_node} {nodes} {max(1, threads // per_node)}"

    # ------------------------------------------------------------ evaluate and baselines

    def _evaluation_settings(self, precision: str) -> str:
        """What changes the recalls of a model trained in `precision`, beside the model itself: the
        protocol, and each test set's own threshold and query file where it has one."""
        evaluation = self.config["evaluation"]
        threshold = evaluation["positive_dist_threshold"]
        entries = [self.catalog[name] for name in self.config["test_sets"]]
        return (
            quoted(
                {
                    "--k": evaluation["k"],
                    "--positive-dist-threshold": threshold,
                    "--resize": evaluation["resize"],
                    "--autocast": evaluated_under_autocast(precision, evaluation["autocast"]),
                }
            )
            + "".join(
                f" --set-threshold {shlex.quote(f'{e.name}={e.positive_dist_threshold}')}"
                for e in entries
                if e.positive_dist_threshold != threshold
            )
            + "".join(
                f" --set-queries {shlex.quote(f'{e.name}={self._file(e.queries)}')}" for e in entries if e.queries
            )
        )

    def _file(self, path: str) -> str:
        return path if Path(path).is_absolute() else f"{self.config['datasets_root']}/{path}"

    def evaluate_settings(self, name: str) -> str:
        """What changes a run's recalls beside its model."""
        return self._evaluation_settings(self.study.runs[name].precision)

    def evaluate_runtime(self, recalls: Iterable[str], threads: int) -> str:
        """Test sets, outputs and runtime knobs of an evaluation: never a reason to re-evaluate."""
        evaluation = self.config["evaluation"]
        test_sets = [
            word for name in self.config["test_sets"] for word in ("--test-set", f"{name}={self.folder(name, 'test')}")
        ]
        options = quoted(
            {
                "--out-dir": Path(next(iter(recalls))).parent,
                "--batch-size": evaluation["batch_size"],
                "--num-workers": evaluation["num_workers"],
                "--device": self.config["device"],
                "--threads": threads,
            }
        )
        return f"{options} {shlex.join(test_sets)}"

    def baseline_settings(self, key: str) -> str:
        """What makes the untrained network and its recalls."""
        baseline: Baseline = self.study.baselines[key]
        weights = self.study.weights.get(baseline.weights_id)
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
        return f"{network} {self._evaluation_settings(BASELINE_PRECISION)}"

    def published_settings(self, name: str) -> str:
        """What makes a released model's recalls: the model, and the protocol in fp32."""
        return f"{quoted({'--published': name})} {self._evaluation_settings(BASELINE_PRECISION)}"

    def published_runtime(self, weights: str, recalls: Iterable[str], threads: int) -> str:
        return f"{quoted({'--weights': weights})} {self.evaluate_runtime(recalls, threads)}"

    def baseline_runtime(
        self, key: str, weights_path: str | None, summary: str, recalls: Iterable[str], threads: int
    ) -> str:
        weights = weights_path if self.study.baselines[key].weights_id else None
        paths = quoted({"--weights": weights, "--summary-out": summary})
        return f"{paths} {self.evaluate_runtime(recalls, threads)}"

    # ------------------------------------------------------------ data, weights, report

    def synth_settings(self) -> str:
        return quoted({"--seed": self.config["synthetic"]["seed"], "--size": self.config["synthetic"]["size"]})

    def fetch_published_runtime(self, name: str, out: str) -> str:
        return quoted({"--published": name, "--out": out})

    def fetch_runtime(self, backbone: str, pretraining: str, out: str) -> str:
        """The registry's path is no reason to download again: all of this is runtime."""
        weights = self.study.weights[f"{backbone}-{pretraining}"]
        return quoted(
            {
                "--registry": self.registry,
                "--backbone": weights.backbone,
                "--pretraining": weights.pretraining,
                "--out": out,
            }
        )

    def cache_images_runtime(self, size: int, threads: int) -> str:
        """The whole command of a cache job: only whether a run caches this size decides if it builds
        (a cache turned on later is built by its first training), so none of it is a rerun trigger."""
        train_dirs = sorted(
            {
                self.folder(run.training["dataset"], "train")
                for run in self.study.runs.values()
                if run.training["image_cache"] and run.training["image_size"] == size
            }
        )
        if not train_dirs:
            return f"echo no run caches its images at {size} px"
        options = quoted(
            {
                "--image-size": size,
                "--cache-dir": self.image_cache_dir,
                "--num-workers": max(0, threads - 1),
                "--threads": threads,
            }
        )
        return " && ".join(f"geoloc cache-images {quoted({'--train-dir': folder})} {options}" for folder in train_dirs)

    # ------------------------------------------------------------ stamps

    def stamps(self, data: bool) -> dict[str, dict[str, Any]]:
        """The stamp (geoloc.provenance.stamps) of each training, evaluation, baseline, published
        model and of the datasets rule, by `<rule>/<job>`: its settings and, with `data`, what it
        reads of the datasets (image folders and query files). Without `data` (the synthetic city,
        which the workflow makes and each of these jobs takes as input) the settings alone."""
        test_sets = self.config["test_sets"]
        folders = {
            f"{name}/{part}": f"{self.folder(name, 'test')}/{part}"
            for name in test_sets
            for part in ("database", "queries")
        }
        files = {name: self._file(self.catalog[name].queries) for name in test_sets if self.catalog[name].queries}

        def tested(settings: str) -> dict[str, Any]:
            return stamps.expected(settings, folders, files) if data else stamps.expected(settings)

        def training_set(dataset: str) -> dict[str, str]:
            val = self.folder(dataset, "val")
            return {
                "train": self.folder(dataset, "train"),
                "val/database": f"{val}/database",
                "val/queries": f"{val}/queries",
            }

        trained = {name: training_set(run.training["dataset"]) for name, run in self.study.runs.items()}
        # datasets.json counts the images of every folder in use
        every = {
            f"{run.training['dataset']}/{part}": folder
            for name, run in self.study.runs.items()
            for part, folder in trained[name].items()
        } | folders
        return {
            "datasets/datasets": stamps.expected("", every, files) if data else stamps.expected(""),
            **{
                f"train/{name}": stamps.expected(self.train_settings(name), read if data else None)
                for name, read in trained.items()
            },
            **{f"evaluate/{name}": tested(self.evaluate_settings(name)) for name in self.study.runs},
            **{f"baseline/{key}": tested(self.baseline_settings(key)) for key in self.study.baselines},
            **{f"published/{name}": tested(self.published_settings(name)) for name in self.config["published_models"]},
        }

    def report_settings(self) -> str:
        """What the report says, beside its inputs: the expected runs and the reference. A config
        naming no reference gives none: the report takes the first expected run and says it chose."""
        return quoted(
            {
                "--positive-dist-threshold": self.config["evaluation"]["positive_dist_threshold"],
                "--reference": self.config.get("reference"),
                "--expected": list(self.study.runs),
            }
        )

    def report_runtime(self, datasets: str, published: str | None, conclusions: str, templates: Path) -> str:
        return quoted(
            {
                "--runs-dir": f"{self.config['results']}/runs",
                "--templates": templates,
                "--datasets": datasets,
                "--published": published or None,
                "--conclusions-out": conclusions,
            }
        )

    def aggregate_runtime(self, summaries: Iterable[str]) -> str:
        """The folder of every run and baseline, from their summary files, and of every published model."""
        published = [f"{self.config['results']}/published/{name}" for name in self.config["published_models"]]
        return shlex.join([*(str(Path(path).parent) for path in summaries), *published])
