"""Descriptor extraction: native resolution beside the resized path, and against the compute bound.

For each backbone, a randomly initialised model as `geoloc evaluate` builds it, and a copy of
a synthetic test set shaped like the real ones: database images P x P, queries in three shapes
(4:3, 3:4 and 1:1: at P = 512, 640x480, 480x640 and 512x512), JPEG q90 with light sensor noise.
In one process, rounds alternate:
  - compute-only: forward passes of P x P batches already on the device (eval mode, inference
    mode, the run's autocast; geoloc.model.cost.inference_latency_ms, median per batch), the
    bound of the resized path;
  - native: `compute_descriptors` as `geoloc evaluate` runs by default (header pass, batches
    of equal-size images, each image at its own resolution);
  - resized: `compute_descriptors(resize=(P, P))` (`--resize P P`), every batch full.
Reported: images/s of each path, native / resized (images/s and pixels/s: native queries hold
up to 14 % more pixels), the resized path's efficiency (images/s over the compute bound), and
the share of the native time spent reading headers. With the loader in this process on a CPU
(--num-workers 0), the same ratios in CPU time too (`*_cpu*`), robust to a shared machine's
load. Medians over the rounds after the first (it starts the loader and warms caches).

    python benchmarks/eval_pipeline.py                         # CPU, demo settings (64 px)
    python benchmarks/eval_pipeline.py --device cuda --precision amp --image-size 512 \\
        --source-pixels 512 --num-workers 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from common import (
    DEMO_BACKBONES,
    add_common_arguments,
    machine,
    print_table,
    settings_of,
    setup,
    synchronize,
    synthetic_city,
    write_json,
)
from PIL import Image

from geoloc.data.datasets import TestSet
from geoloc.evaluate.batches import image_sizes
from geoloc.evaluate.descriptors import compute_descriptors
from geoloc.model.cost import inference_latency_ms
from geoloc.model.network import build_model

COLUMNS = [
    "backbone",
    "images",
    "compute_img_s",
    "resized_img_s",
    "native_img_s",
    "native_over_resized",
    "native_over_resized_pixels",
    "native_over_resized_cpu",
    "resized_efficiency",
    "resized_cpu_efficiency",
    "header_share",
]
WARMUP = 2
# Query shapes as (width, height) in units of P/16: 20x15 is 640x480 at P = 512.
QUERY_SHAPES = ((20, 15), (15, 20), (16, 16))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, image_size=64, batch_size=64, backbones=DEMO_BACKBONES, out_name="eval_pipeline.json")
    parser.add_argument("--city", choices=("tiny", "demo"), default="demo")
    parser.add_argument("--test-set", default="sf_xs/test", help="folder under the city")
    parser.add_argument(
        "--source-pixels",
        type=int,
        default=None,
        help="P, the database images' side (default: --image-size); 512 for SF-XS-like JPEGs",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=0, help="loader processes (config/demo.yaml: 0)")
    return parser.parse_args()


def mixed_size_copy(source: Path, target: Path, pixels: int) -> Path:
    """`source` (database/ and queries/) re-encoded: database P x P, queries in QUERY_SHAPES."""
    if (target / "database").is_dir():
        return target
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    jobs = []
    for part in ("database", "queries"):
        (tmp / part).mkdir(parents=True)
        for index, path in enumerate(sorted((source / part).iterdir())):
            units = (16, 16) if part == "database" else QUERY_SHAPES[index % len(QUERY_SHAPES)]
            jobs.append((path, tmp / part / path.name, tuple(pixels * unit // 16 for unit in units)))
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_reencode, jobs, chunksize=64))
    os.replace(tmp, target)
    return target


def _reencode(job: tuple[Path, Path, tuple[int, int]]) -> None:
    source, target, (width, height) = job
    rng = np.random.default_rng(zlib.crc32(source.name.encode()))
    image = Image.open(source).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 4, (height, width, 3)).astype(np.int16)
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(target, quality=90)


def main() -> None:
    args = parse_args()
    device = setup(args)
    pixels = args.source_pixels or args.image_size
    city = synthetic_city(args.data_root, args.city)
    folder = mixed_size_copy(
        city / args.test_set, args.data_root / f"{city.name}-{args.test_set.replace('/', '-')}-mixed-{pixels}px", pixels
    )
    test_set = TestSet(folder)
    paths = test_set.database_paths + test_set.queries_paths
    sizes = image_sizes(paths)
    native_pixels = sum(height * width for height, width in sizes)
    batches = -(-len(paths) // args.batch_size)
    options = dict(
        batch_size=args.batch_size, device=device, num_workers=args.num_workers, autocast=args.precision == "amp"
    )
    rows = []
    for backbone in args.backbones:
        model = build_model(backbone).to(device)
        rounds = []
        for _ in range(args.rounds):
            cpu_start = time.process_time()
            latency_ms = inference_latency_ms(
                model,
                args.image_size,
                device,
                args.precision,
                batch_size=args.batch_size,
                repeats=batches,
                warmup=WARMUP,
            )
            compute_cpu = (time.process_time() - cpu_start) / (batches + WARMUP) / args.batch_size
            header, _ = _seconds(lambda: image_sizes(paths, args.num_workers), device)
            native, native_cpu = _seconds(lambda: compute_descriptors(model, paths, **options), device)
            resized, resized_cpu = _seconds(
                lambda: compute_descriptors(model, paths, resize=(args.image_size, args.image_size), **options), device
            )
            compute = 1000.0 * args.batch_size / latency_ms
            rounds.append(
                {
                    "compute_img_s": compute,
                    "resized_img_s": len(paths) / resized,
                    "native_img_s": len(paths) / native,
                    "native_over_resized": resized / native,
                    "native_over_resized_pixels": (native_pixels / native)
                    / (len(paths) * args.image_size**2 / resized),
                    "resized_efficiency": len(paths) / resized / compute,
                    "header_share": header / native,
                }
            )
            if args.num_workers == 0 and device.type == "cpu":  # this process does all the work
                rounds[-1]["native_over_resized_cpu"] = resized_cpu / native_cpu
                rounds[-1]["resized_cpu_efficiency"] = compute_cpu * len(paths) / resized_cpu
        counted = rounds[1:] or rounds
        rows.append(
            {
                "backbone": backbone,
                "images": len(paths),
                "native_over_resized_cpu": None,
                "resized_cpu_efficiency": None,
                **{key: statistics.median(r[key] for r in counted) for key in rounds[0]},
                "native_over_resized_range": [
                    min(r["native_over_resized"] for r in counted),
                    max(r["native_over_resized"] for r in counted),
                ],
                "rounds": rounds,
            }
        )
        print_table(rows[-1:], COLUMNS)
    print()
    print_table(rows, COLUMNS)
    write_json(
        args.out,
        {
            "benchmark": "eval_pipeline",
            "machine": machine(device),
            "settings": settings_of(args),
            "image_sizes": sorted({f"{w}x{h}" for h, w in sizes}),
            "results": rows,
        },
    )


def _seconds(run, device) -> tuple[float, float]:
    """Wall and CPU seconds of `run()`."""
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    run()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


if __name__ == "__main__":
    main()
