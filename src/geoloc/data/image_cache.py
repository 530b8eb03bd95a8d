"""A disk cache of decoded, resized training images: decode each image once, not once per sample.

Training draws every image many times (CosPlace: 320,000 samples from about 60,000 images),
and decoding a JPEG and resizing it costs more than reading its pixels back. The cache is one
raw uint8 file of shape (n, 3, S, S), read through a read-only memory map, plus a small JSON
index; the page cache then shares the pixels between all loader workers of all jobs on a node.

Both files are named by a key that hashes S and, for every image, its resolved absolute path,
size and modification time: a changed, added or removed image gives a new key, never a stale
image. Rows follow the sorted resolved paths, so the same images given in any order share one
cache. A build writes temporary files and renames them into place, data first and index last,
so a reader sees a complete cache or none; builders of the same key take turns on a lock file,
and where the file system has no locks, concurrent builders each rename an identical file.

Disk use is n x 3 x S x S bytes: 12 KiB an image at 64 px, 768 KiB at 512 px (45 GiB for the
60,000 images of an SF-XS group).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
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
_FORMAT = 1
_BUILD_BATCH = 64


class ImageCache:
    """Decoded uint8 (3, S, S) images by row; `index_of(path)` gives a path's row.

    Pickles without its memory map (a loader worker maps the file on first use), so handing
    it to worker processes copies no pixels.
    """

    def __init__(self, data_file: Path, resolved_paths: list[str], size: int, errors: dict[int, str]) -> None:
        self.data_file = data_file
        self.size = size
        self.errors = errors  # row -> why the image could not be decoded
        self._row_of = {path: row for row, path in enumerate(resolved_paths)}
        self._resolver = _PathResolver()
        self.bad_paths = [Path(resolved_paths[row]) for row in sorted(errors)]
        self._array: np.ndarray | None = None

    @classmethod
    def build_or_open(cls, paths: list[Path], size: int, folder: Path, num_workers: int = 0) -> ImageCache:
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
        index_file = folder / f"images-{size}px-{key}.json"
        errors = _read_index(index_file, data_file, len(resolved), size)
        if errors is None:
            _make_folder(folder)
            with _build_lock(folder / f"images-{size}px-{key}.lock") as locked:
                # Another builder may have finished while this one waited for the lock.
                errors = _read_index(index_file, data_file, len(resolved), size)
                if errors is None:
                    if locked:  # no other builder of this key runs: temp files are a killed one's
                        _remove_stale_temp_files(data_file)
                    errors = _build(data_file, index_file, resolved, size, num_workers)
        else:
            log.info("using image cache %s (%d images at %d px)", data_file, len(resolved), size)
        cache = cls(data_file, resolved, size, errors)
        for row in sorted(errors):
            log.warning("image cache: %s", errors[row])  # the message names the file
        return cache

    def __len__(self) -> int:
        return len(self._row_of)

    def index_of(self, path: Path) -> int:
        """The row of `path` (any path to the same file name in the same folder)."""
        try:
            return self._row_of[self._resolver.resolve(path)]
        except KeyError:
            raise GeolocError(f"image cache {self.data_file} does not hold {path}") from None

    def get(self, row: int) -> torch.Tensor:
        """The image of `row`: uint8 (3, S, S), equal to `data.read_image(path, S)`."""
        if row in self.errors:
            raise GeolocError(f"image cache: row {row} is an image that could not be decoded: {self.errors[row]}")
        if self._array is None:
            self._array = np.memmap(self.data_file, dtype=np.uint8, mode="r",
                                    shape=(len(self), 3, self.size, self.size))
        # A copy: the map is read-only and torch wants writable memory.
        return torch.from_numpy(np.array(self._array[row]))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}


class _PathResolver:
    """Resolved absolute paths, resolving each folder once (not each of 60,000 files)."""

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def resolve(self, path: os.PathLike | str) -> str:
        folder, name = os.path.split(os.fspath(path))
        if folder not in self._folders:
            self._folders[folder] = os.path.realpath(folder or ".")
        return os.path.join(self._folders[folder], name)

    def resolve_all(self, paths: list[Path]) -> list[str]:
        return [self.resolve(path) for path in paths]


def _cache_key(resolved: list[str], size: int) -> str:
    digest = hashlib.sha256(f"{_FORMAT}\n{size}\n".encode())
    for path in resolved:
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise GeolocError(f"image cache: cannot read {path}: {exc.strerror or exc}") from exc
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _read_index(index_file: Path, data_file: Path, n_images: int, size: int) -> dict[int, str] | None:
    """The undecodable rows of a complete cache, or None when it must be (re)built."""
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
        if index["format"] != _FORMAT or index["n_images"] != n_images or index["image_size"] != size:
            raise ValueError("it describes another cache")
        if data_file.stat().st_size != n_images * 3 * size * size:
            raise ValueError(f"{data_file} has the wrong size")
        return {int(row): str(error) for row, error in index["errors"].items()}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("rebuilding image cache: ignoring %s: %s", index_file, exc)
        return None


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GeolocError(f"cannot create image cache folder {folder}: {exc.strerror or exc}") from exc


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


def _remove_stale_temp_files(data_file: Path) -> None:
    # geoloc.atomic names its temp files .<name>.<random>.tmp; a killed build leaves one behind,
    # as large as the cache.
    for stale in data_file.parent.glob(f".{data_file.name}.*.tmp"):
        log.info("image cache: removing %s, left by a build that was killed", stale)
        stale.unlink(missing_ok=True)


class _DecodeOrReport(ImageListDataset):
    """(row, image or None, error) so that one bad image does not stop the build."""

    def __getitem__(self, row: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return row, super().__getitem__(row), ""
        except GeolocError as exc:
            return row, None, str(exc)


def _as_list(batch: list) -> list:
    return batch


def _build(data_file: Path, index_file: Path, resolved: list[str], size: int, num_workers: int) -> dict[int, str]:
    n = len(resolved)
    needed = n * 3 * size * size
    free = shutil.disk_usage(data_file.parent).free
    if needed > free:
        raise GeolocError(f"image cache: {n} images at {size} px need {needed / 2**30:.1f} GiB in "
                          f"{data_file.parent}, which has {free / 2**30:.1f} GiB free")
    log.info("building image cache %s: %d images at %d px (%.2f GiB)", data_file, n, size, needed / 2**30)
    loader = DataLoader(_DecodeOrReport([Path(p) for p in resolved], size), batch_size=_BUILD_BATCH,
                        num_workers=num_workers, collate_fn=_as_list)
    errors: dict[int, str] = {}
    with atomic_path(data_file) as tmp:
        pixels = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(n, 3, size, size))
        with tqdm(total=n, desc="image cache", unit="img", file=sys.stderr,
                  mininterval=1.0 if sys.stderr.isatty() else 30.0) as bar:
            for batch in loader:
                for row, image, error in batch:
                    if image is None:
                        errors[row] = error
                    else:
                        pixels[row] = image.numpy()
                bar.update(len(batch))
        pixels.flush()
        del pixels
    index = {"format": _FORMAT, "image_size": size, "n_images": n, "data_file": data_file.name,
             "errors": {str(row): error for row, error in sorted(errors.items())}}
    atomic_write_text(index_file, json.dumps(index, indent=1) + "\n")
    return errors
