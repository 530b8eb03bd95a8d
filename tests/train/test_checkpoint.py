import pytest
import torch

from geoloc.errors import GeolocError
from geoloc.train.checkpoint import checkpoint_files, load_latest_checkpoint, save_checkpoint

FP = {"backbone": "resnet18", "batch_size": 4}


def test_keeps_the_two_newest_and_loads_the_newest(tmp_path):
    for it in (10, 20, 30):
        save_checkpoint(tmp_path, it, {"fingerprint": FP, "it": it})
    assert [p.name for p in checkpoint_files(tmp_path)] == ["ckpt-000000030.pt", "ckpt-000000020.pt"]
    assert load_latest_checkpoint(tmp_path, FP)["it"] == 30


def test_truncated_newest_falls_back_to_previous(tmp_path):
    save_checkpoint(tmp_path, 1, {"fingerprint": FP, "w": torch.ones(100)})
    newest = save_checkpoint(tmp_path, 2, {"fingerprint": FP, "w": torch.zeros(100)})
    newest.write_bytes(newest.read_bytes()[:50])
    state = load_latest_checkpoint(tmp_path, FP)
    assert torch.equal(state["w"], torch.ones(100))


def test_other_settings_are_refused_naming_the_difference(tmp_path):
    save_checkpoint(tmp_path, 1, {"fingerprint": FP})
    with pytest.raises(GeolocError, match=r"batch_size: 4 -> 8.*--fresh"):
        load_latest_checkpoint(tmp_path, {**FP, "batch_size": 8})


def test_no_checkpoint_means_fresh_start(tmp_path):
    assert load_latest_checkpoint(tmp_path / "missing", FP) is None


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_checkpoint_that_would_run_code_is_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "ckpts"
    folder.mkdir()
    torch.save({"fingerprint": FP, "payload": _Exploit()}, folder / "ckpt-000000001.pt", pickle_protocol=2)
    assert load_latest_checkpoint(folder, FP) is None  # refused as unreadable, never unpickled
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()
