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
from collections.abc import Iterable, Iterator

import numpy as np


class PackedNames:
    """An immutable sequence of strings stored as one buffer; `names[i]` decodes name i."""

    def __init__(self, buffer: np.ndarray, offsets: np.ndarray) -> None:
        self.buffer = buffer  # uint8: the names' bytes, back to back
        self.offsets = offsets  # int64, len + 1: name i is buffer[offsets[i]:offsets[i + 1]]

    @classmethod
    def from_strings(cls, names: Iterable[str]) -> PackedNames:
        encoded = [os.fsencode(name) for name in names]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(name) for name in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        if not -len(self) <= index < len(self):
            raise IndexError(f"name {index} of {len(self)}")
        index %= len(self)
        return os.fsdecode(self.buffer[self.offsets[index]:self.offsets[index + 1]].tobytes())

    def __iter__(self) -> Iterator[str]:
        return (self[index] for index in range(len(self)))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, PackedNames) and np.array_equal(self.offsets, other.offsets)
                and np.array_equal(self.buffer, other.buffer))

    def sha256(self) -> str:
        """A digest of the names and their order (the offsets separate the names)."""
        digest = hashlib.sha256(self.offsets)
        digest.update(self.buffer)
        return digest.hexdigest()
