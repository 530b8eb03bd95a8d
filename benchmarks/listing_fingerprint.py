"""What the workflow pays at each parse to fingerprint a dataset folder of SF-XL's size.

The workflow writes a stamp per job (geoloc.provenance.stamps) holding the fingerprint of every
image folder the job reads: `listing_fingerprint`, one stat per image (names, sizes, modification
times). Here N empty files shaped like SF-XL's names (in 100 sub-folders) are made under --dir,
then, over --repeats runs (the best, the file system's caches warm, as at the second parse):
  - listing: `image_names`, what every training and evaluation pays already;
  - fingerprint: `listing_fingerprint` (the listing, a stat per image and the sha256).
A cold cache (after `echo 3 > /proc/sys/vm/drop_caches`, or on a network file system) costs more:
one round trip per stat.

    python benchmarks/listing_fingerprint.py                    # 1M names
    python benchmarks/listing_fingerprint.py --names 100000 --dir /scratch/me/bench
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from common import OUT, print_table, write_json
from train_fingerprint import best_seconds

from geoloc.data.listing import image_names, listing_fingerprint
from geoloc.data.names import format_image_name

FOLDERS = 100
COLUMNS = ["names", "listing_seconds", "fingerprint_seconds", "stat_us_per_image"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the files are made (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=OUT / "listing_fingerprint.json")
    return parser.parse_args()


def make_files(root: Path, n: int) -> None:
    for folder in range(FOLDERS):
        (root / f"{folder:03d}").mkdir(parents=True)
    for index in range(n):
        name = format_image_name(
            540000.0 + index * 0.7,
            4180000.0 + index * 0.3,
            30.0 * (index % 12),
            utm_zone="10",
            zone_letter="S",
            pano_id=f"{index:016x}",
            timestamp="201311",
        )
        os.close(os.open(root / f"{index % FOLDERS:03d}" / name, os.O_CREAT | os.O_WRONLY, 0o644))


def main() -> None:
    args = parse_args()
    rows = []
    for n in args.names:
        root = Path(tempfile.mkdtemp(prefix="listing-", dir=args.dir))
        try:
            make_files(root, n)
            listing = best_seconds(lambda folder=root: image_names(folder), args.repeats)
            fingerprint = best_seconds(lambda folder=root: listing_fingerprint(folder), args.repeats)
        finally:
            shutil.rmtree(root)
        rows.append(
            {
                "names": n,
                "listing_seconds": listing,
                "fingerprint_seconds": fingerprint,
                "stat_us_per_image": 1e6 * (fingerprint - listing) / n,
            }
        )
        print_table(rows[-1:], COLUMNS)
    write_json(
        args.out,
        {
            "benchmark": "listing_fingerprint",
            "settings": {"names": args.names, "repeats": args.repeats},
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
