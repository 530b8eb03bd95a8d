"""`geoloc synth`: a synthetic city dataset in the exact layout and naming of SF-XS/Tokyo-XS.

Two procedurally generated cities: an SF-like one (wide streets, colourful facades of 2-8
floors, window grids, shop fronts) and a Tokyo-like one (other street grid, grey tiles and
glass, taller and narrower buildings, ribbon windows, many vertical signs). A city is a 2-D
map of rectangular building footprints on an irregular street grid; each footprint edge is a
facade whose texture is a deterministic function of the building and of the position along
the facade (window bays, floors, doors, signs), so it is anchored in world coordinates. An
image is rendered by casting one ray per column from a camera standing on a street; walls
are drawn with height proportional to 1/distance (true parallax) and the K nearest walls of
a column are layered, so taller buildings show above nearer ones. What a camera sees
therefore depends on where it stands and where it looks, which is what a geo-localization
model has to learn.

Database images are panoramas cut into evenly spaced headings, taken in steady daylight.
Queries stand a few metres along the street from a database view, turned up to 10 degrees,
under other conditions: sun direction, exposure, tint, gamma, haze, clouds, passing cars,
sensor noise. Training images are taken along the streets of an area disjoint from val and
test, at all hours (TRAIN_MIX). Tokyo-XS queries are the same places at day, sunset and
night (like Tokyo 24/7); Tokyo-Night is the night third: dark sky with city glow, lit
windows, glowing signs and street light on the lower floors, so the layout stays visible.

Everything is drawn from numpy Generators seeded from the seed, one per image, so the same
seed gives byte-identical files whatever the number of worker processes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image

from geoloc.errors import GeolocError
from geoloc.imagename import format_image_name

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
JPEG_QUALITY = 92
FOV_DEG = 80.0  # horizontal field of view
CAMERA_HEIGHT_M = 2.5
HORIZON_ROW = 0.62  # horizon height as a fraction of the image, from the top (lens shift up)
MAX_VIEW_M = 320.0  # walls farther than this are not drawn (haze hides them anyway)
WALL_LAYERS = 4  # nearest walls kept per column, drawn far to near
QUERY_SHIFT_ALONG_M = 6.0  # a query stands up to this far along the street from its database view
QUERY_SHIFT_ACROSS_M = 1.5
QUERY_TURN_DEG = 10.0


# ----------------------------------------------------------------------------- city styles


@dataclass(frozen=True)
class CityStyle:
    name: str
    utm_zone: str
    zone_letter: str
    utm_origin: tuple[float, float]  # UTM east/north of the map origin
    rotation_deg: float  # street grid rotation (counter-clockwise) relative to UTM north
    block_m: tuple[float, float]
    street_m: tuple[float, float]
    lot_m: tuple[float, float]  # building width along the street
    floors: tuple[int, int]
    floor_m: tuple[float, float]
    bay_m: tuple[float, float]  # window spacing along the facade
    window_width: tuple[float, float]  # fraction of a bay
    window_height: tuple[float, float]  # fraction of a floor
    setback_m: float
    plaza_probability: float  # blocks left empty: open views onto farther buildings
    wall_colours: tuple[tuple[float, float, float], ...]
    trim_colours: tuple[tuple[float, float, float], ...]
    glass_colours: tuple[tuple[float, float, float], ...]
    sign_colours: tuple[tuple[float, float, float], ...]
    shop_probability: float
    sign_probability: float  # per facade, for each of two sign slots
    vertical_sign_probability: float
    ground_colour: tuple[float, float, float]


SF_STYLE = CityStyle(
    name="sf",
    utm_zone="10",
    zone_letter="S",
    utm_origin=(549_000.0, 4_180_000.0),
    rotation_deg=9.5,
    block_m=(55.0, 95.0),
    street_m=(16.0, 24.0),
    lot_m=(7.0, 22.0),
    floors=(2, 8),
    floor_m=(3.0, 3.9),
    bay_m=(2.0, 4.2),
    window_width=(0.35, 0.85),  # from Victorian sash windows to modern ribbon windows
    window_height=(0.35, 0.62),
    setback_m=4.0,
    plaza_probability=0.06,
    wall_colours=(
        (0.93, 0.88, 0.74), (0.85, 0.62, 0.52), (0.62, 0.76, 0.68), (0.66, 0.74, 0.86),
        (0.94, 0.93, 0.90), (0.78, 0.70, 0.58), (0.93, 0.80, 0.46), (0.70, 0.55, 0.66),
        (0.55, 0.58, 0.60), (0.82, 0.42, 0.34),
    ),
    trim_colours=((0.97, 0.97, 0.95), (0.25, 0.25, 0.28), (0.45, 0.30, 0.22), (0.20, 0.35, 0.30)),
    glass_colours=((0.16, 0.20, 0.26), (0.26, 0.32, 0.40), (0.12, 0.13, 0.14), (0.30, 0.34, 0.32)),
    sign_colours=(
        (0.85, 0.12, 0.10), (0.10, 0.35, 0.75), (0.95, 0.75, 0.10), (0.10, 0.55, 0.25),
        (0.95, 0.95, 0.95), (0.15, 0.15, 0.15),
    ),
    shop_probability=0.45,
    sign_probability=0.45,
    vertical_sign_probability=0.3,
    ground_colour=(0.36, 0.36, 0.37),
)

TOKYO_STYLE = CityStyle(
    name="tokyo",
    utm_zone="54",
    zone_letter="S",
    utm_origin=(386_000.0, 3_950_000.0),
    rotation_deg=-23.0,
    block_m=(45.0, 75.0),
    street_m=(12.0, 20.0),
    lot_m=(6.0, 16.0),
    floors=(3, 9),
    floor_m=(3.0, 3.6),
    bay_m=(1.6, 3.2),
    window_width=(0.55, 0.92),
    window_height=(0.3, 0.55),
    setback_m=1.5,
    plaza_probability=0.04,
    wall_colours=(
        (0.78, 0.78, 0.76), (0.62, 0.62, 0.63), (0.90, 0.89, 0.85), (0.55, 0.50, 0.45),
        (0.70, 0.66, 0.58), (0.45, 0.47, 0.50), (0.84, 0.80, 0.72), (0.60, 0.64, 0.70),
    ),
    trim_colours=((0.35, 0.35, 0.37), (0.85, 0.85, 0.85), (0.55, 0.45, 0.35)),
    glass_colours=((0.18, 0.24, 0.30), (0.22, 0.28, 0.36), (0.10, 0.12, 0.15)),
    sign_colours=(
        (0.95, 0.20, 0.30), (0.20, 0.60, 0.95), (0.98, 0.85, 0.15), (0.30, 0.85, 0.40),
        (0.95, 0.55, 0.10), (0.75, 0.25, 0.85), (0.97, 0.97, 0.97),
    ),
    shop_probability=0.7,
    sign_probability=0.8,
    vertical_sign_probability=0.7,
    ground_colour=(0.40, 0.40, 0.41),
)


# ----------------------------------------------------------------------------- city geometry


@dataclass(frozen=True)
class City:
    """Facade segments and street centre lines in map metres (x = grid east, y = grid north)."""

    style: CityStyle
    extent: tuple[float, float]
    seg_a: np.ndarray  # (S, 2) facade start; the outside is on the right of a -> b
    seg_b: np.ndarray  # (S, 2) facade end
    seg_building: np.ndarray  # (S,) int
    seg_u0: np.ndarray  # (S,) window grid phase along the facade, metres
    sign_box: np.ndarray  # (S, 2, 4) u0, u1, v0, v1 per sign slot; empty slots have u1 < u0
    sign_colour: np.ndarray  # (S, 2, 3)
    sign_key: np.ndarray  # (S, 2) uint64, picks the "letters"
    height: np.ndarray  # (B,) metres
    floor_h: np.ndarray
    bay_w: np.ndarray
    window_w: np.ndarray
    window_h: np.ndarray
    wall: np.ndarray  # (B, 3)
    trim: np.ndarray
    glass: np.ndarray
    shop: np.ndarray  # (B,) bool
    cornices: np.ndarray  # (B,) bool
    pilaster_every: np.ndarray  # (B,) int, 0 = none
    key: np.ndarray  # (B,) uint64 per-building hash key
    streets: np.ndarray  # (T, 5) x0, y0, x1, y1, width of each street centre line

    def to_utm(self, x: float, y: float, heading: float) -> tuple[float, float, float]:
        """Map position and compass heading -> UTM east, north and compass heading."""
        theta = math.radians(self.style.rotation_deg)
        east = self.style.utm_origin[0] + math.cos(theta) * x - math.sin(theta) * y
        north = self.style.utm_origin[1] + math.sin(theta) * x + math.cos(theta) * y
        # A counter-clockwise rotation of the map turns compass headings clockwise-negative.
        return east, north, (heading - self.style.rotation_deg) % 360.0


def _axis(n_blocks: int, style: CityStyle, rng: np.random.Generator):
    """Street centres/widths and block intervals along one axis: street, block, ..., street."""
    streets = rng.uniform(*style.street_m, n_blocks + 1)
    blocks = rng.uniform(*style.block_m, n_blocks)
    centres, intervals, pos = [], [], 0.0
    for i in range(n_blocks + 1):
        centres.append(pos + streets[i] / 2)
        pos += streets[i]
        if i < n_blocks:
            intervals.append((pos, pos + blocks[i]))
            pos += blocks[i]
    return np.array(centres), streets, intervals, pos


def _split(start: float, end: float, sizes: tuple[float, float], rng: np.random.Generator):
    """Cut [start, end] into lots of random width; a too-narrow remainder joins the last lot."""
    cuts = [start]
    while end - cuts[-1] > sizes[1]:
        cuts.append(cuts[-1] + rng.uniform(*sizes))
    if end - cuts[-1] < sizes[0] and len(cuts) > 1:
        cuts.pop()
    cuts.append(end)
    return list(zip(cuts[:-1], cuts[1:]))


def _block_footprints(block_x, block_y, style: CityStyle, rng: np.random.Generator):
    """Building rectangles (x0, y0, x1, y1) filling one block: two rows of lots, back to back."""
    along_x = rng.random() < 0.5
    (a0, a1), (c0, c1) = (block_x, block_y) if along_x else (block_y, block_x)
    middle = (c0 + c1) / 2 + rng.uniform(-0.1, 0.1) * (c1 - c0)
    rects = []
    for row_start, row_end, street_side in ((c0, middle, 0), (middle, c1, 1)):
        for lot_a0, lot_a1 in _split(a0, a1, style.lot_m, rng):
            setback = rng.uniform(0, style.setback_m) if rng.random() < 0.5 else 0.0
            gap_left = rng.uniform(0.8, 3.0) if rng.random() < 0.25 else 0.1
            gap_right = rng.uniform(0.8, 3.0) if rng.random() < 0.25 else 0.1
            back = rng.uniform(0.5, 4.0)
            lo, hi = (row_start + setback, row_end - back) if street_side == 0 else (
                row_start + back, row_end - setback)
            # Buildings at the block ends also face the cross street and may be set back from it.
            end_left = rng.uniform(0, style.setback_m) if lot_a0 == a0 and rng.random() < 0.5 else 0
            end_right = rng.uniform(0, style.setback_m) if lot_a1 == a1 and rng.random() < 0.5 else 0
            b0, b1 = lot_a0 + gap_left / 2 + end_left, lot_a1 - gap_right / 2 - end_right
            if b1 - b0 < 2.5 or hi - lo < 4.0:
                continue
            rects.append((b0, lo, b1, hi) if along_x else (lo, b0, hi, b1))
    return rects


def build_city(style: CityStyle, n_blocks: tuple[int, int], rng: np.random.Generator) -> City:
    xc, xw, x_blocks, width = _axis(n_blocks[0], style, rng)
    yc, yw, y_blocks, depth = _axis(n_blocks[1], style, rng)
    rects = []
    for bx in x_blocks:
        for by in y_blocks:
            if rng.random() >= style.plaza_probability:
                rects.extend(_block_footprints(bx, by, style, rng))
    rects = np.array(rects)
    n = len(rects)
    x0, y0, x1, y1 = rects.T
    # Faces in counter-clockwise order, so the outside of each face is on its right.
    seg_a = np.stack([np.c_[x0, y0], np.c_[x1, y0], np.c_[x1, y1], np.c_[x0, y1]], 1).reshape(-1, 2)
    seg_b = np.stack([np.c_[x1, y0], np.c_[x1, y1], np.c_[x0, y1], np.c_[x0, y0]], 1).reshape(-1, 2)
    n_seg = len(seg_a)
    seg_building = np.repeat(np.arange(n), 4)

    floors = rng.integers(style.floors[0], style.floors[1] + 1, n)
    floor_h = rng.uniform(*style.floor_m, n)
    signs = _signs(seg_a, seg_b, floor_h[seg_building], style, rng)
    return City(
        style=style,
        extent=(width, depth),
        seg_a=seg_a,
        seg_b=seg_b,
        seg_building=seg_building,
        seg_u0=rng.uniform(0, 2.0, n_seg),
        sign_box=signs[0],
        sign_colour=signs[1],
        sign_key=rng.integers(0, 2**63, (n_seg, 2)).astype(np.uint64),
        height=floors * floor_h + rng.uniform(0.3, 1.2, n),
        floor_h=floor_h,
        bay_w=rng.uniform(*style.bay_m, n),
        window_w=rng.uniform(*style.window_width, n),
        window_h=rng.uniform(*style.window_height, n),
        # Brightness varies between buildings too, so they differ in luminance, not only in hue.
        wall=_jitter(np.array(style.wall_colours)[rng.integers(0, len(style.wall_colours), n)], 0.06, rng)
        * rng.uniform(0.6, 1.1, (n, 1)),
        trim=np.array(style.trim_colours)[rng.integers(0, len(style.trim_colours), n)],
        glass=np.array(style.glass_colours)[rng.integers(0, len(style.glass_colours), n)],
        shop=rng.random(n) < style.shop_probability,
        cornices=rng.random(n) < 0.5,
        pilaster_every=np.where(rng.random(n) < 0.4, rng.integers(2, 5, n), 0),
        key=rng.integers(0, 2**63, n).astype(np.uint64),
        streets=np.concatenate(
            [
                np.c_[xc, np.zeros_like(xc), xc, np.full_like(xc, depth), xw],
                np.c_[np.zeros_like(yc), yc, np.full_like(yc, width), yc, yw],
            ]
        ),
    )


def _jitter(colours: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(colours + rng.uniform(-amount, amount, colours.shape), 0.0, 1.0)


def _signs(seg_a, seg_b, floor_h, style: CityStyle, rng: np.random.Generator):
    """Two sign slots per facade: horizontal boards or (Tokyo-style) tall vertical ones."""
    n = len(seg_a)
    length = np.linalg.norm(seg_b - seg_a, axis=1)[:, None]
    vertical = rng.random((n, 2)) < style.vertical_sign_probability
    width = np.where(vertical, rng.uniform(0.8, 1.6, (n, 2)), rng.uniform(2.0, 6.0, (n, 2)))
    tall = np.where(vertical, rng.uniform(3.0, 9.0, (n, 2)), rng.uniform(0.8, 1.6, (n, 2)))
    # Slot 0 on the left half of the facade, slot 1 on the right half.
    centre = length * (np.array([0.25, 0.75]) + rng.uniform(-0.2, 0.2, (n, 2)))
    u0, u1 = centre - width / 2, centre + width / 2
    v0 = floor_h[:, None] * rng.uniform(1.05, 2.2, (n, 2))
    present = (rng.random((n, 2)) < style.sign_probability) & (u0 > 0.3) & (u1 < length - 0.3)
    u1 = np.where(present, u1, -1.0)
    box = np.stack([u0, u1, v0, v0 + tall], axis=-1)
    colours = np.array(style.sign_colours)[rng.integers(0, len(style.sign_colours), (n, 2))]
    return box, colours


# ----------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class Conditions:
    """Lighting, weather and passing cars of one image."""

    sun_azimuth: float  # compass degrees in map coordinates
    sun: float  # strength of direct light on a facade facing the sun
    ambient: float
    sky_zenith: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    clouds: float  # fraction of the sky covered
    haze: tuple[float, float, float]
    visibility_m: float
    exposure: float
    gamma: float
    tint: tuple[float, float, float]
    noise: float  # sensor noise standard deviation
    lit_windows: float  # fraction of windows lit from inside (0 in daylight)
    street_light: float  # night: light from street lamps on the lower floors and the road
    glow: float  # emission of signs
    cars: float  # expected number of cars in view (they differ from image to image)


# The mix of conditions of training images: taken over years, at all hours, like SF-XL's.
TRAIN_MIX = {"day": 0.7, "sunset": 0.15, "night": 0.15}


def _uniform3(rng: np.random.Generator, centre, spread: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in np.asarray(centre) * rng.uniform(1 - spread, 1 + spread, 3))


def sample_conditions(kind: str, rng: np.random.Generator) -> Conditions:
    """Conditions of one image: "database" (steady daylight), "day", "sunset", "night", or
    "train" (one of the others, drawn from TRAIN_MIX)."""
    if kind == "train":
        kind = str(rng.choice(list(TRAIN_MIX), p=list(TRAIN_MIX.values())))
    if kind == "database":
        return Conditions(
            sun_azimuth=150.0 + rng.uniform(-10, 10), sun=0.45, ambient=0.6,
            sky_zenith=(0.40, 0.58, 0.85), sky_horizon=(0.78, 0.85, 0.93), clouds=rng.uniform(0, 0.3),
            haze=(0.80, 0.84, 0.90), visibility_m=900.0, exposure=rng.uniform(0.95, 1.05), gamma=1.0,
            tint=(1.0, 1.0, 1.0), noise=0.01, lit_windows=0.0, street_light=0.0, glow=0.0, cars=2.0,
        )
    if kind == "day":
        overcast = rng.random() < 0.3
        sky = (0.72, 0.74, 0.78) if overcast else (0.40, 0.58, 0.85)
        return Conditions(
            sun_azimuth=rng.uniform(0, 360), sun=0.1 if overcast else rng.uniform(0.3, 0.6),
            ambient=rng.uniform(0.5, 0.8), sky_zenith=_uniform3(rng, sky, 0.15),
            sky_horizon=_uniform3(rng, (0.80, 0.84, 0.90), 0.1), clouds=rng.uniform(0, 0.7),
            haze=_uniform3(rng, (0.78, 0.8, 0.84), 0.1), visibility_m=rng.uniform(120, 900),
            exposure=rng.uniform(0.65, 1.3), gamma=math.exp(rng.uniform(-0.3, 0.3)),
            tint=_uniform3(rng, (1, 1, 1), 0.12), noise=rng.uniform(0.0, 0.04), lit_windows=0.0,
            street_light=0.0, glow=0.0, cars=3.0,
        )
    if kind == "sunset":
        return Conditions(
            sun_azimuth=rng.uniform(230, 300), sun=rng.uniform(0.3, 0.5), ambient=rng.uniform(0.35, 0.5),
            sky_zenith=_uniform3(rng, (0.30, 0.35, 0.60), 0.1),
            sky_horizon=_uniform3(rng, (0.98, 0.62, 0.35), 0.1),
            clouds=rng.uniform(0, 0.5), haze=_uniform3(rng, (0.85, 0.60, 0.45), 0.1),
            visibility_m=rng.uniform(150, 500), exposure=rng.uniform(0.8, 1.1),
            gamma=math.exp(rng.uniform(-0.15, 0.15)), tint=_uniform3(rng, (1.12, 0.92, 0.78), 0.06),
            noise=rng.uniform(0.01, 0.04), lit_windows=0.15, street_light=0.1, glow=0.4, cars=3.0,
        )
    if kind == "night":
        return Conditions(
            # City glow: the sky stays lighter than unlit walls, so the skyline shows.
            sun_azimuth=0.0, sun=0.0, ambient=rng.uniform(0.1, 0.16),
            sky_zenith=_uniform3(rng, (0.04, 0.05, 0.10), 0.2),
            sky_horizon=_uniform3(rng, (0.24, 0.19, 0.20), 0.2),
            clouds=rng.uniform(0, 0.4), haze=_uniform3(rng, (0.12, 0.10, 0.10), 0.2),
            visibility_m=rng.uniform(200, 600), exposure=rng.uniform(0.9, 1.3),
            gamma=math.exp(rng.uniform(-0.2, 0.1)),
            tint=_uniform3(rng, (1.05, 0.97, 0.88), 0.06), noise=rng.uniform(0.02, 0.05),
            lit_windows=rng.uniform(0.35, 0.6), street_light=rng.uniform(0.35, 0.55), glow=1.0, cars=2.0,
        )
    raise ValueError(f"unknown conditions kind {kind!r}")


# ----------------------------------------------------------------------------- rendering


def _hash01(*keys) -> np.ndarray:
    """A deterministic pseudo-random number in [0, 1) for each tuple of integer keys."""
    arrays = np.broadcast_arrays(*[np.asarray(k) for k in keys])
    h = np.full(arrays[0].shape, 0x9E3779B97F4A7C15, dtype=np.uint64)
    for k in arrays:
        h ^= k if k.dtype == np.uint64 else k.astype(np.int64).view(np.uint64)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


def _facade(city: City, seg: np.ndarray, u: np.ndarray, v: np.ndarray, lit_windows: np.ndarray,
            glow: np.ndarray):
    """Albedo (P, 3), emitted light (P, 3) and a glass mask (P,) of facade points.

    `seg`, `u` (metres along the facade), `v` (metres above the ground) and the lighting
    terms `lit_windows` and `glow` have one entry per point.
    """
    b = city.seg_building[seg]
    key = city.key[b]
    floor_h = city.floor_h[b]
    floor = np.floor(v / floor_h).astype(np.int64)
    fv = v / floor_h - floor
    bay_pos = (u - city.seg_u0[seg]) / city.bay_w[b]
    bay = np.floor(bay_pos).astype(np.int64)
    fu = bay_pos - bay
    centred = np.abs(fu - 0.5)

    bay_hash = _hash01(key, bay)  # one number per bay: its tint and whether it has a door
    # A faint world-anchored grain (bricks, panels) gives mid-frequency texture to plain walls.
    grain = _hash01(key, np.floor(u / 0.7).astype(np.int64), np.floor(v / 0.45).astype(np.int64))
    albedo = city.wall[b] * (0.86 + 0.16 * bay_hash + 0.12 * grain)[:, None]

    upper = floor >= 1
    shop = city.shop[b]
    blind = _hash01(key, bay, floor // 3) < 0.12  # some bays have no window, building-specific
    window = upper & ~blind & (centred < city.window_w[b] / 2) & (fv > 0.3) & (fv < 0.3 + city.window_h[b])
    shop_glass = ~upper & shop & (centred < 0.42) & (fv > 0.12) & (fv < 0.72)
    door = ~upper & ~shop & ((bay_hash * 1024) % 1 < 0.3) & (centred < 0.18) & (v < 2.3)
    small_window = ~upper & ~shop & ~door & (centred < 0.2) & (fv > 0.35) & (fv < 0.75)
    glass = window | shop_glass | small_window
    awning = ~upper & shop & (fv >= 0.78) & (fv < 0.95)

    cornice = (city.cornices[b] & upper & (fv < 0.07)) | (v > city.height[b] - 0.5)
    every = city.pilaster_every[b]
    pilaster = (every > 0) & (bay % np.maximum(every, 1) == 0) & (fu < 0.14)
    albedo[cornice | pilaster] = city.trim[b[cornice | pilaster]]
    albedo[awning] = city.sign_colour[seg[awning], 0] * 0.8 + 0.1
    pane = glass | door
    albedo[pane] = city.glass[b[pane]] * (0.85 + 0.3 * fv[pane])[:, None]  # sky in the upper pane

    emitted = np.zeros_like(albedo)
    # At night some windows are lit from inside (shop fronts more often); the rest go dark.
    night = np.flatnonzero(glass & (lit_windows > 0))
    lit_hash = _hash01(key[night], bay[night], floor[night])
    lit = lit_hash < lit_windows[night] + 0.25 * ~upper[night]
    warmth = ((lit_hash * 1024) % 1)[:, None]
    lamp = np.array([1.0, 0.82, 0.5]) * (1 - warmth) + np.array([0.85, 0.92, 1.0]) * warmth
    emitted[night[lit]] = 0.9 * lamp[lit]
    albedo[night[~lit]] *= 0.3
    for slot in range(2):
        u0, u1, v0, v1 = city.sign_box[seg, slot].T
        inside = np.flatnonzero((u >= u0) & (u < u1) & (v >= v0) & (v < v1))
        u0, u1, v0, v1 = u0[inside], u1[inside], v0[inside], v1[inside]
        su, sv = u[inside], v[inside]
        # "Letters": a per-sign pattern of light cells, 0.45 m along the long side.
        vertical = (v1 - v0) > (u1 - u0)
        cell = np.where(vertical, (sv - v0) / 0.45, (su - u0) / 0.45).astype(np.int64)
        across = np.where(vertical, (su - u0) / (u1 - u0), (sv - v0) / (v1 - v0))
        letter = (_hash01(city.sign_key[seg[inside], slot], cell) < 0.55) & (np.abs(across - 0.5) < 0.3)
        board = city.sign_colour[seg[inside], slot]
        colour = np.where(letter[:, None], 1.0 - 0.85 * board, board)
        albedo[inside] = colour
        emitted[inside] = colour * glow[inside, None]
    return albedo, emitted, glass


def _cross(d: np.ndarray, p: np.ndarray) -> np.ndarray:
    """z of the 2-D cross products d x p, d (B, 2) and p (B, S, 2): > 0 when p is left of d."""
    return d[:, None, 0] * p[..., 1] - d[:, None, 1] * p[..., 0]


def _visible_facades(city: City, origins: np.ndarray, rays: np.ndarray) -> np.ndarray:
    """(B, S) mask of facades each view may see: near enough, facing the camera (back faces
    are always hidden) and not wholly left or right of the field of view."""
    a = city.seg_a[None] - origins[:, None]
    b = city.seg_b[None] - origins[:, None]
    edge = city.seg_b - city.seg_a
    mid = (a + b) / 2
    near = np.hypot(mid[..., 0], mid[..., 1]) - np.hypot(edge[:, 0], edge[:, 1]) / 2 < MAX_VIEW_M
    facing = edge[None, :, 0] * a[..., 1] - edge[None, :, 1] * a[..., 0] > 0
    left = rays[:, 0] * 1.01 - rays[:, -1] * 0.01  # the outermost rays, turned slightly outwards
    right = rays[:, -1] * 1.01 - rays[:, 0] * 0.01
    beyond_left = (_cross(left, a) > 0) & (_cross(left, b) > 0)
    beyond_right = (_cross(right, a) < 0) & (_cross(right, b) < 0)
    return near & facing & ~beyond_left & ~beyond_right


def _condition_arrays(conditions: list[Conditions]) -> dict[str, np.ndarray]:
    """Each condition parameter as an array with one row per view."""
    return {f.name: np.array([getattr(c, f.name) for c in conditions], dtype=float)
            for f in fields(Conditions)}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Noise in [0, 1] varying over about `cells` cells per side (bilinear interpolation)."""
    coarse = rng.random((cells + 1, cells + 1))
    gy, gx = np.linspace(0, cells, shape[0]), np.linspace(0, cells, shape[1])
    y0, x0 = np.minimum(gy.astype(int), cells - 1), np.minimum(gx.astype(int), cells - 1)
    fy, fx = (gy - y0)[:, None], (gx - x0)[None, :]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


CAR_COLOURS = np.array([(0.92, 0.92, 0.92), (0.12, 0.12, 0.13), (0.55, 0.56, 0.58), (0.65, 0.12, 0.10),
                        (0.15, 0.25, 0.55), (0.80, 0.78, 0.70)])


def _draw_cars(image: np.ndarray, wall_depth: np.ndarray, cond: Conditions, focal: float, horizon: float,
               rng: np.random.Generator) -> None:
    """Paint passing and parked cars (upright boxes on the road, nearer walls hiding them) into
    one view's image (H, W, 3), given the perpendicular wall distance of each pixel (H, W)."""
    height, width = wall_depth.shape
    n_cars = rng.poisson(cond.cars)
    depths = np.sort(rng.uniform(4.0, 50.0, n_cars))[::-1]  # far to near
    rows = np.arange(height)[:, None] + 0.5
    cols = np.arange(width)[None, :] + 0.5
    for depth in depths:
        centre, length = rng.uniform(0, width), rng.uniform(1.8, 4.6)
        roof, colour = rng.uniform(1.3, 1.7), CAR_COLOURS[rng.integers(len(CAR_COLOURS))]
        bottom = horizon + focal * CAMERA_HEIGHT_M / depth
        top = horizon + focal * (CAMERA_HEIGHT_M - roof) / depth
        body = (rows >= top) & (rows < bottom) & (np.abs(cols - centre) < focal * length / (2 * depth))
        body &= wall_depth > depth
        level = (bottom - rows[:, 0]) / (bottom - top)  # 0 at the wheels, 1 at the roof, per row
        lit = colour * (cond.ambient + 0.5 * cond.sun + 0.5 * cond.street_light)
        paint = np.where(level[:, None] > 0.55, np.array([0.10, 0.12, 0.15]), lit)  # windows
        paint = np.where(level[:, None] < 0.18, np.array([0.04, 0.04, 0.04]), paint)  # wheels, shadow
        fog = 1 - math.exp(-depth / cond.visibility_m)
        r, c = np.nonzero(body)
        image[r, c] = paint[r] * (1 - fog) + np.array(cond.haze) * fog


def _nearest_walls(city: City, origin: np.ndarray, rays: np.ndarray, visible: np.ndarray):
    """The WALL_LAYERS nearest facade hits of each ray (W, 2) from `origin`, nearest first:
    distances (W, K) (inf where no hit), positions along the facade in [0, 1], facade ids."""
    candidates = np.flatnonzero(visible)
    a = city.seg_a[candidates] - origin
    edge = city.seg_b[candidates] - city.seg_a[candidates]
    # origin + t*ray = a + s*edge, solved for every ray and candidate at once.
    denom = rays[:, 0:1] * edge[:, 1] - rays[:, 1:2] * edge[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (a[:, 0] * edge[:, 1] - a[:, 1] * edge[:, 0]) / denom
        s = (a[:, 0] * rays[:, 1:2] - a[:, 1] * rays[:, 0:1]) / denom
    hit = (t > 0.05) & (t < MAX_VIEW_M) & (s >= 0) & (s <= 1)
    # Extra columns that no ray hits keep the shapes fixed when few facades are in view.
    t = np.concatenate([np.where(hit, t, np.inf), np.full((len(rays), WALL_LAYERS), np.inf)], 1)
    s = np.concatenate([s, np.zeros((len(rays), WALL_LAYERS))], 1)
    candidates = np.append(candidates, np.zeros(WALL_LAYERS, dtype=candidates.dtype))
    nearest = np.argpartition(t, WALL_LAYERS - 1, axis=1)[:, :WALL_LAYERS]
    nearest = np.take_along_axis(nearest, np.argsort(np.take_along_axis(t, nearest, 1), axis=1), 1)
    return np.take_along_axis(t, nearest, 1), np.take_along_axis(s, nearest, 1), candidates[nearest]


def render_views(city: City, cameras: np.ndarray, conditions: list[Conditions], pixels: int,
                 noise: list[np.random.Generator]) -> np.ndarray:
    """Render views from cameras (B, 3) = map x, y and compass heading: uint8 (B, H, W, 3).

    Views are shaded together to share numpy's per-call overhead; each view's pixels depend
    only on its own camera, conditions and noise generator (clouds, cars, sensor noise).
    """
    cameras = np.asarray(cameras, dtype=float).reshape(-1, 3)
    n_views, width = len(cameras), pixels
    focal = (width / 2) / math.tan(math.radians(FOV_DEG / 2))
    offsets = np.arctan((np.arange(width) + 0.5 - width / 2) / focal)  # column angle from the axis
    angles = np.radians(cameras[:, 2])[:, None] + offsets
    rays = np.stack([np.sin(angles), np.cos(angles)], -1)  # (B, W, 2)
    visible = _visible_facades(city, cameras[:, :2], rays)
    walls = [_nearest_walls(city, cameras[i, :2], rays[i], visible[i]) for i in range(n_views)]
    t_k, s_k, seg_k = (np.concatenate(parts) for parts in zip(*walls))  # (BW, layers) each

    # Height seen by each row in each layer, from the perpendicular distance: (layers, H, BW).
    depth = t_k * np.tile(np.cos(offsets), n_views)[:, None]
    rows = np.arange(pixels) + 0.5
    horizon = HORIZON_ROW * pixels
    v = CAMERA_HEIGHT_M + (horizon - rows)[None, :, None] * depth.T[:, None, :] / focal
    covered = (v >= 0) & (v <= city.height[city.seg_building[seg_k]].T[:, None, :]) & np.isfinite(v)
    first = np.argmax(covered, axis=0)  # nearest layer covering each pixel, (H, BW)
    is_wall = covered.any(axis=0).reshape(pixels, n_views, width)

    cond = _condition_arrays(conditions)
    # Sky: a vertical gradient under clouds; road: grey, lit by street lamps at night; both
    # fade into haze with distance.
    sky_t = np.clip(rows / horizon, 0, 1)[:, None, None]
    sky = cond["sky_zenith"][None] * (1 - sky_t) + cond["sky_horizon"][None] * sky_t  # (H, B, 3)
    image = np.repeat(sky[:, :, None, :], width, axis=2)  # (H, B, W, 3)
    cloud_colour = 0.4 * cond["sky_horizon"] + 0.6 * (cond["ambient"] + cond["sun"])[:, None] * 0.95
    for i, rng in enumerate(noise):
        cover = np.clip((_smooth_noise(rng, (pixels, width), 4) - 1 + cond["clouds"][i]) / 0.25, 0, 1)
        cover[rows > horizon] = 0
        image[:, i] += cover[..., None] * (cloud_colour[i] - image[:, i])
    below = rows > horizon
    ground_dist = CAMERA_HEIGHT_M * focal / np.maximum(rows[below] - horizon, 1e-3)
    ground_dist = (ground_dist[:, None] / np.cos(offsets)[None, :])[:, None, :, None]  # (G, 1, W, 1)
    road = np.array(city.style.ground_colour) * (cond["ambient"] + 0.5 * cond["sun"])[:, None]
    lamps = cond["street_light"][None, :, None, None] * 0.35 * np.exp(-ground_dist / 12.0)
    road = road[None, :, None] + lamps
    fog = 1 - np.exp(-ground_dist / cond["visibility_m"][None, :, None, None])
    image[below] = road * (1 - fog) + cond["haze"][None, :, None] * fog

    rr, bb, cc = np.nonzero(is_wall)
    column = bb * width + cc
    layer = first[rr, column]
    seg, dist = seg_k[column, layer], t_k[column, layer]
    edge = city.seg_b[seg] - city.seg_a[seg]
    length = np.hypot(edge[:, 0], edge[:, 1])
    u = s_k[column, layer] * length
    height = v[layer, rr, column]
    albedo, emitted, glass = _facade(city, seg, u, height, cond["lit_windows"][bb], cond["glow"][bb])
    normal = np.stack([edge[:, 1], -edge[:, 0]], 1) / length[:, None]
    sun_az = np.radians(cond["sun_azimuth"][bb])
    facing_sun = np.clip(normal[:, 0] * np.sin(sun_az) + normal[:, 1] * np.cos(sun_az), 0, None)
    shade = cond["ambient"][bb] + cond["sun"][bb] * facing_sun
    # Street lamps light the lower floors, in pools every 18 m along the facade.
    pools = 0.6 + 0.4 * np.cos(u * (2 * math.pi / 18.0)) ** 2
    shade += cond["street_light"][bb] * np.exp(-height / 5.0) * pools
    colour = albedo * shade[:, None] + emitted
    daylight_glass = (glass & (cond["lit_windows"][bb] == 0))[:, None]
    colour = np.where(daylight_glass, colour * 0.85 + 0.1 * cond["sky_zenith"][bb], colour)
    fog = (1 - np.exp(-dist / cond["visibility_m"][bb]))[:, None]
    image[rr, bb, cc] = colour * (1 - fog) + cond["haze"][bb] * fog

    wall_depth = np.full((pixels, n_views, width), np.inf)
    wall_depth[rr, bb, cc] = depth[column, layer]
    for i, rng in enumerate(noise):
        _draw_cars(image[:, i], wall_depth[:, i], conditions[i], focal, horizon, rng)

    image = image * (cond["exposure"][:, None] * cond["tint"])[None, :, None]
    image = np.clip(image, 0, 1) ** cond["gamma"][None, :, None, None]
    image += np.stack([rng.normal(0, sigma, (pixels, width, 3)) for rng, sigma in zip(noise, cond["noise"])],
                      axis=1)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8).transpose(1, 0, 2, 3)


# ----------------------------------------------------------------------------- where images are taken


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


def panorama_shots(city: City, folder: str, points: np.ndarray, headings: int, conditions: str,
                   pano_prefix: str, rng: np.random.Generator) -> list[Shot]:
    """`headings` evenly spaced views (random start) at each point, like cropped panoramas."""
    shots = []
    for i, (x, y, street_heading, street_w) in enumerate(points):
        # Anywhere within the driving lanes.
        dx, dy = _street_shift(street_heading, 0.0, rng.uniform(-1, 1) * min(3.0, 0.25 * street_w))
        start = rng.uniform(0, 360 / headings)
        for k in range(headings):
            heading = (start + k * 360 / headings + rng.uniform(-3, 3)) % 360
            shots.append(Shot(folder, x + dx, y + dy, heading, street_heading,
                              sample_conditions(conditions, rng), int(rng.integers(2**63)),
                              f"{pano_prefix}{i:05d}"))
    return shots


def query_shots(database: list[Shot], count: int, folder: str, conditions: tuple[str, ...],
                pano_prefix: str, rng: np.random.Generator) -> list[Shot]:
    """Queries near randomly chosen database views: a few metres along the street, turned up to
    10 degrees, each place taken once per kind of conditions in `conditions`."""
    chosen = rng.choice(len(database), size=min(count, len(database)), replace=False)
    shots = []
    for i, index in enumerate(sorted(chosen)):
        base = database[index]
        dx, dy = _street_shift(base.street_heading, rng.uniform(-1, 1) * QUERY_SHIFT_ALONG_M,
                               rng.uniform(-1, 1) * QUERY_SHIFT_ACROSS_M)
        heading = (base.heading + rng.uniform(-QUERY_TURN_DEG, QUERY_TURN_DEG)) % 360
        for kind in conditions:
            shots.append(Shot(folder, base.x + dx, base.y + dy, heading, base.street_heading,
                              sample_conditions(kind, rng), int(rng.integers(2**63)), f"{pano_prefix}{i:04d}",
                              note=kind))
    return shots


# ----------------------------------------------------------------------------- dataset sizes


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

FOLDERS = (
    "sf_xs/train",
    "sf_xs/val/database",
    "sf_xs/val/queries",
    "sf_xs/test/database",
    "sf_xs/test/queries",
    "tokyo_xs/test/database",
    "tokyo_xs/test/queries",
    "tokyo_night/test/database",
    "tokyo_night/test/queries",
)


def plan_shots(seed: int, spec: SizeSpec) -> dict[str, tuple[City, list[Shot]]]:
    """Both cities and every image to render, keyed by city name; all randomness from `seed`."""
    # One generator per part, so that changing one part leaves the others as they were.
    sf_rng, tokyo_rng, train_rng, val_rng, test_rng, tokyo_shots_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6))
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
    tokyo_queries = query_shots(tokyo_db, spec.tokyo_places, "tokyo_xs/test/queries",
                                ("day", "sunset", "night"), "tkyq", tokyo_shots_rng)
    return {"sf": (sf, sf_shots), "tokyo": (tokyo, tokyo_db + tokyo_queries)}


# ----------------------------------------------------------------------------- writing


def shot_file_name(city: City, shot: Shot) -> str:
    east, north, heading = city.to_utm(shot.x, shot.y, shot.heading)
    return format_image_name(east, north, heading, utm_zone=city.style.utm_zone,
                             zone_letter=city.style.zone_letter, pano_id=shot.pano_id, note=shot.note)


def _render_jobs(city: City, batches: list[list[Shot]], pixels: int, root: str) -> None:
    """Worker job: render and save batches of shots of one city under `root`."""
    for batch in batches:
        cameras = np.array([(shot.x, shot.y, shot.heading) for shot in batch])
        noise = [np.random.default_rng(shot.noise_seed) for shot in batch]
        images = render_views(city, cameras, [shot.conditions for shot in batch], pixels, noise)
        for shot, image in zip(batch, images):
            path = Path(root, shot.folder, shot_file_name(city, shot))
            Image.fromarray(image).save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=0)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # file systems without hard links
        shutil.copy2(source, target)


def _render_all(plan: dict[str, tuple[City, list[Shot]]], pixels: int, root: Path, workers: int) -> None:
    jobs = []
    for city, shots in plan.values():
        # The views of one panorama (or one query place) are rendered together; which batch a
        # shot is in depends only on the plan, so the files do not depend on `workers`.
        batches = [list(group) for _, group in itertools.groupby(shots, lambda s: (s.folder, s.pano_id))]
        n_jobs = 4 * workers
        jobs += [(city, batches[i::n_jobs], pixels, str(root)) for i in range(n_jobs)]
    if workers <= 1:
        for job in jobs:
            _render_jobs(*job)
        return
    # Spawn, not fork: the parent may hold threads (torch) that a fork would copy half-alive.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in [pool.submit(_render_jobs, *job) for job in jobs]:
            done.result()


def generate_city(out: Path, seed: int, size: str, workers: int = 1) -> dict[str, int]:
    """Write the synthetic dataset to `out` (created atomically); returns images per folder."""
    if size not in SIZES:
        raise GeolocError(f"unknown size {size!r}: choose one of {', '.join(SIZES)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GeolocError(f"{out} already exists and is not an empty folder; remove it or choose another")
    spec = SIZES[size]
    started = time.monotonic()
    plan = plan_shots(seed, spec)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise GeolocError(f"cannot create {out}: {exc.strerror or exc}") from exc
    try:
        for folder in FOLDERS:
            (tmp / folder).mkdir(parents=True)
        _render_all(plan, spec.pixels, tmp, workers)
        # Tokyo-Night: the Tokyo-XS database and the night third of the Tokyo-XS queries.
        for source in sorted((tmp / "tokyo_xs/test/database").iterdir()):
            _link_or_copy(source, tmp / "tokyo_night/test/database" / source.name)
        for source in sorted((tmp / "tokyo_xs/test/queries").glob("*@night@.jpg")):
            _link_or_copy(source, tmp / "tokyo_night/test/queries" / source.name)
        counts = {folder: sum(1 for _ in (tmp / folder).iterdir()) for folder in FOLDERS}
        info = {"generator_version": GENERATOR_VERSION, "seed": seed, "size": size,
                "image_pixels": spec.pixels, "images": counts}
        (tmp / "synthetic.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d images to %s in %.1f s", sum(counts.values()), out, time.monotonic() - started)
    return counts


# ----------------------------------------------------------------------------- command line


def _available_cpus() -> int:
    """CPUs this process may run on (a SLURM job's share, not the whole node)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output folder (must not exist, or be empty)")
    parser.add_argument("--seed", type=int, required=True, help="random seed; same seed, same files")
    parser.add_argument("--size", choices=sorted(SIZES), required=True,
                        help="tiny: a few hundred images for tests; demo: a few thousand")
    parser.add_argument("--workers", type=int, default=min(2, _available_cpus()),
                        help="rendering processes (default: %(default)s); does not change the output")


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise GeolocError(f"--workers must be at least 1, got {args.workers}")
    counts = generate_city(args.out, args.seed, args.size, workers=args.workers)
    for folder, count in counts.items():
        print(f"{folder}: {count} images")
    return 0
