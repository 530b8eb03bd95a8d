"""Retrieval galleries: a few queries with the top-5 database images of two runs side by side.

Per test set the reference is paired with the best run (or the runner-up when the reference is
the best). Queries are picked to show where the two disagree first, then a shared success and
a shared failure. Thumbnails are small JPEG data URIs so the report stays one small file.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from geoloc.errors import GeolocError
from geoloc.report.study import Results, Variant, read_queries_csv

log = logging.getLogger(__name__)

THUMBNAIL_PX = 96
THUMBNAIL_QUALITY = 70
TOP = 5


@dataclass(frozen=True)
class Retrieved:
    thumbnail: str  # data: URI, or "" when the image could not be read
    distance_m: float
    correct: bool


@dataclass(frozen=True)
class Row:
    query_thumbnail: str
    query: str
    category: str
    has_positive: bool
    retrieved: list[list[Retrieved]]  # per run shown, the top-5


@dataclass(frozen=True)
class Gallery:
    test_set: str
    variants: list[Variant]
    runs: list[str]
    rows: list[Row]

    def caption(self, category: str) -> str:
        first, second = self.variants[0].label, self.variants[-1].label
        return {
            "only_first": f"only {first} is right at R@1",
            "only_second": f"only {second} is right at R@1",
            "both_correct": "both are right at R@1",
            "both_wrong": "both are wrong at R@1",
            "correct": "right at R@1",
            "wrong": "wrong at R@1",
        }[category]


def build_galleries(study: Results, runs_dir: Path, positive_dist_threshold: float) -> list[Gallery]:
    thumbnails = ThumbnailCache()
    galleries = []
    for test_set in study.test_sets:
        shown = gallery_variants(study, test_set)
        if shown:
            runs = [study.cell(v, test_set).runs[0] for v in shown]
            rows = _rows(study, runs_dir, test_set, runs, positive_dist_threshold, thumbnails)
            galleries.append(Gallery(test_set, shown, runs, rows))
    return galleries


def gallery_variants(study: Results, test_set: str) -> list[Variant]:
    """[reference, best other] by R@1 on `test_set`; [best, runner-up] without a reference."""
    scored = [v for v in study.variants if (cell := study.cell(v, test_set)) and cell.valid()]
    scored.sort(key=lambda v: -study.recall(v, test_set))
    ref = study.reference
    if ref in scored:
        return [ref] + [v for v in scored if v != ref][:1]
    return scored[:2]


def pick_queries(correct: np.ndarray) -> list[tuple[int, str]]:
    """(query index, category) to show, from (n_runs, n_queries) booleans "correct at R@1"."""
    first, second = correct[0], correct[-1]
    if len(correct) == 1:  # one run: two successes and two failures
        categories = {"correct": (first, 2), "wrong": (~first, 2)}
    else:
        categories = {
            "only_first": (first & ~second, 2),
            "only_second": (second & ~first, 2),
            "both_correct": (first & second, 1),
            "both_wrong": (~first & ~second, 1),
        }
    picked = []
    for category, (members, count) in categories.items():
        indices = np.flatnonzero(members)
        # Spread over the sorted queries rather than taking the first few of one place.
        spread = np.linspace(0, len(indices) - 1, min(count, len(indices))).round().astype(int)
        picked += [(int(i), category) for i in dict.fromkeys(indices[spread])]
    return picked


class ThumbnailCache:
    """Each image is read and encoded once, however many galleries show it."""

    def __init__(self) -> None:
        self._uris: dict[Path, str] = {}

    def __call__(self, path: Path) -> str:
        if path not in self._uris:
            self._uris[path] = thumbnail_uri(path)
        return self._uris[path]


def thumbnail_uri(path: Path, size: int = THUMBNAIL_PX) -> str:
    """A JPEG data URI at most `size` px on its longer side; "" when the image is unreadable."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("%s: no thumbnail (%s)", path, exc)
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _rows(
    study: Results, runs_dir: Path, test_set: str, runs: list[str], threshold: float, thumbnails: ThumbnailCache
) -> list[Row]:
    tables, test_dirs, paths = [], [], []
    for run in runs:
        path = runs_dir / run / "recalls" / f"{test_set}.queries.csv"
        if not path.is_file():
            log.warning("%s: missing; no retrieval gallery for %s", path, test_set)
            return []
        tables.append(read_queries_csv(path))
        paths.append(path)
        rows = study.table[(study.table["run"] == run) & (study.table["test_set"] == test_set)]
        test_dirs.append(Path(rows["test_dir"].iloc[0]))
    queries = tables[0].index.intersection(tables[-1].index)
    correct = np.stack(
        [pd.to_numeric(table.loc[queries, "first_correct_rank"], errors="coerce") == 1 for table in tables]
    )
    rows = []
    for index, category in pick_queries(correct):
        query = queries[index]
        retrieved = [
            _retrieved(table.loc[query], test_dir, threshold, thumbnails, path)
            for table, test_dir, path in zip(tables, test_dirs, paths)
        ]
        row = Row(
            query_thumbnail=thumbnails(test_dirs[0] / query),
            query=query,
            category=category,
            has_positive=tables[0].loc[query, "has_positive"] == "1",
            retrieved=retrieved,
        )
        rows.append(row)
    return rows


def _retrieved(
    row: pd.Series, test_dir: Path, threshold: float, thumbnails: ThumbnailCache, csv_path: Path
) -> list[Retrieved]:
    paths = _json_array(row, "predictions", str, csv_path)[:TOP]
    distances = _json_array(row, "distances_m", float, csv_path)[:TOP]
    return [
        Retrieved(thumbnails(test_dir / path), distance, distance <= threshold)
        for path, distance in zip(paths, distances)
    ]


def _json_array(row: pd.Series, column: str, kind: type, csv_path: Path) -> list:
    """A per-query cell (C13): a JSON array, so no character of a file name can break it."""
    try:
        values = json.loads(row[column])
    except json.JSONDecodeError:
        values = None
    # A whole number of metres may be written without a decimal point; a bool is never a number.
    wanted = (int, float) if kind is float else (kind,)
    if not (isinstance(values, list) and all(isinstance(v, wanted) and not isinstance(v, bool) for v in values)):
        raise GeolocError(
            f"{csv_path}: query {row.name!r}: column {column} is not a JSON array of "
            f"{'numbers' if kind is float else 'paths'}: {row[column][:80]!r}"
        )
    return [kind(v) for v in values]
