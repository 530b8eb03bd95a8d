"""The digest of the images a training trains on (its settings' digest: geoloc.provenance).

The checkpoint refuses to resume, and the report refuses to show, results whose digests differ
from the run's (geoloc.train.checkpoint, geoloc.report.config_check).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import numpy as np

from geoloc.data.groups import ClassGroup

# Names gathered per numpy call: a few MB of indices, whatever the training set's size.
_CHUNK = 1 << 15


def trained_images_sha256(groups: Iterable[ClassGroup]) -> str:
    """sha256 of the trained classes' image names, relative to the training folder, class by
    class, group by group.

    Read from the packed listing (geoloc.data.packed) with numpy gathers, never a Path or a str
    per image: at SF-XL's millions of images this takes a fraction of a second
    (benchmarks/train_fingerprint.py). Each name is hashed with its length and each group with
    its class sizes, so no two different lists of classes give the same stream. Where the
    folder lies does not count: the same images moved elsewhere resume the same checkpoint.
    """
    digest = hashlib.sha256()
    for group in groups:
        names = group.listing.names
        sizes = group.images_per_class.astype("<i8")
        digest.update(np.int64(len(sizes)).astype("<i8").tobytes())
        digest.update(sizes.tobytes())
        # All lengths, then all bytes: the stream, and so the digest, is the same whatever _CHUNK.
        for images in _chunks(group.images):
            digest.update((names.offsets[images + 1] - names.offsets[images]).astype("<i8").tobytes())
        for images in _chunks(group.images):
            starts = names.offsets[images]
            digest.update(_gather(names.buffer, starts, names.offsets[images + 1] - starts).tobytes())
    return digest.hexdigest()


def _chunks(images: np.ndarray) -> Iterator[np.ndarray]:
    return (images[first : first + _CHUNK] for first in range(0, len(images), _CHUNK))


def _gather(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """buffer[starts[0]:starts[0] + lengths[0]], then the next span, ..., as one array."""
    ends_before = np.cumsum(lengths) - lengths  # where each span starts in the output
    return buffer[np.repeat(starts - ends_before, lengths) + np.arange(int(lengths.sum()))]
