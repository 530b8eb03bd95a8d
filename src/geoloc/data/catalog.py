"""STAND-IN (branch `plan` only): the smallest dataset catalog the workflow's tests need.

The real module is the `datasets` engineer's (INTERFACES.md point 1); on merge, take theirs and
drop this file. Same names and signatures: DatasetEntry, load_catalog, resolve_folder,
check_test_set, check_training_set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from geoloc.errors import GeolocError

_IMAGES = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    label: str
    test: str | None = None
    train: str | None = None
    val: str | None = None
    positive_dist_threshold: float = 25.0
    subset_of: str | None = None
    queries: str | None = None
    expected: dict[str, int] | None = None
    source: str = ""


def load_catalog(shipped: Path, overrides: Mapping[str, Mapping] | None = None) -> dict[str, DatasetEntry]:
    merged: dict[str, dict] = {}
    for entries in (yaml.safe_load(Path(shipped).read_text(encoding="utf-8")) or {}, overrides or {}):
        for name, fields in entries.items():
            merged.setdefault(name, {"label": name}).update(fields or {})
    known = {field.name for field in dataclasses.fields(DatasetEntry)}
    return {name: DatasetEntry(name=name, **{k: v for k, v in fields.items() if k in known})
            for name, fields in merged.items()}


def resolve_folder(root: Path, folder: str) -> Path:
    return Path(root) / folder


def _count(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.suffix.lower() in _IMAGES)


def check_test_set(entry: DatasetEntry, root: Path) -> None:
    folder = resolve_folder(root, entry.test)
    if not folder.is_dir():
        raise GeolocError(f"test set {entry.name}: folder {folder} does not exist")
    found = {part: _count(folder / part) for part in ("database", "queries")}
    if entry.expected and found != entry.expected:
        raise GeolocError(f"test set {entry.name}: {folder} holds {found}, expected {entry.expected}")


def check_training_set(entry: DatasetEntry, root: Path) -> None:
    for field in ("train", "val"):
        folder = resolve_folder(root, getattr(entry, field))
        if not folder.is_dir():
            raise GeolocError(f"training set {entry.name}: {field} folder {folder} does not exist")
