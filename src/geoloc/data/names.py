"""The image-name format shared by SF-XS, Tokyo-XS, Tokyo-Night and the synthetic city.

`@utm_east@utm_north@utm_zone@zone_letter@lat@lon@pano_id@tile@heading@pitch@roll@height@timestamp@note@.jpg`
Any field may be empty; geo-localization needs only UTM east/north (all sets) and the
heading (training sets, to build classes). The heading is checked wherever it is written; the
other fields may hold anything a file name can.

A number is read from ASCII decimal digits only, with an optional sign and decimal point
(`543256.96`, `-122.45785`, `000`): Python's `float()` also takes `'١٢٣'` (Arabic-Indic
digits), `'1_000'`, `' 5 '`, `'1e3'` and `'inf'`, which other readers of the same datasets (and
CosPlace's numpy) parse differently or refuse, so a name means one position everywhere.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from geoloc.errors import GeolocError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
FIELDS = (
    "utm_east",
    "utm_north",
    "utm_zone",
    "zone_letter",
    "lat",
    "lon",
    "pano_id",
    "tile",
    "heading",
    "pitch",
    "roll",
    "height",
    "timestamp",
    "note",
)
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)
_NOT_FINITE = ("inf", "infinity", "nan")  # what float() reads as a non-finite number
# Headings are compass degrees. 360 itself is kept, not wrapped to 0: CosPlace puts it in a
# class of its own (heading bin 360), and geoloc's classes are CosPlace's.
MAX_HEADING = 360.0


class BadImageName(GeolocError):
    """An image file whose name does not follow the format; names the file and the field."""


@dataclass(frozen=True)
class ImageMeta:
    utm_east: float
    utm_north: float
    heading: float | None


def split_fields(path: str | Path) -> dict[str, str]:
    """Return the named fields of an image name, as strings (empty when absent)."""
    # os.path, not pathlib: this runs once per image of a training set of millions.
    stem, suffix = os.path.splitext(os.path.basename(os.fspath(path)))
    if suffix.lower() not in IMAGE_EXTENSIONS:
        raise BadImageName(f"{path}: extension {suffix!r} is not one of {', '.join(IMAGE_EXTENSIONS)}")
    # A well-formed stem starts and ends with '@': ['', f1, ..., f14, ''].
    expected = f"{path}: expected {len(FIELDS)} '@'-separated fields (@utm_east@utm_north@...@note@{suffix})"
    if not stem.startswith("@"):
        raise BadImageName(f"{expected}: the name must start with '@'")
    if not stem.endswith("@"):
        after = stem.rpartition("@")[2]
        raise BadImageName(
            f"{expected}: the name must end with '@' right before the extension {suffix}, "
            f"but {after!r} follows the last '@'"
        )
    parts = stem.split("@")
    if len(parts) != len(FIELDS) + 2:
        raise BadImageName(f"{expected}, found {len(parts) - 2}")
    return dict(zip(FIELDS, parts[1:-1]))


def _number(path: str | Path, fields: dict[str, str], field: str) -> float:
    text = fields[field]
    if text == "":
        raise BadImageName(f"{path}: field {field} is empty")
    if not _DECIMAL.fullmatch(text):
        problem = "is not finite" if text.strip().lstrip("+-").lower() in _NOT_FINITE else "is not a number"
        raise BadImageName(
            f"{path}: field {field} {problem}: {text!r} (ASCII digits with an optional sign and decimal point)"
        )
    return float(text)


def parse_image_name(path: str | Path, *, need_heading: bool = False) -> ImageMeta:
    """Parse UTM coordinates and the heading (required when `need_heading`) from an image name.

    The heading is the field as written, from 0 to 360 degrees (as CosPlace reads it).
    """
    fields = split_fields(path)
    east = _number(path, fields, "utm_east")
    north = _number(path, fields, "utm_north")
    heading = None
    if need_heading or fields["heading"] != "":
        heading = _number(path, fields, "heading")
        if not 0.0 <= heading <= MAX_HEADING:
            raise BadImageName(f"{path}: field heading is {fields['heading']}, outside 0 to 360 degrees")
    return ImageMeta(east, north, heading)


def format_image_name(
    utm_east: float,
    utm_north: float,
    heading: float | None = None,
    *,
    utm_zone: str = "",
    zone_letter: str = "",
    pano_id: str = "",
    timestamp: str = "",
    note: str = "",
    extension: str = ".jpg",
) -> str:
    """Build a file name in the dataset format (the inverse of `parse_image_name`).

    The heading is written with one decimal in [0, 360): it is rounded before it is wrapped,
    so 359.97 is written 0.0, not 360.0 (a class of its own for CosPlace).
    """
    values = dict.fromkeys(FIELDS, "")
    values.update(
        utm_east=f"{utm_east:.2f}",
        utm_north=f"{utm_north:.2f}",
        utm_zone=utm_zone,
        zone_letter=zone_letter,
        pano_id=pano_id,
        heading="" if heading is None else f"{round(heading, 1) % 360.0:.1f}",
        timestamp=timestamp,
        note=note,
    )
    for key, value in values.items():
        if "@" in value or "/" in value:
            raise ValueError(f"field {key} may not contain '@' or '/': {value!r}")
    return "@" + "@".join(values[f] for f in FIELDS) + "@" + extension
