"""Scaling efficiency of one run over N training processes: images/s with N ranks / (N x one rank).

`geoloc train --nproc N` (one rank per CPU core here, gloo; on a GPU machine one per GPU,
NCCL) with the same global batch for every N, each rank one thread on CPUs, so N ranks use N
cores. images/s is train.json's (training time, validation excluded). Counts alternate within
each round; the figure is the median over rounds.

    python benchmarks/ddp_scaling.py                          # CPU: 1 and 2 ranks, ResNet-18 64 px
    python benchmarks/ddp_scaling.py --device cuda --precision amp --image-size 512 --ranks 1,2,4,8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import OUT, synthetic_city, write_json


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="1,2", help="comma-separated process counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--num-workers", type=int, default=0, help="loader processes per rank")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--source-pixels", type=int, default=None, help="train on JPEG copies of this size")
    parser.add_argument(
        "--data-root", type=Path, default=OUT / "data", help="synthetic cities are generated here once and reused"
    )
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


def images_per_second(args: argparse.Namespace, ranks: int, city: Path, val: Path, scratch: Path) -> float:
    out = scratch / f"run-{ranks}"
    threads = args.num_workers + 1  # per rank: one torch thread beside its loader workers
    command = [
        sys.executable,
        "-m",
        "geoloc.cli",
        "train",
        "--train-dir",
        str(city / "sf_xs" / "train"),
        "--val-dir",
        str(val / "sf_xs" / "val"),
        "--out-dir",
        str(out),
        "--checkpoint-dir",
        str(scratch / f"ckpt-{ranks}"),
        "--cache-dir",
        str(args.data_root / "groups"),
        "--run-name",
        "bench",
        "--backbone",
        args.backbone,
        "--weights",
        "none",
        "--device",
        args.device,
        "--precision",
        args.precision,
        "--num-workers",
        str(args.num_workers),
        "--epochs",
        "1",
        "--iterations-per-epoch",
        str(args.iterations),
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        "1e-3",
        "--alpha",
        "45",
        "--N",
        "2",
        "--L",
        "2",
        "--min-images-per-class",
        "4",
        "--checkpoint-every",
        str(10**6),
        "--fresh",
        "--nproc",
        str(ranks),
        "--threads",
        str(threads * ranks),
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads((out / "train.json").read_text())["images_per_second"]


def main() -> None:
    args = parse_args()
    counts = [int(n) for n in args.ranks.split(",")]
    city = synthetic_city(args.data_root, "demo", pixels=args.source_pixels)
    val = synthetic_city(args.data_root, "tiny", pixels=args.source_pixels)
    samples: dict[int, list[float]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.rounds):
            for n in counts:
                samples[n].append(images_per_second(args, n, city, val, Path(scratch)))
    single = statistics.median(samples[1]) if 1 in samples else None
    rows = []
    for n in counts:
        rate = statistics.median(samples[n])
        rows.append(
            {"ranks": n, "images_per_second": rate, "scaling_efficiency": rate / (n * single) if single else None}
        )
        print(
            f"{n} rank(s): {rate:8.1f} images/s" + (f", scaling efficiency {rate / (n * single):.2f}" if single else "")
        )
    write_json(
        args.out or OUT / f"ddp_scaling_{args.device}.json",
        {
            "benchmark": "ddp_scaling",
            "host_cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "settings": {k: str(v) for k, v in vars(args).items()},
            "results": rows,
            "samples": {str(n): s for n, s in samples.items()},
        },
    )


if __name__ == "__main__":
    main()
