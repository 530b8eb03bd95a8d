"""Datasets: the classes of one training group, and the test (or validation) sets.

One loader serves the real datasets (SF-XS, Tokyo-XS, Tokyo-Night) and the synthetic city:
they share the folder layout and the image names of `geoloc.data.names`, which carry the
UTM coordinates (and, for training, the heading) of every image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from geoloc.data.image_cache import ImageCache
from geoloc.data.images import read_image
from geoloc.data.listing import list_images
from geoloc.data.names import parse_image_name
from geoloc.errors import GeolocError

log = logging.getLogger(__name__)


class TrainGroupDataset(torch.utils.data.Dataset):
    """The classes of one group, indexed by (class, image).

    The sampler picks which image of a class to show, so every class can be seen equally
    often however many images it has (as CosPlace does).

    With an image `cache` (geoloc.data.image_cache, built at `image_size` over these images),
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

