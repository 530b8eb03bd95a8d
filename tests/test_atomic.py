import os
from pathlib import Path

import pytest

from geoloc.atomic import atomic_open, atomic_torch_save, atomic_write_text
from geoloc.errors import GeolocError


def test_failed_write_keeps_old_content_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.csv"]


def test_successful_write_replaces_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert os.listdir(target.parent) == ["out.txt"]


def test_unwritable_destination_is_a_clear_error(tmp_path):
    # A path under a regular file cannot be created, whoever we run as (root ignores chmod).
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    with pytest.raises(GeolocError, match="cannot write"):
        atomic_write_text(blocker / "run" / "x.txt", "data")


def test_full_disk_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    # /dev/full-like behaviour: the write fails with ENOSPC.
    real_open = open

    class FullFile:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            raise OSError(28, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def fake_open(path, mode="r", **kwargs):
        handle = real_open(path, mode, **kwargs)
        return FullFile(handle) if "w" in mode else handle

    monkeypatch.setattr("builtins.open", fake_open)
    with pytest.raises(GeolocError, match="No space left on device"):
        atomic_write_text(tmp_path / "x.txt", "data")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_the_same_tensors_saved_twice_give_the_same_bytes(tmp_path):
    # Each save goes through its own random temporary name; model_sha256 must not see it.
    import torch

    state = {"weight": torch.arange(6.0).reshape(2, 3)}
    atomic_torch_save(state, tmp_path / "a.pt")
    atomic_torch_save(state, tmp_path / "b" / "model.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["weight"], state["weight"])


def test_outputs_get_the_usual_permissions_not_mkstemps_private_ones(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "shared.csv", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "shared.csv").stat().st_mode & 0o777 == 0o644


def test_several_outputs_appear_together_or_not_at_all(tmp_path):
    from geoloc.atomic import atomic_outputs

    first, second = tmp_path / "model.pt", tmp_path / "train.json"
    with pytest.raises(RuntimeError):
        with atomic_outputs(first, second) as (a, b):
            a.write_text("model")
            raise RuntimeError("killed before the second was written")
    assert os.listdir(tmp_path) == []

    second.parent.joinpath("train.json").mkdir()  # the second cannot be renamed into place
    with pytest.raises(GeolocError, match=f"cannot write {second}"):
        with atomic_outputs(first, second) as (a, b):
            a.write_text("model")
            b.write_text("{}")
    assert os.listdir(tmp_path) == ["train.json"]  # the folder in the way; no model.pt, no temporary
    second.rmdir()

    with atomic_outputs(first, second) as (a, b):
        a.write_text("model")
        b.write_text("{}")
    assert (first.read_text(), second.read_text()) == ("model", "{}")
    assert sorted(os.listdir(tmp_path)) == ["model.pt", "train.json"]


def test_a_stop_signal_waits_until_every_output_is_in_place(tmp_path, monkeypatch):
    import signal
    import threading

    # Another thread, as torch's are: a signal mask on the main thread alone would not hold it.
    idle = threading.Event()
    threading.Thread(target=idle.wait, daemon=True).start()

    from geoloc import atomic

    received = []
    real_replace = os.replace

    def replace_then_signal(source, target):
        real_replace(source, target)
        if Path(target).name == "a":
            os.kill(os.getpid(), signal.SIGTERM)  # between the two renames

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(sorted(os.listdir(tmp_path))))
    monkeypatch.setattr(atomic.os, "replace", replace_then_signal)
    try:
        with atomic.atomic_outputs(tmp_path / "a", tmp_path / "b") as (a, b):
            a.write_text("1")
            b.write_text("2")
    finally:
        signal.signal(signal.SIGTERM, previous)
        idle.set()
    assert received == [["a", "b"]]  # delivered once both were there


def test_stale_temporaries_of_one_output_are_removed_and_nothing_else(tmp_path):
    from geoloc.atomic import remove_stale_temporaries

    stale = [tmp_path / ".model.pt.a1b2c3.tmp", tmp_path / "..model.pt.a1b2c3.tmp.d4e5.tmp"]
    kept = [tmp_path / "model.pt", tmp_path / ".train.json.x.tmp", tmp_path / "model.pt.tmp"]
    for path in stale + kept:
        path.write_text("x")
    assert sorted(remove_stale_temporaries(tmp_path, "model.pt")) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted(path.name for path in kept)
