"""The weights registry: backbone -> pretraining -> {url, sha256, size, format}, checked on reading.

The shipped registry is resources/weights.yaml; a user's registry file adds to it (entry by
entry: a user's backbone/pretraining replaces the shipped one of that name, the others stay).
`sha256` is the full digest, or a hex prefix of at least 8 characters where only that is
published (torchvision's file names embed one), or null where nothing is known: the download
is then accepted and its digest printed so the user can pin it. `size` is the number of bytes,
or null.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from geoloc.errors import GeolocError

FORMATS = ("torchvision", "places365", "gldv2", "timm", "published")
MIN_HASH_PREFIX = 8
SHA256_OR_PREFIX = re.compile(rf"[0-9a-f]{{{MIN_HASH_PREFIX},64}}")


def load_registry(paths: Path | Sequence[Path]) -> dict[str, dict[str, Any]]:
    """The registries of `paths` merged in order: each later file adds backbones and
    pretrainings, and replaces an entry of the same backbone and pretraining."""
    merged: dict[str, dict[str, Any]] = {}
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        for backbone, pretrainings in _read_registry(Path(path)).items():
            if pretrainings is not None and not isinstance(pretrainings, dict):
                raise GeolocError(f"weights registry {path}: {backbone} must map pretrainings to entries")
            merged.setdefault(backbone, {}).update(pretrainings or {})
    return merged


def _read_registry(path: Path) -> dict:
    try:
        registry = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GeolocError(f"cannot read weights registry {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise GeolocError(f"weights registry {path} is not valid YAML: {_yaml_problem(exc)}") from exc
    if not isinstance(registry, dict):
        raise GeolocError(f"weights registry {path} must map backbone names to pretrainings")
    return registry


def lookup(registry_path: Path | Sequence[Path], backbone: str, pretraining: str) -> dict[str, Any]:
    """The checked registry entry {url, sha256, size, format} of `backbone` / `pretraining`.

    `registry_path`: one registry file, or several merged in order (`load_registry`).
    """
    paths = [Path(registry_path)] if isinstance(registry_path, (str, Path)) else [Path(p) for p in registry_path]
    registry = load_registry(paths)
    registry_path = " + ".join(map(str, paths))
    if pretraining == "none":
        raise GeolocError("pretraining 'none' means random initialisation: there are no weights to fetch")
    if backbone not in registry:
        raise GeolocError(
            f"weights registry {registry_path} has no backbone {backbone!r}; "
            f"it has: {', '.join(map(str, registry)) or 'nothing'}"
        )
    pretrainings = registry[backbone] or {}
    if not isinstance(pretrainings, dict) or pretraining not in pretrainings:
        known = ", ".join(map(str, pretrainings)) if isinstance(pretrainings, dict) else "nothing"
        raise GeolocError(
            f"weights registry {registry_path} has no pretraining {pretraining!r} for "
            f"{backbone}; known pretrainings for {backbone}: {known or 'none'}"
        )
    return checked_entry(pretrainings[pretraining], f"{registry_path}: {backbone}.{pretraining}")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error in one line: what and where (its own message adds the line and a caret)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return problem if mark is None else f"{problem} (line {mark.line + 1}, column {mark.column + 1})"


def checked_entry(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise GeolocError(f"{where} must be a mapping with url, sha256, size and format")
    missing = [key for key in ("url", "sha256", "size", "format") if key not in entry]
    if missing:
        raise GeolocError(f"{where} lacks {', '.join(missing)} (write null for an unknown sha256 or size)")
    url, digest, size, fmt = entry["url"], entry["sha256"], entry["size"], entry["format"]
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https", "file"):
        raise GeolocError(f"{where}.url must be an http(s):// or file:// URL, got {url!r}")
    if isinstance(digest, (int, float)) and not isinstance(digest, bool):
        # An all-digit digest written without quotes is a number to YAML (leading zeros lost).
        raise GeolocError(
            f"{where}.sha256 was read as a number: write the digest in quotes "
            '(sha256: "0123..."), as YAML reads unquoted digits as a number'
        )
    if digest is not None and not (isinstance(digest, str) and SHA256_OR_PREFIX.fullmatch(digest)):
        raise GeolocError(
            f"{where}.sha256 must be null or {MIN_HASH_PREFIX} to 64 lowercase hex digits, got {digest!r}"
        )
    if size is not None and not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
        raise GeolocError(f"{where}.size must be null or a positive number of bytes, got {size!r}")
    if fmt not in FORMATS:
        raise GeolocError(f"{where}.format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return {"url": url, "sha256": digest, "size": size, "format": fmt}
