"""The config schema says, for every key, what a change reruns; the README's table agrees."""

import dataclasses
import re

from geoloc import grid

from support.workflow import (
    REPO,
    load_schema,
)


def leaf_annotations(node: dict, root: dict, path: str = "") -> dict[str, str | None]:
    """`changes` of every config key that holds a value, by dotted path (grid blocks as grid[])."""
    node = grid._dereferenced(root, node)
    found = {}
    for name, sub in node.get("properties", {}).items():
        key = f"{path}.{name}" if path else name
        sub = grid._dereferenced(root, sub)
        items = grid._dereferenced(root, sub.get("items", {}))
        if "properties" in sub:
            found |= leaf_annotations(sub, root, key)
        else:
            found[key] = sub.get("changes")
            if "properties" in items:
                found |= leaf_annotations(items, root, f"{key}[]")
    return found


def test_every_config_key_says_what_a_change_reruns_in_its_description():
    schema = load_schema()
    annotations = leaf_annotations(schema, schema)
    assert len(annotations) > 60
    assert {key for key, changes in annotations.items() if changes not in ("model", "recalls", "nothing")} == set()
    words = {"model": "Changes the model", "recalls": "Changes the recalls", "nothing": "Changes nothing"}
    for key, changes in annotations.items():
        parts = key.replace("[]", "").split(".")
        node = schema
        for part in parts:
            node = grid._dereferenced(schema, node)
            node = (
                node["properties"][part]
                if "properties" in node
                else grid._dereferenced(schema, node["items"])["properties"][part]
            )
        description = grid._dereferenced(schema, node)["description"]
        assert words[changes] in description, key


def test_schema_model_keys_are_exactly_the_training_settings_the_trainer_fingerprints():
    from geoloc.train.settings import TrainSettings

    schema = load_schema()
    model_keys = set(grid.keys_that_change(schema, "training", "model"))
    model_keys |= {key for key in grid.keys_that_change(schema, "evaluation", "model")}
    # The grid gives the rest: a block's backbone, precision, aggregator and seed, and the weights
    # format of its pretraining (from the weights registry).
    model_keys |= {"backbone", "precision", "aggregator", "seed", "weights_format"}
    fields = {field.name for field in dataclasses.fields(TrainSettings)}
    assert model_keys == fields


def test_config_readme_tells_what_each_key_reruns_as_the_schema_says():
    schema = load_schema()
    readme = (REPO / "config" / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([\w.]+)` \| [^|]* \| (model|recalls|nothing) \|", readme, flags=re.MULTILINE))
    told = {key: changes for key, changes in leaf_annotations(schema, schema).items() if "[]" not in key}
    assert rows == told


def test_recalls_keys_are_exactly_what_evaluate_takes_beside_the_model():
    schema = load_schema()
    assert grid.keys_that_change(schema, "evaluation", "recalls") == ["k", "resize", "autocast"]
    assert grid.keys_that_change(schema, "evaluation", "nothing") == ["batch_size", "num_workers"]


def test_published_models_the_config_may_name_are_the_released_models_the_package_knows():
    from geoloc.model.published import PUBLISHED

    assert load_schema()["properties"]["published_models"]["items"]["enum"] == list(PUBLISHED)
