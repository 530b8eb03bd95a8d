"""Fixtures of the data tests."""

from pathlib import Path

import numpy as np
import pytest

from geoloc.data.groups import ClassGroup
from geoloc.data.listing import Listing


@pytest.fixture
def class_group():
    """make(folder, classes): the ClassGroup of `classes` (lists of image paths in `folder`)."""

    def make(folder: Path, classes: list[list[Path]]) -> ClassGroup:
        listing = Listing.of(folder)
        index_of = {path: index for index, path in enumerate(listing)}
        starts = np.cumsum([0] + [len(images) for images in classes], dtype=np.int64)
        images = np.array([index_of[path] for images in classes for path in images], dtype=np.int32)
        return ClassGroup(listing, images, starts)

    return make
