"""Recall@N of a retrieval: k-NN search, positives by UTM distance, ranks, recalls (numpy only).

As CosPlace: database images within `threshold` metres (UTM) of a query are its positives;
a query is correct at N when one of its N nearest database descriptors (L2) is a positive;
recall@N is the percentage of correct queries over all queries, so a query without any
positive stays in the denominator and never counts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from geoloc.errors import GeolocError

RECALL_KS = (1, 5, 10, 20)
# Candidates faiss proposes beyond the k asked for: at least this many, and at least k.
_MIN_MARGIN = 16
# Queries re-ranked at a time (their candidates in float64: 256 x 40 x 512 x 8 bytes = 42 MB).
_RERANK_BLOCK = 256
# Bound on faiss's float32 squared distance error, per dimension and unit of squared norm:
# |q|^2 + |x|^2 - 2 q.x in float32 errs by at most about 2 (D + 2) rounding units (2^-24) of
# |q|^2 + |x|^2; twice that, to be safe.
_FLOAT32_ERROR = 4 * 2.0**-24


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def openblas_core_for(cpu_flags: set[str]) -> str | None:
    """The fastest OpenBLAS 0.3.15 kernel family that the CPU can run, or None to let it choose."""
    if {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= cpu_flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= cpu_flags:
        return "Haswell"
    return None


def _import_faiss():
    """Import faiss with a fast OpenBLAS kernel.

    The faiss-cpu wheels bundle OpenBLAS 0.3.15, which does not recognise recent x86 CPUs
    (Sapphire Rapids, for one) and falls back to its generic SSE3 kernels: the matrix product
    at the heart of every large search then runs about 3x slower (benchmarks/search_benchmark.py).
    OpenBLAS reads OPENBLAS_CORETYPE once, when it is loaded, so the variable is set for this
    import only (numpy's own OpenBLAS is loaded already), and never over a user's choice.
    """
    core = None if "OPENBLAS_CORETYPE" in os.environ else openblas_core_for(_cpu_flags())
    if core is not None:
        os.environ["OPENBLAS_CORETYPE"] = core
    try:
        import faiss
    finally:
        if core is not None:
            del os.environ["OPENBLAS_CORETYPE"]
    return faiss


faiss = _import_faiss()


def positives_within(database_utm: np.ndarray, queries_utm: np.ndarray, threshold: float) -> list[np.ndarray]:
    """For each query, the sorted indices of database images at most `threshold` metres away.

    The boundary is inclusive (distance <= threshold), as sklearn's radius_neighbors that
    CosPlace uses. A KD-tree keeps this O(n log n): the real test sets would need an all-pairs
    matrix of hundreds of millions of distances.
    """
    database_utm = _coordinates(database_utm, "database_utm")
    queries_utm = _coordinates(queries_utm, "queries_utm")
    if not threshold > 0:
        raise GeolocError(f"positive distance threshold must be positive, got {threshold}")
    tree = cKDTree(database_utm)
    neighbours = tree.query_ball_point(queries_utm, r=threshold, return_sorted=True)
    return [np.asarray(indices, dtype=np.int64) for indices in neighbours]


def _coordinates(utm: np.ndarray, name: str) -> np.ndarray:
    utm = np.asarray(utm, dtype=np.float64)
    if utm.ndim != 2 or utm.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2) (east, north), got {utm.shape}")
    return utm


def check_k(k: int, n_database: int) -> None:
    """Raise GeolocError unless 1 <= k <= n_database (faiss would pad the results with -1)."""
    if k < 1:
        raise GeolocError(f"k must be at least 1, got {k}")
    if k > n_database:
        raise GeolocError(f"k={k} nearest neighbours asked for, but the database holds only {n_database} images")


def search(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN of every query among the database descriptors (squared L2), nearest first.

    Returns (distances, indices), each of shape (n_queries, k); distances are float64. Equal
    distances come out in database-index order, on every machine: faiss's float32 distances
    depend on the BLAS kernel and on the block a database row falls in (identical rows come out
    about 1e-6 apart on AVX2), so faiss only proposes candidates, the k + margin nearest, and
    they are ranked by float64 distances, which identical rows share, ties by index. Where the
    margin cannot prove that no database image outside the candidates is as near as the k-th
    (a tie or near-tie at the edge), that query is ranked over the whole database.
    """
    database = np.ascontiguousarray(database, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if database.ndim != 2 or queries.ndim != 2 or database.shape[1] != queries.shape[1]:
        raise ValueError(f"descriptors must be (n, D) with one D, got {database.shape} and {queries.shape}")
    check_k(k, len(database))
    n_candidates = min(len(database), k + max(k, _MIN_MARGIN))
    # faiss multiplies the queries by the database a block of rows at a time; with its default
    # 1024-row blocks the product runs ~1.6x slower than in one piece (measured on 100k x 512),
    # 8192 rows (a 128 MB buffer for 4096 queries) run as fast as the bare product.
    faiss.cvar.distance_compute_blas_database_bs = 8192
    index = _flat_l2_index(database.shape[1])
    index.add(database)
    approximate, candidates = index.search(queries, n_candidates)
    distances = np.empty((len(queries), k))
    indices = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), _RERANK_BLOCK):
        block = slice(start, start + _RERANK_BLOCK)
        exact = _squared_l2(queries[block], database[candidates[block]])
        distances[block], indices[block] = _k_smallest(exact, candidates[block], k)
    if n_candidates < len(database):
        # Every database image outside the candidates is at least as far as the last candidate
        # by faiss's distance, which errs by at most `slack`: nearer than the k-th it cannot be.
        # (einsum: squared norms without a database-sized temporary)
        largest = float(np.einsum("ij,ij->i", database, database).max())
        slack = _FLOAT32_ERROR * (database.shape[1] + 2) * (np.einsum("ij,ij->i", queries, queries) + largest)
        for q in np.flatnonzero(approximate[:, -1] - slack <= distances[:, -1]):
            distances[q], indices[q] = _exact_knn(database, queries[q], k)
    return distances, indices


def _squared_l2(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(b, m) float64 squared distances between queries (b, D) and their rows (b, m, D).

    One formula for every row, so identical rows get bitwise identical distances (numpy sums
    each contiguous row the same way), and float64 rounding stays far below float32's.
    """
    difference = np.subtract(rows, queries[:, None, :], dtype=np.float64)
    return np.square(difference, out=difference).sum(axis=2)


def _k_smallest(distances: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k smallest distances and their indices, ties broken by the smaller index."""
    order = np.lexsort((indices, distances), axis=1)[:, :k]
    return np.take_along_axis(distances, order, axis=1), np.take_along_axis(indices, order, axis=1)


def _exact_knn(database: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of one query over the whole database, by `_squared_l2`, ties by index."""
    distances = np.concatenate(
        [
            _squared_l2(query[None], database[None, start : start + _RERANK_BLOCK * 16])[0]
            for start in range(0, len(database), _RERANK_BLOCK * 16)
        ]
    )
    found, indices = _k_smallest(distances[None], np.arange(len(database))[None], k)
    return found[0], indices[0]


def _flat_l2_index(dim: int):
    index = faiss.IndexFlatL2(dim)
    if faiss.get_num_gpus() > 0:
        # The faiss helper keeps the GPU resources alive as long as the index.
        return faiss.index_cpu_to_all_gpus(index)
    return index


def first_correct_ranks(predictions: np.ndarray, positives: Sequence[np.ndarray]) -> np.ndarray:
    """1-based rank of each query's first prediction that is a positive; 0 when none is.

    Vectorised: each (query, database index) pair becomes one integer key, and one sorted
    membership test answers all queries x k predictions at once.
    """
    predictions = np.asarray(predictions, dtype=np.int64)
    if predictions.ndim != 2 or len(predictions) != len(positives):
        raise ValueError(
            f"predictions must be (n_queries, k) with one row per positives entry, "
            f"got {predictions.shape} and {len(positives)} entries"
        )
    if predictions.size and predictions.min() < 0:
        raise ValueError("predictions hold a negative database index (faiss pads missing neighbours with -1)")
    counts = np.array([len(indices) for indices in positives], dtype=np.int64)
    flat_positives = np.concatenate([np.empty(0, np.int64), *(np.asarray(p, np.int64) for p in positives)])
    stride = 1 + max(int(predictions.max(initial=0)), int(flat_positives.max(initial=0)))
    positive_keys = np.repeat(np.arange(len(positives), dtype=np.int64), counts) * stride + flat_positives
    prediction_keys = np.arange(len(predictions), dtype=np.int64)[:, None] * stride + predictions
    is_positive = np.isin(prediction_keys, positive_keys)
    ranks = is_positive.argmax(axis=1) + 1
    ranks[~is_positive.any(axis=1)] = 0
    return ranks


def recalls_at(ranks: np.ndarray, ks: Sequence[int] = RECALL_KS) -> dict[int, float]:
    """Recall@N in percent for each N in `ks`: share of queries whose first correct rank is 1..N."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or len(ranks) == 0:
        raise ValueError(f"ranks must be a non-empty 1-d array, got shape {ranks.shape}")
    found = ranks > 0
    return {int(n): float(100.0 * np.count_nonzero(found & (ranks <= n)) / len(ranks)) for n in ks}


def prediction_distances_m(database_utm: np.ndarray, queries_utm: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """UTM distance in metres between each query and each of its predicted database images."""
    database_utm = _coordinates(database_utm, "database_utm")
    queries_utm = _coordinates(queries_utm, "queries_utm")
    offsets = database_utm[predictions] - queries_utm[:, None, :]
    return np.hypot(offsets[..., 0], offsets[..., 1])
