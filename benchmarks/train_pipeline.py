"""Training pipeline efficiency: the real training loop against its compute bound, side by side.

For each backbone, one `geoloc.train.Trainer` (the class `geoloc train` runs) on a synthetic
city and, sharing its model and optimizer, a compute-only step (forward + CosFace loss +
backward + Adam steps on a batch already on the device; benchmarks/common.py). Each round
runs half of `--iterations` compute-only steps, then `Trainer.fit()` over one epoch of
`--iterations` iterations (real sampler, DataLoader and decoding, on-device augmentation,
loss, optimizer, bookkeeping), then the other half: a load that drifts during the round
weighs on both sides alike.

    efficiency = pipeline images/s / compute-only images/s

in wall time, the pipeline's being `train_seconds` as train.json has it (validation and
checkpoints excluded). On a shared CPU machine other processes' bursts still move wall-time
ratios by +-20 %, so with the loader in the main process (--num-workers 0) and one thread,
`cpu_efficiency` gives the same ratio in this process's CPU time (fit()'s, less what its
validation and checkpoints took), which other processes barely touch. Figures are medians
over the rounds after the first (it starts the loader and warms caches: at 20 iterations
that weighs 500 times more than in a 10,000-iteration epoch), with the wall ratio's range.
`epoch_fixed_seconds`: the rest of an epoch's wall time besides validation (the end-of-epoch
checkpoint, moving the classifier). Validation uses the tiny city's val set, to be quick.

    python benchmarks/train_pipeline.py                         # CPU, demo settings (64 px)
    python benchmarks/train_pipeline.py --image-cache           # also with geoloc.data.image_cache
    python benchmarks/train_pipeline.py --device cuda --precision amp --image-size 512 \\
        --source-pixels 512 --num-workers 14 --iterations 200 --image-cache
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
import time
from pathlib import Path

from common import (
    DEMO_BACKBONES,
    ComputeOnlyStep,
    add_common_arguments,
    machine,
    print_table,
    settings_of,
    setup,
    synthetic_city,
    write_json,
)

from geoloc.data.datasets import TrainGroupDataset
from geoloc.train import checkpoint
from geoloc.train import trainer as train_module
from geoloc.train.settings import RunInfo, TrainSettings
from geoloc.train.trainer import Trainer, open_image_cache

COLUMNS = [
    "backbone",
    "loader",
    "compute_img_s",
    "pipeline_img_s",
    "efficiency",
    "efficiency_range",
    "cpu_efficiency",
    "first_round_efficiency",
    "epoch_fixed_seconds",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, image_size=64, batch_size=32, backbones=DEMO_BACKBONES, out_name="train_pipeline.json")
    parser.add_argument("--city", choices=("tiny", "demo"), default="demo", help="synthetic training set")
    parser.add_argument(
        "--source-pixels",
        type=int,
        default=None,
        help="train on copies of the city's images at this size (512: SF-XS-like JPEGs); "
        "default: the 64 px images as rendered",
    )
    parser.add_argument(
        "--min-images-per-class", type=int, default=4, help="config/demo.yaml: 4; the tiny city needs 3"
    )
    parser.add_argument("--iterations", type=int, default=20, help="iterations per round")
    parser.add_argument("--rounds", type=int, default=4, help="alternating compute-only / pipeline rounds")
    parser.add_argument("--num-workers", type=int, default=0, help="loader processes (config/demo.yaml: 0)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the trainer's network (geoloc train --compile); the compute-only "
        "step stays eager, so read pipeline_img_s against a run without it",
    )
    parser.add_argument(
        "--image-cache",
        action="store_true",
        help="also run the rounds with the training images read from a geoloc.data.image_cache",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = setup(args)
    logging.basicConfig(level=logging.WARNING)
    city = synthetic_city(args.data_root, args.city, pixels=args.source_pixels)
    val_city = synthetic_city(args.data_root, "tiny", pixels=args.source_pixels)
    rows = []
    for backbone in args.backbones:
        with tempfile.TemporaryDirectory(prefix="train-pipeline-") as scratch:
            trainer = make_trainer(args, backbone, city, val_city, Path(scratch), device)
            step = ComputeOnlyStep(
                trainer.model,
                trainer.model_opt,
                len(trainer.datasets[0]),
                batch_size=args.batch_size,
                image_size=args.image_size,
                precision=args.precision,
                device=device,
            )
            step.seconds(3)  # warm-up: allocator, cuDNN's algorithm search
            rows.append(measure(args, trainer, step, backbone, "decode"))
            print_table(rows[-1:], COLUMNS)
            if args.image_cache:
                build_seconds = use_image_cache(args, trainer, args.data_root / "image-cache")
                rows.append({**measure(args, trainer, step, backbone, "cache"), "cache_build_seconds": build_seconds})
                print_table(rows[-1:], COLUMNS)
    print()
    print_table(rows, COLUMNS)
    write_json(
        args.out,
        {"benchmark": "train_pipeline", "machine": machine(device), "settings": settings_of(args), "results": rows},
    )


def make_trainer(args: argparse.Namespace, backbone: str, city: Path, val_city: Path, scratch: Path, device) -> Trainer:
    # config/demo.yaml's training settings, one epoch of --iterations.
    settings = TrainSettings(
        backbone=backbone,
        precision=args.precision,
        epochs=1,
        iterations_per_epoch=args.iterations,
        batch_size=args.batch_size,
        image_size=args.image_size,
        lr=3e-4,
        M=10,
        alpha=45,
        N=2,
        L=1,
        min_images_per_class=args.min_images_per_class,
    )
    run = RunInfo(f"{backbone}-none-{args.precision}-s0", backbone, "none", args.precision, 0, "bench")
    return Trainer(
        settings,
        run,
        train_dir=city / "sf_xs" / "train",
        val_dir=val_city / "sf_xs" / "val",
        weights=None,
        checkpoint_dir=scratch / "checkpoints",
        cache_dir=args.data_root / "groups",
        device=str(device.type),
        num_workers=args.num_workers,
        checkpoint_every=10**9,
        compile=args.compile,
    )


def measure(args: argparse.Namespace, trainer: Trainer, step: ComputeOnlyStep, backbone: str, loader: str) -> dict:
    images = args.iterations * args.batch_size
    half = max(1, args.iterations // 2)
    rounds, compile_seconds = [], None
    for _ in range(args.rounds):
        cpu_start = time.process_time()
        compute_seconds = step.seconds(half)
        compute_cpu = time.process_time() - cpu_start
        with cpu_time_outside_training() as outside:
            cpu_start, start = time.process_time(), time.perf_counter()
            progress = trainer.fit(fresh=True)
            compile_seconds = compile_seconds or progress.compile_seconds  # the first round compiles
            fit_seconds, fit_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        cpu_start = time.process_time()
        compute_seconds += step.seconds(half)
        compute_cpu += time.process_time() - cpu_start
        compute_images = 2 * half * args.batch_size
        rounds.append(
            {
                "compute_img_s": compute_images / compute_seconds,
                "pipeline_img_s": images / progress.train_seconds,
                "efficiency": images / progress.train_seconds / (compute_images / compute_seconds),
                "epoch_fixed_seconds": fit_seconds - progress.val_seconds - progress.train_seconds,
            }
        )
        if args.num_workers == 0 and step.device.type == "cpu":  # this process does all the work
            rounds[-1]["cpu_efficiency"] = images / (fit_cpu - outside["seconds"]) / (compute_images / compute_cpu)
    counted = rounds[1:] or rounds
    return {
        "backbone": backbone,
        "loader": loader,
        "cpu_efficiency": None,
        "compile_seconds": compile_seconds,
        **{key: statistics.median(r[key] for r in counted) for key in rounds[0]},
        "efficiency_range": [min(r["efficiency"] for r in counted), max(r["efficiency"] for r in counted)],
        "first_round_efficiency": rounds[0]["efficiency"],
        "rounds": rounds,
    }


@contextlib.contextmanager
def cpu_time_outside_training():
    """Count this process's CPU seconds in fit()'s validation and checkpoints (yields {"seconds"})."""
    spent = {"seconds": 0.0}

    def counted(function):
        def wrapper(*args, **kwargs):
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent["seconds"] += time.process_time() - start

        return wrapper

    # geoloc.train.trainer calls them through these module attributes.
    originals = train_module.evaluate_model, checkpoint.save_checkpoint
    train_module.evaluate_model, checkpoint.save_checkpoint = map(counted, originals)
    try:
        yield spent
    finally:
        train_module.evaluate_model, checkpoint.save_checkpoint = originals


def use_image_cache(args: argparse.Namespace, trainer: Trainer, folder: Path) -> float:
    """Point the trainer's datasets at the image cache `geoloc train --image-cache DIR` opens
    (the whole training folder's, built if missing); returns the seconds its build took."""
    listing = trainer.datasets[0].classes.listing
    cache = open_image_cache(listing, args.image_size, folder, None, max(1, args.num_workers), max_bad_images=0)
    trainer.datasets = [
        TrainGroupDataset(dataset.classes, args.image_size, cache=cache) for dataset in trainer.datasets
    ]
    return cache.build_seconds


if __name__ == "__main__":
    main()
