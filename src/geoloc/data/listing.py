"""Listing the images of a dataset folder: in CosPlace's order, hidden files skipped, duplicates refused."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from geoloc.data.names import IMAGE_EXTENSIONS
from geoloc.data.packed import PackedNames
from geoloc.errors import GeolocError

_CHUNK = 1 << 16  # names digested per string join: a few MB at a time
_STAT_CHUNK, _STAT_THREADS = 4096, 8


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
    names = sorted(name for name, _ in _image_entries(Path(folder)))  # no entry is kept: millions of them
    _reject_duplicate_names(folder, _some(folder, names))
    return names


def listing_fingerprint(folder: Path) -> dict[str, int | str]:
    """What a folder of images holds, cheaply: the number of images and the sha256 of their
    relative names, sizes and modification times (ns), in `image_names` order.

    A file added, removed, renamed, resized or rewritten in place changes it; where the folder
    lies does not, nor does a move or a copy that keeps the times (`cp -a`, `rsync -a`). One stat
    per image: the cost at SF-XL's million names is in benchmarks/listing_fingerprint.py.
    """
    found = sorted(_image_entries(Path(folder)), key=lambda item: item[0])
    _reject_duplicate_names(folder, _some(folder, [name for name, _ in found]))
    # A stat is a round trip to the server on a network file system: several at a time.
    chunks = [found[first : first + _STAT_CHUNK] for first in range(0, len(found), _STAT_CHUNK)]
    with ThreadPoolExecutor(_STAT_THREADS) as pool:
        stats = [stat for chunk in pool.map(_stats, chunks) for stat in chunk]
    entries = [(name, stat) for (name, _), stat in zip(found, stats)]
    digest = hashlib.sha256()
    for first in range(0, len(entries), _CHUNK):
        chunk = entries[first : first + _CHUNK]
        lines = (f"{len(name)}:{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n" for name, stat in chunk)
        digest.update("".join(lines).encode("utf-8", "surrogateescape"))
    return {"images": len(entries), "sha256": digest.hexdigest()}


def _stats(entries: list[tuple[str, os.DirEntry]]) -> list[os.stat_result]:
    return [entry.stat() for _, entry in entries]


def _image_entries(folder: Path) -> Iterator[tuple[str, os.DirEntry]]:
    """(relative POSIX name, directory entry) of every image file under `folder`, unsorted.

    Hidden files and folders are skipped, and links to folders are not followed (as os.walk
    does). A name that looks like an image but is no regular file (a FIFO, a socket, a device,
    a dangling link) is refused: opening a FIFO to decode it would wait forever.
    """
    if not folder.is_dir():
        raise GeolocError(f"image folder {folder} does not exist or is not a folder")
    pending = [("", os.fspath(folder))]
    while pending:
        prefix, path = pending.pop()
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    name = entry.name
                    if name.startswith("."):
                        continue
                    # The name first: one type check per image (from the directory entry, no stat).
                    if name.lower().endswith(IMAGE_EXTENSIONS):
                        if entry.is_file():
                            yield prefix + name, entry
                            continue
                        if not entry.is_dir():
                            raise GeolocError(
                                f"{entry.path} is named like an image but is no regular file (a FIFO, "
                                "socket, device or dangling link): remove it from the dataset"
                            )
                    if entry.is_dir(follow_symlinks=False):
                        pending.append((f"{prefix}{name}/", entry.path))
        except OSError as exc:
            _raise_listing_error(exc)


def _some(folder: Path, names: list[str]) -> list[str]:
    if not names:
        raise GeolocError(f"image folder {folder} holds no image ({', '.join(IMAGE_EXTENSIONS)}, any case)")
    return names


def _raise_listing_error(error: OSError) -> None:
    raise GeolocError(f"cannot list {error.filename}: {error.strerror or error}")


def _reject_duplicate_names(folder: Path, names: list[str]) -> None:
    # The file name is the image's metadata: the same name twice in one set is a copy of
    # one image (a botched merge of folders) that would silently count twice. Names compare
    # with their extension's case folded (x.jpg and x.JPG are one image on any disk). Only
    # names in different folders, or with an extension not in lower case, can repeat. The
    # names are compared by hash first: a dict of a million of them would double the
    # listing's memory.
    if not any("/" in name or not name.endswith(IMAGE_EXTENSIONS) for name in names):
        return
    keys = [_image_key(name) for name in names]
    hashes = np.fromiter((hash(key) for key in keys), dtype=np.int64, count=len(keys))
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    first_seen: dict[str, str] = {}
    for index in np.flatnonzero(counts[inverse.reshape(-1)] > 1):  # the few names whose hash repeats
        name, key = names[index], keys[index]
        if key in first_seen:
            raise GeolocError(
                f"duplicate image name {key}: {Path(folder) / first_seen[key]} and {Path(folder) / name} "
                "(one image twice): remove one of them"
            )
        first_seen[key] = name


def _image_key(name: str) -> str:
    """The file name of `name` with its extension in lower case."""
    file_name = name.rpartition("/")[2]
    if file_name.endswith(IMAGE_EXTENSIONS):  # nearly all names: nothing to fold
        return file_name
    stem, dot, extension = file_name.rpartition(".")
    return f"{stem}{dot}{extension.lower()}"
