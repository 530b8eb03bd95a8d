"""Many file names in one bytes buffer: no Python object per name.

A training set of millions of images listed as Python strings costs a hundred-odd bytes of
object header per name, and every loader worker that touches them (a refcount update is a
write) gets its own copy of those pages. `PackedNames` holds them as one numpy byte buffer and
one int64 array of offsets: two objects, shared copy-on-write by forked workers untouched.

Names are stored as the file system's bytes (`os.fsencode`), so every name a file system can
hold, undecodable bytes and newlines included, round-trips exactly.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import numpy as np


class PackedNames:
    """An immutable sequence of strings stored as one buffer; `names[i]` decodes name i."""

    def __init__(self, buffer: np.ndarray, offsets: np.ndarray) -> None:
        self.buffer = buffer  # uint8: the names' bytes, back to back
        self.offsets = offsets  # int64, len + 1: name i is buffer[offsets[i]:offsets[i + 1]]

    @classmethod
    def from_strings(cls, names: list[str]) -> PackedNames:
        buffer = os.fsencode("".join(names))
        if len(buffer) == sum(map(len, names)):
            # Every character took one byte (ASCII, and the undecodable bytes Python holds as
            # lone surrogates): the names' lengths in characters are their lengths in bytes.
            lengths = map(len, names)
        else:
            lengths = (len(os.fsencode(name)) for name in names)
        offsets = np.zeros(len(names) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(np.fromiter(lengths, dtype=np.int64, count=len(names)))
        return cls(np.frombuffer(buffer, dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        index = range(len(self))[index]  # negative indices count from the end; IndexError past it
        return os.fsdecode(self.buffer[self.offsets[index] : self.offsets[index + 1]].tobytes())

    def __iter__(self) -> Iterator[str]:
        return (self[index] for index in range(len(self)))

    def sha256(self) -> str:
        """A digest of the names and their order (the offsets separate the names)."""
        digest = hashlib.sha256(self.offsets)
        digest.update(self.buffer)
        return digest.hexdigest()
