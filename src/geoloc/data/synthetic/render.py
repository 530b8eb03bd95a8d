"""The renderer: one ray per image column, facades textured in world coordinates, true parallax."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np

from geoloc.data.synthetic.city import City
from geoloc.data.synthetic.conditions import Conditions

FOV_DEG = 80.0  # horizontal field of view
CAMERA_HEIGHT_M = 2.5
HORIZON_ROW = 0.62  # horizon height as a fraction of the image, from the top (lens shift up)
MAX_VIEW_M = 320.0  # walls farther than this are not drawn (haze hides them anyway)
WALL_LAYERS = 4  # nearest walls kept per column, drawn far to near


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


def _facade(city: City, seg: np.ndarray, u: np.ndarray, v: np.ndarray, lit_windows: np.ndarray, glow: np.ndarray):
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
    return {f.name: np.array([getattr(c, f.name) for c in conditions], dtype=float) for f in fields(Conditions)}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Noise in [0, 1] varying over about `cells` cells per side (bilinear interpolation)."""
    coarse = rng.random((cells + 1, cells + 1))
    gy, gx = np.linspace(0, cells, shape[0]), np.linspace(0, cells, shape[1])
    y0, x0 = np.minimum(gy.astype(int), cells - 1), np.minimum(gx.astype(int), cells - 1)
    fy, fx = (gy - y0)[:, None], (gx - x0)[None, :]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


CAR_COLOURS = np.array(
    [
        (0.92, 0.92, 0.92),
        (0.12, 0.12, 0.13),
        (0.55, 0.56, 0.58),
        (0.65, 0.12, 0.10),
        (0.15, 0.25, 0.55),
        (0.80, 0.78, 0.70),
    ]
)


def _draw_cars(
    image: np.ndarray, wall_depth: np.ndarray, cond: Conditions, focal: float, horizon: float, rng: np.random.Generator
) -> None:
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


def render_views(
    city: City, cameras: np.ndarray, conditions: list[Conditions], pixels: int, noise: list[np.random.Generator]
) -> np.ndarray:
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
    image += np.stack([rng.normal(0, sigma, (pixels, width, 3)) for rng, sigma in zip(noise, cond["noise"])], axis=1)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8).transpose(1, 0, 2, 3)
