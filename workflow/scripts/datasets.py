"""Rule `datasets`: the datasets the runs read, and how many images each of their folders holds.

Trainings and evaluations wait for this file but never rerun for it (ancient inputs): the
same datasets at another path rerun only this rule.
"""

import json
import sys
from pathlib import Path

from geoloc.atomic import atomic_write_text
from geoloc.data.listing import image_names
from geoloc.errors import GeolocError


def folders(test_sets: list[str]) -> list[str]:
    tests = [f"{name}/test/{part}" for name in test_sets for part in ("database", "queries")]
    return ["sf_xs/train", "sf_xs/val/database", "sf_xs/val/queries", *tests]


def main(root: Path, test_sets: list[str], out: Path, log: Path) -> None:
    try:
        counts = {folder: len(image_names(root / folder)) for folder in folders(test_sets)}
    except GeolocError as error:
        log.write_text(f"datasets: error: {error}\n", encoding="utf-8")
        sys.exit(f"datasets: error: {error}")
    atomic_write_text(out, json.dumps({"root": str(root.resolve()), "images": counts}, indent=2) + "\n")
    log.write_text(f"{sum(counts.values())} images in {len(counts)} folders under {root}\n", encoding="utf-8")


main(Path(snakemake.params.root), snakemake.params.test_sets, Path(snakemake.output[0]), Path(snakemake.log[0]))
