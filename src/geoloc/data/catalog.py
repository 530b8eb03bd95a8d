"""The dataset catalog: what each named dataset is, where it lies, and how it is tested.

The shipped entries (resources/datasets.yaml) give each set's folders, its positive distance
threshold, its published image counts and its source; a config's `datasets:` section extends
or overrides them entry by entry, field by field. Folders are relative to the datasets root
(or absolute) and are read in either layout: CosPlace's `<set>/test/...` and the
VPR-datasets-downloader's `<set>/images/test/...`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from geoloc.data.listing import image_names
from geoloc.errors import GeolocError

_FOLDER_FIELDS = ("test", "train", "val", "queries")
_COUNT_KEYS = ("database", "queries")
_DOWNLOADER_LEVEL = "images"  # VPR-datasets-downloader: <set>/images/<split>/{database,queries}


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    label: str
    test: str | None = None  # folder with database/ and queries/
    train: str | None = None  # folder of @-named training images (heading field needed)
    val: str | None = None  # folder with database/ and queries/
    positive_dist_threshold: float = 25.0  # metres (UTM)
    subset_of: str | None = None  # a catalog name whose queries include all of these (same database)
    queries: str | None = None  # file listing the query file names to keep, one per line
    expected: dict[str, int] | None = None  # {"database": n, "queries": n}, after the queries file
    source: str = ""
    note: str = ""  # where the protocol is ambiguous: which variant this entry is


FIELDS = tuple(field.name for field in dataclasses.fields(DatasetEntry) if field.name != "name")


def load_catalog(shipped: Path, overrides: Mapping[str, Mapping] | None = None) -> dict[str, DatasetEntry]:
    """The shipped entries of `shipped` (a YAML file), extended or overridden by `overrides`
    (a config's `datasets:`), entry by entry and field by field."""
    try:
        shipped_entries = yaml.safe_load(Path(shipped).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise GeolocError(f"cannot read the dataset catalog {shipped}: {error}") from None
    merged: dict[str, dict] = {}
    for where, entries in ((str(shipped), shipped_entries), ("config key datasets", overrides or {})):
        if not isinstance(entries, Mapping):
            raise GeolocError(f"{where}: expected a mapping of dataset names to their fields")
        for name, fields in entries.items():
            if not isinstance(name, str) or not name:
                raise GeolocError(f"{where}: dataset name {name!r} is not a non-empty string")
            if fields is None:
                fields = {}
            if not isinstance(fields, Mapping):
                raise GeolocError(f"{where}.{name}: expected a mapping of fields ({', '.join(FIELDS)})")
            merged.setdefault(name, {}).update({field: (where, value) for field, value in fields.items()})
    catalog = {name: _entry(name, fields) for name, fields in merged.items()}
    for entry in catalog.values():
        if entry.subset_of is not None and entry.subset_of not in catalog:
            raise GeolocError(
                f"{_key(merged, entry.name, 'subset_of')}: {entry.subset_of!r} is not a dataset "
                f"of the catalog; datasets: {', '.join(sorted(catalog))}"
            )
    return catalog


def _key(merged: Mapping[str, Mapping], name: str, field: str) -> str:
    """Where a field was given: `config key datasets.<name>.<field>` or `<file>.<name>.<field>`."""
    return f"{merged[name][field][0]}.{name}.{field}"


def _entry(name: str, given: Mapping[str, tuple[str, object]]) -> DatasetEntry:
    values: dict[str, object] = {}
    for field, (where, value) in given.items():
        key = f"{where}.{name}.{field}"
        if field not in FIELDS:
            raise GeolocError(f"{key}: unknown field; a dataset has {', '.join(FIELDS)}")
        values[field] = _checked(key, field, value)
    values.setdefault("label", name)
    return DatasetEntry(name=name, **values)


def _checked(key: str, field: str, value: object) -> object:
    if field in _FOLDER_FIELDS or field == "subset_of":
        if value is not None and (not isinstance(value, str) or not value):
            raise GeolocError(f"{key}: {value!r} is not a path (a non-empty string) or null")
        return value
    if field in ("label", "source", "note"):
        if not isinstance(value, str) or (field == "label" and not value):
            raise GeolocError(f"{key}: {value!r} is not a {'non-empty ' if field == 'label' else ''}string")
        return value
    if field == "positive_dist_threshold":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise GeolocError(f"{key}: {value!r} is not a positive number of metres")
        return float(value)
    # expected
    if value is None:
        return None
    if (
        not isinstance(value, Mapping)
        or not value
        or set(value) - set(_COUNT_KEYS)
        or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in value.values())
    ):
        raise GeolocError(
            f"{key}: {value!r} is not a mapping of database and/or queries to image counts (positive integers), or null"
        )
    return dict(value)


def resolve_folder(root: Path, folder: str) -> Path:
    """`folder` (relative to `root`, or absolute) in whichever layout holds it.

    `<set>/<rest>` that does not exist is looked for as the downloader's `<set>/images/<rest>`,
    and the reverse. Returns the first candidate, even missing, when neither exists.
    """
    path = Path(folder)
    if path.is_absolute():
        return path
    first = Path(root) / path
    if first.exists() or len(path.parts) < 2:
        return first
    head, *rest = path.parts
    if rest[0] == _DOWNLOADER_LEVEL:
        other = Path(root, head, *rest[1:])
    else:
        other = Path(root, head, _DOWNLOADER_LEVEL, *rest)
    return other if other.exists() else first


def resolve_file(root: Path, file: str) -> Path:
    """A file named relative to `root` (or absolute): a queries file."""
    return Path(file) if Path(file).is_absolute() else Path(root) / file


def read_query_names(path: Path) -> list[str]:
    """The query file names a queries file lists: one per line, blank lines and `#` comments skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise GeolocError(f"cannot read the queries file {path}: {error}") from None
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise GeolocError(f"queries file {path} lists no query file name")
    return names


def keep_queries(names: list[str], listed: list[str], queries_file: Path, folder: Path) -> list[str]:
    """The query names of `names` (relative to `folder`) that `listed` names, by relative path
    or by file name; GeolocError naming the first listed name that is not in the folder."""
    wanted = set(listed)
    kept = [name for name in names if name in wanted or name.rpartition("/")[2] in wanted]
    found = set(kept) | {name.rpartition("/")[2] for name in kept}
    missing = [name for name in listed if name not in found]
    if missing:
        raise GeolocError(
            f"queries file {queries_file}: {len(missing)} listed name(s) are not in {folder}, e.g. {missing[0]!r}"
        )
    return kept


def _test_counts(entry: DatasetEntry, root: Path) -> tuple[Path, dict[str, int]]:
    folder = _existing(entry, "test", root)
    for part in _COUNT_KEYS:
        if not (folder / part).is_dir():
            raise GeolocError(
                f"dataset {entry.name}: test folder {folder} has no {part}/ folder (a test set holds "
                f"database/ and queries/; config key datasets.{entry.name}.test)"
            )
    counts = {part: len(image_names(folder / part)) for part in _COUNT_KEYS}
    if entry.queries is not None:
        queries_file = resolve_file(root, entry.queries)
        kept = keep_queries(
            image_names(folder / "queries"), read_query_names(queries_file), queries_file, folder / "queries"
        )
        counts["queries"] = len(kept)
    return folder, counts


def _existing(entry: DatasetEntry, field: str, root: Path) -> Path:
    value = getattr(entry, field)
    if value is None:
        raise GeolocError(f"dataset {entry.name} has no {field} folder (config key datasets.{entry.name}.{field})")
    folder = resolve_folder(root, value)
    if not folder.is_dir():
        raise GeolocError(
            f"dataset {entry.name}: {field} folder {folder} does not exist (config key "
            f"datasets.{entry.name}.{field}, relative to datasets_root {root})"
        )
    return folder


def check_test_set(entry: DatasetEntry, root: Path) -> None:
    """The test folder exists with database/ and queries/, and holds the `expected` counts."""
    folder, counts = _test_counts(entry, root)
    for part, expected in (entry.expected or {}).items():
        if counts[part] != expected:
            raise GeolocError(
                f"dataset {entry.name}: {folder / part} holds {counts[part]} {part} images"
                f"{' after the queries file' if part == 'queries' and entry.queries else ''}, "
                f"expected {expected} (config key datasets.{entry.name}.expected: fix the folder, "
                "or set the counts you mean)"
            )


def check_training_set(entry: DatasetEntry, root: Path) -> None:
    """The train and val folders exist."""
    for field in ("train", "val"):
        _existing(entry, field, root)


def describe(entry: DatasetEntry, root: Path) -> dict:
    """What results/datasets.json records of a test set: its protocol, folders and counts."""
    folder, counts = _test_counts(entry, root)
    return {
        "label": entry.label,
        "positive_dist_threshold": entry.positive_dist_threshold,
        "subset_of": entry.subset_of,
        "source": entry.source,
        "note": entry.note,
        "test": str(folder),
        "database": counts["database"],
        "queries": counts["queries"],
        "queries_file": None if entry.queries is None else str(resolve_file(root, entry.queries)),
    }


def record(root: Path, test_sets: Mapping[str, DatasetEntry], training: Mapping[str, DatasetEntry]) -> dict:
    """results/datasets.json: the root, every folder's image count, each test set's protocol
    (`describe`) and each training set's folders. Folders under `root` are named relative to it."""
    root = Path(root)
    folders: list[Path] = []
    for entry in training.values():
        folders += [_existing(entry, "train", root), *(_existing(entry, "val", root) / part for part in _COUNT_KEYS)]
    for entry in test_sets.values():
        folders += [_existing(entry, "test", root) / part for part in _COUNT_KEYS]
    images = {_relative(folder, root): len(image_names(folder)) for folder in dict.fromkeys(folders)}
    return {
        "root": str(root.resolve()),
        "images": images,
        "test_sets": {name: describe(entry, root) for name, entry in test_sets.items()},
        "training": {
            name: {
                "label": entry.label,
                "train": _relative(_existing(entry, "train", root), root),
                "val": _relative(_existing(entry, "val", root), root),
            }
            for name, entry in training.items()
        },
    }


def _relative(folder: Path, root: Path) -> str:
    try:
        return folder.relative_to(root).as_posix()
    except ValueError:
        return str(folder)
