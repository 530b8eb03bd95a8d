import argparse
import csv

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from geoloc.data.datasets import TestSet
from geoloc.data.names import format_image_name
from geoloc.device import resolve_device
from geoloc.errors import GeolocError
from geoloc.evaluate.descriptors import compute_descriptors
from geoloc.evaluate.evaluation import evaluate_model, write_queries_csv, write_recalls_csv
from geoloc.evaluate.result_files import QUERY_COLUMNS, RECALL_COLUMNS
from geoloc.model import network as models

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


def write_image(folder, utm, colour):
    folder.mkdir(parents=True, exist_ok=True)
    name = format_image_name(utm[0], utm[1], extension=".png")
    Image.new("RGB", (12, 10), colour).save(folder / name)


def make_test_set(root, database=DATABASE, queries=QUERIES):
    for utm, colour in database:
        write_image(root / "database", utm, colour)
    for utm, colour in queries:
        write_image(root / "queries", utm, colour)
    return TestSet(root)


def evaluate(test_set, **options):
    settings = dict(image_size=8, batch_size=2, device="cpu", precision="fp32", k=4)
    settings.update(options)
    return evaluate_model(MeanColour(), test_set, **settings)


def test_descriptors_are_unit_float32_rows_in_path_order(tmp_path):
    test_set = make_test_set(tmp_path)
    paths = test_set.database_paths[::-1]  # a partial last batch of 1, reversed order

    descriptors = compute_descriptors(
        MeanColour(), paths, image_size=8, batch_size=3, device="cpu", precision="fp32"
    )

    colours = np.array([colour for _, colour in DATABASE][::-1], dtype=np.float64)
    expected = colours / np.linalg.norm(colours, axis=1, keepdims=True)
    assert descriptors.dtype == np.float32 and descriptors.shape == (4, 3)
    np.testing.assert_allclose(descriptors, expected, atol=1e-6)


def test_amp_descriptors_are_float32_unit_rows_close_to_fp32(tmp_path):
    test_set = make_test_set(tmp_path)
    options = dict(image_size=8, batch_size=4, device="cpu")

    fp32 = compute_descriptors(MeanColour(), test_set.database_paths, precision="fp32", **options)
    amp = compute_descriptors(MeanColour(), test_set.database_paths, precision="amp", **options)

    assert amp.dtype == np.float32
    assert not np.array_equal(amp, fp32)  # autocast did run in bfloat16
    np.testing.assert_allclose(np.linalg.norm(amp, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(amp, fp32, atol=2e-2)  # bfloat16 keeps ~3 significant digits


def test_descriptors_restore_the_model_training_mode(tmp_path):
    test_set = make_test_set(tmp_path)
    model = MeanColour().train()
    compute_descriptors(model, test_set.queries_paths, image_size=8, batch_size=2, device="cpu",
                        precision="fp32")
    assert model.training


def test_unknown_precision_is_an_error(tmp_path):
    test_set = make_test_set(tmp_path)
    with pytest.raises(GeolocError, match="precision 'fp16'"):
        compute_descriptors(MeanColour(), test_set.queries_paths, image_size=8, batch_size=2, device="cpu",
                            precision="fp16")


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


def test_amp_evaluation_ranks_as_fp32_on_a_well_separated_set(tmp_path):
    result = evaluate(make_test_set(tmp_path), precision="amp")
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


def test_recall_csv_has_the_contract_columns_and_one_row(tmp_path):
    test_set = make_test_set(tmp_path / "set")
    result = evaluate(test_set)

    write_recalls_csv(tmp_path / "out" / "val.csv", result, "sf_xs_val", tmp_path / "set")

    with open(tmp_path / "out" / "val.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == RECALL_COLUMNS == (
        "test_set", "n_queries", "n_database", "n_queries_without_positive", "r1", "r5", "r10", "r20",
        "descriptor_seconds", "search_seconds", "latency_ms_per_image", "test_dir",
    )
    assert len(rows) == 1
    row = rows[0]
    assert (row["test_set"], row["n_queries"], row["n_database"], row["n_queries_without_positive"]) == (
        "sf_xs_val", "3", "4", "1")
    assert float(row["r1"]) == pytest.approx(100 / 3, abs=1e-4)
    assert float(row["r20"]) == pytest.approx(200 / 3, abs=1e-4)
    assert row["test_dir"] == str(tmp_path / "set")


def test_queries_csv_lists_each_query_with_relative_paths(tmp_path):
    test_set = make_test_set(tmp_path)
    result = evaluate(test_set)

    write_queries_csv(tmp_path / "val.queries.csv", result, test_set)

    with open(tmp_path / "val.queries.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == QUERY_COLUMNS == (
        "query", "first_correct_rank", "has_positive", "predictions", "distances_m")
    expected_names = [path.relative_to(tmp_path).as_posix() for path in test_set.queries_paths]
    assert [row["query"] for row in rows] == expected_names
    assert rows[0]["query"].startswith("queries/@")
    assert [row["first_correct_rank"] for row in rows] == ["1", "4", "0"]
    assert [row["has_positive"] for row in rows] == ["1", "1", "0"]
    predicted = rows[0]["predictions"].split("|")
    assert predicted[0] == test_set.database_paths[0].relative_to(tmp_path).as_posix()
    assert len(predicted) == 4 and all(name.startswith("database/@") for name in predicted)
    assert rows[0]["distances_m"] == "5.0|295.0|95.0|195.0"


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


def run_command(tmp_path, model_path, test_dir):
    """`geoloc evaluate` as the workflow calls it (its parser and run, not the whole CLI)."""
    from geoloc.evaluate import evaluation as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args([
        "--model", str(model_path), "--test-dir", str(test_dir), "--test-set", "tiny",
        "--out", str(tmp_path / "recalls" / "tiny.csv"),
        "--queries-out", str(tmp_path / "recalls" / "tiny.queries.csv"),
        "--image-size", "32", "--batch-size", "4", "--precision", "fp32", "--device", "cpu",
        "--k", "4",
    ])
    return command.run(args)


def test_evaluate_command_writes_both_csvs_consistent_with_distances(tmp_path):
    torch.manual_seed(0)
    models.save_model(tmp_path / "model.pt", models.build_model("resnet18", fc_output_dim=8))
    make_test_set(tmp_path / "set")

    run_command(tmp_path, tmp_path / "model.pt", tmp_path / "set")

    with open(tmp_path / "recalls" / "tiny.csv", newline="") as handle:
        (summary,) = list(csv.DictReader(handle))
    with open(tmp_path / "recalls" / "tiny.queries.csv", newline="") as handle:
        queries = list(csv.DictReader(handle))
    counts = (summary["n_queries"], summary["n_database"], summary["n_queries_without_positive"])
    assert counts == ("3", "4", "1")
    assert len(queries) == 3
    for row in queries:
        distances = [float(d) for d in row["distances_m"].split("|")]
        assert len(distances) == 4  # k=4: the whole database
        within = [i + 1 for i, d in enumerate(distances) if d <= 25.0]
        assert int(row["first_correct_rank"]) == (within[0] if within else 0)
    found = sum(int(row["first_correct_rank"]) > 0 for row in queries)
    assert float(summary["r20"]) == pytest.approx(100 * found / 3, abs=1e-4)


def test_evaluate_command_refuses_a_test_set_without_positives_and_writes_nothing(tmp_path):
    models.save_model(tmp_path / "model.pt", models.build_model("resnet18", fc_output_dim=8))
    make_test_set(tmp_path / "set", queries=[((5000.0, 5000.0), (203, 13, 9))])

    with pytest.raises(GeolocError, match="no query has a database image within 25.0 m"):
        run_command(tmp_path, tmp_path / "model.pt", tmp_path / "set")
    assert not (tmp_path / "recalls").exists()
