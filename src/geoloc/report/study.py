"""The study as the report sees it: variants (runs that differ only by seed) x test sets.

Built from the recalls table (`geoloc aggregate`) and each run's per-query ranks
(`recalls/{test_set}.queries.csv`); everything the report says is computed from a `Study`.
Untrained baselines (one per backbone x pretraining) are variants of kind "baseline": they sit
beside the trained variants in tables and plots, and only ever as what training is measured
against.
"""

from __future__ import annotations

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
from geoloc.report.bootstrap import recall_samples
from geoloc.report.labels import SUBSET_OF, TEST_SETS, backbone_label, precision_label, pretraining_label

log = logging.getLogger(__name__)

KS = (1, 5, 10, 20)
# fmt: off
COST_COLUMNS = (
    "training_time_seconds", "train_seconds", "val_seconds", "image_cache_build_seconds",
    "images_per_second", "peak_memory_mb", "params", "trainable_params", "gflops_per_image",
    "latency_ms_per_image",
)
# fmt: on
TRAINED, BASELINE = "trained", "baseline"


@dataclass(frozen=True)
class Variant:
    """One point of the grid without its seed; its runs are repeats of each other."""

    backbone: str
    pretraining: str
    precision: str
    tag: str = ""
    kind: str = TRAINED  # or BASELINE: the network before training, as training starts it

    @property
    def is_baseline(self) -> bool:
        return self.kind == BASELINE

    @property
    def name(self) -> str:
        if self.is_baseline:
            return f"{self.backbone}-{self.pretraining}-{BASELINE}"
        parts = [self.backbone, self.pretraining, self.precision] + ([self.tag] if self.tag else [])
        return "-".join(parts)

    @property
    def label(self) -> str:
        if self.is_baseline:
            return f"{backbone_label(self.backbone)} ({pretraining_label(self.pretraining)}, untrained)"
        details = [pretraining_label(self.pretraining), precision_label(self.precision)]
        if self.tag:
            details.append(self.tag)
        return f"{backbone_label(self.backbone)} ({', '.join(details)})"


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

    def valid(self, k: int = 1) -> bool:
        return math.isfinite(self.recalls[k])


@dataclass
class Study:
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
    _samples: dict[tuple[Variant, str, int], np.ndarray | None] = field(default_factory=dict)
    # The rules ask for each variant's costs and hardware many times; one pandas filter is ~10 ms.
    _costs: dict[Variant, dict[str, float]] = field(default_factory=dict)
    _hardware: dict[Variant, list[Hardware]] = field(default_factory=dict)

    @property
    def overall_test_sets(self) -> list[str]:
        """The test sets an overall score averages: each query counted once (Tokyo-Night's
        queries are Tokyo-XS's night third, so Tokyo-Night is left out when Tokyo-XS is in)."""
        return [t for t in self.test_sets if SUBSET_OF.get(t) not in self.test_sets]

    def baseline_of(self, variant: Variant) -> Variant | None:
        """The untrained network of `variant`'s backbone and pretraining, if it has results."""
        return next(
            (b for b in self.baselines if (b.backbone, b.pretraining) == (variant.backbone, variant.pretraining)),
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
        """Cost columns averaged over the variant's runs (latency also over test sets)."""
        if variant not in self._costs:
            rows = self.table[self.table["run"].isin(self.runs[variant])]
            per_run = rows.drop_duplicates("run")
            costs = {column: _mean(per_run[column]) for column in COST_COLUMNS}
            costs["latency_ms_per_image"] = _mean(rows["latency_ms_per_image"])
            self._costs[variant] = costs
        return self._costs[variant]

    def hardware(self, variant: Variant) -> list[Hardware]:
        """What the variant's runs trained on (more than one when its seeds ran on different
        hardware)."""
        if variant not in self._hardware:
            rows = self.table[self.table["run"].isin(self.runs[variant])].drop_duplicates("run")
            found = {Hardware(r.device, _count(r.gpus), _count(r.world_size)) for r in rows.itertuples()}
            self._hardware[variant] = sorted(found, key=lambda h: h.label)
        return self._hardware[variant]

    def recall_samples(self, variant: Variant, test_set: str, k: int = 1) -> np.ndarray | None:
        """Bootstrap samples of recall@k, or None when per-query ranks are not available."""
        key = (variant, test_set, k)
        if key not in self._samples:
            cell = self.cell(variant, test_set)
            usable = cell is not None and cell.ranks is not None and cell.valid(k)
            self._samples[key] = recall_samples(cell.ranks, k) if usable else None
        return self._samples[key]


def load_study(
    recalls_csv: Path, runs_dir: Path, baselines_dir: Path, reference_run: str, expected: list[str]
) -> Study:
    """Read the recalls table, and each run's (baseline's) summary and per-query ranks from its
    folder under `runs_dir` (`baselines_dir`)."""
    table = read_recalls(recalls_csv)
    folders = result_folders(table, runs_dir, baselines_dir)
    ranks = {}
    for run, test_set in table[["run", "test_set"]].itertuples(index=False):
        path = folders[run] / "recalls" / f"{test_set}.queries.csv"
        ranks[(run, test_set)] = read_query_ranks(path) if path.is_file() else None
        if ranks[(run, test_set)] is None:
            log.warning("%s: missing; no confidence intervals for %s on %s", path, run, test_set)
    train_logs = {run: read_summary(folder) for run, folder in folders.items()}
    return build_study(table, ranks, train_logs, reference_run, expected)


def baseline_folder(backbone: str, pretraining: str) -> str:
    """The folder name of a backbone x pretraining's baseline under `<results>/baselines` (C1)."""
    return f"{backbone_slug(backbone)}-{pretraining}"


def baseline_name(backbone: str, pretraining: str) -> str:
    """A baseline's run name (C1)."""
    return f"{baseline_folder(backbone, pretraining)}-{BASELINE}"


def result_folders(table: pd.DataFrame, runs_dir: Path, baselines_dir: Path) -> dict[str, Path]:
    """The folder of each run and baseline of the table, as the workflow lays them out."""
    rows = table.drop_duplicates("run")
    return {
        row.run: (
            baselines_dir / baseline_folder(row.backbone, row.pretraining)
            if row.kind == BASELINE
            else runs_dir / row.run
        )
        for row in rows.itertuples()
    }


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
    reference_run: str,
    expected: list[str],
) -> Study:
    """Group the table's runs into variants; `ranks[(run, test_set)]` as from `read_query_ranks`."""
    present = list(dict.fromkeys(table["run"]))
    # Variants in the order the grid names them, then any run that was not expected.
    ordered_runs = [run for run in expected if run in present] + [r for r in present if r not in expected]
    first_rows = table.drop_duplicates("run").set_index("run")
    variant_of = {run: _variant(first_rows.loc[run]) for run in ordered_runs}
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
    missing_test_sets = {run: [t for t in test_sets if (run, t) not in evaluated] for run in ordered_runs}
    return Study(
        table=table,
        variants=[v for v in runs if not v.is_baseline],
        baselines=[v for v in runs if v.is_baseline],
        test_sets=test_sets,
        cells=cells,
        runs=runs,
        reference_run=reference_run,
        reference=variant_of.get(reference_run),
        missing_runs=[run for run in expected if run not in present],
        missing_test_sets={run: sets for run, sets in missing_test_sets.items() if sets},
        train_logs=dict(train_logs),
    )


def _variant(row: pd.Series) -> Variant:
    if row["kind"] == BASELINE:
        return Variant(row["backbone"], row["pretraining"], row["precision"], kind=BASELINE)
    return Variant(row["backbone"], row["pretraining"], row["precision"], row["tag"])


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
    return Cell(
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
