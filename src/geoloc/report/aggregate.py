"""`geoloc aggregate`: every run's train.json (and baseline's baseline.json) and recall CSVs ->
one tidy recalls table.

One row per run (or baseline, column `kind`) x test set. The report, and anyone with pandas, reads this one file instead
of walking the run folders. `read_recalls` is the one reader of that table.

Nothing edited or mixed up passes: each recall CSV's counts and recalls are recomputed from its
per-query file (`NAME.queries.csv`), a trained run's recall CSVs must have evaluated the model
its train.json recorded, and that model.pt must still be that file. Each refusal names the file
to delete so that the workflow makes it again.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoloc.atomic import atomic_open
from geoloc.errors import GeolocError
from geoloc.evaluate.result_files import RECALL_COLUMNS
from geoloc.provenance import checked_model

log = logging.getLogger(__name__)

# Columns of results/recalls.csv, in order; text columns are kept verbatim, the rest are numbers.
# fmt: off
TEXT_COLUMNS = (
    "run", "kind", "backbone", "pretraining", "precision", "tag", "loss", "test_set", "resize",
    "device", "device_type", "eval_device", "weights_sha256", "model_sha256", "fingerprint_sha256",
    "test_dir",
)
COLUMNS = (
    "run", "kind", "backbone", "pretraining", "precision", "seed", "tag", "loss", "test_set",
    "r1", "r5", "r10", "r20", "n_queries", "n_database", "n_queries_without_positive",
    "k", "positive_dist_threshold", "resize", "autocast",
    "training_time_seconds", "train_seconds", "val_seconds", "image_cache_build_seconds",
    "compile_seconds", "images_per_second", "peak_memory_mb", "params", "trainable_params",
    "gflops_per_image", "latency_ms_per_image", "descriptor_seconds", "search_seconds",
    "best_epoch", "best_val_r1", "device", "device_type", "gpus", "world_size", "eval_device",
    "weights_sha256", "model_sha256", "fingerprint_sha256", "test_dir",
)
# Keys every summary has: train.json of a trained run, baseline.json of an untrained baseline.
SUMMARY_KEYS = ("params", "trainable_params", "device")
# Keys only a training writes (a baseline leaves those cells empty); null becomes an empty cell.
TRAIN_KEYS = (
    "training_time_seconds", "train_seconds", "val_seconds", "image_cache_build_seconds",
    "compile_seconds", "images_per_second", "peak_memory_mb", "best_epoch", "best_val_r1",
    "device_type", "gpus", "world_size", "model_sha256", "fingerprint",
)
# fmt: on
RUN_KEYS = ("name", "backbone", "pretraining", "precision", "seed", "tag", "kind")
# The summary file of each kind of result folder (C1).
SUMMARY_FILES = {"trained": "train.json", "baseline": "baseline.json"}
# Checked but not copied: the fingerprint (its sha256 is), and the model's digest (the table's
# `model_sha256` is the recall CSV's: the file that was evaluated; the report compares the two).
NOT_COPIED = ("fingerprint", "model_sha256")
# A recall CSV's `device` is where it was evaluated; the table's `device` is where it was trained.
RENAMED_RECALL_COLUMNS = {"device": "eval_device"}
RECALL_KS = (1, 5, 10, 20)  # the r1..r20 columns
# Recalls are written with 4 decimals: a recomputed one may differ by half the last digit.
_TOLERANCE = 0.00051


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="the recalls CSV to write")
    parser.add_argument(
        "run_dirs",
        type=Path,
        nargs="+",
        metavar="RUN_DIR",
        help="run folders (train.json and recalls/*.csv) and baseline folders (baseline.json and recalls/*.csv)",
    )


def run(args: argparse.Namespace) -> None:
    rows = aggregate_runs(args.run_dirs)
    write_recalls(args.out, rows)
    log.info("wrote %d rows from %d folders to %s", len(rows), len(args.run_dirs), args.out)


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
    """One row per test set of one run or baseline: its summary joined with each recall CSV."""
    summary = read_summary(run_dir)
    recall_files = sorted(
        path for path in (run_dir / "recalls").glob("*.csv") if not path.name.endswith(".queries.csv")
    )
    for queries in sorted((run_dir / "recalls").glob("*.queries.csv")):
        recall = queries.with_name(queries.name.removesuffix(".queries.csv") + ".csv")
        if recall not in recall_files:  # a deleted summary must not make its test set vanish from the study
            raise GeolocError(
                f"{recall}: missing beside {queries.name}: delete {queries.parent} and rerun the "
                f"workflow (it re-evaluates {run_dir.name})"
            )
    if recall_files and (run_dir / "model.pt").exists():  # a run folder copied without it has nothing to compare
        checked_model(run_dir / "model.pt")
    rows = []
    for path in recall_files:
        recall = read_recall_csv(path)
        check_against_queries(path, recall)
        if summary["run"]["kind"] == "trained" and recall["model_sha256"] != summary["model_sha256"]:
            raise GeolocError(
                f"{path}: evaluated a model with sha256 {recall['model_sha256'][:12] or 'none'}..., not the "
                f"{str(summary['model_sha256'])[:12]}... of {run_dir / 'train.json'} (the model was retrained "
                f"after its evaluation): delete {path.parent} and rerun the workflow (it re-evaluates the run)"
            )
        rows.append(_row(summary, path, recall))
    return rows


def check_against_queries(path: Path, recall: dict[str, str]) -> None:
    """The counts and recalls of a recall CSV are those its per-query file gives (a hand-edited
    or stale summary is refused, naming the way out)."""
    queries = path.with_name(path.name.removesuffix(".csv") + ".queries.csv")
    way_out = f"delete {path.parent} and rerun the workflow (it re-evaluates {path.parent.parent.name})"
    try:
        table = pd.read_csv(queries, usecols=["first_correct_rank", "has_positive"], dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise GeolocError(f"{queries}: missing, so {path} cannot be checked: {way_out}") from None
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise GeolocError(f"{queries}: not a readable per-query CSV ({exc}): {way_out}") from exc
    ranks = pd.to_numeric(table["first_correct_rank"], errors="coerce").to_numpy()
    if len(ranks) == 0 or np.isnan(ranks).any() or (ranks < 0).any():
        raise GeolocError(f"{queries}: column first_correct_rank must hold ranks >= 0, one per query: {way_out}")
    found = {
        "n_queries": float(len(ranks)),
        "n_queries_without_positive": float((table["has_positive"] == "0").sum()),
        **{f"r{k}": 100.0 * np.count_nonzero((ranks > 0) & (ranks <= k)) / len(ranks) for k in RECALL_KS},
    }
    for column, value in found.items():
        try:
            written = float(recall[column])
        except ValueError:
            written = math.nan
        if not abs(written - value) <= _TOLERANCE:
            raise GeolocError(
                f"{path}: {column} is {recall[column]} but its per-query file {queries.name} gives {value:.4f} "
                f"(edited by hand, or from another evaluation): {way_out}"
            )


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The train.json of a run folder, or the baseline.json of a baseline folder."""
    for name in SUMMARY_FILES.values():
        if (run_dir / name).is_file():
            return read_train_json(run_dir / name)
    if run_dir.parent.name == "published":
        return published_summary(run_dir)
    raise GeolocError(
        f"{run_dir / 'train.json'}: missing (and no baseline.json); is {run_dir} a finished run or baseline?"
    )


def published_summary(folder: Path) -> dict[str, Any]:
    """What a released model's folder (`<results>/published/<name>`: recall CSVs, no summary) stands
    for: a reference row of kind "published", evaluated in fp32, trained elsewhere."""
    from geoloc.model.published import PUBLISHED  # torch: only a study with published models pays for it

    if folder.name not in PUBLISHED:
        raise GeolocError(f"{folder}: {folder.name!r} is not a released model ({', '.join(PUBLISHED)})")
    run = {
        "name": folder.name,
        "backbone": PUBLISHED[folder.name].backbone,
        "pretraining": "published",
        "precision": "fp32",
        "seed": None,
        "tag": "",
        "kind": "published",
    }
    return {"run": run, **dict.fromkeys(SUMMARY_KEYS)}


def read_train_json(path: Path) -> dict[str, Any]:
    """A train.json or baseline.json, checked for every key the report reads."""
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
            raise GeolocError(f"{path}: key run.{key} is missing (written by an older geoloc?): {_remake(path)}")
    kind = train["run"]["kind"]
    if SUMMARY_FILES.get(kind) != path.name:
        expected = ", ".join(f"{file} has {name!r}" for name, file in SUMMARY_FILES.items())
        raise GeolocError(f"{path}: run.kind is {kind!r}; {expected}")
    for key in SUMMARY_KEYS + (TRAIN_KEYS if kind == "trained" else ()):
        if key not in train:
            raise GeolocError(f"{path}: key {key} is missing (written by an older geoloc?): {_remake(path)}")
    if kind == "trained":
        fingerprint = train["fingerprint"]
        if not (isinstance(fingerprint, dict) and isinstance(fingerprint.get("settings"), dict)):
            raise GeolocError(f"{path}: key fingerprint must hold sha256 and a settings object")
    return train


def _remake(summary: Path) -> str:
    """How to have a summary file made again: delete its folder, which the workflow remakes."""
    remakes = "retrains" if summary.name == "train.json" else "remakes"
    return f"delete {summary.parent} and rerun the workflow (it {remakes} it)"


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


def _row(train: dict[str, Any], path: Path, recall: dict[str, str]) -> dict[str, Any]:
    run_info = train["run"]
    if recall["kind"] != run_info["kind"]:
        raise GeolocError(
            f"{path}: kind is {recall['kind']!r} but its folder's summary says {run_info['kind']!r} "
            "(recalls copied from another folder?)"
        )
    weights = train.get("weights") or {}
    row = {
        "run": run_info["name"],
        "kind": run_info["kind"],
        "backbone": run_info["backbone"],
        "pretraining": run_info["pretraining"],
        "precision": run_info["precision"],
        "seed": run_info["seed"],
        "tag": run_info["tag"] or "",
        "loss": (train.get("hyperparameters") or {}).get("loss", ""),
        # Optional: written only where the trainer measures it.
        "gflops_per_image": train.get("gflops_per_image"),
        "weights_sha256": weights.get("sha256", ""),
        "fingerprint_sha256": (train.get("fingerprint") or {}).get("sha256", ""),
    }
    row.update({key: train.get(key) for key in SUMMARY_KEYS + TRAIN_KEYS if key not in NOT_COPIED})
    row.update({RENAMED_RECALL_COLUMNS.get(key, key): recall[key] for key in RECALL_COLUMNS if key != "kind"})
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
