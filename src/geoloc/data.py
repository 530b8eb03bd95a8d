"""Datasets: listing and decoding images, CosPlace classes and groups, test sets.

One loader serves the real datasets (SF-XS, Tokyo-XS, Tokyo-Night) and the synthetic city:
they share the folder layout and the image names of `geoloc.imagename`, which carry the
UTM coordinates (and, for training, the heading) of every image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps

from geoloc.atomic import atomic_write_text
from geoloc.errors import GeolocError
from geoloc.imagename import IMAGE_EXTENSIONS, parse_image_name

if TYPE_CHECKING:  # geoloc.image_cache imports this module
    from geoloc.image_cache import ImageCache

log = logging.getLogger(__name__)

# A class is the lower corner of its cell: (UTM east m, UTM north m, heading deg).
ClassId = tuple[int, int, int]
# A group is the class's position modulo (N, N, L) in units of cells and heading bins.
GroupId = tuple[int, int, int]

# Bump when the meaning of a cache file changes, so old files are never reused.
_CACHE_FORMAT = 1


def list_images(folder: Path) -> list[Path]:
    """Return the image files under `folder` (recursively), sorted.

    Hidden files and folders are skipped: they are never dataset images (macOS writes
    `._name.jpg` companions next to copied files).
    """
    folder = Path(folder)
    return [folder / name for name in _image_names(folder)]


def _image_names(folder: Path) -> list[str]:
    """The images under `folder` as relative POSIX names, in the order their paths sort.

    Plain strings, not Paths: pathlib costs tens of microseconds per file on the listings of
    real training sets.
    """
    if not folder.is_dir():
        raise GeolocError(f"image folder {folder} does not exist or is not a folder")
    names: list[str] = []
    for root, dirs, files in os.walk(folder, onerror=_raise_listing_error):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        relative_root = os.path.relpath(root, folder)
        prefix = "" if relative_root == "." else relative_root.replace(os.sep, "/") + "/"
        names += [
            prefix + name
            for name in files
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    if not names:
        raise GeolocError(f"image folder {folder} holds no image ({', '.join(IMAGE_EXTENSIONS)}, any case)")
    names.sort(key=lambda name: name.split("/"))
    _reject_duplicate_names(folder, names)
    return names


def _raise_listing_error(error: OSError) -> None:
    raise GeolocError(f"cannot list {error.filename}: {error.strerror or error}")


def _reject_duplicate_names(folder: Path, names: list[str]) -> None:
    # The file name is the image's metadata: the same name twice in one set is a copy of
    # one image (a botched merge of folders) that would silently count twice.
    first_seen: dict[str, str] = {}
    for name in names:
        file_name = name.rpartition("/")[2]
        if file_name in first_seen:
            raise GeolocError(
                f"duplicate image name {file_name}: {folder / first_seen[file_name]} and {folder / name}"
            )
        first_seen[file_name] = name


def read_image(path: Path, size: int) -> torch.Tensor:
    """Decode an image upright (EXIF orientation applied) as uint8 RGB of shape (3, size, size)."""
    try:
        with Image.open(path) as image:
            # JPEGs decode directly at 1/2, 1/4 or 1/8 scale, never below `size`: large
            # photos cost a fraction of a full decode.
            image.draft(None, (size, size))
            ImageOps.exif_transpose(image, in_place=True)
            # convert/resize copy even when there is nothing to do; skip them then.
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            # Stacking the bands gives channel-first memory directly (cheaper than a permute copy).
            channels = np.stack([np.asarray(band) for band in rgb.split()])
    except Exception as exc:  # PIL reports corrupt files with many exception types
        raise GeolocError(f"cannot decode image {path}: {exc}") from exc
    return torch.from_numpy(channels)


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
    names = _image_names(train_dir)
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


class TrainGroupDataset(torch.utils.data.Dataset):
    """The classes of one group, indexed by (class, image).

    The sampler picks which image of a class to show, so every class can be seen equally
    often however many images it has (as CosPlace does).

    With an image `cache` (geoloc.image_cache, built at `image_size` over these images),
    images are read from it instead of decoded. Images the cache could not decode are left
    out of their class, and a class left with no image is left out of the group.
    """

    def __init__(self, classes: list[list[Path]], image_size: int, cache: ImageCache | None = None) -> None:
        self.image_size = image_size
        self.cache = cache
        self.rows: list[list[int]] = []
        if cache is not None:
            if cache.size != image_size:
                raise GeolocError(f"image cache {cache.data_file} holds {cache.size} px images, "
                                  f"not {image_size} px")
            classes, self.rows = _without_bad_images(classes, cache)
        self.classes = classes
        self.images_per_class = [len(images) for images in classes]

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, index: tuple[int, int]) -> tuple[torch.Tensor, int]:
        class_index, image_index = index
        if self.cache is not None:
            return self.cache.get(self.rows[class_index][image_index]), class_index
        return read_image(self.classes[class_index][image_index], self.image_size), class_index


def _without_bad_images(classes: list[list[Path]], cache: ImageCache) -> tuple[list[list[Path]], list[list[int]]]:
    """The classes without the images `cache` could not decode, and each kept image's cache row."""
    kept_classes, kept_rows = [], []
    for images in classes:
        pairs = [(path, cache.index_of(path)) for path in images]
        good = [(path, row) for path, row in pairs if row not in cache.errors]
        if len(good) < len(images):
            log.warning("leaving %d undecodable image(s) out of the class of %s", len(images) - len(good), images[0])
        if good:
            kept_classes.append([path for path, _ in good])
            kept_rows.append([row for _, row in good])
    return kept_classes, kept_rows


class ImageListDataset(torch.utils.data.Dataset):
    """Images in a fixed order, for computing descriptors."""

    def __init__(self, paths: list[Path], image_size: int) -> None:
        self.paths = paths
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return read_image(self.paths[index], self.image_size)


class TestSet:
    """A test (or validation) set: `database/` and `queries/` image folders with UTM positions."""

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise GeolocError(f"test set folder {self.folder} does not exist or is not a folder")
        self.database_paths = list_images(self.folder / "database")
        self.queries_paths = list_images(self.folder / "queries")
        self.database_utm = _utm_positions(self.database_paths)
        self.queries_utm = _utm_positions(self.queries_paths)

    def __repr__(self) -> str:
        return (
            f"TestSet({str(self.folder)!r}: {len(self.queries_paths)} queries, "
            f"{len(self.database_paths)} database images)"
        )


def _utm_positions(paths: list[Path]) -> np.ndarray:
    metas = [parse_image_name(path) for path in paths]
    return np.array([(meta.utm_east, meta.utm_north) for meta in metas], dtype=np.float64).reshape(-1, 2)
