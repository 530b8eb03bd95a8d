"""Classes of file names and files that a dataset listing refuses (geoloc.data.listing), one test per class."""

from __future__ import annotations

import os
import socket

import pytest

from geoloc.data.listing import image_names, listing_fingerprint
from geoloc.errors import GeolocError


def make_images(folder, *names):
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"jpeg")


@pytest.mark.parametrize("names", [("x.jpg", "x.JPG"), ("a/x.jpeg", "b/x.JpEg"), ("x.png", "sub/x.PNG")])
def test_names_that_differ_only_by_the_case_of_their_extension_are_one_image_twice(tmp_path, names):
    make_images(tmp_path, "other.jpg", *names)
    with pytest.raises(GeolocError, match=r"duplicate image name x\.(jpg|jpeg|png): .* \(one image twice\)"):
        image_names(tmp_path)
    with pytest.raises(GeolocError, match="duplicate image name"):
        listing_fingerprint(tmp_path)


def test_extensions_in_upper_case_alone_are_no_duplicates(tmp_path):
    make_images(tmp_path, "a.JPG", "b.JPG", "sub/c.Png")
    assert image_names(tmp_path) == ["a.JPG", "b.JPG", "sub/c.Png"]


def fifo(path):
    os.mkfifo(path)


def unix_socket(path):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays


def device(path):
    os.symlink(os.devnull, path)  # a character device, by the name a listing sees


@pytest.mark.parametrize("make", [fifo, unix_socket, device])
def test_special_files_named_like_images_are_refused_without_opening_them(tmp_path, make):
    make_images(tmp_path, "a.jpg")
    (tmp_path / "sub").mkdir()
    make(tmp_path / "sub" / "b.jpg")
    with pytest.raises(
        GeolocError,
        match=rf"{tmp_path / 'sub' / 'b.jpg'} is named like an image but is no regular "
        "file .*: remove it from the dataset",
    ):
        image_names(tmp_path)


def test_the_fingerprint_counts_images_and_changes_with_their_size(tmp_path):
    make_images(tmp_path, "a.jpg", "sub/b.png", "notes.txt", ".hidden.jpg")
    first = listing_fingerprint(tmp_path)
    assert first["images"] == 2
    stat = os.stat(tmp_path / "a.jpg")
    (tmp_path / "a.jpg").write_bytes(b"jpeg, longer")
    os.utime(tmp_path / "a.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same time, another size
    assert listing_fingerprint(tmp_path)["sha256"] != first["sha256"]
