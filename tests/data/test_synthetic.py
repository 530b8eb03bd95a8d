"""The synthetic city: real layout and names, determinism, and a task a model can learn."""

from __future__ import annotations

import collections
import itertools
import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geoloc import cli
from geoloc.data.names import parse_image_name, split_fields
from geoloc.data.synthetic import city as layout
from geoloc.data.synthetic import conditions as lighting
from geoloc.data.synthetic import render as renderer
from geoloc.data.synthetic import shots as planning
from geoloc.data.synthetic import write as writer
from geoloc.errors import GeolocError

# The CosPlace settings recommended for each size (config/demo.yaml and the tiny test config).
TINY_COSPLACE = dict(M=15, alpha=90, N=1, L=1, min_images_per_class=4)
DEMO_COSPLACE = dict(M=10, alpha=45, N=2, L=2, min_images_per_class=4)
TEST_SETS = ("sf_xs/val", "sf_xs/test", "tokyo_xs/test", "tokyo_night/test")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "datasets"
    writer.generate_city(out, seed=0, size="tiny")
    return out


@pytest.fixture(scope="module")
def demo_plan():
    return planning.plan_shots(0, planning.SIZES["demo"])


def images(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jpg"))


def utm(paths: list[Path]) -> np.ndarray:
    return np.array([[m.utm_east, m.utm_north] for m in map(parse_image_name, paths)])


def group_zero_class_sizes(east_north_heading: np.ndarray, *, M, alpha, N, L, min_images_per_class):
    """Images per class of CosPlace group 0, classes below the minimum dropped."""
    east, north, heading = east_north_heading.T
    cells = zip((east // M).astype(int), (north // M).astype(int), (heading // alpha).astype(int))
    return [
        n
        for (e, no, h), n in collections.Counter(cells).items()
        if n >= min_images_per_class and e % N == 0 and no % N == 0 and h % L == 0
    ]


def recall_at_1(queries: np.ndarray, database: np.ndarray, q_utm: np.ndarray, db_utm: np.ndarray) -> float:
    nearest = np.argmax(queries @ database.T, axis=1)
    return 100.0 * float(np.mean(np.linalg.norm(q_utm - db_utm[nearest], axis=1) <= 25.0))


def thumbnail_descriptor(pixels: np.ndarray) -> np.ndarray:
    """8x8 grayscale thumbnails, L2-normalised: a non-learned baseline. pixels (n, H, W, 3)."""
    gray = pixels.astype(np.float64).mean(axis=3)
    n, h, w = gray.shape
    thumb = gray.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4)).reshape(n, 64)
    return thumb / np.linalg.norm(thumb, axis=1, keepdims=True)


def render_folder(plan, folder: str) -> tuple[np.ndarray, np.ndarray]:
    """Render one planned folder in memory: pixels (n, 64, 64, 3) and UTM east/north (n, 2)."""
    city, shots = plan["sf" if folder.startswith("sf_xs") else "tokyo"]
    chosen = [s for s in shots if s.folder == folder]
    rendered = [
        renderer.render_views(
            city,
            [(s.x, s.y, s.heading) for s in batch],
            [s.conditions for s in batch],
            64,
            [np.random.default_rng(s.noise_seed) for s in batch],
        )
        for _, batch in itertools.groupby(chosen, lambda s: s.pano_id)
        for batch in [list(batch)]
    ]
    return np.concatenate(rendered), np.array([city.to_utm(s.x, s.y, s.heading)[:2] for s in chosen])


def test_writes_the_real_dataset_layout_and_counts(tiny):
    info = json.loads((tiny / "synthetic.json").read_text())
    for folder in writer.FOLDERS:
        assert len(images(tiny / folder)) == info["images"][folder] > 0, folder
    assert sorted(p.name for p in tiny.iterdir()) == ["sf_xs", "synthetic.json", "tokyo_night", "tokyo_xs"]
    assert info["images"]["sf_xs/train"] >= 200
    assert 400 <= sum(info["images"].values()) <= 800  # "a few hundred"


def test_image_names_parse_back_with_zone_and_heading(tiny):
    for folder in writer.FOLDERS:
        zone = "10" if folder.startswith("sf_xs") else "54"
        for path in images(tiny / folder):
            meta = parse_image_name(path, need_heading=True)
            fields = split_fields(path)
            assert (fields["utm_zone"], fields["zone_letter"]) == (zone, "S")
            assert 0 <= meta.heading < 360
    with Image.open(images(tiny / "sf_xs/train")[0]) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))


def test_names_give_the_camera_position_and_heading_in_utm():
    city = layout.build_city(layout.SF_STYLE, (3, 3), np.random.default_rng(0))
    theta = math.radians(city.style.rotation_deg)
    shot = planning.Shot(
        "f", x=0.0, y=30.0, heading=0.0, street_heading=0.0, conditions=None, noise_seed=0, pano_id="p"
    )
    meta = parse_image_name(writer.shot_file_name(city, shot), need_heading=True)
    east0, north0 = city.style.utm_origin
    # 30 m up the grid's north axis, which is turned counter-clockwise by the grid rotation.
    assert meta.utm_east - east0 == pytest.approx(-30 * math.sin(theta), abs=0.01)
    assert meta.utm_north - north0 == pytest.approx(30 * math.cos(theta), abs=0.01)
    assert meta.heading == pytest.approx(360 - city.style.rotation_deg, abs=0.05)


def test_same_seed_gives_byte_identical_files_whatever_the_workers(tiny, tmp_path):
    again = tmp_path / "again"
    writer.generate_city(again, seed=0, size="tiny", workers=2)
    first = sorted(p.relative_to(tiny) for p in tiny.rglob("*") if p.is_file())
    second = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert first == second
    assert all((tiny / rel).read_bytes() == (again / rel).read_bytes() for rel in first)


def test_other_seed_gives_another_city(tiny, tmp_path):
    other = tmp_path / "other"
    writer.generate_city(other, seed=1, size="tiny")
    assert {p.name for p in images(tiny / "sf_xs/train")} != {p.name for p in images(other / "sf_xs/train")}


def test_every_query_has_a_database_image_within_25_m(tiny):
    for test_set in TEST_SETS:
        queries = utm(images(tiny / test_set / "queries"))
        database = utm(images(tiny / test_set / "database"))
        nearest = np.linalg.norm(queries[:, None] - database[None], axis=2).min(axis=1)
        assert nearest.max() <= 2 * planning.QUERY_SHIFT_ALONG_M, test_set


def test_tokyo_night_is_the_tokyo_xs_database_with_the_night_queries(tiny):
    xs, night = tiny / "tokyo_xs/test", tiny / "tokyo_night/test"
    assert [p.name for p in images(night / "database")] == [p.name for p in images(xs / "database")]
    assert all(p.read_bytes() == (xs / "database" / p.name).read_bytes() for p in images(night / "database"))
    notes = collections.Counter(split_fields(p)["note"] for p in images(xs / "queries"))
    assert notes == {"day": 8, "sunset": 8, "night": 8}
    night_in_xs = sorted(p.name for p in images(xs / "queries") if split_fields(p)["note"] == "night")
    assert [p.name for p in images(night / "queries")] == night_in_xs


def test_night_is_dark_but_keeps_lit_windows():
    rng = np.random.default_rng(0)
    city = layout.build_city(layout.TOKYO_STYLE, (4, 4), rng)
    x, y = city.streets[2, 0], city.extent[1] / 2  # middle of a street running grid-north
    views = [(x, y, 90.0), (x, y, 270.0)]

    def render(kind: str) -> np.ndarray:
        conditions = [lighting.sample_conditions(kind, rng)] * 2
        noise = [np.random.default_rng(i) for i in range(2)]
        return renderer.render_views(city, views, conditions, 64, noise) / 255

    night, day = render("night"), render("database")
    assert night.mean() < 0.5 * day.mean()
    assert night.mean() > 0.08  # not black: the previous prototype's night was hopeless
    assert (night.max(axis=3) > 0.6).mean() > 0.02  # lit windows and signs


def test_views_depend_on_where_the_camera_stands_and_looks():
    rng = np.random.default_rng(3)
    city = layout.build_city(layout.SF_STYLE, (4, 4), rng)
    x, y = city.streets[2, 0], city.extent[1] / 2
    cameras = [(x, y, 90.0), (x, y + 2.0, 92.0), (x, y, 270.0), (x, y + 150.0, 90.0)]
    conditions = lighting.sample_conditions("database", rng)
    view, near, turned, far = renderer.render_views(
        city, cameras, [conditions] * 4, 64, [np.random.default_rng(0) for _ in cameras]
    ).astype(float)
    nearby = np.abs(view - near).mean()
    assert nearby < 0.5 * np.abs(view - turned).mean()
    assert nearby < 0.5 * np.abs(view - far).mean()


def test_views_rendered_together_equal_views_rendered_alone():
    rng = np.random.default_rng(4)
    city = layout.build_city(layout.SF_STYLE, (3, 3), rng)
    cameras = [(city.streets[1, 0], 40.0, 10.0), (city.streets[2, 0], 90.0, 200.0)]
    conditions = [lighting.sample_conditions("day", rng), lighting.sample_conditions("night", rng)]
    together = renderer.render_views(city, cameras, conditions, 32, [np.random.default_rng(i) for i in range(2)])
    for i in range(2):
        alone = renderer.render_views(city, cameras[i : i + 1], conditions[i : i + 1], 32, [np.random.default_rng(i)])
        assert np.array_equal(together[i], alone[0])


def test_train_area_is_disjoint_from_val_and_test(tiny):
    train = utm(images(tiny / "sf_xs/train"))
    for split in ("val", "test"):
        held_out = utm(images(tiny / f"sf_xs/{split}/database") + images(tiny / f"sf_xs/{split}/queries"))
        assert np.linalg.norm(train[:, None] - held_out[None], axis=2).min() > 25.0, split


def test_tiny_train_set_has_enough_cosplace_classes(tiny):
    metas = [parse_image_name(p, need_heading=True) for p in images(tiny / "sf_xs/train")]
    east_north_heading = np.array([[m.utm_east, m.utm_north, m.heading] for m in metas])
    assert len(group_zero_class_sizes(east_north_heading, **TINY_COSPLACE)) >= 20


def test_demo_sizes_and_group_zero_classes(demo_plan):
    counts = collections.Counter(shot.folder for _, shots in demo_plan.values() for shot in shots)
    assert 100 <= counts["sf_xs/val/queries"] <= 200 and 100 <= counts["sf_xs/test/queries"] <= 200
    assert 300 <= counts["sf_xs/test/database"] <= 1000 and 300 <= counts["tokyo_xs/test/database"] <= 1000
    assert counts["tokyo_xs/test/queries"] == 3 * planning.SIZES["demo"].tokyo_places
    city, shots = demo_plan["sf"]
    train = np.array([city.to_utm(s.x, s.y, s.heading) for s in shots if s.folder == "sf_xs/train"])
    assert len(group_zero_class_sizes(train, **DEMO_COSPLACE)) >= 100


def test_thumbnail_baseline_is_above_chance_below_perfect_and_worse_at_night(demo_plan):
    """A non-learned 8x8 descriptor finds some places but leaves most of the task to learning."""
    recalls, chance = {}, {}
    for test_set in ("sf_xs", "tokyo_xs"):
        db_pixels, db_utm = render_folder(demo_plan, f"{test_set}/test/database")
        q_pixels, q_utm = render_folder(demo_plan, f"{test_set}/test/queries")
        database, queries = thumbnail_descriptor(db_pixels), thumbnail_descriptor(q_pixels)
        recalls[test_set] = recall_at_1(queries, database, q_utm, db_utm)
        chance[test_set] = 100 * np.mean(np.linalg.norm(q_utm[:, None] - db_utm[None], axis=2) <= 25)
        if test_set == "tokyo_xs":
            city, shots = demo_plan["tokyo"]
            night = np.array([s.note == "night" for s in shots if s.folder == "tokyo_xs/test/queries"])
            recalls["tokyo_night"] = recall_at_1(queries[night], database, q_utm[night], db_utm)
    assert 2 * chance["sf_xs"] < recalls["sf_xs"] <= 70
    assert recalls["tokyo_night"] < recalls["tokyo_xs"]


def test_refuses_an_output_folder_that_is_not_empty(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(GeolocError, match="not an empty folder"):
        writer.generate_city(out, seed=0, size="tiny")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(writer, "_render_jobs", broken)
    with pytest.raises(RuntimeError):
        writer.generate_city(tmp_path / "out", seed=0, size="tiny")
    assert list(tmp_path.iterdir()) == []


def test_command_line_writes_into_an_empty_folder_and_reports_errors(tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert cli.main(["synth", str(out), "--seed", "2", "--size", "tiny", "--workers", "1"]) == 0
    assert "sf_xs/train:" in capsys.readouterr().out
    assert cli.main(["synth", str(out), "--seed", "2", "--size", "tiny"]) == 2
    assert "geoloc synth: error:" in capsys.readouterr().err


@pytest.mark.parametrize("umask, mode", [(0o027, 0o750), (0o002, 0o775)])
def test_the_dataset_folder_gets_the_umasks_mode(tmp_path, monkeypatch, umask, mode):
    monkeypatch.setattr(writer, "_render_all", lambda *args: None)  # the folders are what counts here
    previous = os.umask(umask)
    try:
        writer.generate_city(tmp_path / "out", seed=0, size="tiny")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "out" / "sf_xs" / "train").stat().st_mode) == mode


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--seed", "-1", "-1 is less than the minimum of 0"),
        ("--seed", "9223372036854775808", "9223372036854775808 is greater than the maximum of 9223372036854775807"),
        ("--seed", "1.0", "'1.0' is not of type 'integer'"),
        ("--workers", "0", "0 is less than the minimum of 1"),
    ],
)
def test_command_line_refuses_bad_values_in_the_schemas_words(tmp_path, capsys, flag, value, message):
    args = {"--seed": "0", "--size": "tiny", flag: value}
    with pytest.raises(SystemExit) as exit_:
        cli.main(["synth", str(tmp_path / "out"), *[item for pair in args.items() for item in pair]])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"geoloc synth: error: argument {flag}: {message}"
    assert list(tmp_path.iterdir()) == []
