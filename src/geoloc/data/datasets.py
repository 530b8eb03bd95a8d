"""Datasets: the classes of one training group, and the test (or validation) sets.

One loader serves the real datasets (any set of the catalog, geoloc.data.catalog) and the synthetic city:
they share the folder layout and the image names of `geoloc.data.names`, which carry the
UTM coordinates (and, for training, the heading) of every image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from geoloc.data.catalog import keep_queries, read_query_names
from geoloc.data.groups import ClassGroup
from geoloc.data.image_cache import ImageCache
from geoloc.data.images import read_image
from geoloc.data.listing import image_names, list_images
from geoloc.data.names import parse_image_name
from geoloc.errors import GeolocError

log = logging.getLogger(__name__)


class TrainGroupDataset(torch.utils.data.Dataset):
    """The classes of one group (`geoloc.data.groups.ClassGroup`), indexed by (class, image).

    The sampler picks which image of a class to show, so every class can be seen equally
    often however many images it has (as CosPlace does).

    With an image `cache` (geoloc.data.image_cache, built at `image_size` over these images),
    images are read from it instead of decoded. Images the cache could not decode are left
    out of their class, and a class left with no image is left out of the group.

    Everything a loader worker gets is a few numpy arrays (the group's index arrays, the
    packed listing, the cache rows), never a Python object per image.
    """

    def __init__(self, classes: ClassGroup, image_size: int, cache: ImageCache | None = None) -> None:
        self.image_size = image_size
        self.cache = cache
        self.rows: np.ndarray | None = None  # cache row of each of classes.images
        if cache is not None:
            if cache.size != image_size:
                raise GeolocError(f"image cache {cache.data_file} holds {cache.size} px images, not {image_size} px")
            classes, self.rows = _without_bad_images(classes, cache)
        self.classes = classes
        self.images_per_class = classes.images_per_class

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, index: tuple[int, int]) -> tuple[torch.Tensor, int]:
        class_index, image_index = index
        if self.rows is not None:
            return self.cache.get(int(self.rows[self.classes.starts[class_index] + image_index])), class_index
        path = self.classes.listing[self.classes.image(class_index, image_index)]
        return read_image(path, self.image_size), class_index


def _without_bad_images(classes: ClassGroup, cache: ImageCache) -> tuple[ClassGroup, np.ndarray]:
    """The classes without the images `cache` could not decode, and each kept image's cache row."""
    rows = cache.rows_of([classes.listing[int(index)] for index in classes.images])
    good = ~np.isin(rows, np.fromiter(cache.errors, dtype=np.int64, count=len(cache.errors)))
    if good.all():
        return classes, rows
    class_of_image = np.repeat(np.arange(len(classes)), classes.images_per_class)
    for class_index in np.unique(class_of_image[~good]):
        log.warning(
            "leaving %d undecodable image(s) out of the class of %s",
            np.count_nonzero(~good[class_of_image == class_index]),
            classes[int(class_index)][0],
        )
    kept_per_class = np.bincount(class_of_image[good], minlength=len(classes))
    starts = np.zeros(np.count_nonzero(kept_per_class) + 1, dtype=np.int64)
    np.cumsum(kept_per_class[kept_per_class > 0], out=starts[1:])
    return ClassGroup(classes.listing, classes.images[good], starts), rows[good]


class TestSet:
    """A test (or validation) set: `database/` and `queries/` image folders with UTM positions.

    `queries_file` (a protocol's subset: one query file name per line) keeps only the queries it lists.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, folder: Path, queries_file: Path | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise GeolocError(f"test set folder {self.folder} does not exist or is not a folder")
        self.database_paths = list_images(self.folder / "database")
        if queries_file is None:
            self.queries_paths = list_images(self.folder / "queries")
        else:
            names = image_names(self.folder / "queries")
            kept = keep_queries(names, read_query_names(queries_file), queries_file, self.folder / "queries")
            self.queries_paths = [self.folder / "queries" / name for name in kept]
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
