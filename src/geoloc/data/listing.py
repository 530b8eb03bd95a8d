"""Listing the images of a dataset folder: in CosPlace's order, hidden files skipped, duplicates refused."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geoloc.data.names import IMAGE_EXTENSIONS
from geoloc.data.packed import PackedNames
from geoloc.errors import GeolocError


def list_images(folder: Path) -> list[Path]:
    """Return the image files under `folder` (recursively), in `image_names` order.

    Hidden files and folders are skipped: they are never dataset images (macOS writes
    `._name.jpg` companions next to copied files).
    """
    folder = Path(folder)
    return [folder / name for name in image_names(folder)]


class Listing(Sequence):
    """The images of one folder, packed (`geoloc.data.packed`): `listing[i]` is the Path of image i.

    What a training set of millions of images is held as: the folder and one buffer of names.
    """

    def __init__(self, root: Path, names: PackedNames) -> None:
        self.root = Path(root)
        self.names = names  # relative POSIX names, in `image_names` order

    @classmethod
    def of(cls, folder: Path) -> Listing:
        return cls(folder, PackedNames.from_strings(image_names(Path(folder))))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Path:
        return self.root / self.names[index]


def image_names(folder: Path) -> list[str]:
    """The images under `folder` as relative POSIX names, sorted as strings.

    That is CosPlace's order (`sorted(glob(...))` of the paths), which numbers its groups:
    a sub-folder `a/` sorts after a file or folder `a-b`, since '-' comes before '/'.
    Plain strings, not Paths: pathlib costs microseconds per file on real training sets.
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
    names.sort()
    _reject_duplicate_names(folder, names)
    return names


def _raise_listing_error(error: OSError) -> None:
    raise GeolocError(f"cannot list {error.filename}: {error.strerror or error}")


def _reject_duplicate_names(folder: Path, names: list[str]) -> None:
    # The file name is the image's metadata: the same name twice in one set is a copy of
    # one image (a botched merge of folders) that would silently count twice. Only names in
    # different folders can repeat. The file names are compared by hash first: a dict of a
    # million of them would double the listing's memory.
    if not any("/" in name for name in names):
        return
    hashes = np.fromiter((hash(name.rpartition("/")[2]) for name in names), dtype=np.int64, count=len(names))
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    first_seen: dict[str, str] = {}
    for index in np.flatnonzero(counts[inverse.reshape(-1)] > 1):  # the few names whose hash repeats
        name = names[index]
        file_name = name.rpartition("/")[2]
        if file_name in first_seen:
            raise GeolocError(
                f"duplicate image name {file_name}: {folder / first_seen[file_name]} and {folder / name}"
            )
        first_seen[file_name] = name
