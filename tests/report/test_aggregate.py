"""`geoloc aggregate`: run folders -> one tidy recalls table."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
from pathlib import Path

import pytest

from geoloc.errors import GeolocError
from geoloc.report import aggregate
from geoloc.report.aggregate import COLUMNS, aggregate_runs, read_recalls

RECALL_HEADER = (
    "test_set,n_queries,n_database,n_queries_without_positive,r1,r5,r10,r20,descriptor_seconds,"
    "search_seconds,latency_ms_per_image,test_dir,model_sha256,k,positive_dist_threshold,resize,autocast,device,kind"
)
MODEL_BYTES = b"a model.pt"
MODEL_SHA256 = hashlib.sha256(MODEL_BYTES).hexdigest()
N_QUERIES = 200  # every recall of these tests is a whole number of queries out of 200


def query_ranks(r1: float) -> list[int]:
    """First correct ranks of N_QUERIES queries giving recall@1 `r1` and R@5/10/20 of 60/70/80."""
    counts = {1: round(r1 * N_QUERIES / 100), 5: 120, 10: 140, 20: 160}
    ranks, done = [], 0
    for rank, reached in counts.items():
        ranks += [rank] * (reached - done)
        done = reached
    return ranks + [0] * (N_QUERIES - done)


def write_recalls(run_dir: Path, recalls: dict[str, float], *, kind: str, model_sha256: str) -> None:
    """recalls/<test>.csv and .queries.csv per test set, as `geoloc evaluate` writes them (C2, C13):
    the summary is what the per-query file gives (two queries without a positive)."""
    (run_dir / "recalls").mkdir(parents=True, exist_ok=True)
    for test_set, r1 in recalls.items():
        (run_dir / "recalls" / f"{test_set}.csv").write_text(
            f"{RECALL_HEADER}\n{test_set},{N_QUERIES},12771,2,{r1},60.0,70.0,80.0,3.0,0.2,1.25,data/{test_set}/test,"
            f"{model_sha256},20,25.0,,0,NVIDIA A100,{kind}\n",
            encoding="utf-8",
        )
        ranks = query_ranks(r1)
        lines = [
            f'queries/{i}.jpg,{rank},{int(i < N_QUERIES - 2)},"[""database/b.jpg""]",[3.0]'
            for i, rank in enumerate(ranks)
        ]
        (run_dir / "recalls" / f"{test_set}.queries.csv").write_text(
            "query,first_correct_rank,has_positive,predictions,distances_m\n" + "\n".join(lines) + "\n",
            encoding="utf-8",
        )


def write_run(
    root: Path,
    name: str,
    *,
    tag: str | None = None,
    recalls: dict[str, float] | None = None,
    weights: dict | None = None,
) -> Path:
    """A run folder per the contract: train.json and one recall CSV (+ queries CSV) per test set."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    train = {
        "run": {
            "name": name,
            "backbone": "resnet18",
            "pretraining": "imagenet",
            "precision": "fp32",
            "seed": 3,
            "tag": tag,
            "kind": "trained",
        },
        "hyperparameters": {"loss": "cosface"},
        "weights": weights,
        "fingerprint": {"sha256": "ef" * 32, "settings": {"backbone": "resnet18", "lr": 1e-5}},
        "model_sha256": MODEL_SHA256,
        "training_time_seconds": 130.5,
        "train_seconds": 120.0,
        "val_seconds": 10.5,
        "image_cache_build_seconds": 42.0,
        "compile_seconds": None,
        "images_per_second": 55.0,
        "peak_memory_mb": None,
        "params": 11_000_000,
        "trainable_params": 8_000_000,
        "best_epoch": 1,
        "best_val_r1": 61.0,
        "device": "NVIDIA H200",
        "device_type": "cuda",
        "gpus": 2,
        "world_size": 2,
    }
    (run_dir / "train.json").write_text(json.dumps(train), encoding="utf-8")
    (run_dir / "model.pt").write_bytes(MODEL_BYTES)
    write_recalls(run_dir, recalls or {}, kind="trained", model_sha256=MODEL_SHA256)
    return run_dir


def baseline_summary(backbone: str, pretraining: str, device: str = "NVIDIA A100") -> dict:
    """baseline.json of an untrained network per C1/C2: no training, times null."""
    return {
        "run": {
            "name": f"{backbone}-{pretraining}-baseline",
            "backbone": backbone,
            "pretraining": pretraining,
            "precision": "fp32",
            "seed": 0,
            "tag": None,
            "kind": "baseline",
        },
        "weights": None,
        "training_time_seconds": None,
        "params": 11_000_000,
        "trainable_params": 8_000_000,
        "gflops_per_image": 1.8,
        "device": device,
        "versions": {"python": "3.11.2", "torch": "2.14.1", "geoloc": "0.1.0"},
    }


def write_baseline(root: Path, backbone: str, pretraining: str, recalls: dict[str, float]) -> Path:
    """A baseline folder: baseline.json and its recall CSVs."""
    run_dir = root / f"{backbone}-{pretraining}"
    run_dir.mkdir(parents=True)
    (run_dir / "baseline.json").write_text(json.dumps(baseline_summary(backbone, pretraining)), encoding="utf-8")
    write_recalls(run_dir, recalls, kind="baseline", model_sha256="")
    return run_dir


def run_aggregate(out: Path, run_dirs: list[Path]) -> None:
    parser = argparse.ArgumentParser()
    aggregate.add_arguments(parser)
    aggregate.run(parser.parse_args(["--out", str(out), *map(str, run_dirs)]))


def test_one_row_per_run_and_test_set_joining_train_json_and_recalls(tmp_path):
    runs = [
        write_run(
            tmp_path,
            "resnet18-imagenet-fp32-s3",
            recalls={"sf_xs": 52.5, "tokyo_night": 41.0},
            weights={"path": "w.pth", "sha256": "ab" * 32, "format": "torchvision"},
        ),
        write_run(tmp_path, "resnet18-imagenet-fp32-s3-long", tag="long", recalls={"sf_xs": 55.0}),
    ]
    out = tmp_path / "recalls.csv"
    run_aggregate(out, runs)
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(COLUMNS)
    assert [(r["run"], r["test_set"], r["r1"]) for r in rows] == [
        ("resnet18-imagenet-fp32-s3", "sf_xs", "52.5"),
        ("resnet18-imagenet-fp32-s3", "tokyo_night", "41.0"),
        ("resnet18-imagenet-fp32-s3-long", "sf_xs", "55.0"),
    ]
    first = rows[0]
    assert (first["tag"], first["seed"], first["loss"], first["weights_sha256"]) == ("", "3", "cosface", "ab" * 32)
    assert (first["training_time_seconds"], first["peak_memory_mb"], first["gflops_per_image"]) == ("130.5", "", "")
    assert (first["n_queries"], first["latency_ms_per_image"], first["test_dir"]) == ("200", "1.25", "data/sf_xs/test")
    assert rows[2]["tag"] == "long" and rows[2]["weights_sha256"] == ""
    # What made the numbers: training hardware and digests from train.json, evaluation settings
    # and the evaluated model's digest from the recall CSV (whose device is the evaluation's).
    assert (first["kind"], first["device"], first["device_type"], first["gpus"], first["world_size"]) == (
        "trained",
        "NVIDIA H200",
        "cuda",
        "2",
        "2",
    )
    assert (first["eval_device"], first["model_sha256"], first["fingerprint_sha256"]) == (
        "NVIDIA A100",
        MODEL_SHA256,
        "ef" * 32,
    )
    assert (first["k"], first["positive_dist_threshold"], first["resize"], first["autocast"]) == ("20", "25.0", "", "0")
    assert (first["image_cache_build_seconds"], first["compile_seconds"]) == ("42.0", "")


def test_baselines_are_rows_of_kind_baseline_without_training_columns(tmp_path):
    run = write_run(tmp_path / "runs", "resnet18-imagenet-fp32-s3", recalls={"sf_xs": 52.5})
    baseline = write_baseline(tmp_path / "baselines", "resnet18", "imagenet", {"sf_xs": 20.0, "tokyo_xs": 11.0})
    out = tmp_path / "recalls.csv"
    run_aggregate(out, [run, baseline])
    table = read_recalls(out)
    rows = table[table["kind"] == "baseline"]
    assert rows["run"].tolist() == ["resnet18-imagenet-baseline"] * 2
    assert rows["r1"].tolist() == [20.0, 11.0] and rows["gflops_per_image"].tolist() == [1.8, 1.8]
    assert rows["training_time_seconds"].isna().all() and rows["gpus"].isna().all()
    assert (rows["model_sha256"] == "").all() and (rows["fingerprint_sha256"] == "").all()
    assert table[table["kind"] == "trained"]["run"].tolist() == ["resnet18-imagenet-fp32-s3"]


def test_recalls_of_another_kind_than_their_folder_are_refused(tmp_path):
    run = write_run(tmp_path, "run-a", recalls={"sf_xs": 50.0})
    path = run / "recalls" / "sf_xs.csv"
    path.write_text(path.read_text().replace(",trained\n", ",baseline\n"))
    with pytest.raises(GeolocError, match=r"sf_xs.csv: kind is 'baseline' but its folder's summary says 'trained'"):
        aggregate_runs([run])


def test_train_json_of_an_older_geoloc_names_the_missing_key(tmp_path):
    run = write_run(tmp_path, "run-a", recalls={"sf_xs": 50.0})
    train = json.loads((run / "train.json").read_text())
    del train["fingerprint"]
    (run / "train.json").write_text(json.dumps(train))
    with pytest.raises(GeolocError, match=r"train.json: key fingerprint is missing \(written by an older geoloc"):
        aggregate_runs([run])


def test_read_recalls_keeps_text_as_written_and_reads_numbers(tmp_path):
    run = write_run(tmp_path, "x-imagenet-fp32-s3-NA", tag="NA", recalls={"sf_xs": 52.5})
    out = tmp_path / "recalls.csv"
    run_aggregate(out, [run])
    table = read_recalls(out)
    assert table["tag"].tolist() == ["NA"]  # not a missing value
    assert table["r1"].tolist() == [52.5] and math.isnan(table["peak_memory_mb"][0])


def test_read_recalls_names_a_non_numeric_cell(tmp_path):
    run = write_run(tmp_path, "run-a", recalls={"sf_xs": 50.0})
    out = tmp_path / "recalls.csv"
    run_aggregate(out, [run])
    out.write_text(out.read_text().replace(",50.0,", ",fifty,"))
    with pytest.raises(GeolocError, match=r"recalls.csv: line 2: column r1 is not a number: 'fifty'"):
        read_recalls(out)


def test_run_dir_without_train_json_is_a_clear_error_and_writes_nothing(tmp_path):
    good = write_run(tmp_path, "good", recalls={"sf_xs": 50.0})
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    out = tmp_path / "recalls.csv"
    with pytest.raises(GeolocError, match=r"not-a-run/train.json: missing \(and no baseline.json\)"):
        run_aggregate(out, [good, empty])
    assert not out.exists() and list(tmp_path.glob(".recalls.csv*")) == []


def test_train_json_without_a_contract_key_names_the_key(tmp_path):
    run = write_run(tmp_path, "run-a", recalls={"sf_xs": 50.0})
    train = json.loads((run / "train.json").read_text())
    del train["val_seconds"]
    (run / "train.json").write_text(json.dumps(train))
    with pytest.raises(GeolocError, match=r"train.json: key val_seconds is missing"):
        aggregate_runs([run])


def test_recall_csv_without_a_column_names_the_column(tmp_path):
    run = write_run(tmp_path, "run-a", recalls={"sf_xs": 50.0})
    path = run / "recalls" / "sf_xs.csv"
    path.write_text(path.read_text().replace(",test_dir,", ",where,"))
    with pytest.raises(GeolocError, match=r"sf_xs.csv: column test_dir is missing"):
        aggregate_runs([run])


def test_run_not_evaluated_yet_contributes_no_rows(tmp_path):
    rows = aggregate_runs([write_run(tmp_path, "trained-only"), write_run(tmp_path, "done", recalls={"sf_xs": 1.0})])
    assert [row["run"] for row in rows] == ["done"]


def test_a_hand_edited_recall_is_refused_naming_the_file_and_the_way_out(tmp_path):
    run = write_run(tmp_path, "run-a", recalls={"sf_xs": 25.0})
    path = run / "recalls" / "sf_xs.csv"
    path.write_text(path.read_text().replace(",25.0,", ",93.75,"))
    with pytest.raises(
        GeolocError,
        match=r"sf_xs.csv: r1 is 93.75 but its per-query file sf_xs.queries.csv gives "
        r"25.0000 .*: delete .*run-a/recalls and rerun the workflow",
    ):
        aggregate_runs([run])


def test_a_summary_with_other_query_counts_than_its_per_query_file_is_refused(tmp_path):
    run = write_baseline(tmp_path, "resnet18", "imagenet", {"sf_xs": 20.0})
    path = run / "recalls" / "sf_xs.csv"
    path.write_text(path.read_text().replace(f",{N_QUERIES},12771,2,", f",{N_QUERIES},12771,0,"))
    with pytest.raises(GeolocError, match=r"n_queries_without_positive is 0 but .* gives 2.0000"):
        aggregate_runs([run])


def test_a_deleted_per_query_file_is_refused(tmp_path):
    run = write_run(tmp_path, "run-a", recalls={"sf_xs": 25.0})
    (run / "recalls" / "sf_xs.queries.csv").unlink()
    with pytest.raises(GeolocError, match=r"sf_xs.queries.csv: missing, so .*sf_xs.csv cannot be checked: delete"):
        aggregate_runs([run])


def test_recalls_of_a_model_other_than_train_json_records_are_refused(tmp_path):
    run = write_run(tmp_path, "run-a", recalls={"sf_xs": 25.0})
    path = run / "recalls" / "sf_xs.csv"
    path.write_text(path.read_text().replace(MODEL_SHA256, "ab" * 32))
    with pytest.raises(
        GeolocError,
        match=r"sf_xs.csv: evaluated a model with sha256 abababababab\.\.\., not the "
        r".*: delete .*run-a/recalls and rerun the workflow \(it re-evaluates",
    ):
        aggregate_runs([run])


def test_a_model_changed_after_training_is_refused_naming_both_files_to_delete(tmp_path):
    run = write_run(tmp_path, "run-a", recalls={"sf_xs": 25.0})
    (run / "model.pt").write_bytes(b"flipped bytes")
    with pytest.raises(
        GeolocError,
        match=r"model.pt: its sha256 .* is not the model_sha256 .*: delete "
        r".*run-a/model.pt and .*run-a/train.json and rerun the workflow",
    ):
        aggregate_runs([run])


def test_a_deleted_recall_csv_is_refused_not_left_out(tmp_path):
    run = write_run(tmp_path, "run-a", recalls={"sf_xs": 25.0, "tokyo_xs": 30.0})
    (run / "recalls" / "tokyo_xs.csv").unlink()
    with pytest.raises(GeolocError, match=r"tokyo_xs.csv: missing beside tokyo_xs.queries.csv: delete .*run-a/recalls"):
        aggregate_runs([run])
