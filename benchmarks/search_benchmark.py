"""Search benchmark: geoloc's recall path against the compute bound and a plain numpy baseline.

The evaluation's search cost is one matrix product, queries x database descriptors. This
times, on the same random data and in the same run:
  1. the bare float32 product `queries @ database.T` (numpy and torch; the faster is the bound),
  2. faiss alone: IndexFlatL2's float32 top k (what geoloc's search was before it re-ranked),
  3. geoloc.evaluate.recall.search: faiss's k + margin candidates re-ranked by float64 distances,
     ties by database index,
  4. geoloc's whole recall path: KD-tree positives + that search + ranks + recalls,
  5. a straightforward numpy brute force: full distance matrix, argpartition top-k, all-pairs
     UTM distances for the positives (in blocks of queries, so 10k x 100k fits in memory),
and checks that 4 and 5 give identical recalls. Each path runs `--repeats` times; the fastest
run counts (the machine may be shared), and CPU-time ratios are given beside the wall-time
ones. Queries are noisy copies of random database descriptors placed 0-40 m from them, so
recalls are neither 0 nor 100.

    python benchmarks/search_benchmark.py --out benchmarks/out/search.json
    python benchmarks/search_benchmark.py --database 5000 --queries 500   # quick
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from geoloc.atomic import atomic_write_text
from geoloc.evaluate.recall import RECALL_KS, faiss, first_correct_ranks, positives_within, recalls_at, search


def make_data(n_database: int, n_queries: int, dim: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    side_m = 25.0 * np.sqrt(n_database / 8.0)  # about 8 database images per 25 m circle, as in cities
    database = _unit_rows(rng.standard_normal((n_database, dim), dtype=np.float32))
    database_utm = rng.uniform(0.0, side_m, size=(n_database, 2))
    source = rng.integers(0, n_database, size=n_queries)
    # Noise 6x the signal: a query's own database image ranks first or among the next few of
    # 100k, so recall@1 and recall@20 differ as in real test sets.
    noise = rng.standard_normal((n_queries, dim), dtype=np.float32) * (6.0 / np.sqrt(dim))
    queries = _unit_rows(database[source] + noise)
    angle = rng.uniform(0.0, 2 * np.pi, size=n_queries)
    radius = rng.uniform(0.0, 40.0, size=n_queries)
    queries_utm = database_utm[source] + np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return dict(database=database, queries=queries, database_utm=database_utm, queries_utm=queries_utm)


def _unit_rows(array: np.ndarray) -> np.ndarray:
    return (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32)


def matmul_numpy(data: dict, block: int) -> None:
    for start in range(0, len(data["queries"]), block):
        data["queries"][start : start + block] @ data["database"].T


def matmul_torch(data: dict, block: int) -> None:
    queries, database = torch.from_numpy(data["queries"]), torch.from_numpy(data["database"])
    for start in range(0, len(queries), block):
        queries[start : start + block] @ database.T


def faiss_alone(data: dict, k: int) -> np.ndarray:
    faiss.cvar.distance_compute_blas_database_bs = 8192  # as geoloc's search sets it
    index = faiss.IndexFlatL2(data["database"].shape[1])
    index.add(data["database"])
    return index.search(data["queries"], k)[1]


def geoloc_recalls(data: dict, k: int, threshold: float) -> tuple[dict[int, float], np.ndarray]:
    positives = positives_within(data["database_utm"], data["queries_utm"], threshold)
    _, predictions = search(data["database"], data["queries"], k)
    return recalls_at(first_correct_ranks(predictions, positives), RECALL_KS), predictions


def numpy_recalls(data: dict, k: int, threshold: float, block: int) -> tuple[dict[int, float], np.ndarray]:
    database, database_utm = data["database"], data["database_utm"]
    database_norms = (database**2).sum(axis=1)
    predictions, ranks = [], []
    for start in range(0, len(data["queries"]), block):
        queries = data["queries"][start : start + block]
        distances = (queries**2).sum(axis=1)[:, None] + database_norms[None, :] - 2.0 * queries @ database.T
        top = np.argpartition(distances, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(np.take_along_axis(distances, top, axis=1), axis=1), axis=1)
        offsets = data["queries_utm"][start : start + block, None, :] - database_utm[None, :, :]
        is_positive = np.sqrt((offsets**2).sum(axis=2)) <= threshold
        hits = np.take_along_axis(is_positive, top, axis=1)
        ranks.append(np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0))
        predictions.append(top)
    return recalls_at(np.concatenate(ranks), RECALL_KS), np.concatenate(predictions)


def time_interleaved(repeats: int, paths: dict[str, Callable[[], object]]) -> tuple[dict, dict, dict]:
    """Run every path once per round, `repeats` rounds: a busy spell on a shared machine then
    slows all paths alike. Returns the wall seconds and the CPU seconds (this process's, all
    threads: robust to other processes' load) of every run, and each path's last result."""
    seconds = {name: [] for name in paths}
    cpu_seconds = {name: [] for name in paths}
    results = {}
    for _ in range(repeats):
        for name, function in paths.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            results[name] = function()
            seconds[name].append(time.perf_counter() - start)
            cpu_seconds[name].append(time.process_time() - cpu_start)
    return seconds, cpu_seconds, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", type=int, default=100_000, help="database descriptors")
    parser.add_argument("--queries", type=int, default=10_000, help="query descriptors")
    parser.add_argument("--dim", type=int, default=512, help="descriptor dimension")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--threshold", type=float, default=25.0, help="positive distance, metres")
    parser.add_argument("--block", type=int, default=1024, help="queries per block in the numpy paths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    args = parser.parse_args(argv)

    data = make_data(args.database, args.queries, args.dim, args.seed)
    runs, cpu_runs, results = time_interleaved(
        args.repeats,
        {
            "matmul_numpy": lambda: matmul_numpy(data, args.block),
            "matmul_torch": lambda: matmul_torch(data, args.block),
            "faiss_alone": lambda: faiss_alone(data, args.k),
            "geoloc_search": lambda: search(data["database"], data["queries"], args.k)[1],
            "geoloc": lambda: geoloc_recalls(data, args.k, args.threshold),
            "numpy_baseline": lambda: numpy_recalls(data, args.k, args.threshold, args.block),
        },
    )
    best = {name: min(seconds) for name, seconds in runs.items()}
    best_cpu = {name: min(seconds) for name, seconds in cpu_runs.items()}
    matmul_s = min(best["matmul_numpy"], best["matmul_torch"])
    ours, ours_predictions = results["geoloc"]
    baseline, baseline_predictions = results["numpy_baseline"]
    faiss_predictions = results["faiss_alone"]

    results = {
        "database": args.database,
        "queries": args.queries,
        "dim": args.dim,
        "k": args.k,
        "threshold_m": args.threshold,
        "seed": args.seed,
        "repeats": args.repeats,
        "seconds": best,
        "runs_seconds": runs,
        "cpu_seconds": best_cpu,
        "runs_cpu_seconds": cpu_runs,
        "geoloc_over_matmul": best["geoloc"] / matmul_s,
        "geoloc_search_over_faiss_alone": best["geoloc_search"] / best["faiss_alone"],
        "geoloc_search_over_faiss_alone_cpu": best_cpu["geoloc_search"] / best_cpu["faiss_alone"],
        "geoloc_over_matmul_cpu": best_cpu["geoloc"] / min(best_cpu["matmul_numpy"], best_cpu["matmul_torch"]),
        "numpy_baseline_over_geoloc": best["numpy_baseline"] / best["geoloc"],
        "recalls": {f"r{n}": value for n, value in ours.items()},
        "identical_recalls": ours == baseline,
        # Rows may differ where two database images are within float rounding of each other.
        "identical_prediction_rows": float((ours_predictions == baseline_predictions).all(axis=1).mean()),
        "identical_prediction_rows_faiss_alone": float((ours_predictions == faiss_predictions).all(axis=1).mean()),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "faiss": faiss.__version__,
            "torch_threads": torch.get_num_threads(),
            "faiss_threads": faiss.omp_get_max_threads(),
        },
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    if ours != baseline:
        print(f"recalls differ: geoloc {ours}, numpy baseline {baseline}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
