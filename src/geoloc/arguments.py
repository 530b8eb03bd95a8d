"""Command-line value types that refuse what the config schema refuses, in the schema's words.

A value given by hand (`geoloc train --batch-size 4.0`) must meet the same checks, and read the
same, as the value in the config (`config key training.batch_size: 4.0 is not of type
'integer'`): the messages below follow jsonschema's. argparse turns an ArgumentTypeError into
`geoloc <command>: error: argument --flag: <message>` as the last line, exit code 2.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

# Integers as JSON writes them: no sign but '-', no '_', no '1.0', only ASCII digits.
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number (as the schema's `type: integer`) within the bounds."""

    def parse(text: str) -> int:
        if not _INTEGER.fullmatch(text):
            raise argparse.ArgumentTypeError(f"{text!r} is not of type 'integer'")
        return _within(int(text), minimum, maximum)

    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def number(
    minimum: float | None = None, maximum: float | None = None, *, exclusive_minimum: float | None = None
) -> Callable[[str], float]:
    """An argparse type: a finite number (as the schema's `type: number`) within the bounds."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not of type 'number'") from None
        if not math.isfinite(value) or not text.isascii() or "_" in text:
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if _INTEGER.fullmatch(text):
            value = int(text)  # reported as JSON reads it: 0, not 0.0
        if exclusive_minimum is not None and value <= exclusive_minimum:
            raise argparse.ArgumentTypeError(f"{value!r} is less than or equal to the minimum of {exclusive_minimum!r}")
        return _within(value, minimum, maximum)

    parse.__name__ = "number"
    return parse


def _within(value, minimum, maximum):
    if minimum is not None and value < minimum:
        raise argparse.ArgumentTypeError(f"{value!r} is less than the minimum of {minimum!r}")
    if maximum is not None and value > maximum:
        raise argparse.ArgumentTypeError(f"{value!r} is greater than the maximum of {maximum!r}")
    return value
