"""Training checkpoints: atomic, rotated, verified, and tied to the settings that made them.

Two files are kept (`ckpt-<iteration>.pt`), so a checkpoint that was cut short or corrupted
on disk still leaves the previous one to resume from. Loading uses `weights_only=True`: a
checkpoint holds tensors and plain Python values only and can never run code, and every
field is checked for its type (`check_fields`), so a hand-edited file is one clear error.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from geoloc.atomic import atomic_torch_save, remove_stale_temporaries
from geoloc.errors import GeolocError
from geoloc.model.weights import read_torch_file

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")
KEEP = 2

_NUMBER = (int, float)
# What a checkpoint holds, and the type of each field.
FIELDS = {
    "fingerprint": dict,
    "progress": dict,
    "model": dict,
    "classifiers": list,
    "model_opt": dict,
    "classifier_opts": list,
    "scaler": dict,
    "cpu_rng": torch.Tensor,
}
PROGRESS_FIELDS = {
    "epoch": int,
    "iteration": int,
    "global_iteration": int,
    "history": list,
    "loss_sum": _NUMBER,
    "loss_count": int,
    "bad_steps": int,
    "train_seconds": _NUMBER,
    "val_seconds": _NUMBER,
    "epoch_train_seconds": _NUMBER,
    "compile_seconds": (*_NUMBER, type(None)),
    "best_r1": (*_NUMBER, type(None)),
    "best_epoch": (int, type(None)),
    "best_state": (dict, type(None)),
    "started_at": str,
    "resumed_from_iteration": (int, type(None)),
}


def checkpoint_files(folder: Path) -> list[Path]:
    """Checkpoint files in `folder`, newest (highest global iteration) first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(folder: Path, global_iteration: int, state: dict[str, Any]) -> Path:
    """Write `state` atomically as `ckpt-<global_iteration>.pt`; drop all but the newest KEEP."""
    path = folder / f"ckpt-{global_iteration:09d}.pt"
    atomic_torch_save(state, path)
    for old in checkpoint_files(folder)[KEEP:]:
        old.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(folder: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The newest readable checkpoint in `folder`, or None when there is none.

    A file that cannot be read is reported and skipped for the one before it. A readable
    checkpoint made with other settings is refused: resuming it would silently mix runs.
    """
    for path in checkpoint_files(folder):
        try:
            state = read_torch_file(path, "checkpoint")
        except GeolocError as exc:
            log.warning("%s; trying the previous one", exc)
            continue
        check_fields(state, path)
        saved = state["fingerprint"]
        if saved != fingerprint:
            diff = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {fingerprint.get(k)!r}" for k in diff)
            raise GeolocError(
                f"checkpoint {path} was made with other settings ({details}); "
                "rerun with --fresh to discard it and start over "
                f"(in the workflow: delete {path.parent})"
            )
        log.info("resuming from %s", path)
        state["path"] = str(path)
        return state
    return None


def check_fields(state: Any, path: Path) -> None:
    """GeolocError naming the first field of `state` that is missing or of the wrong type."""
    where = f"checkpoint {path}"
    _check(state, dict, where, "its content")
    for name, kind in FIELDS.items():
        _check(state.get(name), kind, where, name)
    for name, kind in PROGRESS_FIELDS.items():
        _check(state["progress"].get(name), kind, where, f"progress.{name}")
    for name, value in state["model"].items():
        _check(value, torch.Tensor, where, f"model.{name}")


def _check(value: Any, kind: type | tuple[type, ...], where: str, field: str) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int to isinstance, never to a checkpoint.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
        raise GeolocError(
            f"{where}: field {field} should be {expected}, found {type(value).__name__} "
            f"{value!r:.40} (edited by hand? rerun with --fresh to start over)"
        )


def discard_checkpoints(folder: Path) -> None:
    for path in checkpoint_files(folder):
        path.unlink(missing_ok=True)


def remove_stale_checkpoint_files(folder: Path) -> None:
    """The temporary files of checkpoint writes that were killed (SIGKILL, a node failure)."""
    if folder.is_dir():
        remove_stale_temporaries(folder, "ckpt-*.pt")
