"""`geoloc cache-images`: decode every image of a training folder once into the image cache.

A job of its own (CPU only), so that the training jobs that share the cache never build it
inside a GPU allocation: they open it (`geoloc train --image-cache DIR`) over the same
listing, and find it complete. The cache covers the whole folder, whatever M, alpha, N, L and
min_images_per_class later select. Undecodable images are recorded in the cache and named in
the log, not fatal here: training decides with `max_bad_images`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from geoloc.arguments import integer
from geoloc.data.image_cache import ImageCache
from geoloc.data.images import decode_size, stored_side
from geoloc.data.listing import list_images

log = logging.getLogger(__name__)
# The schema's minimum for training.image_size.
MIN_IMAGE_SIZE = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-dir", type=Path, required=True, help="e.g. DATASETS/sf_xs/train")
    parser.add_argument(
        "--image-size",
        type=integer(minimum=MIN_IMAGE_SIZE),
        required=True,
        help="the training image_size (the cache holds images at the side training decodes at)",
    )
    parser.add_argument("--cache-dir", type=Path, required=True, help="folder of the image cache")
    parser.add_argument(
        "--num-workers",
        type=integer(minimum=0),
        default=0,
        help="decoding processes (default: %(default)s, decode in this process)",
    )


def run(args: argparse.Namespace) -> int:
    listing = list_images(args.train_dir)
    # At the side training decodes at (and opens the cache at) for this image_size.
    size = decode_size(args.image_size, stored_side(listing[0]))
    cache = ImageCache.build_or_open(listing, size, args.cache_dir, num_workers=args.num_workers)
    log.info(
        "%s: %d images at %d px, %d undecodable, built in %.1f s",
        cache.data_file,
        len(cache),
        cache.size,
        len(cache.bad_paths),
        cache.build_seconds,
    )
    return 0
