"""Config strings are held to their schema pattern as a whole (geoloc.provenance.schema): the class of
values a trailing line break carried past jsonschema's `re.search`."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from geoloc.provenance.schema import pattern_problems

SCHEMA = yaml.safe_load((Path(__file__).parents[1] / "workflow" / "schemas" / "config.schema.yaml").read_text())
SMALL = {
    "$defs": {"slug": {"type": "string", "pattern": "^[a-z0-9_]+$"}},
    "type": "object",
    "properties": {
        "backbones": {"type": "array", "items": {"$ref": "#/$defs/slug"}},
        "datasets": {
            "type": "object",
            "additionalProperties": {"type": "object", "properties": {"label": {"$ref": "#/$defs/slug"}}},
        },
        "path": {"type": "string", "pattern": "^[^{}<>]+$"},
    },
}


@pytest.mark.parametrize(
    "config, key",
    [
        ({"backbones": ["resnet18", "resnet18\n"]}, "backbones[1]"),
        ({"datasets": {"tokyo": {"label": "resnet18\n"}}}, "datasets.tokyo.label"),
    ],
)
def test_a_trailing_line_break_that_jsonschema_lets_through_is_refused(config, key):
    jsonschema.validate(config, SMALL)  # the case: the schema alone accepts it
    assert list(pattern_problems(config, SMALL, SMALL)) == [
        f"config key {key}: 'resnet18\\n' does not match '^[a-z0-9_]+$' (a line break at its end?)"
    ]


def test_values_the_pattern_matches_whole_pass():
    config = {"backbones": ["resnet18"], "datasets": {"x": {"label": "x"}}, "path": "a folder/with\nbreaks"}
    assert list(pattern_problems(config, SMALL, SMALL)) == []


def test_every_pattern_of_the_workflow_schema_is_checked_through_its_references():
    config = {"grid": [{"backbones": ["resnet18", "resnet18\n"]}], "resources": {"gpu_model": "a100\n"}}
    problems = list(pattern_problems(config, SCHEMA, SCHEMA))
    assert [problem.split(":")[0] for problem in problems] == [
        "config key grid[0].backbones[1]",
        "config key resources.gpu_model",
    ]
