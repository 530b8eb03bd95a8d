"""The results as the report sees them: variants (runs that differ only by seed) x test sets.

Built from the recalls table (`geoloc aggregate`), each run's train.json and per-query ranks
(`recalls/{test_set}.queries.csv`); everything the report says is computed from a `Results`.
A variant is one level of each factor of the grid: backbone, pretraining, precision, tag, and
every training setting (train.json `hyperparameters`) whose value varies between the trained
runs, e.g. an aggregator, a training set or a swept lr; the seed is the repeat, not a factor.
Untrained baselines (one per backbone x pretraining) are variants of kind "baseline": they sit
beside the trained variants in tables and plots, and only ever as what training is measured
against. Published models (kind "published") are shown apart and never compared with the grid.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoloc.errors import GeolocError
from geoloc.evaluate.result_files import QUERY_COLUMNS
from geoloc.grid import backbone_slug
from geoloc.report.aggregate import read_recalls, read_summary
from geoloc.report.bootstrap import interval, recall_samples
from geoloc.report.labels import (
    SUBSET_OF,
    TEST_SETS,
    aggregator_label,
    backbone_label,
    precision_label,
    pretraining_label,
    test_set_label,
)

log = logging.getLogger(__name__)

KS = (1, 5, 10, 20)
# fmt: off
COST_COLUMNS = (
    "training_time_seconds", "train_seconds", "val_seconds", "image_cache_build_seconds",
    "images_per_second", "peak_memory_mb", "params", "trainable_params", "gflops_per_image",
    "latency_ms_per_image",
)
# fmt: on
TRAINED, BASELINE, PUBLISHED = "trained", "baseline", "published"
# The run's own keys that are factors (train.json `run`); the seed is the repeat.
RUN_FACTORS = ("backbone", "pretraining", "precision", "tag")
# train.json `hyperparameters` that are never factors: runtime knobs (they change no result), the
# run's own keys, and what follows from other settings (weights format, descriptor dimension).
NOT_FACTORS = frozenset(
    {
        "checkpoint_every",
        "num_workers",
        "max_bad_steps",
        "weights_format",
        "backbone",
        "precision",
        "seed",
        "descriptor_dim",
    }
)
# Hyperparameters a baseline records that tell two baselines of one backbone and pretraining apart.
BASELINE_FACTORS = ("aggregator",)
# Recall CSV columns (the recalls table's) of evaluation settings a grid may sweep.
EVALUATION_FACTORS = ("resize",)
FACTOR_LABELS = {
    "backbone": "Backbone",
    "pretraining": "Pretraining",
    "precision": "Precision",
    "tag": "Tag",
    "aggregator": "Aggregator",
    "dataset": "Training set",
}
BYTES_PER_FLOAT32 = 4


def factor_label(factor: str) -> str:
    """How the report names a factor: 'Aggregator', or a training key as the config spells it."""
    return FACTOR_LABELS.get(factor, factor)


def level_text(factor: str, value: Any) -> str:
    """A level of a factor in words: 'ImageNet', '3e-05', '(no tag)'."""
    if factor == "backbone":
        return backbone_label(value)
    if factor == "pretraining":
        return pretraining_label(value)
    if factor == "precision":
        return precision_label(value)
    if factor == "tag":
        return value or "(no tag)"
    if factor == "aggregator":
        return aggregator_label(value)
    if isinstance(value, float):
        return f"{value:g}"
    if value is None or value == "":
        return "default" if value is None else "none"
    return str(value)


def _hashable(value: Any) -> Any:
    """A train.json value as a dict key: lists become tuples, mappings sorted tuples."""
    if isinstance(value, list):
        return tuple(map(_hashable, value))
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


@dataclass(frozen=True)
class Variant:
    """One point of the grid without its seed; its runs are repeats of each other."""

    backbone: str
    pretraining: str
    precision: str
    tag: str = ""
    kind: str = TRAINED  # or BASELINE: the network before training, as training starts it; or PUBLISHED
    settings: tuple[tuple[str, Any], ...] = ()  # (key, value) of each varying training setting

    @property
    def is_baseline(self) -> bool:
        return self.kind == BASELINE

    def level(self, factor: str) -> Any:
        """This variant's level of `factor` (a run key or a training setting)."""
        if factor in RUN_FACTORS:
            return getattr(self, factor)
        return dict(self.settings).get(factor)

    @property
    def name(self) -> str:
        if self.kind == PUBLISHED:
            return self.tag
        if self.is_baseline:
            return "-".join([self.backbone, self.pretraining] + [str(v) for _, v in self.settings] + [BASELINE])
        swept = [f"{key}{level_text(key, value)}" for key, value in self.settings]
        parts = [self.backbone, self.pretraining, self.precision] + swept + ([self.tag] if self.tag else [])
        return "-".join(parts)

    @property
    def label(self) -> str:
        if self.kind == PUBLISHED:
            return f"{self.tag} (published model, not trained here)"
        settings = [setting_label(key, value) for key, value in self.settings]
        if self.is_baseline:
            details = [pretraining_label(self.pretraining)] + settings + ["untrained"]
            return f"{backbone_label(self.backbone)} ({', '.join(details)})"
        details = [pretraining_label(self.pretraining), precision_label(self.precision)] + settings
        if self.tag:
            details.append(self.tag)
        return f"{backbone_label(self.backbone)} ({', '.join(details)})"


def setting_label(key: str, value: Any) -> str:
    if key == "aggregator":
        return level_text(key, value)
    if key == "dataset":
        return f"training set {level_text(key, value)}"
    return f"{key} {level_text(key, value)}"


@dataclass(frozen=True)
class Hardware:
    """What a training ran on; training times are comparable only between equal ones."""

    device: str  # the device model as train.json records it
    gpus: int | None  # None when not recorded
    world_size: int | None  # training processes

    @property
    def label(self) -> str:
        device = self.device or "unknown device"
        if self.gpus is None:
            return f"{device} (GPU count not recorded)"
        if self.gpus >= 1:
            return f"{self.gpus} \u00d7 {device}"
        return f"{device}, {self.world_size} processes" if (self.world_size or 1) > 1 else device


@dataclass
class Cell:
    """One variant on one test set, over its runs (seeds)."""

    runs: list[str]
    recalls: dict[int, float]  # k -> mean recall@k over runs, percent
    run_recalls: dict[int, list[float]]  # k -> recall@k of each run
    n_queries: int
    n_database: int
    # (n_runs, n_queries) first_correct_rank, queries sorted by path; None when a run's
    # queries CSV is missing or the runs disagree on the queries.
    ranks: np.ndarray | None
    threshold: float = math.nan  # metres, as the recall CSVs record it

    def valid(self, k: int = 1) -> bool:
        return math.isfinite(self.recalls[k])

    def spread(self, k: int = 1) -> float:
        """Standard deviation of recall@k across the runs (seeds); NaN with fewer than two."""
        values = [v for v in self.run_recalls[k] if math.isfinite(v)]
        return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


@dataclass(frozen=True)
class Learning:
    """Whether a trained variant learnt: its overall R@1 gain over its untrained baseline."""

    gain: tuple[float, float, float] | None  # points, 95% CI low, high (None: untestable)
    diverged: list[str]  # why train.json says a run diverged, one phrase per run
    reasons: list[str]  # known causes of not learning, in words

    @property
    def learnt(self) -> bool:
        """False when a run diverged or the gain's 95% interval reaches zero; True if untestable."""
        return not self.diverged and (self.gain is None or self.gain[1] > 0)


@dataclass
class Results:
    table: pd.DataFrame
    variants: list[Variant]  # the trained ones, in grid order
    baselines: list[Variant]  # one per backbone x pretraining that has results
    test_sets: list[str]
    cells: dict[tuple[Variant, str], Cell]
    runs: dict[Variant, list[str]]
    reference_run: str
    reference: Variant | None
    missing_runs: list[str]  # expected, but no results at all
    missing_test_sets: dict[str, list[str]]  # run -> test sets it has no results for
    train_logs: dict[str, dict[str, Any]]
    factors: list[str] = field(default_factory=list)  # what varies between the trained variants
    published: list[Variant] = field(default_factory=list)  # published models, not trained here
    datasets: dict[str, Any] = field(default_factory=dict)  # results/datasets.json, or {}
    reference_implicit: bool = False  # the config names none: the first run of the first block
    _samples: dict[tuple[Variant, str, int], np.ndarray | None] = field(default_factory=dict)
    # The rules ask for each variant's costs and hardware many times; one pandas filter is ~10 ms.
    _costs: dict[Variant, dict[str, float]] = field(default_factory=dict)
    _hardware: dict[Variant, list[Hardware]] = field(default_factory=dict)
    _learning: dict[Variant, Learning] = field(default_factory=dict)

    @property
    def overall_test_sets(self) -> list[str]:
        """The test sets an overall score averages: each query counted once (a set whose queries
        are a subset of another's, e.g. Tokyo-Night of Tokyo-XS, is left out when that one is in)."""
        return [t for t in self.test_sets if self.subset_of(t) not in self.test_sets]

    def subset_of(self, test_set: str) -> str | None:
        """The test set whose queries include all of `test_set`'s (datasets.json, else the study's)."""
        entry = self.datasets.get("test_sets", {}).get(test_set)
        return entry.get("subset_of") if entry is not None else SUBSET_OF.get(test_set)

    def test_set_label(self, test_set: str) -> str:
        entry = self.datasets.get("test_sets", {}).get(test_set)
        return entry.get("label") or test_set if entry is not None else test_set_label(test_set)

    def protocol(self, test_set: str) -> dict[str, Any]:
        """What a test set is: label, threshold (m), query and database counts, source."""
        entry = self.datasets.get("test_sets", {}).get(test_set) or {}
        cells = [c for (_, t), c in self.cells.items() if t == test_set]
        first = cells[0] if cells else None
        threshold = entry.get("positive_dist_threshold", first.threshold if first else math.nan)
        return {
            "label": self.test_set_label(test_set),
            "threshold": math.nan if threshold is None else float(threshold),
            "n_queries": entry.get("queries", first.n_queries if first else math.nan),
            "n_database": entry.get("database", first.n_database if first else math.nan),
            "source": entry.get("source") or "",
            "subset_of": self.subset_of(test_set),
        }

    def baseline_of(self, variant: Variant) -> Variant | None:
        """The untrained network of `variant`'s backbone and pretraining (and aggregator, where the
        baselines record one), if it has results."""
        return next(
            (
                b
                for b in self.baselines
                if (b.backbone, b.pretraining) == (variant.backbone, variant.pretraining)
                and all(variant.level(key) == value for key, value in b.settings)
            ),
            None,
        )

    def table_order(self) -> list[Variant]:
        """Trained variants in grid order, each baseline just before the first one it belongs to."""
        order: list[Variant] = []
        for variant in self.variants:
            baseline = self.baseline_of(variant)
            if baseline is not None and baseline not in order:
                order.append(baseline)
            order.append(variant)
        return order + [b for b in self.baselines if b not in order]

    def cell(self, variant: Variant, test_set: str) -> Cell | None:
        return self.cells.get((variant, test_set))

    def recall(self, variant: Variant, test_set: str, k: int = 1) -> float:
        cell = self.cell(variant, test_set)
        return cell.recalls[k] if cell else math.nan

    def costs(self, variant: Variant) -> dict[str, float]:
        """Cost columns averaged over the variant's runs (latency also over test sets), and the
        descriptor's dimension and its database memory per million images (float32)."""
        if variant not in self._costs:
            rows = self.table[self.table["run"].isin(self.runs[variant])]
            per_run = rows.drop_duplicates("run")
            costs = {column: _mean(per_run[column]) for column in COST_COLUMNS}
            costs["latency_ms_per_image"] = _mean(rows["latency_ms_per_image"])
            dimension = self.hyperparameter(variant, "descriptor_dim", self.hyperparameter(variant, "fc_output_dim"))
            costs["descriptor_dim"] = float(dimension) if isinstance(dimension, (int, float)) else math.nan
            costs["memory_mb_per_million"] = costs["descriptor_dim"] * BYTES_PER_FLOAT32  # x 1e6 images / 1e6 B
            self._costs[variant] = costs
        return self._costs[variant]

    def hyperparameter(self, variant: Variant, key: str, default: Any = None) -> Any:
        """A training setting as the variant's first run's train.json records it (`default` if not)."""
        for run in self.runs.get(variant, []):
            summary = self.train_logs.get(run) or {}
            if key in summary:
                return summary[key]
            settings = summary.get("hyperparameters") or {}
            if key in settings:
                return settings[key]
        return default

    def budget(self, variant: Variant) -> tuple[int, int] | None:
        """(training iterations, batch size) from train.json; None when not recorded or when the
        variant's runs disagree."""
        found = set()
        for run in self.runs.get(variant, []):
            settings = (self.train_logs.get(run) or {}).get("hyperparameters") or {}
            try:
                found.add(
                    (int(settings["epochs"]) * int(settings["iterations_per_epoch"]), int(settings["batch_size"]))
                )
            except (KeyError, TypeError, ValueError):
                return None
        return found.pop() if len(found) == 1 else None

    def hardware(self, variant: Variant) -> list[Hardware]:
        """What the variant's runs trained on (more than one when its seeds ran on different
        hardware)."""
        if variant not in self._hardware:
            rows = self.table[self.table["run"].isin(self.runs[variant])].drop_duplicates("run")
            found = {Hardware(r.device, _count(r.gpus), _count(r.world_size)) for r in rows.itertuples()}
            self._hardware[variant] = sorted(found, key=lambda h: h.label)
        return self._hardware[variant]

    def recall_samples(self, variant: Variant, test_set: str, k: int = 1) -> np.ndarray | None:
        """Bootstrap samples of recall@k (seeds, then queries, when it has several seeds), or None
        when per-query ranks are not available."""
        key = (variant, test_set, k)
        if key not in self._samples:
            cell = self.cell(variant, test_set)
            usable = cell is not None and cell.ranks is not None and cell.valid(k)
            self._samples[key] = recall_samples(cell.ranks, k) if usable else None
        return self._samples[key]

    def learning(self, variant: Variant) -> Learning:
        """Whether a trained variant learnt (`Learning`); a baseline or published model always has."""
        if variant not in self._learning:
            self._learning[variant] = Learning(None, [], []) if variant.kind != TRAINED else self._learnt(variant)
        return self._learning[variant]

    def learnt(self, variant: Variant) -> bool:
        return self.learning(variant).learnt

    @property
    def comparable(self) -> list[Variant]:
        """The trained variants that learnt: the only candidates of comparative conclusions."""
        return [v for v in self.variants if self.learnt(v)]

    @property
    def not_learnt(self) -> list[Variant]:
        return [v for v in self.variants if not self.learnt(v)]

    def _learnt(self, variant: Variant) -> Learning:
        diverged = [
            f"{run}: {why}" for run in self.runs[variant] if (why := diverged_because(self.train_logs.get(run)))
        ]
        baseline = self.baseline_of(variant)
        gain = None
        sets = self.overall_test_sets
        if baseline is not None and sets:
            samples = [self.recall_samples(variant, t) for t in sets] + [self.recall_samples(baseline, t) for t in sets]
            if all(sample is not None for sample in samples):
                differences = np.mean([a - b for a, b in zip(samples[: len(sets)], samples[len(sets) :])], axis=0)
                value = float(np.mean([self.recall(variant, t) - self.recall(baseline, t) for t in sets]))
                gain = (value, *interval(differences))
        return Learning(gain, diverged, self._short_reasons(variant))

    def _short_reasons(self, variant: Variant) -> list[str]:
        """Known causes for a variant that may not learn: a shorter budget than the study's longest,
        made short because it is amp on a CPU (bfloat16 autocast)."""
        budget = self.budget(variant)
        longest = max((b[0] for v in self.variants if (b := self.budget(v))), default=None)
        if not (budget and longest and budget[0] < longest):
            return []
        reason = f"short: {budget[0]:,} iterations, where the longest run trained {longest:,}"
        device_types = set(self.table.loc[self.table["run"].isin(self.runs[variant]), "device_type"])
        if variant.precision == "amp" and device_types == {"cpu"}:
            reason += (
                " (AMP on a CPU is bfloat16 autocast, several times slower than FP32 on a processor without "
                "native bf16 support)"
            )
        return [reason]


def diverged_because(summary: Mapping[str, Any] | None) -> str | None:
    """Why a train.json shows a diverged run (a non-finite loss or validation recall, or steps the
    non-finite guard skipped), or None."""
    if not summary:
        return None
    for epoch in summary.get("epochs") or []:
        loss = epoch.get("loss")
        if loss is None or not math.isfinite(float(loss)):
            return f"non-finite loss in epoch {epoch.get('epoch')}"
        r1 = (epoch.get("val_recalls") or {}).get("r1")
        if r1 is not None and not math.isfinite(float(r1)):
            return f"non-finite validation R@1 in epoch {epoch.get('epoch')}"
    # The non-finite guard's count of skipped steps, where the trainer records it.
    skipped = summary.get("non_finite_steps")
    if isinstance(skipped, (int, float)) and skipped > 0:
        return f"{int(skipped)} steps with a non-finite loss skipped"
    best = summary.get("best_val_r1", 0.0)
    if summary.get("epochs") and (best is None or not math.isfinite(float(best))):
        return "no finite validation R@1"
    return None


def load_study(
    recalls_csv: Path,
    runs_dir: Path,
    baselines_dir: Path,
    reference_run: str | None,
    expected: list[str],
    datasets: Mapping[str, Any] | None = None,
) -> Results:
    """Read the recalls table, and each run's (baseline's) summary and per-query ranks from its
    folder under `runs_dir` (`baselines_dir`; published models under `published/` beside them);
    `datasets` is results/datasets.json as read by `read_datasets`."""
    table = read_recalls(recalls_csv)
    folders = result_folders(table, runs_dir, baselines_dir)
    ranks = {}
    for run, test_set in table[["run", "test_set"]].itertuples(index=False):
        path = folders[run] / "recalls" / f"{test_set}.queries.csv"
        ranks[(run, test_set)] = read_query_ranks(path) if path.is_file() else None
        if ranks[(run, test_set)] is None:
            log.warning("%s: missing; no confidence intervals for %s on %s", path, run, test_set)
    kinds = dict(zip(table["run"], table["kind"]))
    # A published model has no training summary of geoloc's own to read.
    train_logs = {run: read_summary(folder) for run, folder in folders.items() if kinds[run] != PUBLISHED}
    return build_study(table, ranks, train_logs, reference_run, expected, datasets)


def read_datasets(path: Path) -> dict[str, Any]:
    """results/datasets.json: what each test set is (label, threshold, counts, subset_of, source)."""
    try:
        datasets = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GeolocError(f"{path}: not readable JSON: {exc} (written by the workflow's datasets rule)") from exc
    entries = datasets.get("test_sets") if isinstance(datasets, dict) else None
    if not isinstance(entries, dict):
        raise GeolocError(f"{path}: no 'test_sets' object; pass the workflow's <results>/datasets.json")
    bad = [name for name, entry in entries.items() if not isinstance(entry, dict)]
    if bad:
        raise GeolocError(f"{path}: test_sets.{bad[0]} is not an object")
    return datasets


def baseline_folder(backbone: str, pretraining: str) -> str:
    """The folder name of a backbone x pretraining's baseline under `<results>/baselines` (C1)."""
    return f"{backbone_slug(backbone)}-{pretraining}"


def baseline_name(backbone: str, pretraining: str) -> str:
    """A baseline's run name (C1)."""
    return f"{baseline_folder(backbone, pretraining)}-{BASELINE}"


def result_folders(table: pd.DataFrame, runs_dir: Path, baselines_dir: Path) -> dict[str, Path]:
    """The folder of each run and baseline of the table, as the workflow lays them out."""
    rows = table.drop_duplicates("run")
    folders = {}
    for row in rows.itertuples():
        if row.kind == BASELINE:
            folders[row.run] = baselines_dir / baseline_folder(row.backbone, row.pretraining)
        elif row.kind == PUBLISHED:
            folders[row.run] = runs_dir.parent / "published" / row.run
        else:
            folders[row.run] = runs_dir / row.run
    return folders


def read_queries_csv(path: Path, columns: tuple[str, ...] = QUERY_COLUMNS) -> pd.DataFrame:
    """`columns` of a run's `*.queries.csv` as text, indexed by query path, sorted."""
    try:
        table = pd.read_csv(path, usecols=list(columns), dtype=str, keep_default_na=False)
    except ValueError as exc:  # pandas' error for a missing usecols column
        raise GeolocError(f"{path}: needs columns {', '.join(columns)} ({exc})") from exc
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise GeolocError(f"{path}: not a readable queries CSV: {exc}") from exc
    return table.set_index("query").sort_index()


def read_query_ranks(path: Path) -> pd.Series:
    """`first_correct_rank` of each query of a `*.queries.csv`, indexed by query path."""
    ranks = pd.to_numeric(
        read_queries_csv(path, ("query", "first_correct_rank"))["first_correct_rank"], errors="coerce"
    )
    if ranks.isna().any() or (ranks < 0).any():
        raise GeolocError(f"{path}: column first_correct_rank must hold ranks >= 0")
    return ranks.astype(int)


def build_study(
    table: pd.DataFrame,
    ranks: Mapping[tuple[str, str], pd.Series | None],
    train_logs: Mapping[str, dict[str, Any]],
    reference_run: str | None,
    expected: list[str],
    datasets: Mapping[str, Any] | None = None,
) -> Results:
    """Group the table's runs into variants; `ranks[(run, test_set)]` as from `read_query_ranks`.

    `reference_run` None: the first expected run is the reference (the config names none).
    """
    present = list(dict.fromkeys(table["run"]))
    # Variants in the order the grid names them, then any run that was not expected.
    ordered_runs = [run for run in expected if run in present] + [r for r in present if r not in expected]
    first_rows = table.drop_duplicates("run").set_index("run")
    trained = [run for run in ordered_runs if first_rows.loc[run, "kind"] == TRAINED]
    settings_of = {run: run_settings(first_rows.loc[run], train_logs.get(run) or {}) for run in ordered_runs}
    factors, swept = varying_factors(first_rows.loc[trained], settings_of)
    variant_of = {run: _variant(first_rows.loc[run], settings_of[run], swept) for run in ordered_runs}
    _split_repeated_seeds(variant_of, first_rows)
    runs: dict[Variant, list[str]] = {}
    for run in ordered_runs:
        runs.setdefault(variant_of[run], []).append(run)
    test_sets = _ordered_test_sets(list(dict.fromkeys(table["test_set"])))
    cells = {}
    for variant, variant_runs in runs.items():
        for test_set in test_sets:
            rows = table[table["run"].isin(variant_runs) & (table["test_set"] == test_set)]
            if len(rows):
                cells[(variant, test_set)] = _cell(rows, ranks)
    evaluated = set(zip(table["run"], table["test_set"]))
    implicit = reference_run is None
    if implicit:
        reference_run = next(iter(expected), "")
    missing_test_sets = {run: [t for t in test_sets if (run, t) not in evaluated] for run in ordered_runs}
    return Results(
        table=table,
        variants=[v for v in runs if v.kind == TRAINED],
        baselines=[v for v in runs if v.is_baseline],
        test_sets=test_sets,
        cells=cells,
        runs=runs,
        reference_run=reference_run,
        reference=variant_of.get(reference_run),
        missing_runs=[run for run in expected if run not in present],
        missing_test_sets={run: sets for run, sets in missing_test_sets.items() if sets},
        train_logs=dict(train_logs),
        factors=factors,
        published=[v for v in runs if v.kind == PUBLISHED],
        datasets=dict(datasets or {}),
        reference_implicit=implicit,
    )


def run_settings(row: pd.Series, summary: Mapping[str, Any]) -> dict[str, Any]:
    """What may tell a run's results from another's besides its run keys: its training settings
    (train.json `hyperparameters`) and the evaluation settings its recall CSVs record."""
    evaluation = {f"evaluation.{column}": row[column] for column in EVALUATION_FACTORS if column in row}
    return {**(summary.get("hyperparameters") or {}), **evaluation}


def varying_factors(rows: pd.DataFrame, settings_of: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """The factors that vary between the trained runs `rows` (indexed by run): run keys, then
    settings (`run_settings`, runtime knobs left out) with the aggregator and the training set
    first, then the tag; and those settings alone."""
    run_factors = [f for f in RUN_FACTORS if f != "tag" and rows[f].nunique() > 1]
    settings = [settings_of[run] for run in rows.index]
    keys = {key for item in settings for key in item} - NOT_FACTORS
    swept = [key for key in keys if len({_hashable(item.get(key)) for item in settings}) > 1]
    swept.sort(key=lambda key: (key not in ("aggregator", "dataset"), key))
    # A tag is a factor of its own only where it tells apart runs equal in every other factor; a
    # block's tag that only names its settings (e.g. `short` for fewer iterations) would confound them.
    tags_by_levels: dict[tuple, set[str]] = {}
    for run, item in zip(rows.index, settings):
        levels = tuple(rows.loc[run, f] for f in run_factors) + tuple(_hashable(item.get(key)) for key in swept)
        tags_by_levels.setdefault(levels, set()).add(rows.loc[run, "tag"])
    tag = ["tag"] if any(len(tags) > 1 for tags in tags_by_levels.values()) else []
    return run_factors + swept + tag, swept


def _variant(row: pd.Series, settings: Mapping[str, Any], swept: list[str]) -> Variant:
    if row["kind"] == BASELINE:
        recorded = tuple((key, _hashable(settings[key])) for key in BASELINE_FACTORS if key in settings)
        return Variant(row["backbone"], row["pretraining"], row["precision"], kind=BASELINE, settings=recorded)
    if row["kind"] == PUBLISHED:
        return Variant(row["backbone"], row["pretraining"], row["precision"], str(row.name), kind=PUBLISHED)
    levels = tuple((key, _hashable(settings.get(key))) for key in swept)
    return Variant(row["backbone"], row["pretraining"], row["precision"], row["tag"], settings=levels)


def _split_repeated_seeds(variant_of: dict[str, Variant], rows: pd.DataFrame) -> None:
    """Two runs of one variant with the same seed differ in something the summaries do not show:
    such runs stay apart, each named by its run name less the seed, rather than pooled as seeds."""
    seen: dict[tuple[Variant, float], list[str]] = {}
    for run, variant in variant_of.items():
        seen.setdefault((variant, rows.loc[run, "seed"]), []).append(run)
    for (variant, seed), runs in seen.items():
        if variant.kind != TRAINED or len(runs) < 2:
            continue
        log.warning("runs %s have equal settings and seed; they are kept apart", ", ".join(runs))
        for run in runs:
            name = run.replace(f"-s{int(seed)}", "", 1)
            variant_of[run] = dataclasses.replace(variant, settings=variant.settings + (("run", name),))


def _ordered_test_sets(names: list[str]) -> list[str]:
    # The study's order (SF-XS, Tokyo-XS, Tokyo-Night) first, then any other in table order.
    known = [name for name in TEST_SETS if name in names]
    return known + [name for name in names if name not in TEST_SETS]


def _cell(rows: pd.DataFrame, ranks: Mapping[tuple[str, str], pd.Series | None]) -> Cell:
    rows = rows.sort_values("seed")
    run_names = list(rows["run"])
    run_recalls = {k: [float(v) for v in rows[f"r{k}"]] for k in KS}
    series = [ranks.get((run, rows["test_set"].iloc[0])) for run in run_names]
    matrix = None
    if all(s is not None for s in series):
        if all(s.index.equals(series[0].index) for s in series):
            matrix = np.stack([s.to_numpy() for s in series])
        else:
            log.warning("%s: the runs were evaluated on different queries; no confidence intervals", run_names)
    threshold = rows["positive_dist_threshold"].iloc[0] if "positive_dist_threshold" in rows else math.nan
    return Cell(
        threshold=float(threshold),
        runs=run_names,
        recalls={k: float(np.mean(values)) for k, values in run_recalls.items()},
        run_recalls=run_recalls,
        n_queries=int(rows["n_queries"].iloc[0]),
        n_database=int(rows["n_database"].iloc[0]),
        ranks=matrix,
    )


def _count(value: float) -> int | None:
    return int(value) if math.isfinite(value) else None


def _mean(values: pd.Series) -> float:
    finite = values[np.isfinite(values.astype(float))]
    return float(finite.mean()) if len(finite) else math.nan
