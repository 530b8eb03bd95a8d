import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geoloc.errors import GeolocError
from geoloc.evaluate.recall import (
    first_correct_ranks,
    openblas_core_for,
    positives_within,
    prediction_distances_m,
    recalls_at,
    search,
)


def unit_rows(array):
    array = np.asarray(array, dtype=np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def test_positives_include_database_images_exactly_at_the_threshold():
    database = np.array([[0.0, 0.0], [15.0, 20.0], [25.0, 0.0], [25.001, 0.0], [0.0, -25.0], [500.0, 0.0]])
    queries = np.array([[0.0, 0.0], [500.0, 30.0]])

    positives = positives_within(database, queries, threshold=25.0)

    assert positives[0].tolist() == [0, 1, 2, 4]  # 15-20-25 triangle: exactly 25 m counts
    assert positives[1].tolist() == []
    assert positives[0].dtype == np.int64


def test_positives_grow_with_the_threshold():
    database = np.array([[0.0, 0.0], [10.0, 0.0], [30.0, 0.0]])
    queries = np.array([[0.0, 0.0]])

    assert positives_within(database, queries, 9.9)[0].tolist() == [0]
    assert positives_within(database, queries, 30.0)[0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("threshold", [0.0, -5.0, float("nan")])
def test_positives_reject_a_threshold_that_is_not_positive(threshold):
    with pytest.raises(GeolocError, match="threshold"):
        positives_within(np.zeros((2, 2)), np.zeros((1, 2)), threshold)


def test_search_returns_the_exact_nearest_neighbours_nearest_first():
    rng = np.random.default_rng(0)
    database = unit_rows(rng.standard_normal((60, 16)))
    queries = unit_rows(rng.standard_normal((9, 16)))

    distances, indices = search(database, queries, k=5)

    squared = ((queries[:, None, :] - database[None, :, :]) ** 2).sum(axis=2)
    expected = np.argsort(squared, axis=1, kind="stable")[:, :5]
    assert indices.tolist() == expected.tolist()
    np.testing.assert_allclose(distances, np.take_along_axis(squared, expected, axis=1), atol=1e-5)


def test_search_with_k_larger_than_the_database_is_an_error():
    database = unit_rows(np.eye(3, 4))
    with pytest.raises(GeolocError, match="k=4 .* only 3 images"):
        search(database, database[:1], k=4)


def test_search_with_k_equal_to_the_database_ranks_every_image():
    database = unit_rows(np.eye(3, 4))
    _, indices = search(database, database[2:3], k=3)
    assert indices[0, 0] == 2 and sorted(indices[0].tolist()) == [0, 1, 2]


# 1 query takes faiss's direct SIMD path; 300 x 512 dimensions its BLAS path (in faiss 1.15,
# nq * d >= 128000; older faiss: nq >= 20). Both must break ties alike.
@pytest.mark.parametrize("n_queries", [1, 300])
def test_search_breaks_distance_ties_by_database_index(n_queries):
    rng = np.random.default_rng(1)
    database = unit_rows(rng.standard_normal((2000, 512)))
    copies = [5, 777, 1023, 1024, 1999]  # 1023/1024 straddle faiss's database block boundary
    database[copies] = database[3]
    queries = unit_rows(database[3] + 0.01 * rng.standard_normal((n_queries, 512)))

    distances, indices = search(database, queries, k=8)
    again = search(database, queries, k=8)[1]

    assert (indices[:, :6] == [3, *copies]).all()
    assert (distances[:, :6] == distances[:, :1]).all()  # bitwise equal distances: a real tie
    assert np.array_equal(indices, again)
    assert (search(database, queries, k=1)[1][:, 0] == 3).all()  # faiss has a separate top-1 path


@pytest.mark.parametrize("n_queries", [1, 300])
def test_a_tie_at_the_kth_place_is_settled_by_database_index(n_queries):
    # Six identical rows, k=3: which three are kept must not depend on faiss's float32 rounding.
    rng = np.random.default_rng(2)
    database = unit_rows(rng.standard_normal((2000, 512)))
    copies = [3, 5, 777, 1023, 1024, 1999]
    database[copies] = database[1500]
    queries = unit_rows(database[1500] + 0.01 * rng.standard_normal((n_queries, 512)))

    distances, indices = search(database, queries, k=3)

    assert (indices == [3, 5, 777]).all()
    assert (distances == distances[:, :1]).all()


def test_a_tie_larger_than_the_candidate_margin_keeps_the_lowest_indices():
    # 100 identical rows, more than faiss's k + margin candidates: the query is ranked over the
    # whole database, and the 20 lowest indices of the copies come out.
    rng = np.random.default_rng(3)
    database = unit_rows(rng.standard_normal((3000, 512)))
    copies = np.sort(rng.choice(3000, size=100, replace=False))
    database[copies] = database[copies[0]]
    queries = unit_rows(database[copies[0]] + 0.01 * rng.standard_normal((300, 512)))

    _, indices = search(database, queries, k=20)

    assert (indices == copies[:20]).all()


@pytest.mark.parametrize("dim", [3, 7, 512])
def test_identical_rows_anywhere_in_the_database_get_bitwise_equal_distances(dim):
    # Odd dimensions put the copies at every memory alignment: the distance must not depend on it.
    rng = np.random.default_rng(5)
    database = unit_rows(rng.standard_normal((1200, dim)))
    copies = [0, 1, 2, 3, 513, 1024, 1199]
    database[copies] = database[700]
    queries = unit_rows(database[700] + 0.001 * rng.standard_normal((50, dim)))

    distances, indices = search(database, queries, k=8)

    assert (indices[:, :8] == sorted([700, *copies])).all()
    assert (distances == distances[:, :1]).all()


def test_search_equals_a_float64_brute_force_with_index_order_ties():
    # Coarse descriptors (values in steps of 1/4) make many exact and near ties at every rank.
    rng = np.random.default_rng(4)
    database = rng.integers(-2, 3, size=(1500, 8)).astype(np.float32) / 4
    queries = rng.integers(-2, 3, size=(200, 8)).astype(np.float32) / 4

    distances, indices = search(database, queries, k=25)

    exact = ((queries[:, None, :].astype(np.float64) - database[None].astype(np.float64)) ** 2).sum(axis=2)
    expected = np.argsort(exact, axis=1, kind="stable")[:, :25]
    assert np.array_equal(indices, expected)
    assert np.array_equal(distances, np.take_along_axis(exact, expected, axis=1))


def test_first_correct_ranks_is_the_rank_of_the_first_positive_prediction():
    predictions = np.array(
        [
            [4, 2, 7],  # first positive at rank 1
            [9, 8, 3],  # at rank 3 (3 is its only positive in the top k)
            [1, 2, 3],  # has positives, none in the top k
            [5, 6, 0],  # has no positive at all
            [0, 6, 5],  # positives 6 and 5: the first one counts
        ]
    )
    positives = [
        np.array([4, 7]),
        np.array([0, 3]),
        np.array([0, 9]),
        np.array([], dtype=np.int64),
        np.array([5, 6]),
    ]

    assert first_correct_ranks(predictions, positives).tolist() == [1, 3, 0, 0, 2]


def test_first_correct_ranks_keeps_queries_apart():
    # The same database index is a positive of query 0 only: it must not count for query 1.
    predictions = np.array([[3, 1], [3, 1]])
    positives = [np.array([3]), np.array([0])]
    assert first_correct_ranks(predictions, positives).tolist() == [1, 0]


def test_first_correct_ranks_refuses_faiss_padding():
    with pytest.raises(ValueError, match="negative"):
        first_correct_ranks(np.array([[0, -1]]), [np.array([0])])


def test_recalls_count_queries_without_positive_in_the_denominator():
    ranks = np.array([1, 3, 0, 7, 0, 20, 12, 21])  # two queries never found (0)

    recalls = recalls_at(ranks, ks=(1, 5, 10, 20))

    assert recalls == pytest.approx({1: 100 * 1 / 8, 5: 100 * 2 / 8, 10: 100 * 3 / 8, 20: 100 * 5 / 8})


def test_query_without_positive_never_counts_end_to_end():
    # Three places; query 2 stands 1 km from every database image.
    database_utm = np.array([[0.0, 0.0], [100.0, 0.0], [200.0, 0.0]])
    queries_utm = np.array([[3.0, 4.0], [100.0, 20.0], [1000.0, 1000.0]])
    database = unit_rows([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    queries = unit_rows(
        [
            [1.0, 0.1, 0.0],  # looks like place 0, stands there: rank 1
            [0.0, 0.2, 1.0],  # looks like place 2 (then 1), stands at place 1: rank 2
            [1.0, 0.0, 0.0],  # looks like place 0, no positive anywhere
        ]
    )

    positives = positives_within(database_utm, queries_utm, 25.0)
    _, predictions = search(database, queries, k=3)
    ranks = first_correct_ranks(predictions, positives)

    assert [len(p) for p in positives] == [1, 1, 0]
    assert ranks.tolist() == [1, 2, 0]
    assert recalls_at(ranks, ks=(1, 2, 3)) == pytest.approx({1: 100 / 3, 2: 200 / 3, 3: 200 / 3})


def test_recalls_of_no_queries_is_an_error():
    with pytest.raises(ValueError):
        recalls_at(np.array([], dtype=np.int64))


def test_prediction_distances_are_utm_metres_per_prediction():
    database_utm = np.array([[0.0, 0.0], [30.0, 40.0], [6.0, 8.0]])
    queries_utm = np.array([[0.0, 0.0], [30.0, 40.0]])
    predictions = np.array([[1, 2], [0, 1]])

    distances = prediction_distances_m(database_utm, queries_utm, predictions)

    np.testing.assert_allclose(distances, [[50.0, 10.0], [50.0, 0.0]])


@pytest.mark.parametrize(
    ("flags", "core"),
    [
        ({"avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}, "SkylakeX"),
        ({"sse2", "avx", "avx2", "fma", "avx512f"}, "Haswell"),  # partial AVX-512 (Knights Landing)
        ({"sse2", "avx", "avx2", "fma"}, "Haswell"),
        ({"sse2", "avx"}, None),
        (set(), None),  # no /proc/cpuinfo (macOS) or an Arm CPU
    ],
)
def test_openblas_kernel_is_only_chosen_when_the_cpu_runs_it(flags, core):
    assert openblas_core_for(flags) == core


def test_importing_recall_leaves_the_environment_as_it_was():
    code = "import os, geoloc.evaluate.recall; print(os.environ.get('OPENBLAS_CORETYPE', 'unset'))"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    unset = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    chosen = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "OPENBLAS_CORETYPE": "Haswell"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert unset.stdout.strip() == "unset"
    assert chosen.stdout.strip() == "Haswell"


def test_recalls_match_a_numpy_brute_force_on_random_data(tmp_path):
    # The search benchmark at a small size: it exits 1 when geoloc's recalls differ from a
    # brute force (full distance matrix, all-pairs UTM distances) on the same data.
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "search_benchmark.py"
    out = tmp_path / "search.json"
    subprocess.run(
        [sys.executable, str(script), "--database", "3000", "--queries", "400", "--repeats", "1", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    results = json.loads(out.read_text())
    assert results["identical_recalls"] is True
    assert 0 < results["recalls"]["r1"] < results["recalls"]["r20"] < 100  # a non-trivial case
