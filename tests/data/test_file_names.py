"""Every character a file name may hold, through everything the data stage writes and reads back."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geoloc.data.datasets import TestSet, TrainGroupDataset
from geoloc.data.groups import build_groups
from geoloc.data.image_cache import ImageCache
from geoloc.data.images import read_image
from geoloc.data.packed import PackedNames

# Characters allowed in a Linux file name that break naive CSV, JSON, shell, URL or UTF-8
# handling: newline, tab, quotes, comma, backslash, %, #, ?, a non-UTF-8 byte (decoded by
# Python as a lone surrogate), an emoji and a right-to-left mark.
ODD = [
    "new\nline",
    "tab\there",
    'quote"s',
    "it's",
    "com,ma",
    "back\\slash",
    "100%",
    "#hash?q=1",
    os.fsdecode(b"latin1-\xe9"),
    "emoji-\U0001f5fa",
    "rtl-\u200f",
]


def odd_train_folder(root: Path) -> list[Path]:
    """Two classes of three images each, their names' free fields and folders holding ODD."""
    paths = []
    for index, odd in enumerate(ODD[:6]):
        east = 1.0 + index % 3 + (20.0 if index >= 3 else 0.0)
        folder = root / ODD[6 + index % 5]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"@{east}@1.0@10@S@@@{odd}@@0@@@@@{ODD[(index + 3) % len(ODD)]}@.jpg"
        Image.new("RGB", (8, 8), (40 * index, 0, 0)).save(path, format="JPEG")
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    "names",
    [
        ODD + ["", "plain.jpg"],  # multi-byte characters
        [os.fsdecode(b"raw-\xff\xfe"), "a", "plain.jpg"],  # one byte per character, undecodable bytes too
        ["a", "plain.jpg"],
    ],
)
def test_packed_names_round_trip_every_character(names):
    packed = PackedNames.from_strings(names)
    assert list(packed) == names and len(packed) == len(names)
    assert packed[-1] == "plain.jpg"
    assert os.fsencode(names[0]) == packed.buffer[: packed.offsets[1]].tobytes()
    with pytest.raises(IndexError):
        packed[len(names)]


def test_groups_and_their_cache_keep_odd_names(tmp_path):
    paths = odd_train_folder(tmp_path / "train")
    params = dict(M=10, alpha=30, N=2, L=2, min_images_per_class=3)
    built = build_groups(tmp_path / "train", **params, cache_dir=tmp_path / "cache")
    cached = build_groups(tmp_path / "train", **params, cache_dir=tmp_path / "cache")
    assert [sorted(map(str, cls)) for cls in built[0]] == [sorted(map(str, paths[:3])), sorted(map(str, paths[3:]))]
    assert [list(cls) for cls in cached[0]] == [list(cls) for cls in built[0]]
    assert all(path.is_file() for cls in cached[0] for path in cls)


def test_the_image_cache_and_its_index_keep_odd_names(tmp_path):
    paths = odd_train_folder(tmp_path / "train")
    paths[4].write_bytes(b"not an image")  # its name is written into the index as the error
    cache = ImageCache.build_or_open(paths, 8, tmp_path / "cache")
    reopened = ImageCache.build_or_open(paths, 8, tmp_path / "cache")
    assert reopened.data_file == cache.data_file
    assert reopened.bad_paths == cache.bad_paths == [Path(os.path.realpath(paths[4]))]
    assert str(paths[4]) in reopened.errors[reopened.index_of(paths[4])]
    (group,) = build_groups(tmp_path / "train", M=10, alpha=30, N=2, L=2, min_images_per_class=2)
    dataset = TrainGroupDataset(group, 8, cache=reopened)
    assert dataset.images_per_class.tolist() == [3, 2]
    assert torch.equal(dataset[(0, 1)][0], read_image(group[0][1], 8))


def test_a_test_set_reads_positions_from_odd_names(tmp_path):
    odd_train_folder(tmp_path / "database")
    odd_train_folder(tmp_path / "queries")
    test_set = TestSet(tmp_path)
    np.testing.assert_array_equal(test_set.queries_utm[:, 1], np.ones(6))
    assert sorted(test_set.database_utm[:, 0].tolist()) == [1.0, 2.0, 3.0, 21.0, 22.0, 23.0]
