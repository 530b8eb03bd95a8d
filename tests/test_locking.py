"""One process at a time per run, checkpoint and results folder (geoloc.locking), met by real processes."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from geoloc import cli, locking
from geoloc.errors import GeolocError
from geoloc.locking import acquire, lock_file, locked

HOLDER = (
    "import sys, time\n"
    "from geoloc.locking import hold\n"
    "hold(sys.argv[1], 'results folder')\n"
    "print('held', flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.fixture
def holder(tmp_path):
    """Start a process that holds the lock of a folder; yields (folder, process)."""
    folder = tmp_path / "results"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "held\n"
        yield folder, process
    finally:
        process.kill()
        process.wait()


def test_a_second_process_meets_one_clear_error_naming_the_holder(holder):
    folder, process = holder
    with pytest.raises(
        GeolocError,
        match=rf"results folder {folder} is in use by process {process.pid} on "
        rf"{socket.gethostname()} since .*: .*wait until it ends or stop it",
    ):
        acquire(folder, "results folder")


def test_the_lock_of_a_killed_process_is_taken_over(holder):
    folder, process = holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    with locked(folder, "results folder"):
        record = json.loads(lock_file(folder).read_text())
        assert (record["pid"], record["host"]) == (os.getpid(), socket.gethostname())
    with locked(folder, "results folder"):  # released at the end of the block
        pass


def test_one_process_may_lock_one_folder_under_two_names(tmp_path):
    with locked(tmp_path / "run", "--out-dir"), locked(tmp_path / "run", "--checkpoint-dir"):
        assert lock_file(tmp_path / "run") == tmp_path / ".run.lock" and (tmp_path / ".run.lock").is_file()
        assert not (tmp_path / "run").exists()  # the folder is its command's to make, and holds only its files


def test_geoloc_train_on_a_run_folder_in_use_stops_before_training(holder, tmp_path, capsys):
    folder, process = holder
    code = cli.main(
        [
            "train",
            "--train-dir",
            str(tmp_path / "none"),
            "--val-dir",
            str(tmp_path / "none"),
            "--out-dir",
            str(folder),
            "--checkpoint-dir",
            str(tmp_path / "ckpt"),
            "--run-name",
            "r",
        ]
    )
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert last.startswith(f"geoloc train: error: --out-dir {folder} is in use by process {process.pid}")


def test_geoloc_evaluate_into_recalls_in_use_stops_before_evaluating(holder, tmp_path, capsys):
    folder, process = holder
    code = cli.main(
        ["evaluate", "--model", str(tmp_path / "model.pt"), "--test-set", f"x={tmp_path}", "--out-dir", str(folder)]
    )
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert last.startswith(f"geoloc evaluate: error: --out-dir {folder} is in use by process {process.pid}")


def test_geoloc_train_with_an_out_dir_that_is_a_file_stops_before_training(tmp_path, capsys):
    (tmp_path / "out").write_text("not a folder")
    code = cli.main(
        [
            "train",
            "--train-dir",
            str(tmp_path),
            "--val-dir",
            str(tmp_path),
            "--out-dir",
            str(tmp_path / "out"),
            "--checkpoint-dir",
            str(tmp_path / "ckpt"),
            "--run-name",
            "r",
        ]
    )
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"geoloc train: error: --out-dir {tmp_path / 'out'} is a file, not a folder: give another path"
    )


def test_a_read_only_results_folder_is_one_error_line(tmp_path, monkeypatch, capsys):
    # Root ignores permissions, so the read-only file system is the one os.open reports.
    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(locking.os, "open", read_only)
    code = cli.main(
        [
            "evaluate",
            "--model",
            str(tmp_path / "model.pt"),
            "--test-set",
            f"x={tmp_path}",
            "--out-dir",
            str(tmp_path / "recalls"),
        ]
    )
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"geoloc evaluate: error: cannot write in --out-dir {tmp_path / 'recalls'}: Read-only file system"
    )
