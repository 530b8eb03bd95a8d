import csv
import json
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from geoloc.data.datasets import TestSet
from geoloc.data.names import format_image_name
from geoloc.device import resolve_device
from geoloc.errors import GeolocError
from geoloc.evaluate.evaluation import evaluate_model
from geoloc.evaluate.result_files import QUERY_COLUMNS, RECALL_COLUMNS
from geoloc.evaluate.writing import Provenance, recall_row, write_all_or_none, write_queries, write_recalls

# Four database places 100 m apart, each painted one colour (PNG: colours survive exactly).
# Image names sort in list order, as TestSet lists them.
DATABASE = [
    ((1000.0, 0.0), (203, 13, 9)),  # red
    ((1100.0, 0.0), (11, 197, 17)),  # green
    ((1200.0, 0.0), (7, 19, 211)),  # blue
    ((1300.0, 0.0), (121, 118, 124)),  # grey
]
# Under MeanColour the nearest database colours of each query are, in order:
QUERIES = [
    ((1005.0, 0.0), (190, 23, 11)),  # red, grey, green, blue: stands at red -> rank 1
    ((1100.0, 3.0), (23, 11, 199)),  # blue, grey, red, green: stands at green -> rank 4
    ((5000.0, 0.0), (12, 188, 23)),  # green, ...: nowhere near any place -> no positive, rank 0
]


class MeanColour(nn.Module):
    """Stand-in model: the descriptor of an image is its mean colour, L2-normalised.

    The identity layer is a real matrix product, so autocast runs it in reduced precision.
    """

    def __init__(self):
        super().__init__()
        self.mix = nn.Linear(3, 3, bias=False)
        nn.init.eye_(self.mix.weight)

    def forward(self, images):
        return nn.functional.normalize(self.mix(images.mean(dim=(2, 3))), dim=1)


def write_image(folder, utm, colour, note=""):
    folder.mkdir(parents=True, exist_ok=True)
    name = format_image_name(utm[0], utm[1], note=note, extension=".png")
    Image.new("RGB", (12, 10), colour).save(folder / name)


def make_test_set(root, database=DATABASE, queries=QUERIES):
    for utm, colour in database:
        write_image(root / "database", utm, colour)
    for utm, colour in queries:
        write_image(root / "queries", utm, colour)
    return TestSet(root)


def evaluate(test_set, **options):
    settings = dict(batch_size=2, device="cpu", num_workers=0, k=4, positive_dist_threshold=25.0)
    settings.update(options)
    return evaluate_model(MeanColour(), test_set, **settings)


def test_evaluate_model_gives_exact_recalls_on_a_hand_built_set(tmp_path):
    result = evaluate(make_test_set(tmp_path))

    assert result.ranks.tolist() == [1, 4, 0]
    assert result.predictions[:2].tolist() == [[0, 3, 1, 2], [2, 3, 0, 1]]
    assert result.has_positive.tolist() == [True, True, False]
    assert (result.n_queries, result.n_database, result.n_queries_without_positive) == (3, 4, 1)
    # k covers the whole database, so recall@5/10/20 equal recall@4; the query without a
    # positive stays in the denominator.
    assert result.recalls == pytest.approx({1: 100 / 3, 5: 200 / 3, 10: 200 / 3, 20: 200 / 3})
    np.testing.assert_allclose(result.distances_m[0], [5.0, 295.0, 95.0, 195.0])
    assert result.descriptor_seconds > 0 and result.search_seconds > 0
    assert result.latency_ms_per_image == pytest.approx(1000 * result.descriptor_seconds / 7)


def test_autocast_evaluation_ranks_as_fp32_on_a_well_separated_set(tmp_path):
    result = evaluate(make_test_set(tmp_path), autocast=True)
    assert result.ranks.tolist() == [1, 4, 0]


# Query 1 stands 3 m from green, 100.04 m from red and from blue (its first prediction).
@pytest.mark.parametrize(("threshold", "ranks"), [(100.0, [1, 4, 0]), (101.0, [1, 1, 0])])
def test_evaluate_model_counts_positives_up_to_the_threshold(tmp_path, threshold, ranks):
    result = evaluate(make_test_set(tmp_path), positive_dist_threshold=threshold)
    assert result.ranks.tolist() == ranks
    assert result.n_queries_without_positive == 1


def test_test_set_where_no_query_has_a_positive_is_an_error(tmp_path):
    far_queries = [((5000.0, 5000.0), (203, 13, 9))]
    with pytest.raises(GeolocError, match="no query has a database image within 25.0 m"):
        evaluate(make_test_set(tmp_path, queries=far_queries))


def test_some_queries_without_positive_are_logged(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="geoloc.evaluate.evaluation"):
        evaluate(make_test_set(tmp_path))
    assert "1 of 3 queries have no database image within 25.0 m" in caplog.text


def test_k_below_20_must_cover_the_whole_database(tmp_path):
    with pytest.raises(GeolocError, match="k=3 is too small to measure recall@20"):
        evaluate(make_test_set(tmp_path), k=3)


def test_k_above_the_database_size_is_an_error(tmp_path):
    with pytest.raises(GeolocError, match="k=20 .* only 4 images"):
        evaluate(make_test_set(tmp_path), k=20)


PROVENANCE = Provenance(
    model_sha256="ab" * 32,
    k=4,
    positive_dist_threshold=25,
    resize=(480, 640),
    autocast=True,
    device="cpu (x86_64, 1 threads)",
    kind="trained",
)


def write_with(path, writer):
    write_all_or_none([(path, writer)])
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return tuple(reader.fieldnames), list(reader)


def test_recall_csv_has_the_contract_columns_and_one_row(tmp_path):
    test_set = make_test_set(tmp_path / "set")
    row = recall_row(evaluate(test_set), "sf_xs_val", tmp_path / "set", PROVENANCE)

    columns, rows = write_with(tmp_path / "out" / "val.csv", partial(write_recalls, row=row))

    assert (
        columns
        == RECALL_COLUMNS
        == (
            "test_set",
            "n_queries",
            "n_database",
            "n_queries_without_positive",
            "r1",
            "r5",
            "r10",
            "r20",
            "descriptor_seconds",
            "search_seconds",
            "latency_ms_per_image",
            "test_dir",
            "model_sha256",
            "k",
            "positive_dist_threshold",
            "resize",
            "autocast",
            "device",
            "kind",
        )
    )
    (row,) = rows
    assert (row["test_set"], row["n_queries"], row["n_database"], row["n_queries_without_positive"]) == (
        "sf_xs_val",
        "3",
        "4",
        "1",
    )
    assert float(row["r1"]) == pytest.approx(100 / 3, abs=1e-4)
    assert float(row["r20"]) == pytest.approx(200 / 3, abs=1e-4)
    assert row["test_dir"] == str(tmp_path / "set")
    assert {key: row[key] for key in RECALL_COLUMNS[12:]} == {
        "model_sha256": "ab" * 32,
        "k": "4",
        "positive_dist_threshold": "25",
        "resize": "480x640",
        "autocast": "1",
        "device": "cpu (x86_64, 1 threads)",
        "kind": "trained",
    }


def test_recall_csv_of_a_native_resolution_fp32_baseline(tmp_path):
    test_set = make_test_set(tmp_path / "set")
    provenance = replace(PROVENANCE, model_sha256="", resize=None, autocast=False, kind="baseline")
    row = recall_row(evaluate(test_set), "sf_xs", tmp_path / "set", provenance)

    _, (written,) = write_with(tmp_path / "sf_xs.csv", partial(write_recalls, row=row))

    assert (written["model_sha256"], written["resize"], written["autocast"], written["kind"]) == (
        "",
        "",
        "0",
        "baseline",
    )


def test_queries_csv_lists_each_query_with_relative_paths_and_json_arrays(tmp_path):
    test_set = make_test_set(tmp_path)
    result = evaluate(test_set)

    columns, rows = write_with(tmp_path / "val.queries.csv", partial(write_queries, result=result, test_set=test_set))

    assert columns == QUERY_COLUMNS == ("query", "first_correct_rank", "has_positive", "predictions", "distances_m")
    expected_names = [path.relative_to(tmp_path).as_posix() for path in test_set.queries_paths]
    assert [row["query"] for row in rows] == expected_names
    assert rows[0]["query"].startswith("queries/@")
    assert [row["first_correct_rank"] for row in rows] == ["1", "4", "0"]
    assert [row["has_positive"] for row in rows] == ["1", "1", "0"]
    database = [path.relative_to(tmp_path).as_posix() for path in test_set.database_paths]
    assert json.loads(rows[0]["predictions"]) == [database[i] for i in (0, 3, 1, 2)]
    assert json.loads(rows[0]["distances_m"]) == [5.0, 295.0, 95.0, 195.0]


# Every character a file name may hold but '/' and NUL, in a sub-folder and in the note field.
HOSTILE = ["pipe|bar", 'comma,quote"', "new\nline", "carriage\rreturn", "tab\tsemi;", "é東京😀", "'single'"]


def test_queries_csv_survives_any_character_a_file_name_may_hold(tmp_path):
    database = [((1000.0 + 100 * i, 0.0), colour) for i, (_, colour) in enumerate(DATABASE)]
    for index, ((utm, colour), text) in enumerate(zip(database, HOSTILE[:4])):
        folder = tmp_path / "database" / f"{text}-{index}"
        folder.mkdir(parents=True)
        Image.new("RGB", (12, 10), colour).save(folder / format_image_name(*utm, note=text, extension=".png"))
    for (utm, colour), text in zip(QUERIES, HOSTILE[4:]):
        write_image(tmp_path / "queries", utm, colour, note=text)
    test_set = TestSet(tmp_path)
    result = evaluate(test_set)

    _, rows = write_with(tmp_path / "t.queries.csv", partial(write_queries, result=result, test_set=test_set))

    names = [path.relative_to(tmp_path).as_posix() for path in test_set.database_paths]
    assert [row["query"] for row in rows] == [p.relative_to(tmp_path).as_posix() for p in test_set.queries_paths]
    assert [json.loads(row["predictions"]) for row in rows] == [[names[i] for i in p] for p in result.predictions]
    assert [json.loads(row["distances_m"]) for row in rows] == [
        [round(d, 1) for d in distances] for distances in result.distances_m.tolist()
    ]
    written = [row["query"] for row in rows] + [name for row in rows for name in json.loads(row["predictions"])]
    assert all(any(text in name for name in written) for text in HOSTILE)  # every one went through


def test_resolve_device_auto_follows_cuda_availability():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"


def test_resolve_device_rejects_unknown_and_missing_devices():
    with pytest.raises(GeolocError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(GeolocError, match="no CUDA device"):
            resolve_device("cuda")
