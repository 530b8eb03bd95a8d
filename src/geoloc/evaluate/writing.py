"""Writing the result files of `geoloc evaluate` (their columns: geoloc.evaluate.result_files).

`write_all_or_none` writes a command's files under temporary names and renames them only once
every one is complete; whatever stops it (an error, a full disk, a signal turned into an
exception) leaves none of them under its final name, and no temporary file.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from geoloc.atomic import atomic_open
from geoloc.data.datasets import TestSet
from geoloc.evaluate.evaluation import EvalResult
from geoloc.evaluate.recall import RECALL_KS
from geoloc.evaluate.result_files import QUERY_COLUMNS, RECALL_COLUMNS


@dataclass(frozen=True)
class Provenance:
    """What made a recall row, besides the test set: the model and the evaluation settings."""

    model_sha256: str  # "" for an untrained baseline
    k: int
    positive_dist_threshold: float
    resize: tuple[int, int] | None
    autocast: bool
    device: str  # as geoloc.provenance.device_name gives it
    kind: str  # "trained", "baseline" or "published"


def recall_row(result: EvalResult, test_set_name: str, test_dir: Path, provenance: Provenance) -> dict[str, object]:
    """The one data row of a recall CSV (RECALL_COLUMNS)."""
    return {
        "test_set": test_set_name,
        "n_queries": result.n_queries,
        "n_database": result.n_database,
        "n_queries_without_positive": result.n_queries_without_positive,
        **{f"r{n}": f"{result.recalls[n]:.4f}" for n in RECALL_KS},
        "descriptor_seconds": f"{result.descriptor_seconds:.3f}",
        "search_seconds": f"{result.search_seconds:.3f}",
        "latency_ms_per_image": f"{result.latency_ms_per_image:.4f}",
        "test_dir": str(test_dir),
        "model_sha256": provenance.model_sha256,
        "k": provenance.k,
        "positive_dist_threshold": provenance.positive_dist_threshold,
        "resize": "" if provenance.resize is None else "{}x{}".format(*provenance.resize),
        "autocast": int(provenance.autocast),
        "device": provenance.device,
        "kind": provenance.kind,
    }


def write_recalls(handle: TextIO, row: dict[str, object]) -> None:
    writer = csv.DictWriter(handle, fieldnames=RECALL_COLUMNS)
    writer.writeheader()
    writer.writerow(row)


def write_queries(handle: TextIO, result: EvalResult, test_set: TestSet) -> None:
    """One row per query (QUERY_COLUMNS), paths relative to the test set folder.

    The predictions and their distances are JSON arrays: a file name may hold '|', ',', '"' or
    a newline, which no separator survives; csv quotes the cells that need it.
    """
    database_names = [p.relative_to(test_set.folder).as_posix() for p in test_set.database_paths]
    writer = csv.writer(handle)
    writer.writerow(QUERY_COLUMNS)
    for query, rank, has_positive, predicted, distances in zip(
        test_set.queries_paths, result.ranks, result.has_positive, result.predictions, result.distances_m
    ):
        writer.writerow(
            [
                query.relative_to(test_set.folder).as_posix(),
                int(rank),
                int(has_positive),
                json.dumps([database_names[i] for i in predicted], ensure_ascii=False),
                json.dumps([round(float(d), 1) for d in distances]),
            ]
        )


def write_all_or_none(files: list[tuple[Path, Callable[[TextIO], None]]]) -> None:
    """Write each (path, writer) to a temporary file, then rename them all, last one first.

    Renamed last to first: list the file that marks a finished job first (aggregate reads the
    recall CSVs). On any exception, every path is removed (also those renamed already, and
    older files of those names, which belong to another evaluation), then it is raised again.
    """
    try:
        with contextlib.ExitStack() as stack:
            for path, write in files:
                write(stack.enter_context(atomic_open(path, "w", newline="", encoding="utf-8")))
    except BaseException:
        for path, _ in files:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                path.unlink()
        raise
