"""Lighting, weather and passing cars of one image: database daylight, day, sunset, night."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


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
            sun_azimuth=150.0 + rng.uniform(-10, 10),
            sun=0.45,
            ambient=0.6,
            sky_zenith=(0.40, 0.58, 0.85),
            sky_horizon=(0.78, 0.85, 0.93),
            clouds=rng.uniform(0, 0.3),
            haze=(0.80, 0.84, 0.90),
            visibility_m=900.0,
            exposure=rng.uniform(0.95, 1.05),
            gamma=1.0,
            tint=(1.0, 1.0, 1.0),
            noise=0.01,
            lit_windows=0.0,
            street_light=0.0,
            glow=0.0,
            cars=2.0,
        )
    if kind == "day":
        overcast = rng.random() < 0.3
        sky = (0.72, 0.74, 0.78) if overcast else (0.40, 0.58, 0.85)
        return Conditions(
            sun_azimuth=rng.uniform(0, 360),
            sun=0.1 if overcast else rng.uniform(0.3, 0.6),
            ambient=rng.uniform(0.5, 0.8),
            sky_zenith=_uniform3(rng, sky, 0.15),
            sky_horizon=_uniform3(rng, (0.80, 0.84, 0.90), 0.1),
            clouds=rng.uniform(0, 0.7),
            haze=_uniform3(rng, (0.78, 0.8, 0.84), 0.1),
            visibility_m=rng.uniform(120, 900),
            exposure=rng.uniform(0.65, 1.3),
            gamma=math.exp(rng.uniform(-0.3, 0.3)),
            tint=_uniform3(rng, (1, 1, 1), 0.12),
            noise=rng.uniform(0.0, 0.04),
            lit_windows=0.0,
            street_light=0.0,
            glow=0.0,
            cars=3.0,
        )
    if kind == "sunset":
        return Conditions(
            sun_azimuth=rng.uniform(230, 300),
            sun=rng.uniform(0.3, 0.5),
            ambient=rng.uniform(0.35, 0.5),
            sky_zenith=_uniform3(rng, (0.30, 0.35, 0.60), 0.1),
            sky_horizon=_uniform3(rng, (0.98, 0.62, 0.35), 0.1),
            clouds=rng.uniform(0, 0.5),
            haze=_uniform3(rng, (0.85, 0.60, 0.45), 0.1),
            visibility_m=rng.uniform(150, 500),
            exposure=rng.uniform(0.8, 1.1),
            gamma=math.exp(rng.uniform(-0.15, 0.15)),
            tint=_uniform3(rng, (1.12, 0.92, 0.78), 0.06),
            noise=rng.uniform(0.01, 0.04),
            lit_windows=0.15,
            street_light=0.1,
            glow=0.4,
            cars=3.0,
        )
    if kind == "night":
        return Conditions(
            # City glow: the sky stays lighter than unlit walls, so the skyline shows.
            sun_azimuth=0.0,
            sun=0.0,
            ambient=rng.uniform(0.1, 0.16),
            sky_zenith=_uniform3(rng, (0.04, 0.05, 0.10), 0.2),
            sky_horizon=_uniform3(rng, (0.24, 0.19, 0.20), 0.2),
            clouds=rng.uniform(0, 0.4),
            haze=_uniform3(rng, (0.12, 0.10, 0.10), 0.2),
            visibility_m=rng.uniform(200, 600),
            exposure=rng.uniform(0.9, 1.3),
            gamma=math.exp(rng.uniform(-0.2, 0.1)),
            tint=_uniform3(rng, (1.05, 0.97, 0.88), 0.06),
            noise=rng.uniform(0.02, 0.05),
            lit_windows=rng.uniform(0.35, 0.6),
            street_light=rng.uniform(0.35, 0.55),
            glow=1.0,
            cars=2.0,
        )
    raise ValueError(f"unknown conditions kind {kind!r}")
