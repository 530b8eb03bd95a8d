"""CosPlace classes and groups of the training images, with a cache of the split.

A class is a cell of M x M metres (UTM east, north) and a heading bin of alpha degrees; a
group gathers the classes that are N cells and L bins apart, so neighbouring classes never
share a group. The classes and groups are CosPlace's own (gmberton/CosPlace,
datasets/train_dataset.py): the same images in each class and group, groups numbered in
order of first appearance over the sorted image paths (so group 0 is CosPlace's group 0),
headings read as written (a heading of 360 is a class of its own, as there). Only the order
of the classes inside a group differs: CosPlace lists a Python set, whose order means nothing;
here they are sorted by class id.

The split is held as index arrays into the folder's `Listing` (`Groups`), not as a list of
Paths per image: millions of images cost a few arrays, shared by every loader worker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geoloc.atomic import atomic_open
from geoloc.data.listing import Listing
from geoloc.data.names import parse_image_name
from geoloc.errors import GeolocError

log = logging.getLogger(__name__)

# Bump when the meaning of a cache file changes, so old files are never reused.
_CACHE_FORMAT = 2
_ARRAYS = ("images", "class_starts", "group_starts")


def classes_and_groups(
    east: np.ndarray, north: np.ndarray, heading: np.ndarray, *, M: int, alpha: int, N: int, L: int
) -> tuple[np.ndarray, np.ndarray]:
    """The CosPlace class id (n, 3) and group id (n, 3) of each image position, as int64.

    A class id is the lower corner of its cell: (UTM east m, UTM north m, heading deg); a
    group id is the class's position modulo (N, N, L) in units of cells and heading bins.

    M: side of a cell in metres; alpha: width of a heading bin in degrees; N: cells (east and
    north) between two classes of one group; L: heading bins between two classes of one group.
    Adjacent cells/bins differ in the group id, so neighbouring classes never share a group.
    Computed as CosPlace's get__class_id__group_id does it per image, int(x // M * M): numpy's
    float floor division rounds as Python's `//` does, and an integral float times M is exact.
    """
    classes = np.stack([(east // M * M), (north // M * M), (heading // alpha * alpha)], axis=1).astype(np.int64)
    groups = np.stack(
        [classes[:, 0] % (M * N) // M, classes[:, 1] % (M * N) // M, classes[:, 2] % (alpha * L) // alpha], axis=1
    )
    return classes, groups


class ClassGroup(Sequence):
    """The classes of one group: `group[c]` is the list of class c's image paths.

    Held as `images` (int32 indices into `listing`, class after class, each class in listing
    order) and `starts` (int64, classes + 1: class c is images[starts[c]:starts[c + 1]]).
    """

    def __init__(self, listing: Listing, images: np.ndarray, starts: np.ndarray) -> None:
        self.listing = listing
        self.images = images
        self.starts = starts

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, index: int) -> list[Path]:
        index = range(len(self))[index]  # negative indices count from the end; IndexError past it
        return [self.listing[int(i)] for i in self.images[self.starts[index] : self.starts[index + 1]]]

    @property
    def images_per_class(self) -> np.ndarray:
        return np.diff(self.starts)

    def image(self, class_index: int, image_index: int) -> int:
        """The listing index of image `image_index` of class `class_index`."""
        return int(self.images[self.starts[class_index] + image_index])


class Groups(Sequence):
    """Every non-empty group, in CosPlace's order: `groups[g]` is a `ClassGroup`."""

    def __init__(
        self, listing: Listing, images: np.ndarray, class_starts: np.ndarray, group_starts: np.ndarray
    ) -> None:
        self.listing = listing
        self.images = images  # int32 listing indices: group after group, class after class
        self.class_starts = class_starts  # int64, classes + 1, into images
        self.group_starts = group_starts  # int64, groups + 1, into the classes

    def __len__(self) -> int:
        return len(self.group_starts) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):  # the trainer takes groups[:groups_num]
            return [self[i] for i in range(len(self))[index]]
        index = range(len(self))[index]
        first, last = self.group_starts[index], self.group_starts[index + 1]
        starts = self.class_starts[first : last + 1]
        return ClassGroup(self.listing, self.images[starts[0] : starts[-1]], starts - starts[0])


def build_groups(
    train_dir: Path,
    *,
    M: int,
    alpha: int,
    N: int,
    L: int,
    min_images_per_class: int,
    cache_dir: Path | None = None,
) -> Groups:
    """Split the training images into CosPlace groups of classes.

    Classes with fewer than `min_images_per_class` images are dropped. With `cache_dir`, the
    split is stored there and reused while the folder, its listing and every parameter are
    unchanged (names are then not parsed again).
    """
    train_dir = Path(train_dir)
    params = {"M": M, "alpha": alpha, "N": N, "L": L, "min_images_per_class": min_images_per_class}
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GeolocError(f"group parameter {name} must be a positive integer, got {value!r}")
    listing = Listing.of(train_dir)

    cache_file = None
    arrays = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"groups-{_cache_key(train_dir, params, listing)}.npz"
        arrays = _read_cache(cache_file, len(listing))
        if arrays is not None:
            log.info("using cached groups %s", cache_file)
    if arrays is None:
        arrays = _group_images(listing, **params)
        if cache_file is not None:
            _write_cache(cache_file, arrays)
    return Groups(listing, *arrays)


def _group_images(
    listing: Listing, *, M: int, alpha: int, N: int, L: int, min_images_per_class: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (images, class_starts, group_starts) arrays of `Groups`."""
    positions = np.empty((len(listing), 3), dtype=np.float64)
    root = str(listing.root)
    for index, name in enumerate(listing.names):
        meta = parse_image_name(f"{root}/{name}", need_heading=True)  # the error names the whole path
        positions[index] = meta.utm_east, meta.utm_north, meta.heading
    classes, groups = classes_and_groups(*positions.T, M=M, alpha=alpha, N=N, L=L)

    # Classes sorted by class id; class_of_image numbers them in that order.
    class_ids, class_of_image, sizes = np.unique(classes, axis=0, return_inverse=True, return_counts=True)
    class_of_image = class_of_image.reshape(-1)
    kept_class = sizes >= min_images_per_class
    if not kept_class.any():
        raise GeolocError(
            f"no class in {listing.root} has at least min_images_per_class={min_images_per_class} images "
            f"(M={M}, alpha={alpha}): {len(listing)} images fall in {len(class_ids)} classes, "
            f"the largest has {sizes.max()} images"
        )
    kept_image = kept_class[class_of_image]
    group_code = (groups[:, 0] * N + groups[:, 1]) * L + groups[:, 2]
    # CosPlace numbers a group when the listing first meets an image of a kept class of it.
    first_seen, first_index = np.unique(group_code[kept_image], return_index=True)
    group_rank = np.empty(N * N * L, dtype=np.int64)
    group_rank[first_seen[np.argsort(first_index)]] = np.arange(len(first_seen))

    image_indices = np.flatnonzero(kept_image)
    # Group by group rank, then class id; each class's images keep their listing order.
    order = np.lexsort((image_indices, class_of_image[image_indices], group_rank[group_code[image_indices]]))
    images = image_indices[order]
    image_class = class_of_image[images]
    class_first = np.flatnonzero(np.r_[True, image_class[1:] != image_class[:-1]])
    class_starts = np.r_[class_first, len(images)].astype(np.int64)
    class_group = group_rank[group_code[images[class_first]]]
    group_first = np.flatnonzero(np.r_[True, class_group[1:] != class_group[:-1]])
    group_starts = np.r_[group_first, len(class_first)].astype(np.int64)
    return images.astype(np.int32), class_starts, group_starts


def _cache_key(train_dir: Path, params: dict[str, int], listing: Listing) -> str:
    key = {
        "format": _CACHE_FORMAT,
        "train_dir": str(train_dir.resolve()),
        **params,
        "n_images": len(listing),
        "listing_sha256": listing.names.sha256(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _write_cache(cache_file: Path, arrays: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    with atomic_open(cache_file, "wb") as handle:
        np.savez(handle, format=np.int64(_CACHE_FORMAT), **dict(zip(_ARRAYS, arrays)))
    log.info("wrote groups cache %s", cache_file)


def _read_cache(cache_file: Path, n_images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The cached arrays, or None when the file is missing, unreadable or inconsistent with a
    listing of `n_images` images (the groups are then rebuilt)."""
    try:
        with np.load(cache_file, allow_pickle=False) as content:
            if int(content["format"]) != _CACHE_FORMAT:
                raise ValueError("it has another format")
            images, class_starts, group_starts = (content[name] for name in _ARRAYS)
        _check_arrays(images, class_starts, group_starts, n_images)
        return images, class_starts, group_starts
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:  # a damaged file
        log.warning("ignoring unreadable groups cache %s: %s", cache_file, exc)
        return None


def _check_arrays(images: np.ndarray, class_starts: np.ndarray, group_starts: np.ndarray, n_images: int) -> None:
    """Raise ValueError unless the arrays describe non-empty groups of non-empty classes of
    distinct images of the listing."""
    for name, array, dtype in (
        ("images", images, np.int32),
        ("class_starts", class_starts, np.int64),
        ("group_starts", group_starts, np.int64),
    ):
        if array.dtype != dtype or array.ndim != 1:
            raise ValueError(f"{name} is not a 1-d {np.dtype(dtype).name} array")
    valid = (
        len(group_starts) >= 2
        and group_starts[0] == 0
        and group_starts[-1] == len(class_starts) - 1
        and class_starts[0] == 0
        and class_starts[-1] == len(images)
        and (np.diff(group_starts) > 0).all()
        and (np.diff(class_starts) > 0).all()
        and ((images >= 0) & (images < n_images)).all()
        and np.bincount(images, minlength=1).max() == 1
    )
    if not valid:
        raise ValueError("its arrays do not describe groups of this listing")
