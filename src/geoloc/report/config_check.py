"""Results that another config made never reach the report.

`geoloc report --config <results>/config.yaml` expands that config's grid and checks every run
and baseline of the recalls table against it: each train.json's fingerprinted training settings
(`fingerprint.settings`, C4) against the run's settings in the config, each recall CSV's
evaluation settings against the config's `evaluation`, and each recall CSV's `model_sha256`
against the model its run's train.json recorded. The first difference stops the report with
one line naming the run, the key and both values.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from geoloc.errors import GeolocError
from geoloc.grid import BASELINE_PRECISION, Run, evaluated_under_autocast, expand_grid
from geoloc.report.study import BASELINE, PUBLISHED, TRAINED, Results, baseline_name

REQUIRED_KEYS = ("grid", "training", "evaluation", "evaluation.positive_dist_threshold")
# Recall CSV columns (C2) -> how the config's `evaluation` value is written there.
EVALUATION_KEYS = {
    "k": float,
    "positive_dist_threshold": float,
    "resize": lambda size: "" if size is None else f"{size[0]}x{size[1]}",
    "autocast": lambda on: float(bool(on)),
}

PUBLISHED_KEYS = ("k", "positive_dist_threshold")


@dataclass(frozen=True)
class Plan:
    """What the config asks for: its runs, and one baseline per backbone x pretraining."""

    config: Mapping[str, Any]
    runs: dict[str, Run]
    baselines: dict[str, tuple[str, str]]  # baseline name -> (backbone, pretraining)
    path: Path


def read_config(path: Path) -> tuple[str, Plan]:
    """The config's text (shown in the report) and what it asks for."""
    try:
        text = path.read_text(encoding="utf-8")
        config = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise GeolocError(f"{path}: cannot read the config: {exc}") from exc
    except yaml.YAMLError as exc:
        raise GeolocError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    for key in REQUIRED_KEYS:
        section = config
        for part in key.split("."):
            if not isinstance(section, dict) or part not in section:
                raise GeolocError(f"{path}: key {key} is missing; pass the workflow's <results>/config.yaml")
            section = section[part]
    try:
        runs = expand_grid(config["grid"], config["training"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise GeolocError(f"{path}: key grid is not a list of grid blocks ({exc!r})") from exc
    pairs = dict.fromkeys((run.backbone, run.pretraining) for run in runs.values())
    baselines = {baseline_name(*pair): pair for pair in pairs}
    return text, Plan(config, runs, baselines, path)


def check_against_config(study: Results, plan: Plan) -> None:
    """Raise GeolocError at the first run or baseline that the config did not make."""
    thresholds = {
        name: entry["positive_dist_threshold"]
        for name, entry in study.datasets.get("test_sets", {}).items()
        if entry.get("positive_dist_threshold") is not None
    }
    for name, rows in study.table.groupby("run", sort=False):
        kind = rows.iloc[0]["kind"]
        if kind == BASELINE:
            _check_baseline(name, plan)
        elif kind == TRAINED:
            _check_training(name, study.train_logs[name], plan)
        # A published model is evaluated with its own protocol's image size and normalisation:
        # only what makes its recalls comparable (k, threshold) is checked.
        keys = PUBLISHED_KEYS if kind == PUBLISHED else tuple(EVALUATION_KEYS)
        for row in rows.itertuples():
            _check_evaluation(name, row, plan, keys, thresholds.get(row.test_set))
            if kind == TRAINED:
                _check_model(name, row, study.train_logs[name])


def _check_baseline(name: str, plan: Plan) -> None:
    if name not in plan.baselines:
        raise GeolocError(
            f"baseline {name}: {plan.path} has no run with its backbone and pretraining (results from another config?)"
        )


def _check_training(name: str, train: Mapping[str, Any], plan: Plan) -> None:
    run = plan.runs.get(name)
    if run is None:
        raise GeolocError(f"run {name}: not a run of the grid in {plan.path} (results from another config?)")
    recorded = dict(train["fingerprint"]["settings"])
    recorded["pretraining"] = train["run"]["pretraining"]  # a weights source, not a training setting
    for key, (config_key, wanted) in _settings(run, plan.config).items():
        # null in the config is "the default" (e.g. trainable_blocks: the study's choice per
        # backbone), which the trainer may record resolved: nothing to compare.
        if key in recorded and wanted is not None and not _same(recorded[key], wanted):
            raise GeolocError(
                f"run {name}: {config_key} is {_show(wanted)} in {plan.path} but {_show(recorded[key])} "
                f"in its train.json (fingerprint.settings.{key}); these results come from another config: "
                f"delete the run folder runs/{name} and rerun the workflow with this one (it retrains the run)"
            )


def _settings(run: Run, config: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """Each setting the config gives `run`: key -> (the config key it comes from, value)."""
    block = f"grid[{run.block}]"
    overrides = config["grid"][run.block].get("training") or {}
    settings = {
        key: (f"{block}.training.{key}" if key in overrides else f"training.{key}", value)
        for key, value in run.training.items()
    }
    if "positive_dist_threshold" in config["evaluation"]:  # validation during training uses it too
        settings.setdefault(
            "positive_dist_threshold",
            ("evaluation.positive_dist_threshold", config["evaluation"]["positive_dist_threshold"]),
        )
    settings.update(
        backbone=(f"{block}.backbones", run.backbone),
        pretraining=(f"{block}.pretrainings", run.pretraining),
        precision=(f"{block}.precisions", run.precision),
        aggregator=(f"{block}.aggregators", run.aggregator),
        seed=(f"{block}.seeds", run.seed),
    )
    return settings


def _check_evaluation(name: str, row: Any, plan: Plan, keys: tuple[str, ...], threshold: float | None) -> None:
    """`threshold`: the test set's own positive threshold (datasets.json), if it has one."""
    evaluation = dict(plan.config["evaluation"])
    source = {key: f"evaluation.{key} is {{}} in {plan.path}" for key in keys}
    if threshold is not None:
        evaluation["positive_dist_threshold"] = threshold
        source["positive_dist_threshold"] = (
            f"test set {row.test_set}'s positive_dist_threshold is {{}} in datasets.json"
        )
    if "autocast" in evaluation:  # it applies to runs trained with amp only (the workflow's rule)
        run = plan.runs.get(name)  # None for a baseline
        precision = run.precision if run else BASELINE_PRECISION
        evaluation["autocast"] = evaluated_under_autocast(precision, evaluation["autocast"])
    for key in keys:
        written_as = EVALUATION_KEYS[key]
        if key in evaluation and not _same(getattr(row, key), written_as(evaluation[key])):
            raise GeolocError(
                f"{_what(row)} {name}: {source[key].format(_show(evaluation[key]))} but "
                f"{_show(getattr(row, key))} in recalls/{row.test_set}.csv; these recalls come from another "
                f"config: delete the recalls folder of {name} and rerun the workflow with this one (it re-evaluates)"
            )


def _check_model(name: str, row: Any, train: Mapping[str, Any]) -> None:
    if row.model_sha256 != train["model_sha256"]:
        raise GeolocError(
            f"run {name}: recalls/{row.test_set}.csv evaluated a model.pt with sha256 "
            f"{_show(row.model_sha256)}, but its train.json records model_sha256 {_show(train['model_sha256'])} "
            f"(the model changed after its evaluation): delete runs/{name}/recalls and rerun the workflow (it "
            "re-evaluates the run; should geoloc evaluate then refuse model.pt, delete it and train.json too)"
        )


def _what(row: Any) -> str:
    return "baseline" if row.kind == BASELINE else "run"


def _same(recorded: Any, wanted: Any) -> bool:
    if _is_number(recorded) and _is_number(wanted):
        return float(recorded) == float(wanted)
    return recorded == wanted


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _show(value: Any) -> str:
    """A value as the config (YAML) or the CSV writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "" or (isinstance(value, float) and math.isnan(value)):
        return "empty"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, str) else str(value)
