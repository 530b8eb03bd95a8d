"""Faults and bad input as the user meets them: through the commands and the workflow.

Each case must end in one clear message naming the problem (a file, a field, a count) as the
last line of stderr, its exit code (2 bad input; 3 a stop signal, 130 Ctrl-C, both after a
checkpoint in training; 1 a bug, traceback kept), and no output under a final name. The
protections themselves are unit-tested next to their modules (test_atomic, train/test_checkpoint,
data/test_datasets, train/test_trainer, workflow/); here they
are tried where they can still go wrong: in data loader workers, between a command's two
output files, and with Snakemake itself killed in the middle of a job.
"""

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from geoloc import atomic
from geoloc.cli import main
from geoloc.data.names import FIELDS, split_fields
from geoloc.errors import GeolocError
from geoloc.model import network as models
from geoloc.train.checkpoint import save_checkpoint

from support.workflow import snakemake_command, venv_env

# Five database places 100 m apart, and three queries, each a few metres from one of them.
DATABASE_UTM = [(1000.0 + 100.0 * i, 5000.0) for i in range(5)]
QUERY_UTM = [(1004.0, 5000.0), (1100.0, 5004.0), (1200.0, 4996.0)]


# ---------------------------------------------------------------- helpers


def image_name(extension: str = ".png", **fields: str) -> str:
    """A dataset file name with exactly the given fields (any of them malformed on purpose)."""
    values = dict.fromkeys(FIELDS, "")
    values.update(fields)
    return "@" + "@".join(values[field] for field in FIELDS) + "@" + extension


def utm_name(east: float, north: float) -> str:
    return image_name(utm_east=f"{east:.2f}", utm_north=f"{north:.2f}")


def make_test_set(root: Path, database=DATABASE_UTM, queries=QUERY_UTM) -> Path:
    """A test set of 16 px noise PNGs (distinct, so descriptors differ) named by their UTM."""
    rng = np.random.default_rng(0)
    for part, places in (("database", database), ("queries", queries)):
        (root / part).mkdir(parents=True)
        for east, north in places:
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / part / utm_name(east, north))
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.manual_seed(0)
    models.save_model(path, models.build_model("resnet18", fc_output_dim=8))
    return path


def evaluate(capsys, model: Path, test_dir: Path, recalls: Path, queries: Path, *extra: str) -> tuple[int, str]:
    """`geoloc evaluate` as the workflow calls it: its exit code and what it wrote to stderr."""
    assert (recalls.name, queries) == ("t.csv", recalls.parent / "t.queries.csv")  # one --out-dir
    code = main(
        [
            "evaluate",
            "--model",
            str(model),
            "--test-set",
            f"t={test_dir}",
            "--out-dir",
            str(recalls.parent),
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--k",
            "5",
            *extra,
        ]
    )
    return code, capsys.readouterr().err


def assert_refused(command: str, code: int, err: str, *fragments: str) -> None:
    """Exit code 2 and a one-line `geoloc CMD: error: ...` holding every fragment, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err, err
    message = err.strip().splitlines()[-1]
    assert message.startswith(f"geoloc {command}: error: "), err
    for fragment in fragments:
        assert fragment in message, message


def files_under(folder: Path) -> list[str]:
    """Every file under `folder` (temporary ones included); none when it does not exist."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


# ---------------------------------------------------------------- evaluate: damaged images


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("damage", ["zero-byte", "truncated", "not-an-image"])
def test_undecodable_test_image_fails_naming_it_even_in_loader_workers(
    tmp_path, capsys, model_file, damage, num_workers
):
    # A test set is never evaluated with an image left out: its recall would be wrong.
    test_dir = make_test_set(tmp_path / "set")
    victim = sorted((test_dir / "queries").iterdir())[1]
    content = victim.read_bytes()
    victim.write_bytes(
        {"zero-byte": b"", "truncated": content[: len(content) // 2], "not-an-image": b"<html>403 Forbidden</html>"}[
            damage
        ]
    )

    out = tmp_path / "out"
    code, err = evaluate(
        capsys, model_file, test_dir, out / "t.csv", out / "t.queries.csv", "--num-workers", str(num_workers)
    )

    assert_refused("evaluate", code, err, f"cannot decode image {victim}")
    assert files_under(out) == []


# ---------------------------------------------------------------- evaluate: bad names


@pytest.mark.parametrize(
    ("part", "name", "problem"),
    [
        ("database", image_name(utm_north="5000.00"), "field utm_east is empty"),
        ("queries", image_name(utm_east="1004.00", utm_north="north"), "field utm_north is not a number: 'north'"),
        (
            "queries",
            image_name(utm_east="1004.00", utm_north="5000.00", heading="east"),
            "field heading is not a number: 'east'",
        ),
        ("database", image_name(utm_east="1004.00", utm_north="inf"), "field utm_north is not finite: 'inf'"),
        ("database", "IMG_0042.png", "expected 14 '@'-separated fields"),
    ],
)
def test_badly_named_test_image_fails_naming_file_and_field(tmp_path, capsys, model_file, part, name, problem):
    test_dir = make_test_set(tmp_path / "set")
    bad = test_dir / part / name
    shutil.copy(next((test_dir / part).iterdir()), bad)

    out = tmp_path / "out"
    code, err = evaluate(capsys, model_file, test_dir, out / "t.csv", out / "t.queries.csv")

    assert_refused("evaluate", code, err, f"{bad}: {problem}")
    assert files_under(out) == []


# ---------------------------------------------------------------- evaluate: test set shape


def empty_queries(test_dir: Path) -> None:
    for path in (test_dir / "queries").iterdir():
        path.unlink()


def swap_parts(test_dir: Path) -> None:
    (test_dir / "database").rename(test_dir / "swap")
    (test_dir / "queries").rename(test_dir / "database")
    (test_dir / "swap").rename(test_dir / "queries")


def duplicate_a_database_image(test_dir: Path) -> None:
    first = sorted((test_dir / "database").iterdir())[0]
    (test_dir / "database" / "more").mkdir()
    shutil.copy(first, test_dir / "database" / "more" / first.name)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (empty_queries, "image folder {test_dir}/queries holds no image"),
        (lambda test_dir: shutil.rmtree(test_dir / "database"), "image folder {test_dir}/database does not exist"),
        (lambda test_dir: shutil.rmtree(test_dir), "test set folder {test_dir} does not exist"),
        (
            swap_parts,
            "test set {test_dir}: 5 queries but only 3 database images; a test set's database must "
            "hold at least as many images as its queries (are database/ and queries/ swapped?)",
        ),
        (duplicate_a_database_image, "duplicate image name @1000.00@5000.00@"),
    ],
    ids=["empty-queries", "no-database", "no-test-set", "swapped", "duplicate-name"],
)
def test_malformed_test_set_fails_naming_the_problem(tmp_path, capsys, model_file, change, problem):
    test_dir = make_test_set(tmp_path / "set")
    change(test_dir)

    out = tmp_path / "out"
    code, err = evaluate(capsys, model_file, test_dir, out / "t.csv", out / "t.queries.csv")

    assert_refused("evaluate", code, err, problem.format(test_dir=test_dir))
    assert files_under(out) == []


def test_k_larger_than_the_database_is_refused_not_capped(tmp_path, capsys, model_file):
    test_dir = make_test_set(tmp_path / "set")
    out = tmp_path / "out"
    code, err = evaluate(capsys, model_file, test_dir, out / "t.csv", out / "t.queries.csv", "--k", "6")
    assert_refused(
        "evaluate",
        code,
        err,
        f"test set {test_dir}: k=6 nearest neighbours asked for, but the database holds only 5 images",
        "evaluation.k in the config",
    )
    assert files_under(out) == []


def test_queries_mostly_without_positive_are_counted_and_stay_in_the_denominator(tmp_path, capsys, caplog, model_file):
    # One query 4 m from a place, three far from every place: recall@5 can only be 25 %, as
    # k=5 ranks the whole database and the one query with a positive finds it.
    far = [(9000.0, 9000.0), (9500.0, 9000.0), (9000.0, 9500.0)]
    test_dir = make_test_set(tmp_path / "set", queries=[QUERY_UTM[0], *far])
    out = tmp_path / "out"

    with caplog.at_level("WARNING", logger="geoloc.evaluate.evaluation"):
        code, err = evaluate(capsys, model_file, test_dir, out / "t.csv", out / "t.queries.csv")

    assert code == 0, err
    assert "3 of 4 queries have no database image within 25.0 m" in caplog.text
    with open(out / "t.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert (row["n_queries"], row["n_database"], row["n_queries_without_positive"]) == ("4", "5", "3")
    assert float(row["r5"]) == float(row["r20"]) == 25.0
    with open(out / "t.queries.csv", newline="") as handle:
        queries = {Path(r["query"]).name: r for r in csv.DictReader(handle)}
    assert queries[utm_name(*QUERY_UTM[0])]["has_positive"] == "1"
    assert int(queries[utm_name(*QUERY_UTM[0])]["first_correct_rank"]) in range(1, 6)
    for place in far:
        assert (queries[utm_name(*place)]["has_positive"], queries[utm_name(*place)]["first_correct_rank"]) == (
            "0",
            "0",
        )


def test_model_giving_non_finite_descriptors_is_refused_not_ranked(tmp_path, capsys):
    # NaN weights stand for a model that overflows in reduced precision, or a damaged file.
    torch.manual_seed(0)
    model = models.build_model("resnet18", fc_output_dim=8)
    with torch.no_grad():
        model.aggregation.fc.weight[0, 0] = float("nan")
    models.save_model(tmp_path / "model.pt", model)
    test_dir = make_test_set(tmp_path / "set")
    out = tmp_path / "out"

    code, err = evaluate(capsys, tmp_path / "model.pt", test_dir, out / "t.csv", out / "t.queries.csv")

    first = sorted((test_dir / "database").iterdir())[0]
    assert_refused("evaluate", code, err, f"5 of 5 descriptors are not finite (NaN or inf), the first of {first}")
    assert files_under(out) == []


# ---------------------------------------------------------------- evaluate: unwritable outputs


def test_unwritable_results_folder_fails_and_leaves_neither_output(tmp_path, capsys, model_file):
    # A regular file where the output folder should be: cannot be written, whoever runs the
    # test (root ignores read-only permissions).
    test_dir = make_test_set(tmp_path / "set")
    out = tmp_path / "recalls"
    out.write_text("not a folder")

    code, err = evaluate(capsys, model_file, test_dir, out / "t.csv", out / "t.queries.csv")

    assert_refused("evaluate", code, err, f"--out-dir {out} is not a folder")
    assert out.read_text() == "not a folder"


class DiskFillsUp:
    """A text file on a disk with room for `room` more characters; beyond them, ENOSPC."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, text: str) -> int:
        if len(text) > self.room:
            self.handle.write(text[: self.room])  # what fits reaches the disk
            self.handle.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(text)
        return self.handle.write(text)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


@pytest.mark.parametrize("full_at", ["t.csv", "t.queries.csv"])
def test_full_disk_fails_and_leaves_neither_output_nor_a_partial_file(
    tmp_path, capsys, monkeypatch, model_file, full_at
):
    # The disk fills up 20 characters into `full_at` (whatever name it is written under).
    real_open = open

    def open_on_a_filling_disk(path, mode="r", **kwargs):
        handle = real_open(path, mode, **kwargs)
        name = Path(path).name
        if "w" in mode and (name == full_at or name.startswith(f".{full_at}.")):
            return DiskFillsUp(handle, room=20)
        return handle

    monkeypatch.setattr(atomic, "open", open_on_a_filling_disk, raising=False)
    test_dir = make_test_set(tmp_path / "set")
    out = tmp_path / "out"

    code, err = evaluate(capsys, model_file, test_dir, out / "t.csv", out / "t.queries.csv")

    assert_refused("evaluate", code, err, f"cannot write {out / full_at}: No space left on device")
    assert files_under(out) == []


# ---------------------------------------------------------------- train: bad names


def copy_sf_xs(city: Path, root: Path) -> Path:
    """A writable copy of the tiny city's training and validation sets."""
    for part in ("train", "val"):
        shutil.copytree(city / "sf_xs" / part, root / "sf_xs" / part)
    return root / "sf_xs"


def rename_with(path: Path, **fields: str) -> Path:
    """Rename a dataset image, changing some of the fields of its name."""
    values = {**split_fields(path), **fields}
    renamed = path.with_name(image_name(path.suffix, **values))
    path.rename(renamed)
    return renamed


def train_args(sf_xs: Path, work: Path) -> list[str]:
    return [
        "--train-dir",
        str(sf_xs / "train"),
        "--val-dir",
        str(sf_xs / "val"),
        "--out-dir",
        str(work / "run"),
        "--checkpoint-dir",
        str(work / "ckpt"),
        "--cache-dir",
        str(work / "cache"),
        "--run-name",
        "r",
        "--backbone",
        "resnet18",
        "--weights",
        "none",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--num-workers",
        "0",
        "--epochs",
        "1",
        "--iterations-per-epoch",
        "2",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--M",
        "10",
        "--alpha",
        "45",
        "--N",
        "2",
        "--L",
        "1",
        "--min-images-per-class",
        "3",
        "--fc-output-dim",
        "16",
        "--lr",
        "1e-3",
        "--checkpoint-every",
        "1",
    ]


def test_training_image_without_heading_stops_the_train_command_naming_file_and_field(tiny_city, tmp_path):
    sf_xs = copy_sf_xs(tiny_city, tmp_path / "data")
    bad = rename_with(sorted((sf_xs / "train").iterdir())[7], heading="")

    result = subprocess.run(
        [sys.executable, "-m", "geoloc.cli", "train", *train_args(sf_xs, tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert_refused("train", result.returncode, result.stderr, f"{bad}: field heading is empty")
    assert not (tmp_path / "run").exists()
    assert files_under(tmp_path / "ckpt") == []


@pytest.mark.parametrize(
    ("where", "field", "value", "problem"),
    [
        ("train", "utm_east", "12a", "field utm_east is not a number: '12a'"),
        ("val/database", "utm_north", "", "field utm_north is empty"),
        ("val/queries", "utm_east", "nan", "field utm_east is not finite: 'nan'"),
    ],
)
def test_badly_named_training_or_validation_image_stops_training(
    tiny_city, tmp_path, capsys, where, field, value, problem
):
    sf_xs = copy_sf_xs(tiny_city, tmp_path / "data")
    bad = rename_with(sorted((sf_xs / where).iterdir())[3], **{field: value})

    code = main(["train", *train_args(sf_xs, tmp_path)])

    assert_refused("train", code, capsys.readouterr().err, f"{bad}: {problem}")
    assert not (tmp_path / "run").exists()
    assert files_under(tmp_path / "ckpt") == []


# ---------------------------------------------------------------- models, checkpoints, training


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("writer", ["model", "checkpoint"])
def test_model_or_checkpoint_on_a_full_disk_is_a_clear_error(tmp_path, monkeypatch, writer):
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, _path, **kwargs: real_save(obj, "/dev/full", **kwargs))
    model = models.build_model("resnet18", fc_output_dim=8)
    target = tmp_path / "model.pt" if writer == "model" else tmp_path / "ckpt-000000001.pt"

    with pytest.raises(GeolocError, match=f"cannot write {target}"):
        if writer == "model":
            models.save_model(target, model)
        else:
            save_checkpoint(tmp_path, 1, {"model": model.state_dict()})
    assert files_under(tmp_path) == []


def test_swapped_validation_set_stops_training_before_the_first_iteration(tiny_city, tmp_path, capsys):
    sf_xs = copy_sf_xs(tiny_city, tmp_path / "data")
    swap_parts(sf_xs / "val")

    code = main(["train", *train_args(sf_xs, tmp_path)])

    assert_refused(
        "train", code, capsys.readouterr().err, f"test set {sf_xs / 'val'}: 48 queries but only 16 database images"
    )
    assert files_under(tmp_path / "ckpt") == []  # not one iteration was spent on it


# ---------------------------------------------------------------- the workflow, interrupted


def workflow_command(workdir: Path, config: Path, *args: str) -> list[str]:
    # --configfile last: it takes every word after it.
    return snakemake_command(workdir, *args, "--cores", "1", "--resources", "gpu=1", "--configfile", str(config))


def run_to_the_end(command: list[str], env: dict) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]


def interrupt_when(command: list[str], env: dict, log: Path, ready, sig: int) -> None:
    """Start the workflow, and once `ready()` holds, send `sig` to its whole process group
    (Snakemake and its running job), as a terminal's Ctrl-C, SLURM or the OOM killer do."""
    with open(log, "w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not ready():
            assert process.poll() is None, f"the workflow ended before the interruption:\n{log.read_text()}"
            assert time.monotonic() < deadline, "the workflow never reached the interruption point"
            time.sleep(0.02)
        os.killpg(process.pid, sig)
        process.wait(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode != 0, log.read_text()


def comparable(results: Path) -> list[dict[str, str]]:
    """The rows of recalls.csv without the columns that measure time, speed or memory: every
    `*_seconds` column (training, validation, compilation, the image cache's build, descriptors,
    search) and the rates and peaks measured with them."""
    measured = {"images_per_second", "peak_memory_mb", "latency_ms_per_image"}
    with open(results / "recalls.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = [{k: v for k, v in row.items() if not (k.endswith("_seconds") or k in measured)} for row in rows]
    assert all({"r1", "model_sha256", "fingerprint_sha256"} <= row.keys() for row in kept)  # still worth comparing
    return kept


@pytest.mark.slow
def test_workflow_killed_in_training_and_interrupted_in_evaluation_ends_as_an_uninterrupted_run(tiny_city, tmp_path):
    run = "mobilenet_v3_small-none-fp32-s0"
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "datasets_root": str(tiny_city),  # only read
                "results": "results",
                "device": "cpu",
                "test_sets": ["sf_xs"],
                # Long enough that the kill below lands mid-training: checkpoints vanish once model.pt is written.
                "training": {
                    "epochs": 1,
                    "iterations_per_epoch": 300,
                    "batch_size": 4,
                    "image_size": 32,
                    "lr": 1e-3,
                    "alpha": 45,
                    "N": 2,
                    "L": 1,
                    "min_images_per_class": 2,
                    "num_workers": 0,
                    "checkpoint_every": 10,
                },
                "evaluation": {"batch_size": 16, "num_workers": 0},
                "grid": [
                    {
                        "backbones": ["mobilenet_v3_small"],
                        "pretrainings": ["none"],
                        "precisions": ["fp32"],
                        "seeds": [0],
                    }
                ],
                "reference": run,
                "report": {"published": None},
            }
        )
    )
    env = venv_env()
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run_to_the_end(workflow_command(straight, config, "results/recalls.csv"), env)

    command = workflow_command(interrupted, config, "results/recalls.csv")
    results = interrupted / "results"
    # SIGKILL once training has written its first periodic checkpoint: nothing can clean up,
    # and Snakemake's lock stays behind (the user runs --unlock, as Snakemake tells them).
    interrupt_when(
        command,
        env,
        tmp_path / "killed.log",
        lambda: any((results / "checkpoints" / run).glob("ckpt-*.pt")),
        signal.SIGKILL,
    )
    assert not (results / "runs" / run / "model.pt").exists()
    subprocess.run(
        workflow_command(interrupted, config, "--unlock"), env=env, check=True, capture_output=True, timeout=300
    )
    # Killed again as soon as the evaluation has started. (SIGKILL, not Ctrl-C: a SIGINT that
    # lands while the job's shell is still starting the command can be lost, and the run ends.)
    interrupt_when(
        command,
        env,
        tmp_path / "interrupted.log",
        lambda: (results / "logs" / "evaluate" / f"{run}.log").exists(),
        signal.SIGKILL,
    )
    assert (results / "runs" / run / "model.pt").exists()
    assert not (results / "runs" / run / "recalls" / "sf_xs.csv").exists()
    assert not (results / "runs" / run / "recalls" / "sf_xs.queries.csv").exists()
    subprocess.run(
        workflow_command(interrupted, config, "--unlock"), env=env, check=True, capture_output=True, timeout=300
    )
    run_to_the_end(command, env)

    # The training did resume from the checkpoint, and ended where the uninterrupted one did.
    train = json.loads((results / "runs" / run / "train.json").read_text())
    assert train["resumed_from_iteration"] in (10, 20, 30)
    straight_model = torch.load(straight / "results/runs" / run / "model.pt", weights_only=True)["state_dict"]
    resumed_model = torch.load(results / "runs" / run / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(straight_model[key], resumed_model[key]) for key in straight_model)
    assert comparable(results) == comparable(straight / "results")
    assert (results / "runs" / run / "recalls" / "sf_xs.queries.csv").read_bytes() == (
        straight / "results" / "runs" / run / "recalls" / "sf_xs.queries.csv"
    ).read_bytes()
    assert not any((results / "checkpoints" / run).glob("ckpt-*.pt"))  # dropped once the model was written


# ---------------------------------------------------------------- train: stopped, killed, failing


def training_command(sf_xs: Path, work: Path, *extra: str) -> list[str]:
    """`geoloc train` in its own process, long enough to be stopped mid-epoch."""
    args = train_args(sf_xs, work)
    args[args.index("--iterations-per-epoch") + 1] = "400"
    args[args.index("--checkpoint-every") + 1] = "1000"
    return [sys.executable, "-m", "geoloc.cli", "train", *args, "--threads", "1", *extra]


def stop_once_training(command: list[str], sig: int) -> tuple[int, str]:
    """Start the command, send `sig` once its loop has started, return (exit code, stderr)."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if "epoch 0: training" in line:
            break
    time.sleep(1.0)  # well inside the loop
    process.send_signal(sig)
    rest = process.communicate(timeout=300)[1]
    return process.returncode, "".join(seen) + rest


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 3), (signal.SIGUSR1, 3)])
def test_a_stopped_training_checkpoints_and_ends_with_one_line_and_its_exit_code(tiny_city, tmp_path, sig, code):
    sf_xs = copy_sf_xs(tiny_city, tmp_path / "data")
    returncode, err = stop_once_training(training_command(sf_xs, tmp_path, "--num-workers", "2"), sig)

    assert returncode == code, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"geoloc train: error: stopped by signal {int(sig)} ({sig.name}) at epoch 0 iteration ")
    assert last.endswith("checkpoint saved, rerun to resume")
    assert err.rstrip().endswith(last)  # nothing (no progress bar printed again) after the error
    assert [path.name.startswith("ckpt-") for path in (tmp_path / "ckpt").iterdir()] == [True]
    assert not (tmp_path / "run" / "model.pt").exists()


def test_an_undecodable_image_in_a_loader_worker_is_one_line_not_a_traceback(tiny_city, tmp_path):
    sf_xs = copy_sf_xs(tiny_city, tmp_path / "data")
    for image in (sf_xs / "train").iterdir():
        image.write_bytes(b"<html>403 Forbidden</html>")  # every image: the first batch meets one

    result = subprocess.run(
        training_command(sf_xs, tmp_path, "--num-workers", "2"), capture_output=True, text=True, timeout=300
    )

    assert_refused("train", result.returncode, result.stderr, "cannot decode image ", str(sf_xs / "train"))
    assert "worker" not in result.stderr.lower()
    assert not (tmp_path / "run" / "model.pt").exists()


def test_a_stop_during_the_final_save_leaves_neither_output_and_the_rerun_writes_both(
    tiny_city, tmp_path, capsys, monkeypatch
):
    from geoloc.train import command

    sf_xs = copy_sf_xs(tiny_city, tmp_path / "data")
    real_save = command.save_model

    def save_then_sigterm(path, model):
        real_save(path, model)
        os.kill(os.getpid(), signal.SIGTERM)  # lands while train.json is still to come

    monkeypatch.setattr(command, "save_model", save_then_sigterm)
    code = main(["train", *train_args(sf_xs, tmp_path)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.strip().splitlines()[-1] == (
        "geoloc train: error: stopped by signal 15 (SIGTERM) before it finished; rerun it"
    )
    outputs = [name for name in files_under(tmp_path / "run") if not name.startswith("tensorboard/")]
    assert outputs == []  # neither output, no temporary file
    assert files_under(tmp_path / "ckpt")[-1] == "ckpt-000000002.pt"  # the end-of-training checkpoint

    monkeypatch.undo()
    assert main(["train", *train_args(sf_xs, tmp_path)]) == 0
    assert json.loads((tmp_path / "run" / "train.json").read_text())["resumed_from_iteration"] == 2
    assert (tmp_path / "run" / "model.pt").is_file()


def test_what_a_killed_run_left_is_removed_by_the_next_run(tiny_city, tmp_path):
    sf_xs = copy_sf_xs(tiny_city, tmp_path / "data")
    (tmp_path / "run").mkdir()
    (tmp_path / "ckpt").mkdir()
    leftovers = [
        tmp_path / "run" / ".model.pt.x1y2z3.tmp",
        tmp_path / "run" / "..model.pt.x1y2z3.tmp.q9.tmp",
        tmp_path / "run" / ".train.json.a1b2.tmp",
        tmp_path / "ckpt" / ".ckpt-000000004.pt.k3j2.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"\0" * 1000)
    (tmp_path / "run" / "model.pt").write_bytes(b"a model without its train.json")

    assert main(["train", *train_args(sf_xs, tmp_path)]) == 0

    assert not any(path.exists() for path in leftovers)
    assert files_under(tmp_path / "run") == sorted(
        [
            "model.pt",
            "train.json",
            *(str(Path("tensorboard") / p.name) for p in (tmp_path / "run" / "tensorboard").iterdir()),
        ]
    )
    models.load_model(tmp_path / "run" / "model.pt")  # the new one


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_at_a_checkpoint_ends_the_training_with_one_line(tiny_city, tmp_path, capsys, monkeypatch):
    sf_xs = copy_sf_xs(tiny_city, tmp_path / "data")
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, _path, **kwargs: real_save(obj, "/dev/full", **kwargs))

    code = main(["train", *train_args(sf_xs, tmp_path)])

    err = capsys.readouterr().err
    assert_refused("train", code, err, f"cannot write {tmp_path / 'ckpt' / 'ckpt-000000001.pt'}")
    assert err.rstrip().endswith("(is the disk full?)")  # the progress bar was closed first
    assert files_under(tmp_path / "ckpt") == []


def test_tensorboard_that_cannot_be_written_never_fails_a_training(tiny_city, tmp_path, caplog):
    sf_xs = copy_sf_xs(tiny_city, tmp_path / "data")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tensorboard").write_text("a file where the events folder goes")

    with caplog.at_level("WARNING", logger="geoloc.train.events"):
        assert main(["train", *train_args(sf_xs, tmp_path)]) == 0

    assert "TensorBoard events in" in caplog.text and "the training goes on" in caplog.text
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "train.json").is_file()


@pytest.mark.parametrize(
    ("flag", "value", "problem"),
    [
        ("--num-workers", "-1", "argument --num-workers: -1 is less than the minimum of 0"),
        (
            "--seed",
            "99999999999999999999",
            "argument --seed: 99999999999999999999 is greater than the maximum of 18446744073709551615",
        ),
        ("--batch-size", "4.0", "argument --batch-size: '4.0' is not of type 'integer'"),
        ("--lr", "nan", "argument --lr: 'nan' is not a finite number"),
        ("--image-size", "16", "argument --image-size: 16 is less than the minimum of 32"),
    ],
)
def test_train_refuses_a_value_the_schema_would_refuse_in_its_words(tiny_city, tmp_path, capsys, flag, value, problem):
    args = train_args(tiny_city / "sf_xs", tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["train", *args, flag, value])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"geoloc train: error: {problem}"


def test_a_bug_keeps_its_traceback_and_still_ends_with_the_line_and_exit_code_1(
    tiny_city, tmp_path, capsys, monkeypatch
):
    from geoloc.train import trainer

    def broken_fit(self, fresh=False):
        return {}["progress"]

    monkeypatch.setattr(trainer.Trainer, "fit", broken_fit)
    code = main(["train", *train_args(copy_sf_xs(tiny_city, tmp_path / "data"), tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" in err and "broken_fit" in err
    assert err.strip().splitlines()[-1] == (
        "geoloc train: error: unexpected KeyError: 'progress' (a bug: the traceback above says where)"
    )


def test_sigterm_during_evaluation_ends_with_one_line_and_no_output(tmp_path, capsys, model_file, monkeypatch):
    from geoloc.evaluate import command

    real = command.embed

    def embed_then_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(command, "embed", embed_then_sigterm)
    out = tmp_path / "out"
    code, err = evaluate(capsys, model_file, make_test_set(tmp_path / "set"), out / "t.csv", out / "t.queries.csv")

    assert code == 3 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "geoloc evaluate: error: stopped by signal 15 (SIGTERM) before it finished; rerun it"
    )
    assert files_under(out) == []
