"""Training beside a busy process: torch's default threads against geoloc's thread budget.

One training (the real `Trainer`, config/demo.yaml's settings: ResNet-18, 64 px, batch 32,
the loader in the main process) runs in a fresh process per measurement, in one of two modes:

  default  torch as it starts: one intra-op thread per CPU, OpenMP threads that spin while
           they wait (what geoloc did before the budget);
  budget   what every `geoloc` command now does (geoloc.device): OMP_WAIT_POLICY=PASSIVE set
           before torch loads, intra-op threads = the CPU budget minus the loader workers.

each on a quiet machine and beside one busy process (a Python loop spinning on one core),
alternating mode and condition within each round so that a drift of the machine's load
weighs on all four alike. images/s is the epoch's `train_seconds` as train.json reports it
(validation excluded); the figure is the median over rounds, `busy / quiet` the ratio of the
medians for one mode. The issue this answers measured 0.3 for the default with one of two
cores taken; the target is >= 0.45.

    python benchmarks/threads.py                      # 3 rounds, 20 iterations each
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

BENCHMARKS = Path(__file__).resolve().parent
MODES = ("default", "budget")
CONDITIONS = ("quiet", "busy")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20, help="training iterations per measurement")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0, help="loader processes (config/demo.yaml: 0)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)  # one measurement, in its own process
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    return parser.parse_args()


def child(args: argparse.Namespace) -> None:
    """One training in this fresh process; prints its images/s as JSON."""
    if args.child == "budget":
        from geoloc.device import apply_thread_budget, cpu_budget, prepare_openmp

        prepare_openmp()  # before torch loads, as geoloc.cli does
        import torch

        apply_thread_budget(cpu_budget(), args.num_workers)
    else:
        import torch
    import logging

    from common import synthetic_city

    from geoloc.train.settings import RunInfo, TrainSettings
    from geoloc.train.trainer import Trainer

    logging.basicConfig(level=logging.WARNING)
    data = Path(os.environ["GEOLOC_BENCH_DATA"])
    city, val_city = synthetic_city(data, "demo"), synthetic_city(data, "tiny")
    settings = TrainSettings(
        backbone=args.backbone,
        epochs=1,
        iterations_per_epoch=args.iterations,
        batch_size=args.batch_size,
        image_size=args.image_size,
        lr=1e-3,
        M=10,
        alpha=45,
        N=2,
        L=2,
        min_images_per_class=4,
    )
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(
            settings,
            RunInfo("bench", args.backbone, "none", "fp32", 0, None),
            train_dir=city / "sf_xs" / "train",
            val_dir=val_city / "sf_xs" / "val",
            weights=None,
            checkpoint_dir=Path(scratch) / "ckpt",
            cache_dir=data / "groups",
            device="cpu",
            num_workers=args.num_workers,
            checkpoint_every=10**9,
        )
        progress = trainer.fit()
    print(
        json.dumps(
            {
                "images_per_second": args.iterations * args.batch_size / progress.train_seconds,
                "torch_threads": torch.get_num_threads(),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            }
        )
    )


def measure(args: argparse.Namespace, mode: str, condition: str, env: dict) -> dict:
    command = [
        sys.executable,
        str(Path(__file__)),
        "--child",
        mode,
        "--iterations",
        str(args.iterations),
        "--backbone",
        args.backbone,
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--num-workers",
        str(args.num_workers),
    ]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if condition == "busy" else None
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    from common import OUT, synthetic_city

    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    env["GEOLOC_BENCH_DATA"] = str(OUT / "data")
    synthetic_city(OUT / "data", "demo"), synthetic_city(OUT / "data", "tiny")  # generated once, not timed
    rounds = []
    for index in range(args.rounds):
        row = {f"{mode}_{condition}": measure(args, mode, condition, env) for condition in CONDITIONS for mode in MODES}
        rounds.append({**row, "load_average": os.getloadavg()[0]})
        print(
            f"round {index}: "
            + ", ".join(
                f"{key} {value['images_per_second']:.1f}" for key, value in row.items() if isinstance(value, dict)
            )
        )
    results = {}
    for mode in MODES:
        quiet = statistics.median(r[f"{mode}_quiet"]["images_per_second"] for r in rounds)
        busy = statistics.median(r[f"{mode}_busy"]["images_per_second"] for r in rounds)
        results[mode] = {
            "quiet_img_s": quiet,
            "busy_img_s": busy,
            "busy_over_quiet": busy / quiet,
            "torch_threads": rounds[0][f"{mode}_quiet"]["torch_threads"],
        }
    print(f"\n{'mode':8} {'threads':>7} {'quiet img/s':>12} {'busy img/s':>11} {'busy/quiet':>10}")
    for mode, r in results.items():
        print(
            f"{mode:8} {r['torch_threads']:>7} {r['quiet_img_s']:>12.1f} {r['busy_img_s']:>11.1f} "
            f"{r['busy_over_quiet']:>10.2f}"
        )
    print(
        f"budget/default quiet: {results['budget']['quiet_img_s'] / results['default']['quiet_img_s']:.2f}, "
        f"busy: {results['budget']['busy_img_s'] / results['default']['busy_img_s']:.2f}"
    )
    out = args.out or OUT / "threads.json"
    from common import write_json

    write_json(
        out,
        {
            "benchmark": "threads",
            "host_cpus": os.cpu_count(),
            "settings": vars(args) | {"out": str(out)},
            "results": results,
            "rounds": rounds,
        },
    )


if __name__ == "__main__":
    sys.path.insert(0, str(BENCHMARKS))
    main()
