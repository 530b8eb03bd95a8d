"""The image-name format shared by SF-XS, Tokyo-XS, Tokyo-Night and the synthetic city.

`@utm_east@utm_north@utm_zone@zone_letter@lat@lon@pano_id@tile@heading@pitch@roll@height@timestamp@note@.jpg`
Any field may be empty; geo-localization needs only UTM east/north (all sets) and the
heading (training sets, to build classes).
"""

from __future__ import annotations

import math
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


class BadImageName(GeolocError):
    """An image file whose name does not follow the format; names the file and the field."""


@dataclass(frozen=True)
class ImageMeta:
    utm_east: float
    utm_north: float
    heading: float | None


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def split_fields(path: str | Path) -> dict[str, str]:
    """Return the named fields of an image name, as strings (empty when absent)."""
    name = Path(path).name
    suffix = Path(name).suffix
    if suffix.lower() not in IMAGE_EXTENSIONS:
        raise BadImageName(f"{path}: extension {suffix!r} is not one of {', '.join(IMAGE_EXTENSIONS)}")
    stem = name[: -len(suffix)]
    parts = stem.split("@")
    # A well-formed stem starts and ends with '@': ['', f1, ..., f14, ''].
    if len(parts) != len(FIELDS) + 2 or parts[0] != "" or parts[-1] != "":
        raise BadImageName(
            f"{path}: expected {len(FIELDS)} '@'-separated fields "
            f"(@utm_east@utm_north@...@note@{suffix}), found {max(len(parts) - 2, 0)}"
        )
    return dict(zip(FIELDS, parts[1:-1]))


def _number(path: str | Path, fields: dict[str, str], field: str) -> float:
    text = fields[field]
    if text == "":
        raise BadImageName(f"{path}: field {field} is empty")
    try:
        value = float(text)
    except ValueError:
        raise BadImageName(f"{path}: field {field} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise BadImageName(f"{path}: field {field} is not finite: {text!r}")
    return value


def parse_image_name(path: str | Path, *, need_heading: bool = False) -> ImageMeta:
    """Parse UTM coordinates (and the heading, when `need_heading`) from an image name."""
    fields = split_fields(path)
    east = _number(path, fields, "utm_east")
    north = _number(path, fields, "utm_north")
    heading = None
    if need_heading or fields["heading"] != "":
        heading = _number(path, fields, "heading") % 360.0
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
    """Build a file name in the dataset format (the inverse of `parse_image_name`)."""
    values = dict.fromkeys(FIELDS, "")
    values.update(
        utm_east=f"{utm_east:.2f}",
        utm_north=f"{utm_north:.2f}",
        utm_zone=utm_zone,
        zone_letter=zone_letter,
        pano_id=pano_id,
        heading="" if heading is None else f"{heading % 360.0:.1f}",
        timestamp=timestamp,
        note=note,
    )
    for key, value in values.items():
        if "@" in value or "/" in value:
            raise ValueError(f"field {key} may not contain '@' or '/': {value!r}")
    return "@" + "@".join(values[f] for f in FIELDS) + "@" + extension
