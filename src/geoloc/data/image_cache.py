"""A disk cache of decoded, resized training images: decode each image once, not once per sample.

Training draws every image many times (CosPlace: 320,000 samples from about 60,000 images),
and decoding a JPEG and resizing it costs more than reading its pixels back. The cache is one
raw uint8 file of shape (n, 3, S, S), read through a read-only memory map, plus a small JSON
index; the page cache then shares the pixels between all loader workers of all jobs on a node.
`geoloc cache-images` builds it as a job of its own, before any training.

Both files are named by a key that hashes S and, for every image, its resolved absolute path,
size and modification time: a changed, added or removed image gives a new key, never a stale
image. Rows follow the sorted resolved paths, so the same images given in any order share one
cache. A build writes temporary files and renames them into place, data first and index last,
so a reader sees a complete cache or none. The whole data file is reserved on disk before the
first image is decoded: a disk too small fails at once with an error, never later with SIGBUS
in the middle of writing through the memory map. Builders of the same key take turns on a lock
file; where the file system has no locks, concurrent builders each rename an identical file.
A build removes the temporary files that killed builds left in the folder.

Disk use is n x 3 x S x S bytes: 12 KiB an image at 64 px, 768 KiB at 512 px (43.7 GiB for the
59,650 images of SF-XS group 0).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from geoloc.atomic import atomic_path, atomic_write_text
from geoloc.data.images import ImageListDataset
from geoloc.errors import GeolocError

log = logging.getLogger(__name__)

# Bump when the layout of the files changes, so old caches are never read.
_FORMAT = 2
_BUILD_BATCH = 64
_COPY_CHUNK = 16 << 20


class ImageCache:
    """Decoded uint8 (3, S, S) images by row; `index_of(path)` gives a path's row.

    Pickles without its memory map and without its path index: a loader worker maps the
    file on first use and reads rows (`get`) only, so handing the cache to worker processes
    copies neither pixels nor a Python object per image.
    """

    def __init__(
        self, data_file: Path, row_of: dict[str, int], size: int, errors: dict[int, str], build_seconds: float
    ) -> None:
        self.data_file = data_file
        self.index_file = data_file.with_suffix(".json")
        self.size = size
        self.errors = errors  # row -> why the image could not be decoded
        self.build_seconds = build_seconds  # how long decoding and writing it took
        self._row_of = row_of  # resolved path -> row
        self._n_images = len(row_of)
        self._resolver = _PathResolver()
        path_of_bad = {row: path for path, row in row_of.items() if row in errors} if errors else {}
        self.bad_paths = [Path(path_of_bad[row]) for row in sorted(errors)]
        self._array: np.ndarray | None = None

    @classmethod
    def build_or_open(cls, paths: Sequence[Path], size: int, folder: Path, num_workers: int = 0) -> ImageCache:
        """The cache of `paths` at size x size in `folder`, built first if it is not there yet.

        Building decodes with `num_workers` loader processes (0: in this process). An image
        that cannot be decoded is recorded in `bad_paths` (and logged), not fatal.
        """
        if size < 1:
            raise GeolocError(f"image cache: image size must be at least 1, got {size}")
        if num_workers < 0:
            raise GeolocError(f"image cache: num_workers must be at least 0, got {num_workers}")
        resolved = sorted(set(_PathResolver().resolve_all(paths)))
        if not resolved:
            raise GeolocError("image cache: no images to cache")
        folder = Path(folder)
        key = _cache_key(resolved, size)
        data_file = folder / f"images-{size}px-{key}.u8"
        index = _read_index(data_file, len(resolved), size)
        if index is None:
            _make_folder(folder)
            with _build_lock(_lock_file(data_file)) as locked:
                # Another builder may have finished while this one waited for the lock.
                index = _read_index(data_file, len(resolved), size)
                if index is None:
                    _remove_stale_temp_files(folder, data_file if locked else None)
                    index = _build(data_file, resolved, size, num_workers)
        else:
            log.info("using image cache %s (%d images at %d px)", data_file, len(resolved), size)
        cache = cls(data_file, {path: row for row, path in enumerate(resolved)}, size, *_errors_and_seconds(index))
        for row in sorted(cache.errors):
            log.warning("image cache: %s", cache.errors[row])  # the message names the file
        return cache

    def __len__(self) -> int:
        return self._n_images

    def index_of(self, path: Path) -> int:
        """The row of `path` (any path to the same file name in the same folder)."""
        try:
            return self._row_of[self._resolver.resolve(path)]
        except KeyError:
            raise GeolocError(f"image cache {self.data_file} does not hold {path}") from None

    def rows_of(self, paths: Sequence[Path]) -> np.ndarray:
        """The rows of `paths`, as an int64 array."""
        return np.fromiter((self.index_of(path) for path in paths), dtype=np.int64, count=len(paths))

    def get(self, row: int) -> torch.Tensor:
        """The image of `row`: uint8 (3, S, S), equal to `data.read_image(path, S)`."""
        if row in self.errors:
            raise GeolocError(f"image cache: row {row} is an image that could not be decoded: {self.errors[row]}")
        if self._array is None:
            self._array = np.memmap(
                self.data_file, dtype=np.uint8, mode="r", shape=(len(self), 3, self.size, self.size)
            )
        # A copy: the map is read-only and torch wants writable memory.
        return torch.from_numpy(np.array(self._array[row]))

    def copy_to(self, folder: Path) -> ImageCache:
        """This cache copied into `folder` (e.g. a node's local scratch disk), opened.

        The data file is copied first and the index last, each under a temporary name renamed
        into place, so the copy is complete or absent; a complete copy of this cache already
        in `folder` is used as it is. Space for the data is reserved before copying.
        """
        folder = Path(folder)
        data_copy = folder / self.data_file.name
        try:
            expected = self.index_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise GeolocError(f"image cache: cannot read {self.index_file}: {exc.strerror or exc}") from exc
        if not _is_copy(data_copy, expected, len(self), self.size):
            _make_folder(folder)
            with _build_lock(_lock_file(data_copy)) as locked:
                if not _is_copy(data_copy, expected, len(self), self.size):
                    _remove_stale_temp_files(folder, data_copy if locked else None)
                    log.info("copying image cache %s to %s", self.data_file, folder)
                    _copy_file(self.data_file, data_copy)
                    atomic_write_text(data_copy.with_suffix(".json"), expected)
        return ImageCache(data_copy, self._row_of, self.size, self.errors, self.build_seconds)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None, "_row_of": {}}


class _PathResolver:
    """Resolved absolute paths, resolving each folder once (not each of 60,000 files)."""

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def resolve(self, path: os.PathLike | str) -> str:
        folder, name = os.path.split(os.fspath(path))
        if folder not in self._folders:
            self._folders[folder] = os.path.realpath(folder or ".")
        return os.path.join(self._folders[folder], name)

    def resolve_all(self, paths: Sequence[Path]) -> list[str]:
        return [self.resolve(path) for path in paths]


def _cache_key(resolved: list[str], size: int) -> str:
    digest = hashlib.sha256(f"{_FORMAT}\0{size}\0".encode())
    for path in resolved:
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise GeolocError(f"image cache: cannot read {path}: {exc.strerror or exc}") from exc
        # NUL cannot occur in a path: the entries cannot run into each other whatever the names hold.
        digest.update(os.fsencode(path) + f"\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:24]


def _read_index(data_file: Path, n_images: int, size: int) -> dict | None:
    """The index of a complete cache, or None when it must be (re)built."""
    index_file = data_file.with_suffix(".json")
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
        if index["format"] != _FORMAT or index["n_images"] != n_images or index["image_size"] != size:
            raise ValueError("it describes another cache")
        if data_file.stat().st_size != n_images * 3 * size * size:
            raise ValueError(f"{data_file} has the wrong size")
        _errors_and_seconds(index)  # raises on a malformed entry
        return index
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("rebuilding image cache: ignoring %s: %s", index_file, exc)
        return None


def _errors_and_seconds(index: dict) -> tuple[dict[int, str], float]:
    return {int(row): str(error) for row, error in index["errors"].items()}, float(index["build_seconds"])


def _is_copy(data_copy: Path, expected_index: str, n_images: int, size: int) -> bool:
    """Whether `data_copy` is a complete copy of the cache whose index reads `expected_index`."""
    if _read_index(data_copy, n_images, size) is None:
        return False
    return data_copy.with_suffix(".json").read_text(encoding="utf-8") == expected_index


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GeolocError(f"cannot create image cache folder {folder}: {exc.strerror or exc}") from exc


def _lock_file(data_file: Path) -> Path:
    return data_file.with_suffix(".lock")


@contextlib.contextmanager
def _build_lock(lock_file: Path) -> Iterator[bool]:
    """Hold an exclusive lock on `lock_file` and yield True; without lock support, yield False."""
    with open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as exc:  # e.g. NFS without a lock daemon: the renames still keep it whole
            log.warning("image cache: cannot lock %s (%s); building without a lock", lock_file, exc)
            yield False
        else:
            yield True  # closing the file releases the lock


def _nobody_holds(lock_file: Path) -> bool:
    """True when no process holds `lock_file` (False also when locks do not work here)."""
    try:
        with open(lock_file, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _remove_stale_temp_files(folder: Path, held: Path | None) -> None:
    """Remove the temporary files of killed builds and copies from `folder`.

    geoloc.atomic names its temporary files .<final name>.<random>.tmp; a killed build leaves
    one behind, as large as the cache. One whose cache's lock nobody holds is a dead
    builder's; those of `held` (a cache whose lock this process holds) are too.
    """
    for temp in folder.glob(".images-*.tmp"):
        final = folder / temp.name[1:].rsplit(".", 2)[0]
        if final.with_suffix(".u8") == held or _nobody_holds(_lock_file(final)):
            log.info("image cache: removing %s, left by a build that was killed", temp)
            temp.unlink(missing_ok=True)


def _human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _reserve(handle, needed: int, what: str, folder: Path) -> None:
    """Allocate `needed` bytes to the open file, or raise one clear error.

    A sparse file would leave the disk to fill up while pixels are written through the
    memory map, and a write to a page the disk has no room for kills the process (SIGBUS).
    """
    try:
        os.posix_fallocate(handle.fileno(), 0, needed)
    except OSError as exc:
        free = shutil.disk_usage(folder).free
        reason = "not enough space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror or str(exc)
        raise GeolocError(
            f"image cache: cannot reserve {_human_bytes(needed)} for {what} in {folder} "
            f"({_human_bytes(free)} free): {reason}"
        ) from exc


def _copy_file(source: Path, target: Path) -> None:
    size = source.stat().st_size
    with atomic_path(target) as tmp, open(source, "rb") as src, open(tmp, "r+b") as dst:
        _reserve(dst, size, f"the copy of {source.name}", target.parent)
        shutil.copyfileobj(src, dst, _COPY_CHUNK)


class _DecodeOrReport(ImageListDataset):
    """(row, image or None, error) so that one bad image does not stop the build."""

    def __getitem__(self, row: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return row, super().__getitem__(row), ""
        except GeolocError as exc:
            return row, None, str(exc)


def _as_list(batch: list) -> list:
    return batch


def _build(data_file: Path, resolved: list[str], size: int, num_workers: int) -> dict:
    start = time.perf_counter()
    n = len(resolved)
    needed = n * 3 * size * size
    log.info("building image cache %s: %d images at %d px (%s)", data_file, n, size, _human_bytes(needed))
    loader = DataLoader(
        _DecodeOrReport([Path(p) for p in resolved], size),
        batch_size=_BUILD_BATCH,
        num_workers=num_workers,
        collate_fn=_as_list,
    )
    errors: dict[int, str] = {}
    with atomic_path(data_file) as tmp:
        with open(tmp, "r+b") as handle:
            _reserve(handle, needed, f"{n} images at {size} px", data_file.parent)
        pixels = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=(n, 3, size, size))
        with tqdm(
            total=n, desc="image cache", unit="img", file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0
        ) as bar:
            for batch in loader:
                for row, image, error in batch:
                    if image is None:
                        errors[row] = error
                    else:
                        pixels[row] = image.numpy()
                bar.update(len(batch))
        pixels.flush()
        del pixels
    index = {
        "format": _FORMAT,
        "image_size": size,
        "n_images": n,
        "data_file": data_file.name,
        "build_seconds": time.perf_counter() - start,
        "errors": {str(row): error for row, error in sorted(errors.items())},
    }
    atomic_write_text(data_file.with_suffix(".json"), json.dumps(index, indent=1) + "\n")
    return index
