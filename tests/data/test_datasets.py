"""geoloc.data: listing, decoding, CosPlace classes/groups and their cache, datasets and test sets."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geoloc.data import groups
from geoloc.data.datasets import TestSet, TrainGroupDataset
from geoloc.data.groups import build_groups, classes_and_groups
from geoloc.data.images import ImageListDataset, read_image, viewer_rgb
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
        # 360 is a heading bin of its own (as in CosPlace), in the group of bin 0
        (1.0, 1.0, 360.0, (0, 0, 360), (0, 0, 0)),
    ],
)
def test_class_and_group_match_hand_computed_cells(east, north, heading, expected_class, expected_group):
    classes, groups = classes_and_groups(
        np.array([east]), np.array([north]), np.array([heading]), M=10, alpha=30, N=5, L=2
    )
    assert tuple(classes[0].tolist()) == expected_class and tuple(groups[0].tolist()) == expected_group


def test_adjacent_classes_never_share_a_group():
    offsets = np.array([(0, 0, 0), (10, 0, 0), (-10, 0, 0), (0, 10, 0), (0, -10, 0), (0, 0, 30), (0, 0, -30)])
    positions = np.array([55.0, 55.0, 45.0]) + offsets
    groups = classes_and_groups(*positions.T, M=10, alpha=30, N=5, L=2)[1]
    assert all(tuple(group) != tuple(groups[0]) for group in groups[1:])


# Hand-made names on which CosPlace's group order (first appearance over the paths sorted as
# strings, skipping dropped classes) differs from sorted group ids and from a part-by-part path
# sort ('a-b/' sorts before 'a/'), with a heading of 360 and a dropped class that appears first.
COSPLACE_CASE = [
    "@1.0@11.0@@@@@@@200@@@@@@.jpg",
    "@2.0@11.0@@@@@@@205@@@@@@.jpg",
    "a-b/@0.5@21.0@@@@@@@40@@@@@@.jpg",  # alone in its class: dropped
    "a-b/@12.0@1.0@@@@@@@10@@@@@@.jpg",
    "a-b/@13.0@1.0@@@@@@@20@@@@@@.jpg",
    "a/@1.0@2.0@@@@@@@0@@@@@@.jpg",
    "a/@2.0@2.0@@@@@@@5@@@@@@.jpg",
    "a/@3.0@2.0@@@@@@@360@@@@@@.jpg",
    "a/@4.0@2.0@@@@@@@360.0@@@@@@.jpg",
    "a/@1.0@3.0@@@@@@@45@@@@@@.jpg",
    "a/@2.0@3.0@@@@@@@45@@@@@@.jpg",
    "a/@5.0@5.0@@@@@@@359.99@@@@@@.jpg",
    "a/@6.0@5.0@@@@@@@359.99@@@@@@.jpg",
    "a/@-5.0@2.0@@@@@@@100@@@@@@.jpg",
    "a/@-6.0@2.0@@@@@@@100@@@@@@.jpg",
]
# What gmberton/CosPlace (commit 33ce8d0) gives on COSPLACE_CASE: its own
# datasets/train_dataset.py TrainDataset.initialize(folder, M=10, N=2, alpha=30, L=2,
# min_images_per_class=2), run outside this repository on empty files with these names, its
# groups in its order. Inside a group CosPlace lists a set (no meaningful order); here the
# classes are sorted by class id: (0, 0, 0) before (0, 0, 360), (0, 0, 30) before (0, 0, 330).
COSPLACE_GROUPS = [
    [["@1.0@11.0@@@@@@@200@@@@@@.jpg", "@2.0@11.0@@@@@@@205@@@@@@.jpg"]],  # (0, 10, 180)
    [["a-b/@12.0@1.0@@@@@@@10@@@@@@.jpg", "a-b/@13.0@1.0@@@@@@@20@@@@@@.jpg"]],  # (10, 0, 0)
    [["a/@-5.0@2.0@@@@@@@100@@@@@@.jpg", "a/@-6.0@2.0@@@@@@@100@@@@@@.jpg"]],  # (-10, 0, 90)
    [
        ["a/@1.0@2.0@@@@@@@0@@@@@@.jpg", "a/@2.0@2.0@@@@@@@5@@@@@@.jpg"],  # (0, 0, 0)
        ["a/@3.0@2.0@@@@@@@360@@@@@@.jpg", "a/@4.0@2.0@@@@@@@360.0@@@@@@.jpg"],
    ],  # (0, 0, 360)
    [
        ["a/@1.0@3.0@@@@@@@45@@@@@@.jpg", "a/@2.0@3.0@@@@@@@45@@@@@@.jpg"],  # (0, 0, 30)
        ["a/@5.0@5.0@@@@@@@359.99@@@@@@.jpg", "a/@6.0@5.0@@@@@@@359.99@@@@@@.jpg"],
    ],  # (0, 0, 330)
]


def test_groups_are_cosplaces_groups_in_cosplaces_order(tmp_path):
    for name in COSPLACE_CASE:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()  # grouping reads names only
    groups = build_groups(tmp_path, M=10, alpha=30, N=2, L=2, min_images_per_class=2)
    assert relative(groups, tmp_path) == COSPLACE_GROUPS


def test_group_arrays_index_the_listing_group_by_group(tmp_path):
    for name in COSPLACE_CASE:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    groups = build_groups(tmp_path, M=10, alpha=30, N=2, L=2, min_images_per_class=2)
    assert groups.images.dtype == np.int32 and groups.class_starts.dtype == np.int64
    assert groups.group_starts.tolist() == [0, 1, 2, 3, 5, 7]
    assert groups.class_starts.tolist() == [0, 2, 4, 6, 8, 10, 12, 14]
    assert len(groups[3]) == 2 and groups[3].images_per_class.tolist() == [2, 2]
    assert groups[3].image(1, 0) == sorted(COSPLACE_CASE).index("a/@3.0@2.0@@@@@@@360@@@@@@.jpg")
    assert [len(group) for group in groups[1:3]] == [1, 1]


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


@pytest.mark.parametrize(
    "heading, message", [("", "field heading is empty"), ("-20", "field heading is -20, outside 0 to 360 degrees")]
)
def test_training_image_without_a_valid_heading_is_an_error_naming_file_and_field(tmp_path, heading, message):
    path = write_image(tmp_path / "train" / "sub" / raw_name("1.0", "2.0", heading))
    with pytest.raises(GeolocError, match=message) as error:
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
    assert len(list(cache.glob("groups-*.npz"))) == 1

    def no_parsing(*args, **kwargs):
        raise AssertionError("names were parsed although the cache is valid")

    monkeypatch.setattr(groups, "parse_image_name", no_parsing)
    assert relative(build_groups(train, **GROUP_PARAMS, cache_dir=cache), train) == relative(first, train)


def test_same_basename_in_other_folder_gets_its_own_cache(tmp_path):
    cache = tmp_path / "cache"
    make_two_class_train(tmp_path / "x" / "train")
    make_two_class_train(tmp_path / "y" / "train")
    groups_x = build_groups(tmp_path / "x" / "train", **GROUP_PARAMS, cache_dir=cache)
    groups_y = build_groups(tmp_path / "y" / "train", **GROUP_PARAMS, cache_dir=cache)
    assert len(list(cache.glob("groups-*.npz"))) == 2
    assert relative(groups_x, tmp_path / "x" / "train") == relative(groups_y, tmp_path / "y" / "train")
    assert all(path.is_relative_to(tmp_path / "y") for group in groups_y for cls in group for path in cls)


def test_changed_parameter_rebuilds_groups(tmp_path):
    train, cache = tmp_path / "train", tmp_path / "cache"
    make_two_class_train(train)
    assert len(build_groups(train, **GROUP_PARAMS, cache_dir=cache)) == 2  # east cells 0 and 10
    wide_cells = {**GROUP_PARAMS, "M": 100}
    groups = build_groups(train, **wide_cells, cache_dir=cache)
    assert [len(cls) for group in groups for cls in group] == [4]  # one 100 m cell holds all
    assert len(list(cache.glob("groups-*.npz"))) == 2


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
    expected = relative(build_groups(train, **GROUP_PARAMS, cache_dir=cache), train)
    (cache_file,) = cache.glob("groups-*.npz")
    good = dict(np.load(cache_file))
    for corrupt in [
        b"PK\x03\x04 cut short",
        b"",
        {**good, "format": np.int64(1)},
        {**good, "images": good["images"].astype(np.int64)},
        {**good, "images": good["images"] + 4},  # past the listing's 4 images
        {**good, "images": np.zeros_like(good["images"])},  # one image in every class
        {**good, "class_starts": good["class_starts"][:-1]},
        {key: value for key, value in good.items() if key != "group_starts"},
    ]:
        if isinstance(corrupt, bytes):
            cache_file.write_bytes(corrupt)
        else:
            with open(cache_file, "wb") as handle:
                np.savez(handle, **corrupt)
        assert relative(build_groups(train, **GROUP_PARAMS, cache_dir=cache), train) == expected
        rewritten = np.load(cache_file)
        assert all(np.array_equal(rewritten[key], value) for key, value in good.items())


# --- listing ------------------------------------------------------------------------------------


def test_list_images_is_recursive_string_sorted_and_case_insensitive_on_extension(tmp_path):
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
    # Sorted as strings, as CosPlace sorts its paths: the file b.png comes before the folder b/
    # ('.' sorts before '/').
    assert [p.relative_to(tmp_path).as_posix() for p in images] == [
        "a.jpeg",
        "b.png",
        "b/y.Jpeg",
        "b/z.JPG",
        "c.png",
    ]


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
    "mode, color, file_name, save_args, expected",
    [
        ("L", 100, "gray.png", {}, (100, 100, 100)),
        ("1", 1, "bilevel.png", {}, (255, 255, 255)),
        ("P", 0, "palette.png", {}, (0, 0, 0)),
        ("CMYK", (0, 255, 0, 0), "cmyk.jpg", {}, (255, 0, 255)),  # PIL's conversion, no profile
        # 16-bit grayscale: 0..65535 scaled to 0..255, as a viewer shows it (PIL's own
        # conversion clips at 255: any real 16-bit photo turned white)
        ("I;16", 40000, "deep.png", {}, (156, 156, 156)),
        ("I;16", 200, "dark-deep.png", {}, (1, 1, 1)),
        # transparent pixels are shown over white, as a browser shows them
        ("RGBA", (10, 20, 30, 0), "clear.png", {}, (255, 255, 255)),
        ("RGBA", (0, 0, 200, 128), "half.png", {}, (127, 127, 227)),
        ("RGBA", (10, 20, 30, 255), "opaque.png", {}, (10, 20, 30)),
        ("LA", (100, 0), "gray-clear.png", {}, (255, 255, 255)),
        ("L", 7, "gray-trns.png", {"transparency": 7}, (255, 255, 255)),
        ("RGB", (10, 20, 30), "rgb-trns.png", {"transparency": (10, 20, 30)}, (255, 255, 255)),
    ],
)
def test_every_color_mode_becomes_the_rgb_a_viewer_shows(tmp_path, mode, color, file_name, save_args, expected):
    path = write_image(tmp_path / file_name, color, (6, 6), mode, **save_args)
    image = read_image(path, 5)
    assert image.dtype == torch.uint8 and image.shape == (3, 5, 5)
    assert_close_color(pixel(image, 2, 2), expected, tolerance=3 if mode == "CMYK" else 1)


def test_a_palette_png_with_a_transparent_index_shows_white_there(tmp_path):
    image = Image.new("P", (4, 2), 0)
    image.putpalette([200, 0, 0, 0, 200, 0])
    image.paste(1, (2, 0, 4, 2))
    image.save(tmp_path / "p.png", transparency=0)
    decoded = read_image(tmp_path / "p.png", None)
    assert pixel(decoded, 0, 0) == (255, 255, 255) and pixel(decoded, 1, 3) == (0, 200, 0)


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("I", 65535, 255),
        ("I", 30000, 117),
        ("I", -5, 0),
        ("I", 70000, 255),
        ("F", 100.4, 100),
        ("F", 300.0, 255),
        ("F", -1.0, 0),
    ],
)
def test_32_bit_modes_are_shown_on_their_usual_scales(mode, value, expected):
    # I holds 16-bit samples (how PIL opened 16-bit PNGs before I;16); F is on PIL's 0..255 scale.
    rgb = viewer_rgb(Image.new(mode, (2, 2), value))
    assert rgb.mode == "RGB" and rgb.getpixel((1, 1)) == (expected,) * 3


def test_an_image_is_read_at_its_own_resolution_without_a_size(tmp_path):
    noise = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "wide.png")
    np.testing.assert_array_equal(read_image(tmp_path / "wide.png", None).numpy(), noise.transpose(2, 0, 1))


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


def test_train_group_dataset_reads_the_requested_image_of_a_class(tmp_path, class_group):
    classes = [
        [write_image(tmp_path / "a0.png", RED), write_image(tmp_path / "a1.png", GREEN)],
        [write_image(tmp_path / "b0.png", BLUE)],
    ]
    dataset = TrainGroupDataset(class_group(tmp_path, classes), image_size=3)
    assert len(dataset) == 2
    assert dataset.images_per_class.tolist() == [2, 1]
    image, label = dataset[(0, 1)]
    assert label == 0 and image.dtype == torch.uint8 and image.shape == (3, 3, 3)
    assert pixel(image, 1, 1) == GREEN
    image, label = dataset[(1, 0)]
    assert label == 1 and pixel(image, 0, 0) == BLUE


def test_train_group_dataset_of_built_groups_reads_their_images(tmp_path):
    train = tmp_path / "train"
    for east, color in ((1.0, RED), (2.0, RED), (21.0, GREEN), (22.0, GREEN)):
        write_train_image(train, east, 1.0, 0.0, color)
    (group,) = build_groups(train, **GROUP_PARAMS)  # cells 0 and 20 are two classes of one group (N=2)
    dataset = TrainGroupDataset(group, image_size=2)
    for (c, i), color in zip([(0, 0), (0, 1), (1, 0), (1, 1)], [RED, RED, GREEN, GREEN]):
        assert_close_color(pixel(dataset[(c, i)][0], 0, 0), color)


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
