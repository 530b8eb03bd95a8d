"""Decoding vs the image cache: images/s of `data.read_image` and of `ImageCache.get`, side by side.

For each case (source JPEG size -> training size), the training images of a synthetic city
(the tiny city by default; its 512 px copies stand in for SF-XS's 512 px JPEGs) are read in
a random order, as the training sampler reads them: once decoded and resized by `read_image`,
once from an image cache built over them (its build time, as the cache's index records it, is
reported, with --workers loader processes). Both run in this one process, on one thread,
alternating for --rounds rounds; the best round of each counts (the machine may be shared).

    python benchmarks/image_cache.py
    python benchmarks/image_cache.py --city demo --workers 2
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from common import OUT, machine, print_table, synthetic_city, write_json

from geoloc.data.image_cache import ImageCache
from geoloc.data.images import read_image
from geoloc.data.listing import list_images

CASES = ((None, 64), (512, 64), (512, 512))  # (source pixels: None = as rendered, 64 px; training size)
COLUMNS = ["source_px", "size_px", "images", "decode_img_s", "cache_img_s", "speedup", "build_seconds", "cache_mb"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--city", choices=("tiny", "demo"), default="tiny")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="loader processes building the cache")
    parser.add_argument("--data-root", type=Path, default=OUT / "data")
    parser.add_argument("--out", type=Path, default=OUT / "image_cache.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    rows = []
    for source_pixels, size in CASES:
        paths = list_images(synthetic_city(args.data_root, args.city, pixels=source_pixels) / "sf_xs" / "train")
        with tempfile.TemporaryDirectory(prefix="image-cache-") as folder:
            cache = ImageCache.build_or_open(paths, size, Path(folder), num_workers=args.workers)
            order = [paths[i] for i in random.Random(0).choices(range(len(paths)), k=len(paths))]
            rows_of = [cache.index_of(path) for path in order]
            decode, cached = [], []
            for _ in range(args.rounds):
                decode.append(_rate(lambda: _each(order, lambda path: read_image(path, size))))
                cached.append(_rate(lambda: _each(rows_of, cache.get)))
            rows.append(
                {
                    "source_px": source_pixels or 64,
                    "size_px": size,
                    "images": len(paths),
                    "decode_img_s": max(decode),
                    "cache_img_s": max(cached),
                    "speedup": max(cached) / max(decode),
                    "build_seconds": cache.build_seconds,
                    "cache_mb": cache.data_file.stat().st_size / 2**20,
                }
            )
        print_table(rows[-1:], COLUMNS)
    print()
    print_table(rows, COLUMNS)
    write_json(
        args.out,
        {
            "benchmark": "image_cache",
            "machine": machine(torch.device("cpu")),
            "settings": {"city": args.city, "rounds": args.rounds, "workers": args.workers},
            "results": rows,
        },
    )


def _each(items: list, read) -> int:
    # Each image is dropped before the next is read, as a loader hands batches on: keeping
    # them all would time the allocation of fresh memory instead.
    for item in items:
        read(item)
    return len(items)


def _rate(read_all) -> float:
    start = time.perf_counter()
    count = read_all()
    return count / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
