"""Where images are taken: street positions, panoramas, queries, and the size of each dataset."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geoloc.data.synthetic.city import SF_STYLE, TOKYO_STYLE, City, build_city
from geoloc.data.synthetic.conditions import Conditions, sample_conditions

QUERY_SHIFT_ALONG_M = 6.0  # a query stands up to this far along the street from its database view
QUERY_SHIFT_ACROSS_M = 1.5
QUERY_TURN_DEG = 10.0


@dataclass(frozen=True)
class Region:
    """A rectangle of the map as fractions of the city's extent."""

    x0: float
    y0: float
    x1: float
    y1: float


@dataclass(frozen=True)
class Shot:
    """One image to render: where, in which conditions, and its name fields."""

    folder: str
    x: float
    y: float
    heading: float
    street_heading: float  # direction of the street the camera stands on (0 or 90)
    conditions: Conditions
    noise_seed: int
    pano_id: str
    note: str = ""


def street_positions(city: City, region: Region, spacing: float, rng: np.random.Generator):
    """Points every `spacing` metres along the street centre lines inside `region`.

    Returns (x, y, street heading, street width) rows; the street heading is 0 (grid north)
    or 90 (grid east).
    """
    width, depth = city.extent
    rx0, ry0, rx1, ry1 = region.x0 * width, region.y0 * depth, region.x1 * width, region.y1 * depth
    points = []
    for x0, y0, x1, y1, street_w in city.streets:
        vertical = x0 == x1
        fixed, lo, hi = (x0, max(y0, ry0), min(y1, ry1)) if vertical else (y0, max(x0, rx0), min(x1, rx1))
        inside = rx0 <= fixed <= rx1 if vertical else ry0 <= fixed <= ry1
        if not inside or hi - lo < spacing:
            continue
        along = np.arange(lo + spacing / 2, hi, spacing) + rng.uniform(-0.2, 0.2) * spacing
        for p in along:
            points.append((fixed, p, 0.0, street_w) if vertical else (p, fixed, 90.0, street_w))
    return np.array(points)


def _street_shift(street_heading: float, along: float, across: float) -> tuple[float, float]:
    """(dx, dy) of a move `along` the street and `across` it (to the right)."""
    rad = math.radians(street_heading)
    return along * math.sin(rad) + across * math.cos(rad), along * math.cos(rad) - across * math.sin(rad)


def panorama_shots(
    city: City,
    folder: str,
    points: np.ndarray,
    headings: int,
    conditions: str,
    pano_prefix: str,
    rng: np.random.Generator,
) -> list[Shot]:
    """`headings` evenly spaced views (random start) at each point, like cropped panoramas."""
    shots = []
    for i, (x, y, street_heading, street_w) in enumerate(points):
        # Anywhere within the driving lanes.
        dx, dy = _street_shift(street_heading, 0.0, rng.uniform(-1, 1) * min(3.0, 0.25 * street_w))
        start = rng.uniform(0, 360 / headings)
        for k in range(headings):
            heading = (start + k * 360 / headings + rng.uniform(-3, 3)) % 360
            shots.append(
                Shot(
                    folder,
                    x + dx,
                    y + dy,
                    heading,
                    street_heading,
                    sample_conditions(conditions, rng),
                    int(rng.integers(2**63)),
                    f"{pano_prefix}{i:05d}",
                )
            )
    return shots


def query_shots(
    database: list[Shot],
    count: int,
    folder: str,
    conditions: tuple[str, ...],
    pano_prefix: str,
    rng: np.random.Generator,
) -> list[Shot]:
    """Queries near randomly chosen database views: a few metres along the street, turned up to
    10 degrees, each place taken once per kind of conditions in `conditions`."""
    chosen = rng.choice(len(database), size=min(count, len(database)), replace=False)
    shots = []
    for i, index in enumerate(sorted(chosen)):
        base = database[index]
        dx, dy = _street_shift(
            base.street_heading, rng.uniform(-1, 1) * QUERY_SHIFT_ALONG_M, rng.uniform(-1, 1) * QUERY_SHIFT_ACROSS_M
        )
        heading = (base.heading + rng.uniform(-QUERY_TURN_DEG, QUERY_TURN_DEG)) % 360
        for kind in conditions:
            shots.append(
                Shot(
                    folder,
                    base.x + dx,
                    base.y + dy,
                    heading,
                    base.street_heading,
                    sample_conditions(kind, rng),
                    int(rng.integers(2**63)),
                    f"{pano_prefix}{i:04d}",
                    note=kind,
                )
            )
    return shots


@dataclass(frozen=True)
class SizeSpec:
    pixels: int  # images are pixels x pixels
    sf_blocks: tuple[int, int]
    tokyo_blocks: tuple[int, int]
    train_region: Region  # disjoint from the val and test regions, like SF-XS
    val_region: Region
    test_region: Region
    tokyo_region: Region
    train_spacing_m: float
    train_headings: int
    database_spacing_m: float
    database_headings: int
    val_queries: int
    test_queries: int
    tokyo_places: int  # each is a Tokyo-XS query at day, sunset and night


SIZES = {
    "demo": SizeSpec(
        pixels=64,
        sf_blocks=(6, 5),
        tokyo_blocks=(7, 6),
        train_region=Region(0.06, 0.15, 0.48, 0.8),
        val_region=Region(0.58, 0.55, 0.94, 0.94),
        test_region=Region(0.58, 0.06, 0.94, 0.45),
        tokyo_region=Region(0.3, 0.3, 0.7, 0.7),
        train_spacing_m=1.5,
        train_headings=8,
        database_spacing_m=12.0,
        database_headings=8,
        val_queries=150,
        test_queries=200,
        tokyo_places=100,
    ),
    "tiny": SizeSpec(
        pixels=64,
        sf_blocks=(4, 3),
        tokyo_blocks=(4, 3),
        train_region=Region(0.05, 0.35, 0.3, 0.65),
        val_region=Region(0.6, 0.55, 0.95, 0.9),
        test_region=Region(0.6, 0.1, 0.95, 0.45),
        tokyo_region=Region(0.25, 0.25, 0.75, 0.75),
        train_spacing_m=3.0,
        train_headings=4,
        database_spacing_m=20.0,
        database_headings=4,
        val_queries=16,
        test_queries=16,
        tokyo_places=8,
    ),
}


def plan_shots(seed: int, spec: SizeSpec) -> dict[str, tuple[City, list[Shot]]]:
    """Both cities and every image to render, keyed by city name; all randomness from `seed`."""
    # One generator per part, so that changing one part leaves the others as they were.
    sf_rng, tokyo_rng, train_rng, val_rng, test_rng, tokyo_shots_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)
    )
    sf = build_city(SF_STYLE, spec.sf_blocks, sf_rng)
    tokyo = build_city(TOKYO_STYLE, spec.tokyo_blocks, tokyo_rng)

    def database(city, region, folder, prefix, rng):
        points = street_positions(city, region, spec.database_spacing_m, rng)
        return panorama_shots(city, folder, points, spec.database_headings, "database", prefix, rng)

    train_points = street_positions(sf, spec.train_region, spec.train_spacing_m, train_rng)
    sf_shots = panorama_shots(sf, "sf_xs/train", train_points, spec.train_headings, "train", "sft", train_rng)
    for split, region, n_queries, rng in (
        ("val", spec.val_region, spec.val_queries, val_rng),
        ("test", spec.test_region, spec.test_queries, test_rng),
    ):
        db = database(sf, region, f"sf_xs/{split}/database", f"sf{split[0]}", rng)
        sf_shots += db + query_shots(db, n_queries, f"sf_xs/{split}/queries", ("day",), f"sf{split[0]}q", rng)
    tokyo_db = database(tokyo, spec.tokyo_region, "tokyo_xs/test/database", "tky", tokyo_shots_rng)
    tokyo_queries = query_shots(
        tokyo_db, spec.tokyo_places, "tokyo_xs/test/queries", ("day", "sunset", "night"), "tkyq", tokyo_shots_rng
    )
    return {"sf": (sf, sf_shots), "tokyo": (tokyo, tokyo_db + tokyo_queries)}
