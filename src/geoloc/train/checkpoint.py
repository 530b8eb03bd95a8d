"""Training checkpoints: atomic, rotated, verified, and tied to the settings that made them.

Two files are kept (`ckpt-<iteration>.pt`), so a checkpoint that was cut short or corrupted
on disk still leaves the previous one to resume from. Loading uses `weights_only=True`: a
checkpoint holds tensors and plain Python values only and can never run code.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from geoloc.atomic import atomic_torch_save
from geoloc.errors import GeolocError
from geoloc.model.weights import read_torch_file

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")
KEEP = 2


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
        saved = state.get("fingerprint", {})
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


def discard_checkpoints(folder: Path) -> None:
    for path in checkpoint_files(folder):
        path.unlink(missing_ok=True)
