"""Rule `datasets`: the datasets the runs read (results/datasets.json, geoloc.data.catalog.record).

params: `root` (the datasets root), `test_sets` and `training` (catalog name -> the entry's fields,
as `dataclasses.asdict(DatasetEntry)` gives them; `training` may be empty: an evaluation-only
study). Trainings and evaluations never rerun for this file: the same datasets at another path
rerun only this rule.
"""

import json
import sys
from pathlib import Path

from geoloc.atomic import atomic_write_text
from geoloc.data.catalog import DatasetEntry, record
from geoloc.errors import GeolocError


def main(root: Path, test_sets: dict, training: dict, out: Path, log: Path) -> None:
    try:
        recorded = record(
            root,
            {name: DatasetEntry(**fields) for name, fields in test_sets.items()},
            {name: DatasetEntry(**fields) for name, fields in training.items()},
        )
    except GeolocError as error:
        log.write_text(f"datasets: error: {error}\n", encoding="utf-8")
        sys.exit(f"datasets: error: {error}")
    atomic_write_text(out, json.dumps(recorded, indent=2) + "\n")
    images = recorded["images"]
    log.write_text(f"{sum(images.values())} images in {len(images)} folders under {root}\n", encoding="utf-8")


main(
    Path(snakemake.params.root),
    dict(snakemake.params.test_sets),
    dict(snakemake.params.training),
    Path(snakemake.output[0]),
    Path(snakemake.log[0]),
)
