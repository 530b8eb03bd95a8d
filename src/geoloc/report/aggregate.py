"""`geoloc aggregate`: every run's train.json and recall CSVs -> one tidy recalls table.

One row per run x test set. The report, and anyone with pandas, reads this one file instead
of walking the run folders. `read_recalls` is the one reader of that table.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from geoloc.atomic import atomic_open
from geoloc.errors import GeolocError
from geoloc.evaluate.result_files import RECALL_COLUMNS

log = logging.getLogger(__name__)

# Columns of results/recalls.csv, in order; text columns are kept verbatim, the rest are numbers.
# fmt: off
TEXT_COLUMNS = (
    "run", "backbone", "pretraining", "precision", "tag", "loss", "test_set", "device",
    "weights_sha256", "test_dir",
)
COLUMNS = (
    "run", "backbone", "pretraining", "precision", "seed", "tag", "loss", "test_set",
    "r1", "r5", "r10", "r20", "n_queries", "n_database", "n_queries_without_positive",
    "training_time_seconds", "train_seconds", "val_seconds", "images_per_second",
    "peak_memory_mb", "params", "trainable_params", "gflops_per_image",
    "latency_ms_per_image", "descriptor_seconds", "search_seconds",
    "best_epoch", "best_val_r1", "device", "weights_sha256", "test_dir",
)
# train.json keys copied as they are (null becomes an empty cell).
TRAIN_KEYS = (
    "training_time_seconds", "train_seconds", "val_seconds", "images_per_second", "peak_memory_mb",
    "params", "trainable_params", "best_epoch", "best_val_r1", "device",
)
# fmt: on
RUN_KEYS = ("name", "backbone", "pretraining", "precision", "seed", "tag")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="the recalls CSV to write")
    parser.add_argument(
        "run_dirs",
        type=Path,
        nargs="+",
        metavar="RUN_DIR",
        help="run folders holding train.json and recalls/*.csv",
    )


def run(args: argparse.Namespace) -> None:
    rows = aggregate_runs(args.run_dirs)
    write_recalls(args.out, rows)
    log.info("wrote %d rows from %d runs to %s", len(rows), len(args.run_dirs), args.out)


def aggregate_runs(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """Rows of the recalls table for all runs; a run not evaluated yet contributes none."""
    rows = []
    for run_dir in run_dirs:
        run_rows = read_run(Path(run_dir))
        if not run_rows:
            log.warning("%s: no recalls/*.csv yet; the run is left out", run_dir)
        rows.extend(run_rows)
    return rows


def read_run(run_dir: Path) -> list[dict[str, Any]]:
    """One row per test set of one run: its train.json joined with each recall CSV."""
    train = read_train_json(run_dir / "train.json")
    recall_files = sorted(
        path for path in (run_dir / "recalls").glob("*.csv") if not path.name.endswith(".queries.csv")
    )
    return [_row(train, read_recall_csv(path)) for path in recall_files]


def read_train_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise GeolocError(f"{path}: missing; is {path.parent} a finished training run?")
    try:
        train = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GeolocError(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(train, dict) or not isinstance(train.get("run"), dict):
        raise GeolocError(f"{path}: no 'run' object")
    for key in RUN_KEYS:
        if key not in train["run"]:
            raise GeolocError(f"{path}: key run.{key} is missing")
    for key in TRAIN_KEYS:
        if key not in train:
            raise GeolocError(f"{path}: key {key} is missing")
    return train


def read_recall_csv(path: Path) -> dict[str, str]:
    """The one data row of a run's `recalls/{test_set}.csv`."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise GeolocError(f"{path}: not readable: {exc}") from exc
    if len(rows) != 1:
        raise GeolocError(f"{path}: expected one data row, found {len(rows)}")
    missing = [column for column in RECALL_COLUMNS if column not in rows[0]]
    if missing:
        raise GeolocError(f"{path}: column {missing[0]} is missing")
    return rows[0]


def _row(train: dict[str, Any], recall: dict[str, str]) -> dict[str, Any]:
    run_info = train["run"]
    weights = train.get("weights") or {}
    row = {
        "run": run_info["name"],
        "backbone": run_info["backbone"],
        "pretraining": run_info["pretraining"],
        "precision": run_info["precision"],
        "seed": run_info["seed"],
        "tag": run_info["tag"] or "",
        "loss": (train.get("hyperparameters") or {}).get("loss", ""),
        # Optional: written only where the trainer measures it.
        "gflops_per_image": train.get("gflops_per_image"),
        "weights_sha256": weights.get("sha256", ""),
    }
    row.update({key: train[key] for key in TRAIN_KEYS})
    row.update({key: recall[key] for key in RECALL_COLUMNS})
    return row


def write_recalls(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({column: _cell(row[column]) for column in COLUMNS})


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def read_recalls(path: Path) -> pd.DataFrame:
    """Read a recalls table: text columns as strings ('' when empty), the rest as floats."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise GeolocError(f"{path}: not a readable recalls CSV: {exc}") from exc
    missing = [column for column in COLUMNS if column not in table.columns]
    if missing:
        raise GeolocError(f"{path}: column {missing[0]} is missing")
    for column in COLUMNS:
        if column not in TEXT_COLUMNS:
            numbers = pd.to_numeric(table[column].replace("", "nan"), errors="coerce")
            bad = numbers.isna() & ~table[column].isin(["", "nan", "NaN"])
            if bad.any():
                line = int(bad.to_numpy().nonzero()[0][0]) + 2
                value = table[column][bad].iloc[0]
                raise GeolocError(f"{path}: line {line}: column {column} is not a number: {value!r}")
            table[column] = numbers.astype(float)
    return table
