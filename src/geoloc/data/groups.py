"""CosPlace classes and groups of the training images, with a cache of the split.

A class is a cell of M x M metres (UTM east, north) and a heading bin of alpha degrees; a
group gathers the classes that are N cells and L bins apart, so neighbouring classes never
share a group.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from pathlib import Path

from geoloc.atomic import atomic_write_text
from geoloc.data.listing import image_names
from geoloc.data.names import parse_image_name
from geoloc.errors import GeolocError

log = logging.getLogger(__name__)

# A class is the lower corner of its cell: (UTM east m, UTM north m, heading deg).
ClassId = tuple[int, int, int]
# A group is the class's position modulo (N, N, L) in units of cells and heading bins.
GroupId = tuple[int, int, int]

# Bump when the meaning of a cache file changes, so old files are never reused.
_CACHE_FORMAT = 1


def class_and_group(
    utm_east: float, utm_north: float, heading: float, *, M: int, alpha: int, N: int, L: int
) -> tuple[ClassId, GroupId]:
    """Return the CosPlace class of an image position and the group of that class.

    M: side of a cell in metres; alpha: width of a heading bin in degrees; N: cells (east and
    north) between two classes of one group; L: heading bins between two classes of one group.
    Adjacent cells/bins differ in the group id, so neighbouring classes never share a group.
    """
    east = int(utm_east // M) * M
    north = int(utm_north // M) * M
    heading_bin = int(heading // alpha) * alpha
    return (east, north, heading_bin), (east // M % N, north // M % N, heading_bin // alpha % L)


def build_groups(
    train_dir: Path,
    *,
    M: int,
    alpha: int,
    N: int,
    L: int,
    min_images_per_class: int,
    cache_dir: Path | None = None,
) -> list[list[list[Path]]]:
    """Split the training images into CosPlace groups of classes.

    Returns every non-empty group, sorted by group id; groups[g][c] holds the sorted image
    paths of class c (classes sorted by class id). Classes with fewer than
    `min_images_per_class` images are dropped. With `cache_dir`, the result is stored there
    and reused while the folder, its listing and every parameter are unchanged.
    """
    train_dir = Path(train_dir)
    params = {"M": M, "alpha": alpha, "N": N, "L": L, "min_images_per_class": min_images_per_class}
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GeolocError(f"group parameter {name} must be a positive integer, got {value!r}")
    names = image_names(train_dir)
    paths = [train_dir / name for name in names]

    cache_file = None
    groups = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"groups-{_cache_key(train_dir, params, names)}.json"
        groups = _read_cache(cache_file, names)
        if groups is not None:
            log.info("using cached groups %s", cache_file)
    if groups is None:
        groups = _group_images(train_dir, paths, **params)
        if cache_file is not None:
            _write_cache(cache_file, train_dir, params, names, groups)
    return [[[paths[index] for index in cls] for cls in group] for group in groups]


def _group_images(
    train_dir: Path, paths: list[Path], *, M: int, alpha: int, N: int, L: int, min_images_per_class: int
) -> list[list[list[int]]]:
    """Return the groups as indices into `paths`."""
    images_per_class: dict[ClassId, list[int]] = defaultdict(list)
    group_of_class: dict[ClassId, GroupId] = {}
    for index, path in enumerate(paths):  # sorted, so each class's images come out sorted
        meta = parse_image_name(path, need_heading=True)
        class_id, group_id = class_and_group(
            meta.utm_east, meta.utm_north, meta.heading, M=M, alpha=alpha, N=N, L=L
        )
        images_per_class[class_id].append(index)
        group_of_class[class_id] = group_id

    classes_per_group: dict[GroupId, list[ClassId]] = defaultdict(list)
    for class_id in sorted(images_per_class):
        if len(images_per_class[class_id]) >= min_images_per_class:
            classes_per_group[group_of_class[class_id]].append(class_id)
    if not classes_per_group:
        largest = max(len(images) for images in images_per_class.values())
        raise GeolocError(
            f"no class in {train_dir} has at least min_images_per_class={min_images_per_class} images "
            f"(M={M}, alpha={alpha}): {len(paths)} images fall in {len(images_per_class)} classes, "
            f"the largest has {largest} images"
        )
    return [
        [images_per_class[class_id] for class_id in classes_per_group[group_id]]
        for group_id in sorted(classes_per_group)
    ]


def _cache_key(train_dir: Path, params: dict[str, int], relative_names: list[str]) -> str:
    listing = hashlib.sha256("\n".join(relative_names).encode()).hexdigest()
    key = {
        "format": _CACHE_FORMAT,
        "train_dir": str(train_dir.resolve()),
        **params,
        "n_images": len(relative_names),
        "listing_sha256": listing,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _write_cache(
    cache_file: Path, train_dir: Path, params: dict[str, int], names: list[str], groups: list[list[list[int]]]
) -> None:
    # Names rather than indices: a person can read the file, and a reader can check it.
    named = [[[names[index] for index in cls] for cls in group] for group in groups]
    content = {"format": _CACHE_FORMAT, "train_dir": str(train_dir.resolve()), **params, "groups": named}
    atomic_write_text(cache_file, json.dumps(content))
    log.info("wrote groups cache %s", cache_file)


def _read_cache(cache_file: Path, names: list[str]) -> list[list[list[int]]] | None:
    """Return the cached groups as indices into `names`, or None when the file is missing,
    unreadable or names an image not in the listing (the groups are then rebuilt)."""
    index_of = {name: index for index, name in enumerate(names)}
    try:
        content = json.loads(cache_file.read_text(encoding="utf-8"))
        if content["format"] != _CACHE_FORMAT or not _is_nested_lists(content["groups"]):
            raise ValueError("unexpected content")
        return [[[index_of[name] for name in cls] for cls in group] for group in content["groups"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable groups cache %s: %s", cache_file, exc)
        return None


def _is_nested_lists(groups: object) -> bool:
    """True for a non-empty list of non-empty groups, each a list of non-empty classes (lists)."""

    def non_empty_list(value: object) -> bool:
        return isinstance(value, list) and len(value) > 0

    return non_empty_list(groups) and all(
        non_empty_list(group) and all(non_empty_list(cls) for cls in group) for group in groups
    )

