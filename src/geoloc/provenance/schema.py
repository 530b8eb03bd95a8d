"""Config strings held to their schema's `pattern` as a whole, as JSON Schema means it.

JSON Schema's patterns are ECMA-262 regular expressions, where `$` ends the input. Python's
jsonschema runs them with `re.search`, where `$` also matches before a final line break: a
value `"resnet18\n"` passes `^[a-z0-9_]+$` and reaches a file name, a wildcard or a SLURM
option. The workflow calls `pattern_problems` after schema validation, so every pattern of the
schema, today's and any added later, holds for the whole string (`re.fullmatch`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any


def pattern_problems(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any], path: str = "") -> Iterator[str]:
    """`config key ...` lines for the strings under `value` that their schema's pattern does not
    match as a whole; `root` resolves `$ref`s (to `#/...` of the root schema)."""
    while "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = {**target, **{key: item for key, item in schema.items() if key != "$ref"}}
    if isinstance(value, str) and "pattern" in schema and not re.fullmatch(schema["pattern"], value):
        yield f"config key {path}: {value!r} does not match {schema['pattern']!r} (a line break at its end?)"
    elif isinstance(value, Mapping):
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            sub = schema.get("properties", {}).get(name, extra if isinstance(extra, Mapping) else None)
            if sub is not None:
                yield from pattern_problems(item, sub, root, f"{path}.{name}" if path else str(name))
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            yield from pattern_problems(item, schema["items"], root, f"{path}[{index}]")
