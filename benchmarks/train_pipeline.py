"""Training pipeline efficiency: the real training loop against its compute bound, side by side.

For each backbone, one `geoloc.train.Trainer` (the class `geoloc train` runs) on a synthetic
city, and, sharing its model and optimizer, a compute-only step (forward + CosFace loss +
backward + Adam steps on a batch already on the device; benchmarks/common.py). Rounds
alternate: `--iterations` compute-only steps, then `Trainer.fit()` over one epoch of
`--iterations` iterations (real sampler, DataLoader and decoding, on-device augmentation,
loss, optimizer, bookkeeping). Alternating keeps a shared machine's changing load out of the
ratio. The pipeline's time is `train_seconds` as train.json has it (validation and checkpoints
excluded). `epoch_fixed_seconds` is the rest of an epoch's wall time besides validation: the
end-of-epoch checkpoint, moving the classifier, and loader start-up when not in train_seconds.

efficiency = pipeline images/s / compute-only images/s, over the rounds after the first (the
first starts the loader and warms caches: 20 iterations here weigh it 500 times more than a
10,000-iteration epoch does). Validation uses the tiny city's small val set: its time is not
measured, only waited for.

    python benchmarks/train_pipeline.py                         # CPU, demo settings (64 px)
    python benchmarks/train_pipeline.py --image-cache           # also with geoloc.image_cache
    python benchmarks/train_pipeline.py --device cuda --precision amp --image-size 512 \\
        --source-pixels 512 --num-workers 8 --iterations 100 --image-cache
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from common import (DEMO_BACKBONES, ComputeOnlyStep, add_common_arguments, machine, print_table,
                    settings_of, setup, synthetic_city, write_json)

from geoloc.data import TrainGroupDataset
from geoloc.image_cache import ImageCache
from geoloc.train import RunInfo, Trainer, TrainSettings

COLUMNS = ["backbone", "loader", "compute_img_s", "pipeline_img_s", "efficiency", "first_round_efficiency",
           "epoch_fixed_seconds"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, image_size=64, batch_size=32, backbones=DEMO_BACKBONES,
                         out_name="train_pipeline.json")
    parser.add_argument("--city", choices=("tiny", "demo"), default="demo", help="synthetic training set")
    parser.add_argument("--source-pixels", type=int, default=None,
                        help="train on copies of the city's images at this size (512: SF-XS-like JPEGs); "
                             "default: the 64 px images as rendered")
    parser.add_argument("--min-images-per-class", type=int, default=4,
                        help="config/demo.yaml: 4; the tiny city needs 3")
    parser.add_argument("--iterations", type=int, default=20, help="iterations per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating compute-only / pipeline rounds")
    parser.add_argument("--num-workers", type=int, default=0, help="loader processes (config/demo.yaml: 0)")
    parser.add_argument("--image-cache", action="store_true",
                        help="also run the rounds with the training images read from a geoloc.image_cache")
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
            step = ComputeOnlyStep(trainer.model, trainer.model_opt, len(trainer.datasets[0]),
                                   batch_size=args.batch_size, image_size=args.image_size,
                                   precision=args.precision, device=device)
            step.seconds(3)  # warm-up: allocator, cuDNN's algorithm search
            rows.append(measure(args, trainer, step, backbone, "decode"))
            print_table(rows[-1:], COLUMNS)
            if args.image_cache:
                build_seconds = use_image_cache(args, trainer, args.data_root / "image-cache")
                rows.append({**measure(args, trainer, step, backbone, "cache"),
                             "cache_build_seconds": build_seconds})
                print_table(rows[-1:], COLUMNS)
    print()
    print_table(rows, COLUMNS)
    write_json(args.out, {"benchmark": "train_pipeline", "machine": machine(device),
                          "settings": settings_of(args),
                          "results": rows})


def make_trainer(args: argparse.Namespace, backbone: str, city: Path, val_city: Path, scratch: Path,
                 device) -> Trainer:
    # config/demo.yaml's training settings, one epoch of --iterations.
    settings = TrainSettings(backbone=backbone, precision=args.precision, epochs=1,
                             iterations_per_epoch=args.iterations, batch_size=args.batch_size,
                             image_size=args.image_size, lr=3e-4, M=10, alpha=45, N=2, L=1,
                             min_images_per_class=args.min_images_per_class)
    run = RunInfo(f"{backbone}-none-{args.precision}-s0", backbone, "none", args.precision, 0, "bench")
    return Trainer(settings, run, train_dir=city / "sf_xs" / "train", val_dir=val_city / "sf_xs" / "val",
                   weights=None, checkpoint_dir=scratch / "checkpoints", cache_dir=args.data_root / "groups",
                   device=str(device.type), num_workers=args.num_workers, checkpoint_every=10**9)


def measure(args: argparse.Namespace, trainer: Trainer, step: ComputeOnlyStep, backbone: str, loader: str) -> dict:
    images = args.iterations * args.batch_size
    rounds = []
    for _ in range(args.rounds):
        compute_seconds = step.seconds(args.iterations)
        start = time.perf_counter()
        progress = trainer.fit(fresh=True)
        fit_seconds = time.perf_counter() - start
        rounds.append({"compute_seconds": compute_seconds, "train_seconds": progress["train_seconds"],
                       "wall_seconds": fit_seconds - progress["val_seconds"]})
    counted = rounds[1:] or rounds

    def rate(key: str, chosen: list[dict]) -> float:
        return images * len(chosen) / sum(r[key] for r in chosen)

    compute = rate("compute_seconds", counted)
    return {"backbone": backbone, "loader": loader, "compute_img_s": compute,
            "pipeline_img_s": rate("train_seconds", counted),
            "efficiency": rate("train_seconds", counted) / compute,
            "epoch_fixed_seconds": sum(r["wall_seconds"] - r["train_seconds"] for r in counted) / len(counted),
            "first_round_efficiency": rate("train_seconds", rounds[:1]) / rate("compute_seconds", rounds[:1]),
            "rounds": rounds}


def use_image_cache(args: argparse.Namespace, trainer: Trainer, folder: Path) -> float:
    """Point the trainer's datasets at an image cache of their images; returns the build seconds.

    What `geoloc train --image-cache DIR` does once the trainer is wired to it.
    """
    paths = sorted({path for dataset in trainer.datasets for images in dataset.classes for path in images})
    start = time.perf_counter()
    cache = ImageCache.build_or_open(paths, args.image_size, folder, num_workers=max(1, args.num_workers))
    seconds = time.perf_counter() - start
    trainer.datasets = [TrainGroupDataset(dataset.classes, args.image_size, cache=cache)
                        for dataset in trainer.datasets]
    return seconds


if __name__ == "__main__":
    main()
