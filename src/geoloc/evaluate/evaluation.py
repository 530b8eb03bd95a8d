"""Evaluation of a model on one test set: descriptors, k-NN search, recall@1/5/10/20.

`evaluate_model` reads only images (the trainer calls it for in-loop validation). Its steps
are public for `geoloc evaluate` (geoloc.evaluate.command), which checks every test set
before the first descriptor and embeds a database shared by two test sets once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geoloc.data.datasets import TestSet
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


@dataclass(frozen=True)
class Embedding:
    """Descriptors of a list of images and the wall time they took, decoding included."""

    descriptors: np.ndarray
    seconds: float


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
            test_set.folder,
            n_without,
            n_queries,
            positive_dist_threshold,
        )
    return positives


def checked_k(test_set: TestSet, k: int) -> None:
    """k must reach 20, unless it covers the whole database (then recall@20 = recall@k), and may
    not exceed the database."""
    n_database = len(test_set.database_paths)
    try:
        check_k(k, n_database)
    except GeolocError as exc:
        raise GeolocError(f"test set {test_set.folder}: {exc}; lower k (--k, evaluation.k in the config)") from None
    if k < max(RECALL_KS) and k < n_database:
        raise GeolocError(f"k={k} is too small to measure recall@{max(RECALL_KS)} on {n_database} database images")


def embed(model: torch.nn.Module, paths: list[Path], **options) -> Embedding:
    """`compute_descriptors(model, paths, **options)`, timed."""
    start = time.perf_counter()
    descriptors = compute_descriptors(model, paths, **options)
    return Embedding(descriptors, time.perf_counter() - start)


def score(
    test_set: TestSet, positives: list[np.ndarray], database: Embedding, queries: Embedding, k: int
) -> EvalResult:
    """Search the database for each query and count the correct ones (CosPlace's recall@N)."""
    start = time.perf_counter()
    _, predictions = search(database.descriptors, queries.descriptors, k)
    search_seconds = time.perf_counter() - start
    ranks = first_correct_ranks(predictions, positives)
    has_positive = np.array([len(indices) > 0 for indices in positives], dtype=bool)
    n_queries, n_database = len(test_set.queries_paths), len(test_set.database_paths)
    descriptor_seconds = database.seconds + queries.seconds
    return EvalResult(
        recalls=recalls_at(ranks, RECALL_KS),
        ranks=ranks,
        predictions=predictions,
        distances_m=prediction_distances_m(test_set.database_utm, test_set.queries_utm, predictions),
        has_positive=has_positive,
        n_queries=n_queries,
        n_database=n_database,
        n_queries_without_positive=int(n_queries - has_positive.sum()),
        descriptor_seconds=descriptor_seconds,
        search_seconds=search_seconds,
        latency_ms_per_image=1000.0 * descriptor_seconds / (n_queries + n_database),
    )


def evaluate_model(
    model: torch.nn.Module,
    test_set: TestSet,
    *,
    batch_size: int,
    device: torch.device | str,
    num_workers: int,
    k: int,
    positive_dist_threshold: float,
    resize: tuple[int, int] | None = None,
    autocast: bool = False,
) -> EvalResult:
    """Recall@1/5/10/20 of `model` on `test_set`, as CosPlace's test.py measures it.

    Images at their own resolution (`resize`: H x W) and fp32 descriptors (`autocast`: the
    forward pass under the device's autocast); see geoloc.evaluate.descriptors and .recall.
    The set and k are checked before any descriptor is computed.
    """
    positives = checked_positives(test_set, positive_dist_threshold)
    checked_k(test_set, k)
    options = dict(batch_size=batch_size, device=device, num_workers=num_workers, resize=resize, autocast=autocast)
    database = embed(model, test_set.database_paths, **options)
    queries = embed(model, test_set.queries_paths, **options)
    return score(test_set, positives, database, queries, k)
