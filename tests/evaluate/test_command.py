"""`geoloc evaluate` as the workflow and a user run it: several test sets, one model load, a
shared database embedded once, every CSV pair or none, the untrained baseline, hostile input."""

import csv
import errno
import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from geoloc import atomic
from geoloc.cli import main
from geoloc.data.names import format_image_name, parse_image_name
from geoloc.evaluate import command, evaluation
from geoloc.evaluate.baseline import build_baseline
from geoloc.evaluate.result_files import RECALL_COLUMNS
from geoloc.model import network as models
from geoloc.model.cost import gflops_per_image
from geoloc.model.weights import sha256_file
from geoloc.provenance import device_name

# Five database places 100 m apart; queries a few metres from some of them.
DATABASE_UTM = [(1000.0 + 100.0 * i, 5000.0) for i in range(5)]
QUERY_UTM = [(1004.0, 5000.0), (1100.0, 5004.0), (1200.0, 4996.0)]


def make_test_set(root, database=DATABASE_UTM, queries=QUERY_UTM, seed=0, size=(16, 16)):
    """16 px noise PNGs (distinct, so descriptors differ) named by their UTM."""
    rng = np.random.default_rng(seed)
    for part, places in (("database", database), ("queries", queries)):
        (root / part).mkdir(parents=True)
        for east, north in places:
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / part / format_image_name(east, north, extension=".png"))
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.manual_seed(0)
    models.save_model(path, models.build_model("resnet18", fc_output_dim=8))
    return path


def evaluate(capsys, *args):
    """`geoloc evaluate ARGS` through the real command line: its exit code and stderr."""
    try:
        code = main(["evaluate", "--device", "cpu", "--batch-size", "2", "--k", "5", *map(str, args)])
    except SystemExit as exc:  # argparse's refusals
        code = exc.code
    return code, capsys.readouterr().err


def assert_refused(code, err, *fragments):
    """Exit code 2 and one last line `geoloc evaluate: error: ...` holding every fragment."""
    assert code == 2, err
    assert "Traceback" not in err, err
    message = err.strip().splitlines()[-1]
    assert message.startswith("geoloc evaluate: error: "), err
    for fragment in fragments:
        assert fragment in message, message


def files_under(folder):
    """Every file under `folder`, temporary ones included; none when it does not exist."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def recalls_of(row):
    return {key: row[key] for key in ("r1", "r5", "r10", "r20", "n_queries", "n_database")}


@pytest.fixture
def embedded(monkeypatch):
    """Each list of images embedded, as (folder, count), in order."""
    calls = []
    real = evaluation.compute_descriptors

    def counting(model, paths, **options):
        calls.append((paths[0].parent.parent.name + "/" + paths[0].parent.name, len(paths)))
        return real(model, paths, **options)

    monkeypatch.setattr(evaluation, "compute_descriptors", counting)
    return calls


# ---------------------------------------------------------------- several test sets, one process


def test_three_test_sets_one_model_load_and_a_shared_database_embedded_once(
    tmp_path, capsys, caplog, model_file, monkeypatch, embedded
):
    # a and b: the same file names and sizes (16 px noise PNGs), other pixels: two databases.
    make_test_set(tmp_path / "a", seed=1)
    make_test_set(tmp_path / "b", seed=2)
    # c is b's database (a copy: same relative names and file sizes) with one of b's queries.
    shutil.copytree(tmp_path / "b" / "database", tmp_path / "c" / "database")
    (tmp_path / "c" / "queries").mkdir()
    query = sorted((tmp_path / "b" / "queries").iterdir())[1]
    shutil.copy2(query, tmp_path / "c" / "queries" / query.name)
    loads = []
    monkeypatch.setattr(command, "load_model", lambda *a, **kw: loads.append(a) or models.load_model(*a, **kw))

    with caplog.at_level("INFO", logger="geoloc.evaluate.command"):
        code, err = evaluate(
            capsys,
            "--model",
            model_file,
            "--test-set",
            f"a={tmp_path / 'a'}",
            "--test-set",
            f"b={tmp_path / 'b'}",
            "--test-set",
            f"c={tmp_path / 'c'}",
            "--out-dir",
            tmp_path / "out",
        )

    assert code == 0, err
    assert files_under(tmp_path / "out") == [
        "a.csv",
        "a.queries.csv",
        "b.csv",
        "b.queries.csv",
        "c.csv",
        "c.queries.csv",
    ]
    assert len(loads) == 1
    assert embedded == [("a/database", 5), ("a/queries", 3), ("b/database", 5), ("b/queries", 3), ("c/queries", 1)]
    assert "c: its database is an earlier test set's; embedded once" in caplog.text
    # c's results are those it gets alone.
    (c_row,) = read_csv(tmp_path / "out" / "c.csv")
    assert (
        evaluate(capsys, "--model", model_file, "--test-set", f"c={tmp_path / 'c'}", "--out-dir", tmp_path / "alone")[0]
        == 0
    )
    (alone_row,) = read_csv(tmp_path / "alone" / "c.csv")
    assert recalls_of(c_row) == recalls_of(alone_row)
    assert read_csv(tmp_path / "out" / "c.queries.csv") == read_csv(tmp_path / "alone" / "c.queries.csv")


def test_a_database_differing_in_one_file_size_is_embedded_again(tmp_path, capsys, model_file, embedded):
    make_test_set(tmp_path / "b", seed=2)
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    victim = sorted((tmp_path / "c" / "database").iterdir())[3]
    Image.new("RGB", (16, 16), (9, 9, 9)).save(victim)  # same name, another image, another size

    code, err = evaluate(
        capsys,
        "--model",
        model_file,
        "--test-set",
        f"b={tmp_path / 'b'}",
        "--test-set",
        f"c={tmp_path / 'c'}",
        "--out-dir",
        tmp_path / "out",
    )

    assert code == 0, err
    assert [folder for folder, _ in embedded] == ["b/database", "b/queries", "c/database", "c/queries"]


def test_recall_csv_records_the_model_and_the_protocol(tmp_path, capsys, model_file):
    make_test_set(tmp_path / "set")

    code, err = evaluate(
        capsys, "--model", model_file, "--test-set", f"t={tmp_path / 'set'}", "--out-dir", tmp_path / "native"
    )
    assert code == 0, err
    code, err = evaluate(
        capsys,
        "--model",
        model_file,
        "--test-set",
        f"t={tmp_path / 'set'}",
        "--out-dir",
        tmp_path / "resized",
        "--resize",
        "24",
        "32",
        "--autocast",
        "--positive-dist-threshold",
        "30.5",
    )
    assert code == 0, err

    (native,), (resized,) = read_csv(tmp_path / "native" / "t.csv"), read_csv(tmp_path / "resized" / "t.csv")
    assert list(native) == list(RECALL_COLUMNS)
    common = {
        "model_sha256": sha256_file(model_file),
        "k": "5",
        "device": device_name(torch.device("cpu")),
        "kind": "trained",
        "test_set": "t",
        "test_dir": str(tmp_path / "set"),
    }
    assert native == {**native, **common, "positive_dist_threshold": "25.0", "resize": "", "autocast": "0"}
    assert resized == {**resized, **common, "positive_dist_threshold": "30.5", "resize": "24x32", "autocast": "1"}


@pytest.fixture(scope="module")
def downloader_tokyo(tiny_city, tmp_path_factory):
    """Part of the tiny city's Tokyo-XS as VPR-datasets-downloader lays a set out (tokyo/images/test):
    20 or more database images, 4 queries with a database image within 20 m and 2 without."""
    source = tiny_city / "tokyo_xs" / "test"
    database, queries = (sorted((source / part).iterdir()) for part in ("database", "queries"))
    distances = np.linalg.norm(utm_of(queries)[:, None] - utm_of(database)[None], axis=2)
    near = np.flatnonzero((distances <= 20).any(axis=1))[:4]
    kept = sorted(set(np.flatnonzero((distances[near] <= 20).any(axis=0))) | set(range(20)))
    far = np.flatnonzero((distances[:, kept] > 20).all(axis=1))[:2]
    assert len(near) == 4 and len(far) == 2
    folder = tmp_path_factory.mktemp("downloader") / "tokyo" / "images" / "test"
    for part, paths in (("database", [database[i] for i in kept]), ("queries", [queries[i] for i in (*near, *far)])):
        (folder / part).mkdir(parents=True)
        for path in paths:
            shutil.copy2(path, folder / part / path.name)
    return folder


def utm_of(paths):
    return np.array([(meta.utm_east, meta.utm_north) for meta in map(parse_image_name, paths)])


def test_each_set_is_scored_and_recorded_at_its_own_threshold(downloader_tokyo, tmp_path, capsys, model_file):
    # The city lies within 100 km: every database image is a positive of every query, so recall@1
    # is 100 whatever the model; at 20 m, two queries have no positive.
    code, err = evaluate(
        capsys,
        "--model",
        model_file,
        "--test-set",
        f"whole={downloader_tokyo}",
        "--test-set",
        f"near={downloader_tokyo}",
        "--set-threshold",
        "whole=100000",
        "--positive-dist-threshold",
        "20",
        "--k",
        "20",
        "--out-dir",
        tmp_path / "out",
    )

    assert code == 0, err
    (whole,), (near,) = read_csv(tmp_path / "out" / "whole.csv"), read_csv(tmp_path / "out" / "near.csv")
    assert (whole["r1"], whole["n_queries_without_positive"], whole["positive_dist_threshold"]) == (
        "100.0000",
        "0",
        "100000.0",
    )
    assert (near["positive_dist_threshold"], near["n_queries_without_positive"]) == ("20.0", "2")


def test_a_queries_file_keeps_only_its_queries(downloader_tokyo, tmp_path, capsys, model_file):
    queries = sorted(path.name for path in (downloader_tokyo / "queries").iterdir())
    subset = tmp_path / "subset.txt"
    subset.write_text("\n".join(queries[1::3]) + "\n", encoding="utf-8")

    code, err = evaluate(
        capsys,
        "--model",
        model_file,
        "--test-set",
        f"all={downloader_tokyo}",
        "--test-set",
        f"some={downloader_tokyo}",
        "--set-queries",
        f"some={subset}",
        "--k",
        "20",
        "--out-dir",
        tmp_path / "out",
    )

    assert code == 0, err
    (all_row,), (some,) = read_csv(tmp_path / "out" / "all.csv"), read_csv(tmp_path / "out" / "some.csv")
    assert (int(all_row["n_queries"]), int(some["n_queries"])) == (len(queries), len(queries[1::3]))
    assert some["n_database"] == all_row["n_database"]
    assert [row["query"] for row in read_csv(tmp_path / "out" / "some.queries.csv")] == [
        f"queries/{name}" for name in queries[1::3]
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--set-threshold", "other=30"], "--set-threshold other=...: 'other' is not a --test-set name (t)"),
        (["--set-threshold", "t=30", "--set-threshold", "t=40"], "--set-threshold: test set 't' is given twice"),
        (["--set-threshold", "t=0"], "argument --set-threshold: 0 is less than or equal to the minimum of 0"),
        (["--set-threshold", "t"], "argument --set-threshold: 't' is not NAME=METRES"),
        (["--set-queries", "t=missing.txt"], "cannot read the queries file missing.txt"),
    ],
)
def test_bad_per_set_flags_are_refused_before_anything_is_embedded(
    tmp_path, capsys, model_file, embedded, flags, message
):
    make_test_set(tmp_path / "set")
    code, err = evaluate(
        capsys, "--model", model_file, "--test-set", f"t={tmp_path / 'set'}", "--out-dir", tmp_path / "out", *flags
    )
    assert_refused(code, err, message)
    assert embedded == [] and not (tmp_path / "out").exists()


def test_per_query_rows_agree_with_the_recall_row(tmp_path, capsys, model_file):
    make_test_set(tmp_path / "set")

    assert (
        evaluate(capsys, "--model", model_file, "--test-set", f"t={tmp_path / 'set'}", "--out-dir", tmp_path / "out")[0]
        == 0
    )

    (summary,) = read_csv(tmp_path / "out" / "t.csv")
    queries = read_csv(tmp_path / "out" / "t.queries.csv")
    assert len(queries) == 3
    for row in queries:
        distances = json.loads(row["distances_m"])
        assert len(distances) == len(json.loads(row["predictions"])) == 5  # k=5: the whole database
        within = [i + 1 for i, d in enumerate(distances) if d <= 25.0]
        assert int(row["first_correct_rank"]) == (within[0] if within else 0)
    found = sum(int(row["first_correct_rank"]) in range(1, 2) for row in queries)
    assert float(summary["r1"]) == pytest.approx(100 * found / 3, abs=1e-4)


# ---------------------------------------------------------------- all pairs or none


def test_a_full_disk_at_the_last_file_leaves_no_pair_and_no_temporary_file(tmp_path, capsys, model_file, monkeypatch):
    make_test_set(tmp_path / "a", seed=1)
    make_test_set(tmp_path / "b", seed=2)
    real = command.write_queries

    def fills_up(handle, result, test_set):
        if test_set.folder == tmp_path / "b":
            handle.write("query,first")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(handle, result, test_set)

    monkeypatch.setattr(command, "write_queries", fills_up)

    code, err = evaluate(
        capsys,
        "--model",
        model_file,
        "--test-set",
        f"a={tmp_path / 'a'}",
        "--test-set",
        f"b={tmp_path / 'b'}",
        "--out-dir",
        tmp_path / "out",
    )

    assert_refused(code, err, f"cannot write {tmp_path / 'out' / 'b.queries.csv'}: No space left on device")
    assert files_under(tmp_path / "out") == []


def test_sigterm_while_writing_leaves_no_pair_and_removes_older_outputs(tmp_path, capsys, model_file, monkeypatch):
    make_test_set(tmp_path / "a", seed=1)
    make_test_set(tmp_path / "b", seed=2)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.csv", "a.queries.csv", "b.csv", "b.queries.csv"):  # a previous evaluation's
        (out / name).write_text("old\n")
    real = command.write_recalls

    def killed_midway(handle, row):
        real(handle, row)
        if row["test_set"] == "b":
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(command, "write_recalls", killed_midway)
    code, err = evaluate(
        capsys,
        "--model",
        model_file,
        "--test-set",
        f"a={tmp_path / 'a'}",
        "--test-set",
        f"b={tmp_path / 'b'}",
        "--out-dir",
        out,
    )

    assert code == 3 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("geoloc evaluate: error: stopped by signal 15")
    assert files_under(out) == []


def test_a_failed_rename_midway_takes_the_renamed_files_back(tmp_path, capsys, model_file, monkeypatch):
    make_test_set(tmp_path / "a", seed=1)
    make_test_set(tmp_path / "b", seed=2)
    real_replace, renamed = os.replace, []

    def third_fails(source, target):
        if len(renamed) == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        renamed.append(target)
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", third_fails)

    code, err = evaluate(
        capsys,
        "--model",
        model_file,
        "--test-set",
        f"a={tmp_path / 'a'}",
        "--test-set",
        f"b={tmp_path / 'b'}",
        "--out-dir",
        tmp_path / "out",
    )

    assert_refused(code, err, "Input/output error")
    assert [path.name for path in renamed] == ["b.queries.csv", "a.queries.csv"]  # per-query files first
    assert files_under(tmp_path / "out") == []


# ---------------------------------------------------------------- the untrained baseline


def torchvision_weights(path, seed):
    import torchvision

    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return torch.load(path, weights_only=True)


def test_baseline_is_deterministic_for_a_seed_and_differs_across_seeds():
    first = build_baseline("resnet18", fc_output_dim=8, seed=3, weights=None, weights_format=None).state_dict()
    again = build_baseline("resnet18", fc_output_dim=8, seed=3, weights=None, weights_format=None).state_dict()
    other = build_baseline("resnet18", fc_output_dim=8, seed=4, weights=None, weights_format=None).state_dict()

    assert first.keys() == again.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["aggregation.fc.weight"], other["aggregation.fc.weight"])
    assert not torch.equal(first["backbone.layer3.0.conv1.weight"], other["backbone.layer3.0.conv1.weight"])


def test_baseline_with_weights_loads_them_into_the_backbone_and_seeds_the_head(tmp_path):
    state = torchvision_weights(tmp_path / "resnet18.pth", seed=123)

    model = build_baseline(
        "resnet18", fc_output_dim=8, seed=0, weights=tmp_path / "resnet18.pth", weights_format="torchvision"
    )
    other_seed = build_baseline(
        "resnet18", fc_output_dim=8, seed=1, weights=tmp_path / "resnet18.pth", weights_format=None
    )

    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(model.state_dict()[f"backbone.{key}"], state[key])
        assert torch.equal(other_seed.state_dict()[f"backbone.{key}"], state[key])
    assert not torch.equal(model.aggregation.fc.weight, other_seed.aggregation.fc.weight)


def test_untrained_command_writes_baseline_json_and_every_pair(tmp_path, capsys):
    make_test_set(tmp_path / "a", seed=1, size=(24, 16))
    make_test_set(tmp_path / "b", seed=2)
    torchvision_weights(tmp_path / "w.pth", seed=5)
    summary_out = tmp_path / "baselines" / "resnet18-imagenet" / "baseline.json"
    out = summary_out.parent / "recalls"

    code, err = evaluate(
        capsys,
        "--untrained",
        "--backbone",
        "resnet18",
        "--pretraining",
        "imagenet",
        "--weights",
        tmp_path / "w.pth",
        "--fc-output-dim",
        "8",
        "--seed",
        "7",
        "--summary-out",
        summary_out,
        "--test-set",
        f"a={tmp_path / 'a'}",
        "--test-set",
        f"b={tmp_path / 'b'}",
        "--out-dir",
        out,
    )

    assert code == 0, err
    assert files_under(summary_out.parent) == [
        "baseline.json",
        "recalls/a.csv",
        "recalls/a.queries.csv",
        "recalls/b.csv",
        "recalls/b.queries.csv",
    ]
    summary = json.loads(summary_out.read_text())
    assert summary["run"] == {
        "name": "resnet18-imagenet-baseline",
        "backbone": "resnet18",
        "pretraining": "imagenet",
        "precision": "fp32",
        "seed": 7,
        "tag": None,
        "kind": "baseline",
    }
    assert summary["weights"] == {
        "path": str(tmp_path / "w.pth"),
        "sha256": sha256_file(tmp_path / "w.pth"),
        "format": "torchvision",
    }
    for key in (
        "training_time_seconds",
        "train_seconds",
        "val_seconds",
        "images_per_second",
        "best_epoch",
        "best_val_r1",
        "model_sha256",
        "image_cache_build_seconds",
        "compile_seconds",
    ):
        assert summary[key] is None, key
    model = build_baseline("resnet18", fc_output_dim=8, seed=7, weights=tmp_path / "w.pth", weights_format=None)
    assert (summary["params"], summary["trainable_params"]) == models.count_parameters(model)
    # At the first test image's size: a's database images are 24 wide, 16 high.
    assert summary["gflops_per_image"] == pytest.approx(gflops_per_image(model, (16, 24)))
    assert summary["gflops_per_image"] != pytest.approx(gflops_per_image(model, 16))
    assert (summary["device"], summary["device_type"], summary["gpus"]) == (device_name(torch.device("cpu")), "cpu", 0)
    assert set(summary["versions"]) >= {"torch", "faiss", "geoloc"}
    assert len(summary["fingerprint"]["sha256"]) == 64
    (row,) = read_csv(out / "a.csv")
    assert (row["kind"], row["model_sha256"]) == ("baseline", "")


def test_a_patch_14_vit_baseline_is_evaluated_on_images_no_multiple_of_14(tmp_path, capsys):
    # DINOv2's ViT-S/14 (random weights) on 50 x 37 px images: each resized to 56 x 42.
    make_test_set(tmp_path / "set", size=(50, 37))
    summary_out = tmp_path / "baseline" / "baseline.json"

    code, err = evaluate(
        capsys,
        "--untrained",
        "--backbone",
        "timm:vit_small_patch14_dinov2",
        "--pretraining",
        "none",
        "--fc-output-dim",
        "8",
        "--summary-out",
        summary_out,
        "--test-set",
        f"t={tmp_path / 'set'}",
        "--out-dir",
        tmp_path / "out",
    )

    assert code == 0, err
    (row,) = read_csv(tmp_path / "out" / "t.csv")
    assert (row["n_queries"], row["n_database"]) == ("3", "5")
    assert json.loads(summary_out.read_text())["gflops_per_image"] > 0  # counted at 42 x 56


def test_untrained_baseline_evaluates_as_the_same_network_saved_and_loaded(tmp_path, capsys):
    make_test_set(tmp_path / "set")
    torch.manual_seed(0)
    models.save_model(
        tmp_path / "model.pt", build_baseline("resnet18", fc_output_dim=8, seed=11, weights=None, weights_format=None)
    )
    common = ["--test-set", f"t={tmp_path / 'set'}"]

    assert (
        evaluate(
            capsys,
            "--untrained",
            "--backbone",
            "resnet18",
            "--pretraining",
            "none",
            "--fc-output-dim",
            "8",
            "--seed",
            "11",
            "--summary-out",
            tmp_path / "baseline.json",
            *common,
            "--out-dir",
            tmp_path / "baseline",
        )[0]
        == 0
    )
    assert evaluate(capsys, "--model", tmp_path / "model.pt", *common, "--out-dir", tmp_path / "saved")[0] == 0

    assert read_csv(tmp_path / "baseline" / "t.queries.csv") == read_csv(tmp_path / "saved" / "t.queries.csv")
    assert json.loads((tmp_path / "baseline.json").read_text())["weights"] is None


# ---------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--positive-dist-threshold", "inf"], "argument --positive-dist-threshold: 'inf' is not a finite number"),
        (["--positive-dist-threshold", "nan"], "argument --positive-dist-threshold: 'nan' is not a finite number"),
        (["--positive-dist-threshold", "0"], "0 is less than or equal to the minimum of 0"),
        (["--positive-dist-threshold", "-5"], "-5 is less than or equal to the minimum of 0"),
        (["--k", "0"], "argument --k: 0 is less than the minimum of 1"),
        (["--k", "2.0"], "argument --k: '2.0' is not of type 'integer'"),
        (["--batch-size", "0"], "argument --batch-size: 0 is less than the minimum of 1"),
        (["--num-workers", "-1"], "argument --num-workers: -1 is less than the minimum of 0"),
        (["--resize", "0", "16"], "argument --resize: 0 is less than the minimum of 1"),
        (["--seed", "1"], "--seed goes with --untrained, not --model"),
        (["--summary-out", "x.json"], "--summary-out goes with --untrained, not --model"),
    ],
)
def test_bad_values_are_refused_before_anything_is_embedded(tmp_path, capsys, model_file, embedded, flags, message):
    make_test_set(tmp_path / "set")
    code, err = evaluate(
        capsys, "--model", model_file, "--test-set", f"t={tmp_path / 'set'}", "--out-dir", tmp_path / "out", *flags
    )
    assert_refused(code, err, message)
    assert embedded == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name", ["../up", "a/b", ".hidden", "-dash", "", "has space", "x.queries", "X.Queries", "n" * 201, "tab\there"]
)
def test_a_test_set_name_that_is_not_a_safe_file_name_is_refused(tmp_path, capsys, model_file, name):
    make_test_set(tmp_path / "set")
    code, err = evaluate(
        capsys, "--model", model_file, f"--test-set={name}={tmp_path / 'set'}", "--out-dir", tmp_path / "out"
    )
    assert_refused(code, err, "argument --test-set: test set name", "is not a safe file name")
    assert not (tmp_path / "out").exists()


def test_a_test_set_without_a_folder_is_refused(capsys, tmp_path, model_file):
    assert_refused(
        *evaluate(capsys, "--model", model_file, "--test-set", "sf_xs", "--out-dir", tmp_path),
        "argument --test-set: 'sf_xs' is not NAME=DIR",
    )


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["t", "t"], "--test-set: the name 't' is given twice"),
        (["tokyo", "Tokyo"], "--test-set: the names 'tokyo' and 'Tokyo' are one file on a case-insensitive disk"),
    ],
)
def test_two_test_sets_of_one_name_are_refused(tmp_path, capsys, model_file, names, message):
    make_test_set(tmp_path / "set")
    sets = [flag for name in names for flag in ("--test-set", f"{name}={tmp_path / 'set'}")]
    code, err = evaluate(capsys, "--model", model_file, *sets, "--out-dir", tmp_path / "out")
    assert_refused(code, err, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out", ["file", "file/recalls"])
def test_an_out_folder_that_is_or_lies_in_a_file_is_refused_before_evaluating(
    tmp_path, capsys, model_file, embedded, out
):
    make_test_set(tmp_path / "set")
    (tmp_path / "file").write_text("a file")
    code, err = evaluate(
        capsys, "--model", model_file, "--test-set", f"t={tmp_path / 'set'}", "--out-dir", tmp_path / out
    )
    assert_refused(code, err, f"--out-dir {tmp_path / out}", f"{tmp_path / 'file'} is not a folder")
    assert embedded == [] and (tmp_path / "file").read_text() == "a file"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--pretraining", "none", "--summary-out", "S"],
            "--untrained needs --backbone, --pretraining and --summary-out (missing: --backbone)",
        ),
        (["--backbone", "resnet18"], "(missing: --pretraining, --summary-out)"),
        (
            ["--backbone", "resnet18", "--pretraining", "imagenet", "--summary-out", "S"],
            "--pretraining imagenet needs its --weights file (or --pretraining none for random initialisation)",
        ),
        (
            ["--backbone", "resnet18", "--pretraining", "none", "--weights", "w.pth", "--summary-out", "S"],
            "--pretraining none is random initialisation: it takes no --weights",
        ),
        (
            ["--backbone", "resnet18", "--pretraining", "none", "--weights-format", "timm", "--summary-out", "S"],
            "--weights-format goes with --weights",
        ),
        (
            ["--backbone", "resnet18", "--pretraining", "places365", "--weights", "missing.pth", "--summary-out", "S"],
            "weights file missing.pth does not exist",
        ),
        (["--backbone", "resnet99", "--pretraining", "none", "--summary-out", "S"], "unknown backbone 'resnet99'"),
        (["--backbone", "resnet18", "--pretraining", "none", "--summary-out", "."], "--summary-out . is a folder"),
        (
            ["--backbone", "resnet18", "--pretraining", "none", "--summary-out", "OUT/t.queries.csv"],
            "is one of the CSVs --out-dir gets",
        ),
        (["--seed", "-1"], "argument --seed: -1 is less than the minimum of 0"),
        (
            ["--seed", "99999999999999999999"],
            "argument --seed: 99999999999999999999 is greater than the maximum of 18446744073709551615",
        ),
    ],
)
def test_untrained_mode_refuses_incomplete_or_contradicting_flags(tmp_path, capsys, flags, message):
    make_test_set(tmp_path / "set")
    summary = tmp_path / "baseline.json"
    flags = [str(summary) if flag == "S" else flag.replace("OUT", str(tmp_path / "out")) for flag in flags]
    code, err = evaluate(
        capsys, "--untrained", *flags, "--test-set", f"t={tmp_path / 'set'}", "--out-dir", tmp_path / "out"
    )
    assert_refused(code, err, message)
    assert not summary.exists() and not (tmp_path / "out").exists()


def test_model_and_untrained_together_are_refused(tmp_path, capsys, model_file):
    code, err = evaluate(
        capsys, "--model", model_file, "--untrained", "--test-set", f"t={tmp_path}", "--out-dir", tmp_path / "out"
    )
    assert_refused(code, err, "argument --untrained: not allowed with argument --model")


def test_a_file_name_that_is_not_utf8_is_refused_before_embedding(tmp_path, capsys, model_file, embedded):
    make_test_set(tmp_path / "set")
    query = sorted((tmp_path / "set" / "queries").iterdir())[0]
    bad = os.fsdecode(os.fsencode(query.name).replace(b"@.png", b"\xff@.png"))  # the note field: byte 0xff
    query.rename(query.with_name(bad))
    code, err = evaluate(
        capsys, "--model", model_file, "--test-set", f"t={tmp_path / 'set'}", "--out-dir", tmp_path / "out"
    )
    assert_refused(code, err, "is not valid UTF-8: rename it")
    assert embedded == []


def test_baseline_is_the_network_training_starts_from(tiny_city, tmp_path):
    # The trainer's own first state, with pretrained weights: what every run of this
    # (backbone, pretraining, seed) starts from.
    from geoloc.train.settings import RunInfo, TrainSettings
    from geoloc.train.trainer import Trainer

    torchvision_weights(tmp_path / "w.pth", seed=9)
    settings = TrainSettings(
        backbone="resnet18",
        seed=5,
        image_size=32,
        batch_size=4,
        M=10,
        alpha=45,
        N=2,
        L=1,
        min_images_per_class=3,
        fc_output_dim=16,
        weights_format="torchvision",
    )
    trainer = Trainer(
        settings,
        RunInfo("r", "resnet18", "imagenet", "fp32", 5, None),
        train_dir=tiny_city / "sf_xs" / "train",
        val_dir=tiny_city / "sf_xs" / "val",
        weights=tmp_path / "w.pth",
        checkpoint_dir=tmp_path / "ckpt",
        cache_dir=None,
        device="cpu",
        num_workers=0,
        checkpoint_every=10,
    )

    baseline = build_baseline(
        "resnet18", fc_output_dim=16, seed=5, weights=tmp_path / "w.pth", weights_format="torchvision"
    ).state_dict()

    started = trainer.model.state_dict()
    assert started.keys() == baseline.keys()
    assert all(torch.equal(started[key], baseline[key]) for key in started)
