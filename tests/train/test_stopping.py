"""Training stops by itself before a SLURM job's time limit: the time left as squeue tells it,
and the checkpoint and exit code 3 of a run that reaches its deadline (a fake squeue here; the
real one in tests/slurm/test_slurm_train.py)."""

import logging
import os
import time
from types import SimpleNamespace

import pytest
from test_trainer import RUN, SETTINGS, _cli_args

from geoloc.cli import main
from geoloc.errors import GeolocError
from geoloc.train import stopping
from geoloc.train import trainer as train_mod
from geoloc.train.settings import TrainSettings
from geoloc.train.stopping import Deadline, TrainingInterrupted, slurm_deadline
from geoloc.train.trainer import Trainer


def fake_squeue(folder, monkeypatch, output: str, exit_code: int = 0) -> None:
    """`squeue` on PATH answering `output` (stdout, or stderr when it fails), inside job 4242."""
    folder.mkdir(exist_ok=True)
    script = folder / "squeue"
    stream = "" if exit_code == 0 else " >&2"
    script.write_text(f'#!/bin/sh\necho "$@" > "{folder}/args"\necho "{output}"{stream}\nexit {exit_code}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")


@pytest.mark.parametrize(
    ("said", "seconds_left"),
    [
        ("2:59", 179),
        ("1:05:00", 3900),
        ("1-02:04:00", 93840),
        ("0:07", 7),
    ],
)
def test_the_time_left_is_read_in_each_of_squeues_formats(tmp_path, monkeypatch, said, seconds_left):
    fake_squeue(tmp_path / "bin", monkeypatch, said)
    before = time.monotonic()
    deadline = slurm_deadline(5)
    after = time.monotonic()
    assert (tmp_path / "bin" / "args").read_text().split() == ["-h", "-j", "4242", "-o", "%L"]
    assert deadline.margin_seconds == 5
    assert before + seconds_left - 5 <= deadline.at <= after + seconds_left - 5


def test_no_deadline_outside_slurm_without_a_margin_or_without_a_limit(tmp_path, monkeypatch):
    fake_squeue(tmp_path / "bin", monkeypatch, "UNLIMITED")
    assert slurm_deadline(60) is None  # a partition without a time limit
    assert slurm_deadline(None) is None
    monkeypatch.delenv("SLURM_JOB_ID")
    assert slurm_deadline(60) is None


def test_a_time_left_that_cannot_be_read_leaves_the_stop_to_usr1_with_a_warning(tmp_path, monkeypatch, caplog):
    fake_squeue(tmp_path / "bin", monkeypatch, "slurm_load_jobs error: Invalid job id specified", exit_code=1)
    with caplog.at_level(logging.WARNING, logger="geoloc.train.stopping"):
        assert slurm_deadline(60) is None
    assert "cannot read the time left of SLURM job 4242" in caplog.text
    assert "Invalid job id specified" in caplog.text and "only SLURM's USR1 signal" in caplog.text


def test_a_job_with_no_more_time_left_than_the_margin_is_refused(tmp_path, monkeypatch):
    # Training would stop at its first step, requeue, and do so again, requeue after requeue.
    fake_squeue(tmp_path / "bin", monkeypatch, "9:59")
    with pytest.raises(GeolocError, match="SLURM job 4242 has 599 s left, not more than --stop-margin-seconds 600"):
        slurm_deadline(600)


def test_a_training_past_its_deadline_checkpoints_at_once_and_stops(tiny_city, tmp_path):
    trainer = Trainer(
        SETTINGS,
        RUN,
        train_dir=tiny_city / "sf_xs" / "train",
        val_dir=tiny_city / "sf_xs" / "val",
        weights=None,
        checkpoint_dir=tmp_path / "ckpt",
        cache_dir=None,
        device="cpu",
        num_workers=0,
        checkpoint_every=100,
        deadline=Deadline(time.monotonic(), 120),
    )
    with pytest.raises(TrainingInterrupted) as stopped:
        trainer.fit()
    assert str(stopped.value) == (
        "stopped at epoch 0 iteration 1, 120 s before the SLURM job's time limit "
        "(--stop-margin-seconds); checkpoint saved, rerun to resume"
    )
    assert [path.name for path in (tmp_path / "ckpt").iterdir()] == ["ckpt-000000001.pt"]


def test_geoloc_train_inside_a_job_stops_before_its_limit_with_exit_code_3(tiny_city, tmp_path, monkeypatch, capsys):
    fake_squeue(tmp_path / "bin", monkeypatch, "1:02")  # 2 s of training before the 60 s margin
    args = _cli_args(
        tiny_city,
        tmp_path,
        "--epochs",
        "1",
        "--iterations-per-epoch",
        "5000",
        "--checkpoint-every",
        "100000",
        "--stop-margin-seconds",
        "60",
    )
    assert main(["train", *args]) == 3
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("geoloc train: error: stopped at epoch 0 iteration ")
    assert last.endswith(
        ", 60 s before the SLURM job's time limit (--stop-margin-seconds); checkpoint saved, rerun to resume"
    )
    iteration = int(last.split("iteration ")[1].split(",")[0])
    assert [path.name for path in (tmp_path / "ckpt").iterdir()] == [f"ckpt-{iteration:09d}.pt"]
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.parametrize(("epochs", "stops"), [(2, True), (1, False)])
def test_a_deadline_passed_in_validation_stops_after_that_epoch_unless_it_was_the_last(
    tiny_city, tmp_path, monkeypatch, epochs, stops
):
    clock = {"now": 0.0}
    monkeypatch.setattr(stopping, "time", SimpleNamespace(monotonic=lambda: clock["now"]))
    real_evaluate = train_mod.evaluate_model

    def evaluate_past_the_deadline(*args, **kwargs):
        clock["now"] = 1000.0  # validation outlasts the time before the margin
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate_model", evaluate_past_the_deadline)
    settings = TrainSettings(**{**SETTINGS.__dict__, "epochs": epochs})
    trainer = Trainer(
        settings,
        RUN,
        train_dir=tiny_city / "sf_xs" / "train",
        val_dir=tiny_city / "sf_xs" / "val",
        weights=None,
        checkpoint_dir=tmp_path / "ckpt",
        cache_dir=None,
        device="cpu",
        num_workers=0,
        checkpoint_every=100,
        deadline=Deadline(100.0, 60),
    )
    if stops:
        with pytest.raises(TrainingInterrupted, match="^stopped after epoch 0, 60 s before the SLURM job's time"):
            trainer.fit()
    else:  # writing the outputs takes seconds: no requeue for them
        assert trainer.fit().epoch == 1
    assert [path.name for path in (tmp_path / "ckpt").iterdir()] == ["ckpt-000000006.pt"]
