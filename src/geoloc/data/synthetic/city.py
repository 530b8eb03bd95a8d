"""The synthetic cities' layout: two street styles, building footprints and their facades."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


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
        (0.93, 0.88, 0.74),
        (0.85, 0.62, 0.52),
        (0.62, 0.76, 0.68),
        (0.66, 0.74, 0.86),
        (0.94, 0.93, 0.90),
        (0.78, 0.70, 0.58),
        (0.93, 0.80, 0.46),
        (0.70, 0.55, 0.66),
        (0.55, 0.58, 0.60),
        (0.82, 0.42, 0.34),
    ),
    trim_colours=((0.97, 0.97, 0.95), (0.25, 0.25, 0.28), (0.45, 0.30, 0.22), (0.20, 0.35, 0.30)),
    glass_colours=((0.16, 0.20, 0.26), (0.26, 0.32, 0.40), (0.12, 0.13, 0.14), (0.30, 0.34, 0.32)),
    sign_colours=(
        (0.85, 0.12, 0.10),
        (0.10, 0.35, 0.75),
        (0.95, 0.75, 0.10),
        (0.10, 0.55, 0.25),
        (0.95, 0.95, 0.95),
        (0.15, 0.15, 0.15),
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
        (0.78, 0.78, 0.76),
        (0.62, 0.62, 0.63),
        (0.90, 0.89, 0.85),
        (0.55, 0.50, 0.45),
        (0.70, 0.66, 0.58),
        (0.45, 0.47, 0.50),
        (0.84, 0.80, 0.72),
        (0.60, 0.64, 0.70),
    ),
    trim_colours=((0.35, 0.35, 0.37), (0.85, 0.85, 0.85), (0.55, 0.45, 0.35)),
    glass_colours=((0.18, 0.24, 0.30), (0.22, 0.28, 0.36), (0.10, 0.12, 0.15)),
    sign_colours=(
        (0.95, 0.20, 0.30),
        (0.20, 0.60, 0.95),
        (0.98, 0.85, 0.15),
        (0.30, 0.85, 0.40),
        (0.95, 0.55, 0.10),
        (0.75, 0.25, 0.85),
        (0.97, 0.97, 0.97),
    ),
    shop_probability=0.7,
    sign_probability=0.8,
    vertical_sign_probability=0.7,
    ground_colour=(0.40, 0.40, 0.41),
)


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
            lo, hi = (
                (row_start + setback, row_end - back) if street_side == 0 else (row_start + back, row_end - setback)
            )
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
