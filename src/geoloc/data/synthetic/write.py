"""`geoloc synth`: render the planned shots and write the dataset in the real layout and names."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import multiprocessing
import os
import secrets
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from geoloc.arguments import integer
from geoloc.data.names import format_image_name
from geoloc.data.synthetic.city import City
from geoloc.data.synthetic.render import render_views
from geoloc.data.synthetic.shots import SIZES, Shot, plan_shots
from geoloc.errors import GeolocError

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # 2: headings that round to 360.0 are written 0.0
JPEG_QUALITY = 92
# The largest seed: a signed 64-bit integer, as numpy and pandas read the integers of
# synthetic.json and of the results; a larger one would not read back as the same number.
MAX_SEED = 2**63 - 1

# Every folder of the dataset, as the real datasets lay them out.
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


def shot_file_name(city: City, shot: Shot) -> str:
    east, north, heading = city.to_utm(shot.x, shot.y, shot.heading)
    return format_image_name(
        east,
        north,
        heading,
        utm_zone=city.style.utm_zone,
        zone_letter=city.style.zone_letter,
        pano_id=shot.pano_id,
        note=shot.note,
    )


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
    # mkdir, not tempfile.mkdtemp: mkdtemp makes the folder 0700 whatever the umask, and the
    # dataset is renamed into place as it is, for every member of the group to read.
    tmp = out.parent / f".{out.name}.{secrets.token_hex(8)}.tmp"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
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
        info = {
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "size": size,
            "image_pixels": spec.pixels,
            "images": counts,
        }
        (tmp / "synthetic.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d images to %s in %.1f s", sum(counts.values()), out, time.monotonic() - started)
    return counts


def _available_cpus() -> int:
    """CPUs this process may run on (a SLURM job's share, not the whole node)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output folder (must not exist, or be empty)")
    parser.add_argument(
        "--seed", type=integer(minimum=0, maximum=MAX_SEED), required=True, help="random seed; same seed, same files"
    )
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        required=True,
        help="tiny: a few hundred images for tests; demo: a few thousand",
    )
    parser.add_argument(
        "--workers",
        type=integer(minimum=1),
        default=min(2, _available_cpus()),
        help="rendering processes (default: %(default)s); does not change the output",
    )


def run(args: argparse.Namespace) -> int:
    counts = generate_city(args.out, args.seed, args.size, workers=args.workers)
    for folder, count in counts.items():
        print(f"{folder}: {count} images")
    return 0
