"""geoloc.data: listing, decoding, CosPlace classes/groups and their cache, datasets and test sets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geoloc.data import groups
from geoloc.data.datasets import TestSet, TrainGroupDataset
from geoloc.data.groups import build_groups, class_and_group
from geoloc.data.images import ImageListDataset, read_image
from geoloc.data.listing import list_images
from geoloc.data.names import format_image_name
from geoloc.errors import GeolocError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
GROUP_PARAMS = {"M": 10, "alpha": 180, "N": 2, "L": 2, "min_images_per_class": 2}


def raw_name(east: str, north: str, heading: str = "", extension: str = ".jpg") -> str:
    """An image name with the fields written verbatim (headings outside [0, 360) included)."""
    fields = [east, north, "", "", "", "", "", "", heading, "", "", "", "", ""]
    return "@" + "@".join(fields) + "@" + extension


def write_image(path: Path, color=RED, size=(4, 4), mode="RGB", **save_args) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save_args)
    return path


def write_train_image(folder: Path, east: float, north: float, heading: float, color=RED) -> Path:
    return write_image(folder / format_image_name(east, north, heading), color)


def relative(groups: list[list[list[Path]]], root: Path) -> list[list[list[str]]]:
    return [[[path.relative_to(root).as_posix() for path in cls] for cls in group] for group in groups]


def pixel(image: torch.Tensor, row: int, column: int) -> tuple[int, ...]:
    return tuple(image[:, row, column].tolist())


def assert_close_color(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> None:
    assert all(abs(a - e) <= tolerance for a, e in zip(actual, expected)), (actual, expected)


# --- classes and groups -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "east, north, heading, expected_class, expected_group",
    [
        # 54978 % 5 = 3, 417829 % 5 = 4, heading bin 90 is bin 3, 3 % 2 = 1
        (549783.7, 4178291.2, 95.0, (549780, 4178290, 90), (3, 4, 1)),
        # negative and decimal coordinates floor to the cell below: -0.5 -> -10, cell -1 -> group 4
        (-0.5, -10.0, 0.0, (-10, -10, 0), (4, 4, 0)),
        (-10.01, 0.0, 30.0, (-20, 0, 30), (3, 0, 1)),
        # exactly on a cell / bin boundary belongs to the upper cell / bin
        (20.0, 19.99, 60.0, (20, 10, 60), (2, 1, 0)),
        (359.9, 0.0, 359.9, (350, 0, 330), (0, 0, 1)),
    ],
)
def test_class_and_group_match_hand_computed_cells(east, north, heading, expected_class, expected_group):
    assert class_and_group(east, north, heading, M=10, alpha=30, N=5, L=2) == (expected_class, expected_group)


def test_adjacent_classes_never_share_a_group():
    centre = class_and_group(55.0, 55.0, 45.0, M=10, alpha=30, N=5, L=2)[1]
    for d_east, d_north, d_heading in [
        (10, 0, 0),
        (-10, 0, 0),
        (0, 10, 0),
        (0, -10, 0),
        (0, 0, 30),
        (0, 0, -30),
    ]:
        neighbour = class_and_group(55.0 + d_east, 55.0 + d_north, 45.0 + d_heading, M=10, alpha=30, N=5, L=2)
        assert neighbour[1] != centre


def test_groups_are_sorted_by_group_id_with_classes_sorted_and_small_classes_dropped(tmp_path):
    train = tmp_path / "train"
    # M=10, alpha=180, N=2, L=2: group = (east cell % 2, north cell % 2, heading bin % 2).
    # Sub-folders make the listing meet groups and classes in reverse order.
    for east in (1.0, 2.0):
        write_train_image(train / "1", east - 10, 1.0, 10.0)  # class (-10, 0, 0), group (1, 0, 0)
        write_train_image(train / "2", east, 1.0, 200.0)  # class (0, 0, 180), group (0, 0, 1)
        write_train_image(train / "3", east + 20, 1.0, 10.0)  # class (20, 0, 0), group (0, 0, 0)
        write_train_image(train / "4", east, 1.0, 10.0)  # class (0, 0, 0), group (0, 0, 0)
    write_train_image(train, 31.0, 1.0, 10.0)  # class (30, 0, 0): 1 image < 2, dropped

    groups = build_groups(train, **GROUP_PARAMS)

    assert relative(groups, train) == [
        [  # group (0, 0, 0): classes (0, 0, 0) then (20, 0, 0)
            ["4/@1.00@1.00@@@@@@@10.0@@@@@@.jpg", "4/@2.00@1.00@@@@@@@10.0@@@@@@.jpg"],
            ["3/@21.00@1.00@@@@@@@10.0@@@@@@.jpg", "3/@22.00@1.00@@@@@@@10.0@@@@@@.jpg"],
        ],
        [  # group (0, 0, 1)
            ["2/@1.00@1.00@@@@@@@200.0@@@@@@.jpg", "2/@2.00@1.00@@@@@@@200.0@@@@@@.jpg"],
        ],
        [  # group (1, 0, 0): the lowest class id; the dropped class (30, 0, 0) would be here too
            ["1/@-8.00@1.00@@@@@@@10.0@@@@@@.jpg", "1/@-9.00@1.00@@@@@@@10.0@@@@@@.jpg"],
        ],
    ]


def test_headings_wrap_at_360_into_the_same_class(tmp_path):
    train = tmp_path / "train"
    for heading in ["10", "370", "-350", "340", "-20"]:
        write_image(train / raw_name("1.0", "1.0", heading))
    groups = build_groups(train, M=10, alpha=30, N=5, L=2, min_images_per_class=1)
    names = relative(groups, train)
    # 10 = 370 = -350 -> bin 0 (group heading 0); 340 = -20 -> bin 330 (group heading 1)
    assert names == [
        [["@1.0@1.0@@@@@@@-350@@@@@@.jpg", "@1.0@1.0@@@@@@@10@@@@@@.jpg", "@1.0@1.0@@@@@@@370@@@@@@.jpg"]],
        [["@1.0@1.0@@@@@@@-20@@@@@@.jpg", "@1.0@1.0@@@@@@@340@@@@@@.jpg"]],
    ]


def test_no_surviving_class_is_an_error_naming_folder_and_numbers(tmp_path):
    train = tmp_path / "train"
    write_train_image(train, 1.0, 1.0, 0.0)
    write_train_image(train, 2.0, 1.0, 0.0)
    write_train_image(train, 50.0, 1.0, 0.0)
    with pytest.raises(GeolocError, match="no class") as error:
        build_groups(train, M=10, alpha=30, N=5, L=2, min_images_per_class=3)
    message = str(error.value)
    assert str(train) in message
    assert "min_images_per_class=3" in message
    assert "3 images fall in 2 classes, the largest has 2 images" in message


@pytest.mark.parametrize("name, value", [("M", 0), ("alpha", -30), ("N", 2.5), ("min_images_per_class", 0)])
def test_non_positive_group_parameter_is_an_error_naming_it(tmp_path, name, value):
    write_train_image(tmp_path, 1.0, 1.0, 0.0)
    params = {"M": 10, "alpha": 30, "N": 5, "L": 2, "min_images_per_class": 1, name: value}
    with pytest.raises(GeolocError, match=f"group parameter {name} must be a positive integer"):
        build_groups(tmp_path, **params)


def test_training_image_without_heading_is_an_error_naming_file_and_field(tmp_path):
    path = write_image(tmp_path / "train" / raw_name("1.0", "2.0", ""))
    with pytest.raises(GeolocError, match="field heading is empty") as error:
        build_groups(tmp_path / "train", **GROUP_PARAMS)
    assert str(path) in str(error.value)


def test_bad_coordinate_is_an_error_naming_file_and_field(tmp_path):
    path = write_image(tmp_path / "train" / raw_name("east", "2.0", "0"))
    with pytest.raises(GeolocError, match="field utm_east is not a number") as error:
        build_groups(tmp_path / "train", **GROUP_PARAMS)
    assert str(path) in str(error.value)


# --- groups cache -------------------------------------------------------------------------------


def make_two_class_train(train: Path, east: float = 1.0) -> None:
    for north in (1.0, 2.0):
        write_train_image(train, east, north, 0.0)
        write_train_image(train, east + 10, north, 0.0)


def test_cached_groups_are_reused_without_parsing_names(tmp_path, monkeypatch):
    train, cache = tmp_path / "train", tmp_path / "cache"
    make_two_class_train(train)
    first = build_groups(train, **GROUP_PARAMS, cache_dir=cache)
    assert len(list(cache.glob("groups-*.json"))) == 1

    def no_parsing(*args, **kwargs):
        raise AssertionError("names were parsed although the cache is valid")

    monkeypatch.setattr(groups, "parse_image_name", no_parsing)
    assert build_groups(train, **GROUP_PARAMS, cache_dir=cache) == first


def test_same_basename_in_other_folder_gets_its_own_cache(tmp_path):
    cache = tmp_path / "cache"
    make_two_class_train(tmp_path / "x" / "train")
    make_two_class_train(tmp_path / "y" / "train")
    groups_x = build_groups(tmp_path / "x" / "train", **GROUP_PARAMS, cache_dir=cache)
    groups_y = build_groups(tmp_path / "y" / "train", **GROUP_PARAMS, cache_dir=cache)
    assert len(list(cache.glob("groups-*.json"))) == 2
    assert relative(groups_x, tmp_path / "x" / "train") == relative(groups_y, tmp_path / "y" / "train")
    assert all(path.is_relative_to(tmp_path / "y") for group in groups_y for cls in group for path in cls)


def test_changed_parameter_rebuilds_groups(tmp_path):
    train, cache = tmp_path / "train", tmp_path / "cache"
    make_two_class_train(train)
    assert len(build_groups(train, **GROUP_PARAMS, cache_dir=cache)) == 2  # east cells 0 and 10
    wide_cells = {**GROUP_PARAMS, "M": 100}
    groups = build_groups(train, **wide_cells, cache_dir=cache)
    assert [len(cls) for group in groups for cls in group] == [4]  # one 100 m cell holds all
    assert len(list(cache.glob("groups-*.json"))) == 2


def test_added_image_rebuilds_groups(tmp_path):
    train, cache = tmp_path / "train", tmp_path / "cache"
    make_two_class_train(train)
    build_groups(train, **GROUP_PARAMS, cache_dir=cache)
    write_train_image(train / "more", 3.0, 3.0, 0.0)
    groups = build_groups(train, **GROUP_PARAMS, cache_dir=cache)
    assert [len(cls) for group in groups for cls in group] == [3, 2]


def test_renamed_image_rebuilds_groups(tmp_path):
    train, cache = tmp_path / "train", tmp_path / "cache"
    make_two_class_train(train)
    build_groups(train, **GROUP_PARAMS, cache_dir=cache)
    moved = train / format_image_name(11.0, 1.0, 0.0)
    moved.rename(train / format_image_name(3.0, 1.0, 0.0))  # from cell (10, 0) into cell (0, 0)
    groups = build_groups(train, **GROUP_PARAMS, cache_dir=cache)
    assert [len(cls) for group in groups for cls in group] == [3]  # the other cell keeps only 1


def test_corrupt_cache_is_ignored_and_rewritten(tmp_path):
    train, cache = tmp_path / "train", tmp_path / "cache"
    make_two_class_train(train)
    expected = build_groups(train, **GROUP_PARAMS, cache_dir=cache)
    (cache_file,) = cache.glob("groups-*.json")
    for corrupt in [
        '{"format": 1, "groups": [[["a"',
        '{"format": 1, "groups": {"a": "b"}}',
        '{"format": 1, "groups": []}',
        '{"format": 1, "groups": [[["not-in-the-listing.jpg"]]]}',
        '{"format": 0, "groups": [[["@1.00@1.00@@@@@@@0.0@@@@@@.jpg"]]]}',
        "[]",
    ]:
        cache_file.write_text(corrupt)
        assert build_groups(train, **GROUP_PARAMS, cache_dir=cache) == expected
        assert relative(expected, train) == json.loads(cache_file.read_text())["groups"]


# --- listing ------------------------------------------------------------------------------------


def test_list_images_is_recursive_path_sorted_and_case_insensitive_on_extension(tmp_path):
    names = [
        "b/z.JPG",
        "a.jpeg",
        "c.png",
        "b.png",
        "b/y.Jpeg",
        "notes.txt",
        ".hidden.jpg",
        ".git/x.jpg",
        "p.jpg.tmp",
    ]
    for name in names:
        write_image(tmp_path / name, format="PNG")
    images = list_images(tmp_path)
    # Paths sort part by part: the folder b/ comes before the file b.png.
    assert [p.relative_to(tmp_path).as_posix() for p in images] == [
        "a.jpeg",
        "b/y.Jpeg",
        "b/z.JPG",
        "b.png",
        "c.png",
    ]
    assert images == sorted(images)


def test_list_images_errors_on_missing_or_imageless_folder(tmp_path):
    with pytest.raises(GeolocError, match=re.escape(f"image folder {tmp_path / 'nope'} does not exist")):
        list_images(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(GeolocError, match="holds no image"):
        list_images(tmp_path)


def test_duplicate_names_in_one_set_are_an_error_naming_both(tmp_path):
    name = format_image_name(1.0, 2.0, 0.0)
    first = write_image(tmp_path / "a" / name)
    second = write_image(tmp_path / "b" / name)
    with pytest.raises(GeolocError, match="duplicate image name") as error:
        list_images(tmp_path)
    assert str(first) in str(error.value) and str(second) in str(error.value)


# --- decoding -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not an image", "truncated"],
    ids=["zero-byte", "not-an-image", "truncated"],
)
def test_undecodable_image_is_an_error_naming_the_file(tmp_path, content):
    path = tmp_path / "broken.jpg"
    if content == "truncated":
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(path, quality=95)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(GeolocError, match=re.escape(f"cannot decode image {path}")):
        read_image(path, 8)


def two_band_image(top, bottom, size=(16, 16)) -> Image.Image:
    image = Image.new("RGB", size, top)
    image.paste(bottom, (0, size[1] // 2, size[0], size[1]))
    return image


def test_exif_orientation_is_applied(tmp_path):
    image = two_band_image(RED, BLUE)  # stored: red on top, blue below
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    image.save(tmp_path / "upright.jpg", quality=95)

    upright = read_image(tmp_path / "upright.jpg", 8)
    assert_close_color(pixel(upright, 0, 4), RED)
    assert_close_color(pixel(upright, 7, 4), BLUE)
    rotated = read_image(tmp_path / "rotated.jpg", 8)  # the top of the stored image is now right
    assert_close_color(pixel(rotated, 4, 7), RED)
    assert_close_color(pixel(rotated, 4, 0), BLUE)


@pytest.mark.parametrize(
    "mode, color, file_name, expected",
    [
        ("L", 100, "gray.png", (100, 100, 100)),
        ("LA", (100, 0), "gray-alpha.png", (100, 100, 100)),
        ("RGBA", (10, 20, 30, 0), "alpha.png", (10, 20, 30)),
        ("P", 0, "palette.png", (0, 0, 0)),
        ("CMYK", (0, 255, 0, 0), "cmyk.jpg", (255, 0, 255)),
        ("I;16", 200, "deep.png", (200, 200, 200)),
    ],
)
def test_any_color_mode_becomes_three_channel_rgb(tmp_path, mode, color, file_name, expected):
    path = write_image(tmp_path / file_name, color, (6, 6), mode)
    image = read_image(path, 5)
    assert image.dtype == torch.uint8 and image.shape == (3, 5, 5)
    assert_close_color(pixel(image, 2, 2), expected, tolerance=3)


def test_rgb_image_already_at_size_keeps_every_pixel_in_channel_first_layout(tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    image = read_image(tmp_path / "noise.png", 8)
    assert image.dtype == torch.uint8 and image.is_contiguous()
    np.testing.assert_array_equal(image.numpy(), noise.transpose(2, 0, 1))


def test_non_square_image_is_resized_to_the_square_size(tmp_path):
    image = Image.new("RGB", (40, 10), RED)
    image.paste(GREEN, (20, 0, 40, 10))
    image.save(tmp_path / "wide.png")
    resized = read_image(tmp_path / "wide.png", 8)
    assert resized.shape == (3, 8, 8)
    assert pixel(resized, 0, 0) == RED and pixel(resized, 7, 7) == GREEN
    assert pixel(resized, 7, 0) == RED and pixel(resized, 0, 7) == GREEN


def test_large_jpeg_read_small_matches_full_decode_and_resize(tmp_path):
    # read_image decodes large JPEGs at reduced scale; the result must stay close to
    # decoding the whole image and resizing it.
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (8, 16, 3), dtype=np.uint8), np.ones((40, 40, 1), np.uint8))
    path = tmp_path / "large.jpg"
    Image.fromarray(smooth).save(path, quality=95)  # 640 x 320
    full = Image.open(path).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
    difference = read_image(path, 32).permute(1, 2, 0).numpy().astype(int) - np.array(full).astype(int)
    assert np.abs(difference).mean() < 3


# --- datasets -----------------------------------------------------------------------------------


def test_train_group_dataset_reads_the_requested_image_of_a_class(tmp_path):
    classes = [
        [write_image(tmp_path / "a0.png", RED), write_image(tmp_path / "a1.png", GREEN)],
        [write_image(tmp_path / "b0.png", BLUE)],
    ]
    dataset = TrainGroupDataset(classes, image_size=3)
    assert len(dataset) == 2
    assert dataset.images_per_class == [2, 1]
    image, label = dataset[(0, 1)]
    assert label == 0 and image.dtype == torch.uint8 and image.shape == (3, 3, 3)
    assert pixel(image, 1, 1) == GREEN
    image, label = dataset[(1, 0)]
    assert label == 1 and pixel(image, 0, 0) == BLUE


def test_image_list_dataset_keeps_the_given_order(tmp_path):
    paths = [write_image(tmp_path / "z.png", BLUE), write_image(tmp_path / "a.png", RED)]
    dataset = ImageListDataset(paths, image_size=4)
    assert len(dataset) == 2
    assert pixel(dataset[0], 0, 0) == BLUE and pixel(dataset[1], 3, 3) == RED


def make_test_set(folder: Path) -> None:
    write_image(folder / "database" / "sub" / raw_name("100.5", "200.25"))
    write_image(folder / "database" / raw_name("-3", "7", "90"))
    write_image(folder / "queries" / raw_name("101", "201", extension=".PNG"), format="PNG")


def test_test_set_lists_images_and_positions_from_names(tmp_path):
    make_test_set(tmp_path)
    test_set = TestSet(tmp_path)
    assert test_set.folder == tmp_path
    assert [p.relative_to(tmp_path).as_posix() for p in test_set.database_paths] == [
        "database/@-3@7@@@@@@@90@@@@@@.jpg",
        "database/sub/@100.5@200.25@@@@@@@@@@@@@.jpg",
    ]
    assert test_set.database_utm.dtype == np.float64
    np.testing.assert_array_equal(test_set.database_utm, [[-3.0, 7.0], [100.5, 200.25]])
    np.testing.assert_array_equal(test_set.queries_utm, [[101.0, 201.0]])


@pytest.mark.parametrize("part", ["database", "queries"])
def test_test_set_without_a_part_is_an_error_naming_it(tmp_path, part):
    make_test_set(tmp_path)
    for path in (tmp_path / part).rglob("*.*"):
        path.unlink()
    with pytest.raises(GeolocError, match=re.escape(f"image folder {tmp_path / part} holds no image")):
        TestSet(tmp_path)
    for folder in sorted((tmp_path / part).rglob("*"), reverse=True) + [tmp_path / part]:
        folder.rmdir()
    with pytest.raises(GeolocError, match=re.escape(f"image folder {tmp_path / part} does not exist")):
        TestSet(tmp_path)


def test_missing_test_set_folder_is_an_error(tmp_path):
    with pytest.raises(GeolocError, match=re.escape(f"test set folder {tmp_path / 'tokyo'} does not exist")):
        TestSet(tmp_path / "tokyo")
