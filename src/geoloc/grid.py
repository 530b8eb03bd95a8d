"""The study grid: config blocks -> named runs with their settings, checked before any job starts.

A block is a product backbones x pretrainings x precisions x aggregators x seeds x each training
setting given as a list (a sweep), with an optional tag and training overrides. Each point is a
run named `{backbone}-{pretraining}-{precision}-s{seed}`, then `-{aggregator}` unless GeM, the
swept settings (`-lr3e-05-px320`) and `-{tag}`; a `timm:<model>` backbone appears as
`timm_<model>` in names and file names, since `:` is awkward in paths and SLURM job names.
Errors name the config key they come from.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoloc.data.catalog import DatasetEntry, check_test_set, check_training_set
from geoloc.errors import GeolocError
from geoloc.model.backbones import TIMM, check_backbone, parse_backbone

NO_PRETRAINING = "none"  # random initialisation: never has a weights entry
BASELINE_PRECISION = "fp32"  # a baseline is the untrained network, evaluated in fp32 as CosPlace evaluates


class ConfigError(GeolocError):
    """A config value that would make the workflow fail or lie; names the key."""


@dataclass(frozen=True)
class Run:
    name: str
    backbone: str  # as the model registry knows it, e.g. "resnet18" or "timm:convnext_small"
    pretraining: str
    precision: str
    seed: int
    tag: str | None
    training: dict[str, Any]  # the block's overrides applied to the config's `training`
    block: int  # index of the grid block that defines it, for error messages
    overrides: tuple[str, ...] = ()  # the training keys its block overrides
    trained: bool = True  # False: a block with `train: false`, only its untrained baseline is evaluated
    aggregator: str = "gem"  # the grid's `aggregators` axis
    swept: tuple[str, ...] = ()  # the training keys its block gives as lists (named in the run's name)
    resources: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # its block's own `resources`

    def key(self, name: str) -> str:
        """The config key a training setting of this run comes from."""
        return f"grid[{self.block}].training.{name}" if name in self.overrides else f"training.{name}"

    @property
    def weights_id(self) -> str | None:
        """File stem of the run's pretrained weights, or None for random initialisation."""
        if self.pretraining == NO_PRETRAINING:
            return None
        return f"{backbone_slug(self.backbone)}-{self.pretraining}"

    def settings(self) -> tuple:
        """Everything that makes two runs of the same name the same run."""
        return (
            self.backbone,
            self.pretraining,
            self.precision,
            self.aggregator,
            self.seed,
            self.tag,
            self.trained,
            sorted(self.training.items()),
        )


def backbone_slug(backbone: str) -> str:
    """The backbone as it appears in run names and weights file names."""
    parsed = parse_backbone(backbone)
    return f"{parsed.source}_{parsed.model}" if parsed.source else backbone


DEFAULT_AGGREGATOR = "gem"  # left out of run names, so that today's names stay
# How a swept training key reads in a run name (`-px320`); a key not listed reads as itself
# (`-groups_num2`), and "" gives the value alone (`-arcface`).
SHORT_NAMES = {
    "image_size": "px",
    "batch_size": "bs",
    "epochs": "ep",
    "iterations_per_epoch": "it",
    "classifier_lr": "clr",
    "fc_output_dim": "dim",
    "trainable_blocks": "tb",
    "min_images_per_class": "mipc",
    "loss": "",
    "dataset": "",
}


def name_part(key: str, value: Any) -> str:
    """One swept setting as it appears in a run name: `lr` 3e-05 -> `lr3e-05`."""
    text = f"{value:g}" if isinstance(value, float) else "none" if value is None else str(value)
    return f"{SHORT_NAMES.get(key, key)}{text}"


def run_name(
    backbone: str,
    pretraining: str,
    precision: str,
    seed: int,
    tag: str | None = None,
    aggregator: str = DEFAULT_AGGREGATOR,
    swept: Iterable[tuple[str, Any]] = (),
) -> str:
    """`{backbone}-{pretraining}-{precision}-s{seed}`, then the aggregator unless GeM, each swept
    setting (`-lr3e-05-px320`) and the tag."""
    parts = [backbone_slug(backbone), pretraining, precision, f"s{seed}"]
    parts += [aggregator] if aggregator != DEFAULT_AGGREGATOR else []
    parts += [name_part(key, value) for key, value in swept]
    parts += [tag] if tag else []
    return "-".join(parts)


def expand_grid(
    blocks: Iterable[Mapping[str, Any]], training: Mapping[str, Any], *, untrained: bool = False
) -> dict[str, Run]:
    """The runs of the grid by name, in config order; a name defined twice must mean the same run.

    A block is the product of its backbones, pretrainings, precisions, aggregators, seeds and
    each training setting it gives as a list (a sweep). The points of blocks with `train: false`
    (whose baselines alone are evaluated) only with `untrained`.
    """
    runs: dict[str, Run] = {}
    seen: list[Mapping[str, Any]] = []
    for index, block in enumerate(blocks):
        if block in seen:
            raise ConfigError(
                f"config key grid[{index}]: the same block as grid[{seen.index(block)}], which would "
                f"define its runs twice; remove one, or change a value"
            )
        seen.append(block)
        overrides = dict(block.get("training") or {})
        swept = [key for key, value in overrides.items() if isinstance(value, list)]
        tag = block.get("tag")
        fixed = sorted(set(overrides) - set(swept))
        if fixed and not tag:
            raise ConfigError(
                f"config key grid[{index}].tag: a block that overrides training settings "
                f"({', '.join(fixed)}) needs a tag, so its runs get their own names (a list of values, a "
                f"sweep, needs none: its values are in the names)"
            )
        trained = block.get("train", True)
        if not (trained or untrained):
            continue
        resources = dict(block.get("resources") or {})
        if "gpus" in resources:  # the block's GPUs per node are its runs' gpus_per_run
            if "gpus_per_run" in overrides:
                raise ConfigError(
                    f"config key grid[{index}].resources.gpus: the block also sets "
                    f"training.gpus_per_run; give one of them"
                )
            training = {**training, "gpus_per_run": resources.pop("gpus")}
        points = itertools.product(
            block["backbones"],
            block["pretrainings"],
            block["precisions"],
            block.get("aggregators", [DEFAULT_AGGREGATOR]),
            block["seeds"],
            *(overrides[key] for key in swept),
        )
        for backbone, pretraining, precision, aggregator, seed, *values in points:
            point = dict(zip(swept, values, strict=True))
            run = Run(
                name=run_name(backbone, pretraining, precision, seed, tag, aggregator, point.items()),
                backbone=backbone,
                pretraining=pretraining,
                precision=precision,
                seed=seed,
                tag=tag,
                training={**training, **overrides, **point},
                block=index,
                overrides=tuple(sorted(overrides)),
                trained=trained,
                aggregator=aggregator,
                swept=tuple(swept),
                resources=resources,
            )
            _add_run(runs, run)
    return runs


def _add_run(runs: dict[str, Run], run: Run) -> None:
    earlier = runs.get(run.name)
    if earlier is None:
        runs[run.name] = run
        return
    if earlier.settings() != run.settings():
        raise ConfigError(
            f"config key grid[{run.block}]: run {run.name!r} is also defined by grid[{earlier.block}] "
            f"with different settings ({_difference(earlier, run)}); give one of the blocks another tag"
        )


def _difference(a: Run, b: Run) -> str:
    if a.backbone != b.backbone:  # two spellings with one slug, e.g. timm:x_y and timm_x_y
        return f"backbone {a.backbone!r} vs {b.backbone!r}"
    keys = sorted(k for k in a.training.keys() | b.training.keys() if a.training.get(k) != b.training.get(k))
    return ", ".join(f"{k} {a.training.get(k)!r} vs {b.training.get(k)!r}" for k in keys)


def check_backbones(runs: Iterable[Run], known: Collection[str], is_timm_model: Callable[[str], bool]) -> None:
    """Every backbone is in the model registry, or a `timm:` name that timm knows."""
    for run in runs:
        key = f"config key grid[{run.block}].backbones"
        try:
            parsed = check_backbone(run.backbone, known)
        except GeolocError as error:
            raise ConfigError(f"{key}: {error}") from None
        if parsed.source == TIMM and not is_timm_model(parsed.model):
            raise ConfigError(f"{key}: timm has no model {parsed.model!r}")


def check_run_settings(
    runs: Iterable[Run],
    blocks_of: Callable[[str], int | None],
    input_size_problem: Callable[[str, str, int], str | None],
) -> None:
    """Settings the grid alone rules out, found before any job starts instead of inside one.

    `blocks_of(backbone)` is the number of blocks `trainable_blocks` counts (None where unknown);
    `input_size_problem(aggregator, backbone, size)` says why the network cannot take that square
    size (the backbone's limits, and an aggregator built for one feature map, as MixVPR is).
    """
    checked_sizes: set[tuple[str, str, int]] = set()
    for run in runs:
        s = run.training
        groups = s["N"] * s["N"] * s["L"]
        if s["groups_num"] > groups:
            raise ConfigError(
                f"config key {run.key('groups_num')}: {s['groups_num']} is more than the N*N*L = {groups} groups "
                f"that N={s['N']}, L={s['L']} make (run {run.name})"
            )
        blocks = blocks_of(run.backbone)
        if s["trainable_blocks"] is not None and blocks is not None and s["trainable_blocks"] > blocks:
            raise ConfigError(
                f"config key {run.key('trainable_blocks')}: {s['trainable_blocks']} is more than the {blocks} "
                f"blocks of {run.backbone} (run {run.name})"
            )
        if (run.aggregator, run.backbone, s["image_size"]) not in checked_sizes:
            checked_sizes.add((run.aggregator, run.backbone, s["image_size"]))
            problem = input_size_problem(run.aggregator, run.backbone, s["image_size"])
            if problem:
                raise ConfigError(f"config key {run.key('image_size')}: {problem} (run {run.name})")


def check_stop_margin(runs: Iterable[Run], resources: Mapping[str, Any]) -> None:
    """Training stops `stop_margin_minutes` before its job's time limit: the margin must leave time."""
    for run in runs:
        margin, limit = run.training["stop_margin_minutes"], job_resource(resources, "train", "runtime", run)
        if margin >= limit:
            where = f"grid[{run.block}].resources.runtime" if "runtime" in run.resources else "resources.train.runtime"
            raise ConfigError(
                f"config key {run.key('stop_margin_minutes')}: {margin} minutes leave no time to train in a "
                f"job of {limit} minutes ({where}, at most resources.max_runtime)"
            )


GROWING = ("mem_mb", "runtime")  # what a retry asks more of


def job_resource(resources: Mapping[str, Any], rule: str, key: str, run: Run | None = None, attempt: int = 1) -> Any:
    """What one job of `rule` asks for (config `resources`; a training's own grid block's first).

    Memory and time grow by `resources.growth` with each attempt after the first, so a job killed
    for either gets more when Snakemake resubmits it (`resources.retries`); time never exceeds
    `resources.max_runtime`, memory never `resources.max_mem_mb` (null: no cap).
    """
    value = resources["gpu_model"] if key == "gpu_model" else resources[rule][key]
    if run is not None and key in run.resources:
        value = run.resources[key]
    if key not in GROWING:
        return value
    grown = math.ceil(value * resources["growth"] ** (attempt - 1))
    if key == "runtime":
        return min(grown, resources["max_runtime"])
    cap = resources["max_mem_mb"]
    return grown if cap is None else max(value, min(grown, cap))  # the cap limits growth, not the first ask


def number_problems(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any], path: str = "") -> Iterator[str]:
    """What JSON Schema lets through and the commands refuse, as `config key ...` lines.

    JSON Schema counts 4.0 as an integer and .inf as a number; a command would get `4.0`
    (a run named `...-s1.0`) or an infinite threshold. `root` resolves `$ref`s.
    """
    schema = _dereferenced(root, schema)
    if "anyOf" in schema:  # a training setting of a grid block: one value, or a list of them (a sweep)
        schema = _branch(root, schema["anyOf"], value)
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if isinstance(value, float):
        if not math.isfinite(value):
            yield f"config key {path}: {value} is not a finite number"
        elif "integer" in types and "number" not in types:
            yield f"config key {path}: {value!r} is not of type 'integer'"
    elif isinstance(value, Mapping):
        for name, sub in value.items():
            if name in schema.get("properties", {}):
                yield from number_problems(sub, schema["properties"][name], root, f"{path}.{name}" if path else name)
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from number_problems(item, schema["items"], root, f"{path}[{index}]")


def _branch(root: Mapping[str, Any], branches: list, value: Any) -> Mapping[str, Any]:
    """The branch of an anyOf that the value's shape asks for: the array one for a list."""
    resolved = [_dereferenced(root, branch) for branch in branches]
    return next(
        (branch for branch in resolved if (branch.get("type") == "array") == isinstance(value, list)), resolved[0]
    )


def keys_that_change(schema: Mapping[str, Any], section: str, what: str) -> list[str]:
    """The keys of one config section whose schema says `changes: <what>`, in schema order."""
    properties = schema["properties"][section]["properties"]
    return [name for name, sub in properties.items() if _dereferenced(schema, sub).get("changes") == what]


def _dereferenced(root: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """`schema` with its `$ref` (to `#/$defs/...` of `root`) merged in; its own keys win."""
    while "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


@dataclass(frozen=True)
class WeightsFile:
    """One pretrained weights file the grid needs."""

    backbone: str
    pretraining: str
    format: str
    sha256: str | None = None  # the registry's pinned digest (or prefix), checked where the file is used

    @property
    def slug(self) -> str:
        return backbone_slug(self.backbone)


def weights_files(runs: Iterable[Run], lookup: Callable[[str, str], Mapping[str, Any]]) -> dict[str, WeightsFile]:
    """The weights files the grid needs, by file stem (`Run.weights_id`).

    `lookup(backbone, pretraining)` returns the registry entry or raises GeolocError (no such
    entry, unreadable registry); pretraining `none` needs no file.
    """
    files: dict[str, WeightsFile] = {}
    for run in runs:
        if run.weights_id is None or run.weights_id in files:
            continue
        try:
            entry = lookup(run.backbone, run.pretraining)
        except GeolocError as exc:
            raise ConfigError(f"config key grid[{run.block}].pretrainings: {exc}") from exc
        files[run.weights_id] = WeightsFile(run.backbone, run.pretraining, entry["format"], entry.get("sha256"))
    return files


def check_datasets(config: Mapping[str, Any], runs: Iterable[Run], catalog: Mapping[str, DatasetEntry]) -> None:
    """Every test set and every run's training set is in the catalog with the folders it needs; for
    real data (not the synthetic city, generated later), the folders exist and hold the expected counts."""
    for index, name in enumerate(config["test_sets"]):
        if name not in catalog:
            raise ConfigError(
                f"config key test_sets[{index}]: {name!r} is not a dataset of the catalog; add it "
                f"under `datasets:` or use one of: {', '.join(sorted(catalog))}"
            )
        if catalog[name].test is None:
            raise ConfigError(
                f"config key test_sets[{index}]: dataset {name!r} has no test folder (give datasets.{name}.test)"
            )
    training: dict[str, str] = {}  # training set -> the config key naming it first
    for run in runs:
        training.setdefault(run.training["dataset"], run.key("dataset"))
    for name, key in training.items():
        entry = catalog.get(name)
        if entry is None:
            raise ConfigError(
                f"config key {key}: {name!r} is not a dataset of the catalog; add it under "
                f"`datasets:` or use one of: {', '.join(sorted(catalog))}"
            )
        missing = [field for field in ("train", "val") if getattr(entry, field) is None]
        if missing:
            raise ConfigError(
                f"config key {key}: dataset {name!r} has no {' and no '.join(missing)} folder "
                f"(give datasets.{name}.{missing[0]}); training sets: "
                f"{', '.join(sorted(n for n, e in catalog.items() if e.train and e.val)) or 'none'}"
            )
    if config["synthetic"]["enabled"]:
        return
    root = Path(config["datasets_root"])
    for name in training:
        check_training_set(catalog[name], root)
    for name in config["test_sets"]:
        check_test_set(catalog[name], root)


def reference_of(reference: str | None, runs: Collection[str]) -> str | None:
    """The run the report compares the others with: the config's, else the grid's first (None: no run)."""
    if reference is None:
        return next(iter(runs), None)
    if reference not in runs:
        raise ConfigError(f"config key reference: {reference!r} is not a run of the grid; runs: {', '.join(runs)}")
    return reference


@dataclass(frozen=True)
class Baseline:
    """The network of one (backbone, pretraining) of the grid before training, as training starts it.

    Its random GeM/fc head follows the seed and fc_output_dim of the first run of the grid with
    that backbone and pretraining.
    """

    key: str  # `<slug>-<pretraining>`: its folder under <results>/baselines/
    backbone: str
    pretraining: str
    weights_id: str | None
    fc_output_dim: int
    seed: int

    @property
    def name(self) -> str:
        """Its run name in baseline.json and in the recalls table."""
        return f"{self.key}-baseline"


def baselines_of(runs: Iterable[Run]) -> dict[str, Baseline]:
    """One baseline per (backbone, pretraining) of the grid, by key, in config order."""
    baselines: dict[str, Baseline] = {}
    for run in runs:
        key = f"{backbone_slug(run.backbone)}-{run.pretraining}"
        baselines.setdefault(
            key, Baseline(key, run.backbone, run.pretraining, run.weights_id, run.training["fc_output_dim"], run.seed)
        )
    return baselines


def evaluated_under_autocast(precision: str, autocast: bool) -> bool:
    """Whether the test descriptors of a model trained in `precision` are computed under
    autocast, given config `evaluation.autocast`: only a model trained with amp is (model.pt
    does not record its precision, so the workflow says it); fp32 runs and baselines stay fp32."""
    return autocast and precision == "amp"


@dataclass(frozen=True)
class Study:
    runs: dict[str, Run]
    weights: dict[str, WeightsFile]
    baselines: dict[str, Baseline]
    reference: str | None  # the config's `reference`, else the first run of the grid


def plan_study(
    config: Mapping[str, Any],
    *,
    schema: Mapping[str, Any],
    known_backbones: Collection[str],
    is_timm_model: Callable[[str], bool],
    lookup_weights: Callable[[str, str], Mapping[str, Any]],
    blocks_of: Callable[[str], int | None],
    input_size_problem: Callable[[str, str, int], str | None],
    catalog: Mapping[str, DatasetEntry],
) -> Study:
    """The runs, weights files and baselines of a schema-validated config, after every check that
    needs more than the schema: numbers the schema lets through, backbones and what they can take,
    groups, pretrainings (weights), the reference, and the datasets (for real data, their folders)."""
    for problem in number_problems(config, schema, schema):
        raise ConfigError(problem)
    points = expand_grid(config["grid"], config["training"], untrained=True)
    runs = {name: run for name, run in points.items() if run.trained}
    check_backbones(points.values(), known_backbones, is_timm_model)
    check_run_settings(runs.values(), blocks_of, input_size_problem)
    resources = config["resources"]
    check_stop_margin(runs.values(), resources)
    weights = weights_files(points.values(), lookup_weights)
    reference = reference_of(config.get("reference"), runs)
    check_datasets(config, runs.values(), catalog)
    return Study(runs, weights, baselines_of(points.values()), reference)


def describe_schema_error(error: Any) -> str:
    """One line naming the config key of a jsonschema ValidationError."""
    if error.validator == "anyOf":  # one value or a sweep: what went wrong in the branch the value's shape asks for
        wanted = 1 if isinstance(error.instance, list) else 0
        inner = [sub for sub in error.context if sub.schema_path and sub.schema_path[0] == wanted]
        if inner:
            return describe_schema_error(inner[0])
    path = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in error.absolute_path).replace(".[", "[")
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        where = f"config key {path}" if path else "config"
        return f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in error.instance]
        prefix = f"{path}." if path else ""
        described = error.schema.get("properties", {}).get(missing[0], {}).get("description")
        return f"config key {prefix}{missing[0]} is required" + (f": {described}" if described else "")
    if error.validator == "pattern":  # the regex alone tells a user little; the description says what is allowed
        return f"config key {path}: {error.instance!r} is not allowed: {error.schema.get('description', error.message)}"
    return f"config key {path or '(top level)'}: {error.message}"
