"""The dataset catalog: the shipped entries, a config's overrides, both folder layouts, and the
checks a study runs before any job (missing folders, counts that differ from the published ones)."""

import dataclasses
import json
import runpy
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from geoloc.data.catalog import (
    check_test_set,
    check_training_set,
    describe,
    load_catalog,
    resolve_folder,
)
from geoloc.data.listing import image_names
from geoloc.errors import GeolocError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "resources" / "datasets.yaml"
SCRIPT = REPO / "workflow" / "scripts" / "datasets.py"
BUILT_IN = (
    "sf_xs",
    "tokyo_xs",
    "tokyo_night",
    "sf_xl",
    "pitts30k",
    "pitts250k",
    "msls_val",
    "tokyo247",
    "nordland",
    "st_lucia",
    "amstertime",
    "sped",
    "eynsham",
)


@pytest.fixture(scope="module")
def downloader_city(tiny_city, tmp_path_factory):
    """The tiny city rearranged as VPR-datasets-downloader writes sets: <set>/images/<split>/...,
    its SF-XS renamed `mycity` (no sf_xs folder at all)."""
    root = tmp_path_factory.mktemp("downloader") / "datasets"
    for split in ("train", "val", "test"):
        shutil.copytree(tiny_city / "sf_xs" / split, root / "mycity" / "images" / split)
    shutil.copytree(tiny_city / "tokyo_xs" / "test", root / "tokyo_xs" / "images" / "test")
    return root


def counts(folder):
    return {part: len(image_names(folder / part)) for part in ("database", "queries")}


def test_every_built_in_set_is_shipped_with_its_protocol_and_source():
    catalog = load_catalog(SHIPPED)

    assert set(BUILT_IN) <= set(catalog)
    for name in BUILT_IN:
        entry = catalog[name]
        assert entry.test and entry.source and entry.label != name, name
        assert entry.positive_dist_threshold == 25.0, name
    assert catalog["tokyo_night"].subset_of == "tokyo_xs"
    assert catalog["pitts30k"].expected == {"database": 10000, "queries": 6816}
    assert catalog["tokyo247"].expected == {"database": 75984, "queries": 315}
    assert (catalog["sf_xs"].train, catalog["sf_xs"].val) == ("sf_xs/train", "sf_xs/val")
    # The protocols the field disagrees on say which variant they are.
    assert "740" in catalog["msls_val"].note and "10 frames" in catalog["nordland"].note


def test_a_config_overrides_field_by_field_and_adds_sets(tmp_path):
    catalog = load_catalog(
        SHIPPED,
        {
            "pitts30k": {"positive_dist_threshold": 10},
            "mycity": {"test": "mycity/images/test", "subset_of": "pitts30k"},
            "tokyo_night": None,  # named without fields: the shipped entry unchanged
        },
    )

    assert catalog["pitts30k"].positive_dist_threshold == 10.0
    assert catalog["pitts30k"].expected == {"database": 10000, "queries": 6816}  # the rest kept
    assert catalog["mycity"].label == "mycity" and catalog["mycity"].test == "mycity/images/test"
    assert catalog["tokyo_night"] == load_catalog(SHIPPED)["tokyo_night"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mycity": {"tset": "x"}}, "config key datasets.mycity.tset: unknown field"),
        ({"pitts30k": {"positive_dist_threshold": 0}}, "config key datasets.pitts30k.positive_dist_threshold: 0"),
        ({"pitts30k": {"positive_dist_threshold": True}}, "config key datasets.pitts30k.positive_dist_threshold: True"),
        ({"mycity": {"expected": {"database": 10, "query": 3}}}, "config key datasets.mycity.expected"),
        ({"mycity": {"expected": {"database": -1}}}, "config key datasets.mycity.expected"),
        ({"mycity": {"subset_of": "nowhere"}}, "config key datasets.mycity.subset_of: 'nowhere' is not a dataset"),
        ({"mycity": {"test": 3}}, "config key datasets.mycity.test: 3 is not a path"),
        ({"mycity": ["test"]}, "config key datasets.mycity: expected a mapping"),
    ],
)
def test_a_bad_override_names_its_config_key(overrides, message):
    with pytest.raises(GeolocError, match="^" + message.replace(".", r"\.").replace("(", r"\(")):
        load_catalog(SHIPPED, overrides)


def test_both_layouts_are_found_whichever_the_entry_names(downloader_city, tiny_city):
    downloader = downloader_city / "mycity" / "images" / "test"
    cosplace = tiny_city / "sf_xs" / "test"

    assert resolve_folder(downloader_city, "mycity/test") == downloader
    assert resolve_folder(downloader_city, "mycity/images/test") == downloader
    assert resolve_folder(tiny_city, "sf_xs/images/test") == cosplace
    assert resolve_folder(tiny_city, "sf_xs/test") == cosplace
    assert resolve_folder(tiny_city, str(cosplace)) == cosplace  # absolute: as it is
    assert resolve_folder(tiny_city, "nowhere/test") == tiny_city / "nowhere" / "test"  # missing: as named


def test_a_set_in_the_downloader_layout_is_checked_and_described(downloader_city):
    folder = downloader_city / "mycity" / "images" / "test"
    found = counts(folder)
    catalog = load_catalog(
        SHIPPED, {"mycity": {"label": "My City", "test": "mycity/test", "expected": found, "source": "the tiny city"}}
    )

    check_test_set(catalog["mycity"], downloader_city)
    assert describe(catalog["mycity"], downloader_city) == {
        "label": "My City",
        "positive_dist_threshold": 25.0,
        "subset_of": None,
        "source": "the tiny city",
        "note": "",
        "test": str(folder),
        "database": found["database"],
        "queries": found["queries"],
        "queries_file": None,
    }


def test_a_count_mismatch_names_the_set_the_folder_and_both_counts(downloader_city):
    folder = downloader_city / "mycity" / "images" / "test"
    found = counts(folder)
    catalog = load_catalog(
        SHIPPED, {"mycity": {"test": "mycity/test", "expected": {"database": found["database"] + 1}}}
    )

    with pytest.raises(GeolocError) as error:
        check_test_set(catalog["mycity"], downloader_city)
    assert str(error.value).startswith(
        f"dataset mycity: {folder / 'database'} holds {found['database']} database images, "
        f"expected {found['database'] + 1} (config key datasets.mycity.expected"
    )


def test_a_missing_test_folder_names_the_set_and_the_key(downloader_city):
    catalog = load_catalog(SHIPPED)

    with pytest.raises(
        GeolocError,
        match=r"^dataset pitts30k: test folder .*pitts30k/images/test does not exist "
        r"\(config key datasets\.pitts30k\.test",
    ):
        check_test_set(catalog["pitts30k"], downloader_city)
    with pytest.raises(GeolocError, match=r"^dataset tokyo_xs has no train folder"):
        check_training_set(catalog["tokyo_xs"], downloader_city)


def test_a_queries_file_keeps_its_queries_and_the_counts_follow(downloader_city, tmp_path):
    queries = image_names(downloader_city / "mycity" / "images" / "test" / "queries")
    listed = tmp_path / "subset.txt"
    listed.write_text("# a protocol's subset\n" + "\n".join(queries[::2]) + "\n\n", encoding="utf-8")
    catalog = load_catalog(
        SHIPPED, {"mycity": {"test": "mycity/test", "queries": str(listed), "expected": {"queries": len(queries[::2])}}}
    )

    check_test_set(catalog["mycity"], downloader_city)
    assert describe(catalog["mycity"], downloader_city)["queries"] == len(queries[::2]) < len(queries)
    assert describe(catalog["mycity"], downloader_city)["queries_file"] == str(listed)
    listed.write_text("@not@a@query@.jpg\n", encoding="utf-8")
    with pytest.raises(GeolocError, match=r"queries file .*subset\.txt: 1 listed name\(s\) are not in .*queries"):
        check_test_set(catalog["mycity"], downloader_city)


def test_training_on_a_set_not_named_sf_xs_needs_only_its_own_folders(downloader_city):
    catalog = load_catalog(SHIPPED, {"mycity": {"train": "mycity/train", "val": "mycity/val"}})

    assert not (downloader_city / "sf_xs").exists()
    check_training_set(catalog["mycity"], downloader_city)
    with pytest.raises(GeolocError, match=r"^dataset sf_xs: train folder .* does not exist"):
        check_training_set(catalog["sf_xs"], downloader_city)


def run_datasets_script(root, test_sets, training, out):
    """workflow/scripts/datasets.py as the rule `datasets` runs it: params of catalog entries."""
    params = SimpleNamespace(
        root=str(root),
        test_sets={name: dataclasses.asdict(entry) for name, entry in test_sets.items()},
        training={name: dataclasses.asdict(entry) for name, entry in training.items()},
    )
    snakemake = SimpleNamespace(params=params, output=[str(out)], log=[str(out.with_suffix(".log"))])
    runpy.run_path(str(SCRIPT), init_globals={"snakemake": snakemake}, run_name="__main__")
    return json.loads(out.read_text(encoding="utf-8"))


def test_datasets_json_records_the_sets_in_use_with_their_protocol(downloader_city, tmp_path):
    catalog = load_catalog(
        SHIPPED,
        {
            "mycity": {
                "label": "My City",
                "test": "mycity/test",
                "train": "mycity/train",
                "val": "mycity/val",
                "positive_dist_threshold": 40,
            }
        },
    )
    test = downloader_city / "mycity" / "images" / "test"

    recorded = run_datasets_script(
        downloader_city,
        {name: catalog[name] for name in ("mycity", "tokyo_xs")},
        {"mycity": catalog["mycity"]},
        tmp_path / "datasets.json",
    )

    assert recorded["root"] == str(downloader_city.resolve())
    assert recorded["images"] == {
        folder: len(image_names(downloader_city / folder))
        for folder in (
            "mycity/images/train",
            "mycity/images/val/database",
            "mycity/images/val/queries",
            "mycity/images/test/database",
            "mycity/images/test/queries",
            "tokyo_xs/images/test/database",
            "tokyo_xs/images/test/queries",
        )
    }
    assert recorded["test_sets"]["mycity"] == {
        **describe(catalog["mycity"], downloader_city),
        "positive_dist_threshold": 40.0,
        "label": "My City",
        **counts(test),
    }
    assert recorded["test_sets"]["tokyo_xs"]["label"] == "Tokyo-XS"
    assert recorded["training"] == {
        "mycity": {"label": "My City", "train": "mycity/images/train", "val": "mycity/images/val"}
    }
    # An evaluation-only study records no training set and needs none.
    assert (
        run_datasets_script(downloader_city, {"tokyo_xs": catalog["tokyo_xs"]}, {}, tmp_path / "eval-only.json")[
            "training"
        ]
        == {}
    )


def test_datasets_script_ends_with_one_error_line_for_a_missing_folder(downloader_city, tmp_path):
    with pytest.raises(SystemExit, match=r"^datasets: error: dataset pitts30k: test folder .* does not exist"):
        run_datasets_script(
            downloader_city, {"pitts30k": load_catalog(SHIPPED)["pitts30k"]}, {}, tmp_path / "datasets.json"
        )
    assert not (tmp_path / "datasets.json").exists()
    assert (tmp_path / "datasets.log").read_text(encoding="utf-8").startswith("datasets: error: dataset pitts30k")
