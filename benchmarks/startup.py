"""A command's fixed cost: from `geoloc train` starting to its first training iteration.

1. Reading the package versions train.json records, in fresh processes that already
   imported torch and torchvision, alternating: importing timm and faiss to ask them (what
   geoloc did before) against their installed metadata (geoloc.provenance.package_versions).
2. `geoloc train` on the tiny synthetic city (ResNet-18, 32 px, 1 iteration): seconds from
   the process start to the first iteration (the log line that starts the loop), to the end,
   and what importing the command's module alone costs.

Medians of --repeats fresh processes each.

    python benchmarks/startup.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import OUT, synthetic_city, write_json

_BEFORE = (
    "import time, torch, torchvision; t = time.perf_counter(); import timm, faiss; "
    "v = (timm.__version__, faiss.__version__); print(time.perf_counter() - t)"
)
_AFTER = (
    "import time, torch, torchvision; t = time.perf_counter(); from geoloc.provenance import package_versions; "
    "package_versions(); print(time.perf_counter() - t)"
)
_IMPORT = "import time; t = time.perf_counter(); import geoloc.train.command; print(time.perf_counter() - t)"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT / "startup.json")
    return parser.parse_args()


def python_seconds(code: str) -> float:
    return float(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )


def train_seconds(city: Path, scratch: Path) -> tuple[float, float]:
    """(seconds to the first iteration, seconds to the end) of one tiny `geoloc train`."""
    command = [
        sys.executable,
        "-m",
        "geoloc.cli",
        "train",
        "--train-dir",
        str(city / "sf_xs" / "train"),
        "--val-dir",
        str(city / "sf_xs" / "val"),
        "--out-dir",
        str(scratch / "run"),
        "--checkpoint-dir",
        str(scratch / "ckpt"),
        "--cache-dir",
        str(scratch / "cache"),
        "--run-name",
        "r",
        "--weights",
        "none",
        "--device",
        "cpu",
        "--num-workers",
        "0",
        "--epochs",
        "1",
        "--iterations-per-epoch",
        "1",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--alpha",
        "45",
        "--N",
        "2",
        "--L",
        "1",
        "--min-images-per-class",
        "3",
        "--fc-output-dim",
        "16",
        "--fresh",
    ]
    start = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    first = None
    for line in process.stderr:
        if first is None and "epoch 0: training" in line:
            first = time.perf_counter() - start
    if process.wait() != 0:
        raise SystemExit(f"geoloc train failed: {command}")
    return first, time.perf_counter() - start


def main() -> None:
    args = parse_args()
    city = synthetic_city(OUT / "data", "tiny")
    before, after, imports, first, total = [], [], [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        train_seconds(city, Path(scratch))  # warms the page cache and the group-list cache
        for _ in range(args.repeats):
            before.append(python_seconds(_BEFORE))
            after.append(python_seconds(_AFTER))
            imports.append(python_seconds(_IMPORT))
            to_first, to_end = train_seconds(city, Path(scratch))
            first.append(to_first)
            total.append(to_end)
    rows = {
        "versions_by_import_seconds": statistics.median(before),
        "versions_from_metadata_seconds": statistics.median(after),
        "import_train_command_seconds": statistics.median(imports),
        "train_start_to_first_iteration_seconds": statistics.median(first),
        "train_start_to_end_seconds": statistics.median(total),
    }
    for key, value in rows.items():
        print(f"{key:42} {value:7.2f}")
    write_json(
        args.out,
        {
            "benchmark": "startup",
            "host_cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "results": rows,
            "samples": {"before": before, "after": after, "imports": imports, "first": first, "total": total},
        },
    )


if __name__ == "__main__":
    main()
