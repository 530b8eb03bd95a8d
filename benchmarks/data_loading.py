"""Data loading at SF-XL scale: listing and grouping 100k and 1M names, and decoding per loader worker.

Listing and grouping: a folder of N empty files named like SF-XL's images (panoramas dense
enough that most 10 m x 30 degree classes hold 10 images or more; 12 headings each; 100
sub-folders) goes through `geoloc.data.groups.build_groups` (M=10, alpha=30, N=5, L=2,
min_images_per_class=10), each run in a fresh process:
  - first run: the listing, parsing every name, CosPlace's classes and groups, writing the cache;
  - cached run: the listing, hashing it, reading the cache;
with its wall time and its peak resident memory above the process's own after its imports.
What a loader worker costs: the first 8 groups (as CosPlace trains SF-XL: groups_num 8) as
`TrainGroupDataset`s; a forked child (as a DataLoader worker is) looks up the path of every
image of them once, as `__getitem__` does before decoding; the memory that dirtied
(Private_Dirty in smaps: pages copied for reference-count updates) is memory each worker holds
of its own. Then it runs the garbage collector once (as an epoch's allocations make it run),
which writes to every container object it traverses, Python's and torch's own included. The
same groups held as lists of Paths (geoloc's representation before) are measured the same way,
side by side.

Decoding: `data.read_image` at 512 px of 512 px JPEGs (SF-XS-like copies of the synthetic city,
about 48 kB each), in this process and through DataLoader workers: wall images/s, and images
per CPU-second of the decoding processes (what one loader worker gives with a core of its own).

    python benchmarks/data_loading.py                       # 100k and 1M names, decoding
    python benchmarks/data_loading.py --names 100000 --skip-decoding
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import OUT, machine, print_table, synthetic_city, write_json

from geoloc.data.datasets import TrainGroupDataset
from geoloc.data.groups import build_groups
from geoloc.data.images import ImageListDataset, read_image
from geoloc.data.listing import list_images
from geoloc.data.names import format_image_name

GROUPS = dict(M=10, alpha=30, N=5, L=2, min_images_per_class=10)
TRAINED_GROUPS = 8  # CosPlace on SF-XL: --groups_num 8
HEADINGS = 12
PANOS_PER_CELL = 15
FOLDERS = 100
DECODE_SIZE = 512
LISTING_COLUMNS = ["names", "run", "seconds", "peak_rss_mb", "held_mb", "groups", "classes", "images"]
WORKER_COLUMNS = ["names", "held_as", "parent_mb", "worker_dirty_mb", "worker_dirty_after_gc_mb", "images_looked_up"]
DECODE_COLUMNS = ["loader", "workers", "images", "img_s", "img_per_cpu_s"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="loader processes to decode with")
    parser.add_argument("--rounds", type=int, default=3, help="decoding rounds; the best counts")
    parser.add_argument("--skip-decoding", action="store_true")
    parser.add_argument("--skip-listing", action="store_true")
    parser.add_argument("--data-root", type=Path, default=OUT / "data")
    parser.add_argument("--out", type=Path, default=OUT / "data_loading.json")
    return parser.parse_args()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(_child(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])))
        return
    args = parse_args()
    torch.set_num_threads(1)
    listing_rows, worker_rows = [], []
    for count in [] if args.skip_listing else args.names:
        folder = name_folder(args.data_root, count)
        cache = args.data_root / f"groups-cache-{count}"
        for stale in cache.glob("*"):
            stale.unlink()
        for run in ("first", "cached"):
            listing_rows.append({"names": count, "run": run, **_in_child(folder, cache, "groups")})
            print_table(listing_rows[-1:], LISTING_COLUMNS)
        for held_as in ("packed", "paths"):
            worker_rows.append({"names": count, "held_as": held_as, **_in_child(folder, cache, held_as)})
            print_table(worker_rows[-1:], WORKER_COLUMNS)
    decode_rows = [] if args.skip_decoding else decoding(args)
    print()
    for rows, columns in (
        (listing_rows, LISTING_COLUMNS),
        (worker_rows, WORKER_COLUMNS),
        (decode_rows, DECODE_COLUMNS),
    ):
        if rows:
            print_table(rows, columns)
            print()
    write_json(
        args.out,
        {
            "benchmark": "data_loading",
            "machine": machine(torch.device("cpu")),
            "settings": {
                **GROUPS,
                "trained_groups": TRAINED_GROUPS,
                "names": args.names,
                "workers": args.workers,
                "rounds": args.rounds,
                "decode_size": DECODE_SIZE,
            },
            "listing": listing_rows,
            "workers": worker_rows,
            "decoding": decode_rows,
        },
    )


# -- listing and grouping ----------------------------------------------------------------------------
def name_folder(root: Path, count: int) -> Path:
    """A folder of `count` empty files with SF-XL-like names, made once."""
    folder = root / f"names-{count}"
    if (folder / ".complete").is_file():
        return folder
    print(f"writing {count} empty files to {folder} ...", file=sys.stderr)
    rng = np.random.default_rng(count)
    panos = -(-count // HEADINGS)
    side = (panos / PANOS_PER_CELL * GROUPS["M"] ** 2) ** 0.5  # metres: PANOS_PER_CELL panoramas per cell
    east, north = rng.uniform(0, side, (2, panos)) + np.array([[543000.0], [4178000.0]])
    pano_ids = rng.integers(0, 2**63, panos)
    for index in range(count):
        pano = index // HEADINGS
        sub = folder / f"{pano * FOLDERS // panos:04d}"
        if index % HEADINGS == 0:
            sub.mkdir(parents=True, exist_ok=True)
        name = format_image_name(
            east[pano],
            north[pano],
            30.0 * (index % HEADINGS),
            utm_zone="10",
            zone_letter="S",
            pano_id=f"{pano_ids[pano]:016x}",
            timestamp="201311",
        )
        os.close(os.open(sub / name, os.O_CREAT | os.O_WRONLY, 0o644))
    (folder / ".complete").touch()
    return folder


def _in_child(folder: Path, cache: Path, what: str) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", str(folder), str(cache), what], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def _child(folder: Path, cache: Path, what: str) -> dict:
    """Run in a fresh process: one build_groups (`groups`), or the worker test (`packed`/`paths`)."""
    gc.collect()
    before = _rss_mb()
    start = time.perf_counter()
    groups = build_groups(folder, **GROUPS, cache_dir=cache)
    seconds = time.perf_counter() - start
    if what == "groups":
        held = (
            groups.images.nbytes
            + groups.class_starts.nbytes
            + groups.group_starts.nbytes
            + groups.listing.names.buffer.nbytes
            + groups.listing.names.offsets.nbytes
        )
        return {
            "seconds": seconds,
            "peak_rss_mb": _peak_rss_mb() - before,
            "held_mb": held / 2**20,
            "groups": len(groups),
            "classes": len(groups.class_starts) - 1,
            "images": len(groups.images),
        }
    datasets = [TrainGroupDataset(groups[g], DECODE_SIZE) for g in range(TRAINED_GROUPS)]
    before = _rss_mb()
    if what == "paths":  # each class a list of Paths, as geoloc held them before
        held = [[list(images) for images in dataset.classes] for dataset in datasets]
        look_up = _look_up_paths
    else:
        held = datasets
        look_up = _look_up_packed
    parent_mb = _rss_mb() - before
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the loader worker
        os.close(read)
        dirty = _private_dirty_mb()
        count = look_up(held)
        looked_up = _private_dirty_mb()
        gc.collect()
        os.write(write, json.dumps([looked_up - dirty, _private_dirty_mb() - dirty, count]).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        lookup_mb, after_gc_mb, count = json.loads(pipe.read())
    os.waitpid(pid, 0)
    return {
        "parent_mb": parent_mb,
        "worker_dirty_mb": lookup_mb,
        "worker_dirty_after_gc_mb": after_gc_mb,
        "images_looked_up": count,
    }


def _look_up_packed(datasets: list[TrainGroupDataset]) -> int:
    count = 0
    for dataset in datasets:
        classes = dataset.classes
        for class_index in range(len(classes)):
            for image_index in range(int(classes.images_per_class[class_index])):
                os.fspath(classes.listing[classes.image(class_index, image_index)])
                count += 1
    return count


def _look_up_paths(held: list[list[list[Path]]]) -> int:
    count = 0
    for group in held:
        for images in group:
            for path in images:
                os.fspath(path)
                count += 1
    return count


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _private_dirty_mb() -> float:
    with open("/proc/self/smaps_rollup") as smaps:
        for line in smaps:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no Private_Dirty in /proc/self/smaps_rollup")


# -- decoding -------------------------------------------------------------------------------------
def decoding(args: argparse.Namespace) -> list[dict]:
    """Decoding rates: wall images/s, and images per CPU-second of the decoding processes, which
    is what one worker gives with a core of its own (robust to the load of a shared machine)."""
    paths = list_images(synthetic_city(args.data_root, "tiny", pixels=DECODE_SIZE) / "sf_xs" / "train")
    rows = []
    walls, cpus = [], []
    for _ in range(args.rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        for path in paths:
            read_image(path, DECODE_SIZE)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    rows.append(
        {
            "loader": "read_image in this process",
            "workers": 0,
            "images": len(paths),
            "img_s": len(paths) / min(walls),
            "img_per_cpu_s": len(paths) / min(cpus),
        }
    )
    print_table(rows[-1:], DECODE_COLUMNS)
    for workers in args.workers:
        loader = torch.utils.data.DataLoader(
            ImageListDataset(paths, DECODE_SIZE), batch_size=32, num_workers=workers, prefetch_factor=4
        )
        walls, cpus = [], []
        for _ in range(args.rounds):
            # The workers of one pass are the children that exit when it ends: their CPU time
            # (decoding, batching, handing batches over) is what RUSAGE_CHILDREN adds up.
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            wall = time.perf_counter()
            count = sum(len(batch) for batch in loader)
            walls.append(time.perf_counter() - wall)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        rows.append(
            {
                "loader": "DataLoader, batch 32",
                "workers": workers,
                "images": count,
                "img_s": count / min(walls),
                "img_per_cpu_s": count / min(cpus),
            }
        )
        print_table(rows[-1:], DECODE_COLUMNS)
    return rows


if __name__ == "__main__":
    main()
