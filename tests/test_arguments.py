"""Command-line value types: they refuse what the schema refuses, in jsonschema's own words."""

import argparse
import json

import jsonschema
import pytest

from geoloc.arguments import integer, number


def schema_message(schema: dict, text: str) -> str:
    """jsonschema's message for the value a YAML/JSON config would hold for `text`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as error:
        return error.message
    return ""


def cli_message(parse, text: str) -> str:
    try:
        parse(text)
    except argparse.ArgumentTypeError as error:
        return str(error)
    return ""


@pytest.mark.parametrize("text", ["-1", "0", "5", "1000", "2000"])
def test_integer_bounds_read_as_the_schema_says_them(text):
    schema = {"type": "integer", "minimum": 1, "maximum": 1000}
    assert cli_message(integer(1, 1000), text) == schema_message(schema, text)


@pytest.mark.parametrize("text, value", [("1", 1), ("1000", 1000), ("-0", 0)])
def test_integer_returns_the_whole_number(text, value):
    assert integer(-5, 1000)(text) == value


@pytest.mark.parametrize("text", ["4.0", "1e3", "0x10", "1_000", "٣", " 7", "+3", ""])
def test_integer_refuses_every_spelling_json_would_not_read_as_an_integer(text):
    assert cli_message(integer(), text) == f"{text!r} is not of type 'integer'"


def test_integer_accepts_a_plain_whole_number_of_any_size_within_bounds():
    assert integer(0)("99999999999999999999") == 99999999999999999999
    assert cli_message(integer(0, 2**32 - 1), "99999999999999999999") == schema_message(
        {"type": "integer", "maximum": 2**32 - 1}, "99999999999999999999"
    )


@pytest.mark.parametrize("text", ["0", "-2.5", "1e-5", "25"])
def test_number_exclusive_minimum_reads_as_the_schema_says_it(text):
    schema = {"type": "number", "exclusiveMinimum": 0}
    assert cli_message(number(exclusive_minimum=0), text) == schema_message(schema, text)


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "NaN", "1e400", "١", "1_0"])
def test_number_refuses_non_finite_and_non_ascii_values(text):
    assert cli_message(number(), text).endswith("is not a finite number")


def test_argparse_names_the_flag_and_ends_with_one_error_line(capsys):
    parser = argparse.ArgumentParser(prog="geoloc train")
    parser.add_argument("--num-workers", type=integer(0))
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--num-workers", "-1"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "geoloc train: error: argument --num-workers: -1 is less than the minimum of 0"
    )
