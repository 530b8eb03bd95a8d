import os

import pytest

from geoloc.atomic import atomic_open, atomic_write_text
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


def test_outputs_get_the_usual_permissions_not_mkstemps_private_ones(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "shared.csv", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "shared.csv").stat().st_mode & 0o777 == 0o644
