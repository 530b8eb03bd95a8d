"""Evaluation of a model on one test set: descriptors, k-NN search, recall@1/5/10/20.

`evaluate_model` reads only images (the trainer calls it for in-loop validation);
`geoloc evaluate` adds loading the model and writing the two CSVs of the workflow.
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geoloc.atomic import atomic_open
from geoloc.data.datasets import TestSet
from geoloc.device import DEVICES, PRECISIONS, resolve_device
from geoloc.errors import GeolocError
from geoloc.evaluate.descriptors import compute_descriptors
from geoloc.evaluate.recall import (
    RECALL_KS,
    check_k,
    first_correct_ranks,
    positives_within,
    prediction_distances_m,
    recalls_at,
    search,
)
from geoloc.evaluate.result_files import QUERY_COLUMNS, RECALL_COLUMNS
from geoloc.model.network import load_model

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    recalls: dict[int, float]  # N -> recall@N in percent
    ranks: np.ndarray  # (n_queries,) first correct rank, 1..k, 0 when none in the top k
    predictions: np.ndarray  # (n_queries, k) database indices, nearest first
    distances_m: np.ndarray  # (n_queries, k) UTM metres between query and prediction
    has_positive: np.ndarray  # (n_queries,) bool: any database image within the threshold
    n_queries: int
    n_database: int
    n_queries_without_positive: int
    descriptor_seconds: float  # wall time of database + query descriptors, decoding included
    search_seconds: float  # wall time of building the index and the k-NN search
    # descriptor_seconds / images, in ms: per-image cost when batched, decoding included
    # (a throughput figure, not the latency of one image alone).
    latency_ms_per_image: float


def checked_positives(test_set: TestSet, positive_dist_threshold: float) -> list[np.ndarray]:
    """Each query's positives (database indices within the threshold), once the set is usable.

    GeolocError when the set has more queries than database images (every real test set's
    database is the larger: database/ and queries/ are most likely swapped), or when no query
    has a positive (every recall would be 0 by construction). Queries without a positive are
    logged: they stay in the denominator, as in CosPlace, and can never be correct.
    """
    n_queries, n_database = len(test_set.queries_paths), len(test_set.database_paths)
    if n_queries > n_database:
        raise GeolocError(
            f"test set {test_set.folder}: {n_queries} queries but only {n_database} database images; "
            "a test set's database must hold at least as many images as its queries "
            "(are database/ and queries/ swapped?)"
        )
    positives = positives_within(test_set.database_utm, test_set.queries_utm, positive_dist_threshold)
    n_without = sum(len(indices) == 0 for indices in positives)
    if n_without == n_queries:
        raise GeolocError(
            f"test set {test_set.folder}: no query has a database image within "
            f"{positive_dist_threshold} m, so every recall would be 0"
        )
    if n_without:
        log.warning(
            "test set %s: %d of %d queries have no database image within %s m; they count as misses",
            test_set.folder, n_without, n_queries, positive_dist_threshold,
        )
    return positives


def evaluate_model(
    model: torch.nn.Module,
    test_set: TestSet,
    *,
    image_size: int,
    batch_size: int,
    device: torch.device | str,
    precision: str,
    num_workers: int = 0,
    k: int = 20,
    positive_dist_threshold: float = 25.0,
) -> EvalResult:
    """Recall@1/5/10/20 of `model` on `test_set` (CosPlace's protocol, see geoloc.evaluate.recall).

    k must reach 20, unless it covers the whole database (then recall@20 = recall@k), and may
    not exceed the database. The set itself is checked by `checked_positives`.
    """
    positives = checked_positives(test_set, positive_dist_threshold)
    n_queries, n_database = len(test_set.queries_paths), len(test_set.database_paths)
    try:
        check_k(k, n_database)
    except GeolocError as exc:
        raise GeolocError(f"test set {test_set.folder}: {exc}; lower k (--k, evaluation.k in the config)") from None
    if k < max(RECALL_KS) and k < n_database:
        raise GeolocError(
            f"k={k} is too small to measure recall@{max(RECALL_KS)} on {n_database} database images"
        )
    has_positive = np.array([len(indices) > 0 for indices in positives], dtype=bool)
    n_without = int(n_queries - has_positive.sum())

    options = dict(image_size=image_size, batch_size=batch_size, device=device, precision=precision,
                   num_workers=num_workers)
    start = time.perf_counter()
    database = compute_descriptors(model, test_set.database_paths, **options)
    queries = compute_descriptors(model, test_set.queries_paths, **options)
    descriptor_seconds = time.perf_counter() - start

    start = time.perf_counter()
    _, predictions = search(database, queries, k)
    search_seconds = time.perf_counter() - start

    ranks = first_correct_ranks(predictions, positives)
    return EvalResult(
        recalls=recalls_at(ranks, RECALL_KS),
        ranks=ranks,
        predictions=predictions,
        distances_m=prediction_distances_m(test_set.database_utm, test_set.queries_utm, predictions),
        has_positive=has_positive,
        n_queries=n_queries,
        n_database=n_database,
        n_queries_without_positive=n_without,
        descriptor_seconds=descriptor_seconds,
        search_seconds=search_seconds,
        latency_ms_per_image=1000.0 * descriptor_seconds / (n_queries + n_database),
    )


def write_recalls_csv(path: Path, result: EvalResult, test_set_name: str, test_dir: Path) -> None:
    """One header and one data row (columns RECALL_COLUMNS), written atomically."""
    row = {
        "test_set": test_set_name,
        "n_queries": result.n_queries,
        "n_database": result.n_database,
        "n_queries_without_positive": result.n_queries_without_positive,
        **{f"r{n}": f"{result.recalls[n]:.4f}" for n in RECALL_KS},
        "descriptor_seconds": f"{result.descriptor_seconds:.3f}",
        "search_seconds": f"{result.search_seconds:.3f}",
        "latency_ms_per_image": f"{result.latency_ms_per_image:.4f}",
        "test_dir": str(test_dir),
    }
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=RECALL_COLUMNS)
        writer.writeheader()
        writer.writerow(row)


def write_queries_csv(path: Path, result: EvalResult, test_set: TestSet) -> None:
    """One row per query (columns QUERY_COLUMNS), paths relative to the test set folder."""
    database_names = [p.relative_to(test_set.folder).as_posix() for p in test_set.database_paths]
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(QUERY_COLUMNS)
        for query, rank, has_positive, predicted, distances in zip(
            test_set.queries_paths, result.ranks, result.has_positive, result.predictions, result.distances_m
        ):
            writer.writerow([
                query.relative_to(test_set.folder).as_posix(),
                int(rank),
                int(has_positive),
                "|".join(database_names[i] for i in predicted),
                "|".join(f"{d:.1f}" for d in distances),
            ])


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than `minimum`."""

    def integer(text: str) -> int:
        value = int(text)  # argparse reports a ValueError as "invalid integer value"
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return integer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="model.pt written by geoloc train")
    parser.add_argument("--test-dir", type=Path, required=True, help="folder with database/ and queries/")
    parser.add_argument("--test-set", required=True, help="name of the test set, written in the CSV")
    parser.add_argument("--out", type=Path, required=True, help="recalls CSV to write (one row)")
    parser.add_argument("--queries-out", type=Path, required=True, help="per-query CSV to write")
    parser.add_argument("--image-size", type=_int_at_least(1), required=True,
                        help="images are resized to this square")
    parser.add_argument("--batch-size", type=_int_at_least(1), required=True)
    parser.add_argument("--precision", choices=PRECISIONS, required=True)
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--num-workers", type=_int_at_least(0), default=0, help="image decoding processes")
    parser.add_argument("--k", type=_int_at_least(1), default=20,
                        help="neighbours retrieved per query (at most the database size)")
    parser.add_argument("--positive-dist-threshold", type=float, default=25.0,
                        help="metres (UTM) within which a database image is a correct match")


def run(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    test_set = TestSet(args.test_dir)
    model = load_model(args.model, map_location=device)
    result = evaluate_model(
        model, test_set, image_size=args.image_size, batch_size=args.batch_size, device=device,
        precision=args.precision, num_workers=args.num_workers, k=args.k,
        positive_dist_threshold=args.positive_dist_threshold,
    )
    log.info("%s: %s", args.test_set, ", ".join(f"R@{n} {value:.1f}" for n, value in result.recalls.items()))
    # The recalls file last, as the mark of a finished evaluation (aggregate reads it); when it
    # cannot be written (disk full), the per-query file goes too: both or neither.
    write_queries_csv(args.queries_out, result, test_set)
    try:
        write_recalls_csv(args.out, result, args.test_set, args.test_dir)
    except BaseException:
        args.queries_out.unlink(missing_ok=True)
        raise
