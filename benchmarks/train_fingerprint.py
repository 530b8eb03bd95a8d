"""Fingerprinting the trained images at SF-XL scale: the packed listing against a Path per image.

Every `geoloc train` start digests the relative names of the images it trains on (the
checkpoint's `train_images`, geoloc.train.fingerprint). SF-XL trains 8 groups of some 5.6 M
images. Here N names shaped like SF-XL's (100 sub-folders) are packed into a `Listing`, as
`build_groups` holds them, in classes of 10 images, and digested two ways, side by side in one
process:
  - packed: `trained_images_sha256`, numpy gathers from the packed names;
  - paths: what the trainer did before, one Path per image made relative to the training folder
    and joined as text, class by class.
Each is timed over --repeats runs (the best), and the ratio printed. No file is created: the
digest reads names only.

    python benchmarks/train_fingerprint.py                    # 100k and 1M names
    python benchmarks/train_fingerprint.py --names 100000
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import torch
from common import OUT, machine, print_table, write_json

from geoloc.data.groups import ClassGroup
from geoloc.data.listing import Listing
from geoloc.data.names import format_image_name
from geoloc.data.packed import PackedNames
from geoloc.train.fingerprint import trained_images_sha256

IMAGES_PER_CLASS = 10
FOLDERS = 100
ROOT = Path("/datasets/sf_xl/train")
COLUMNS = ["names", "packed_seconds", "paths_seconds", "paths_over_packed"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT / "train_fingerprint.json")
    return parser.parse_args()


def sf_xl_like_group(n: int) -> ClassGroup:
    """n names in FOLDERS sub-folders, sorted as a listing is, in classes of IMAGES_PER_CLASS."""
    names = sorted(
        f"{index % FOLDERS:03d}/"
        + format_image_name(
            540000.0 + index * 0.7,
            4180000.0 + index * 0.3,
            30.0 * (index % 12),
            utm_zone="10",
            zone_letter="S",
            pano_id=f"{index:016x}",
            timestamp="201311",
        )
        for index in range(n)
    )
    listing = Listing(ROOT, PackedNames.from_strings(names))
    starts = np.arange(0, n + 1, IMAGES_PER_CLASS, dtype=np.int64)
    starts[-1] = n
    return ClassGroup(listing, np.arange(n, dtype=np.int32), starts)


def paths_digest(train_dir: Path, groups: list[ClassGroup]) -> str:
    """The trainer's digest before the packed one (a Path per image), for comparison."""
    digest = hashlib.sha256()
    for group in groups:
        for images in group:
            digest.update("\0".join(str(Path(p).relative_to(train_dir)) for p in images).encode())
            digest.update(b"\1")
    return digest.hexdigest()


def best_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    args = parse_args()
    rows = []
    for n in args.names:
        group = sf_xl_like_group(n)
        packed = best_seconds(lambda: trained_images_sha256([group]), args.repeats)
        paths = best_seconds(lambda: paths_digest(ROOT, [group]), args.repeats)
        rows.append({"names": n, "packed_seconds": packed, "paths_seconds": paths, "paths_over_packed": paths / packed})
        print_table(rows[-1:], COLUMNS)
    print()
    print_table(rows, COLUMNS)
    write_json(
        args.out,
        {
            "benchmark": "train_fingerprint",
            "machine": machine(torch.device("cpu")),
            "settings": {"names": args.names, "repeats": args.repeats, "images_per_class": IMAGES_PER_CLASS},
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
