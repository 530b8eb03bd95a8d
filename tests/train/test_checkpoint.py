import pytest
import torch

from geoloc.errors import GeolocError
from geoloc.train.checkpoint import (
    checkpoint_files,
    load_latest_checkpoint,
    remove_stale_checkpoint_files,
    save_checkpoint,
)

FP = {"backbone": "resnet18", "batch_size": 4}


def checkpoint_state(fingerprint=FP, **progress):
    """The smallest state `load_latest_checkpoint` accepts, with `progress` overrides."""
    defaults = {
        "epoch": 0,
        "iteration": 0,
        "global_iteration": 0,
        "history": [],
        "loss_sum": 0.0,
        "loss_count": 0,
        "bad_steps": 0,
        "train_seconds": 0.0,
        "val_seconds": 0.0,
        "epoch_train_seconds": 0.0,
        "compile_seconds": None,
        "best_r1": None,
        "best_epoch": None,
        "best_state": None,
        "started_at": "2026-01-01T00:00:00+00:00",
        "resumed_from_iteration": None,
    }
    return {
        "fingerprint": fingerprint,
        "progress": {**defaults, **progress},
        "model": {"w": torch.ones(2)},
        "classifiers": [],
        "model_opt": {},
        "classifier_opts": [],
        "scaler": {},
        "cpu_rng": torch.get_rng_state(),
    }


def test_keeps_the_two_newest_and_loads_the_newest(tmp_path):
    for it in (10, 20, 30):
        save_checkpoint(tmp_path, it, checkpoint_state(global_iteration=it))
    assert [p.name for p in checkpoint_files(tmp_path)] == ["ckpt-000000030.pt", "ckpt-000000020.pt"]
    assert load_latest_checkpoint(tmp_path, FP)["progress"]["global_iteration"] == 30


def test_truncated_newest_falls_back_to_previous(tmp_path):
    save_checkpoint(tmp_path, 1, {**checkpoint_state(), "model": {"w": torch.ones(100)}})
    newest = save_checkpoint(tmp_path, 2, {**checkpoint_state(), "model": {"w": torch.zeros(100)}})
    newest.write_bytes(newest.read_bytes()[:50])
    state = load_latest_checkpoint(tmp_path, FP)
    assert torch.equal(state["model"]["w"], torch.ones(100))


def test_other_settings_are_refused_naming_the_difference(tmp_path):
    save_checkpoint(tmp_path, 1, checkpoint_state())
    with pytest.raises(GeolocError, match=r"batch_size: 4 -> 8.*--fresh"):
        load_latest_checkpoint(tmp_path, {**FP, "batch_size": 8})


def test_no_checkpoint_means_fresh_start(tmp_path):
    assert load_latest_checkpoint(tmp_path / "missing", FP) is None


@pytest.mark.parametrize(
    ("edit", "field", "expected", "found"),
    [
        (lambda s: s["progress"].update(epoch="1"), "progress.epoch", "int", "str"),
        (lambda s: s["progress"].update(loss_sum=None), "progress.loss_sum", "int or float", "NoneType"),
        (lambda s: s["progress"].update(bad_steps=True), "progress.bad_steps", "int", "bool"),
        (lambda s: s["progress"].pop("history"), "progress.history", "list", "NoneType"),
        (lambda s: s.update(model=[1, 2]), "model", "dict", "list"),
        (lambda s: s["model"].update(w=[1.0, 2.0]), "model.w", "Tensor", "list"),
        (lambda s: s.update(progress="epoch 3"), "progress", "dict", "str"),
    ],
)
def test_hand_edited_checkpoint_is_refused_naming_the_field(tmp_path, edit, field, expected, found):
    state = checkpoint_state()
    edit(state)
    path = save_checkpoint(tmp_path, 1, state)
    with pytest.raises(GeolocError) as error:
        load_latest_checkpoint(tmp_path, FP)
    assert str(error.value).startswith(f"checkpoint {path}: field {field} should be {expected}, found {found}")
    assert "--fresh" in str(error.value)


def test_stale_temporary_checkpoint_files_are_removed_and_checkpoints_kept(tmp_path):
    kept = save_checkpoint(tmp_path, 5, checkpoint_state())
    stale = [tmp_path / ".ckpt-000000010.pt.k2j4l1.tmp", tmp_path / "..ckpt-000000010.pt.k2j4l1.tmp.x8a.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    other = tmp_path / ".notes.txt.abc.tmp"
    other.write_text("not ours")
    remove_stale_checkpoint_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([kept.name, other.name])


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
