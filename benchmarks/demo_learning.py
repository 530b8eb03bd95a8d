"""How much one demo training configuration learns, and what it costs: the sizing of config/demo.yaml.

Trains one run with the real `Trainer` on the demo city (synthetic, `--size`), evaluates the
network before and after training on synthetic SF-XS test as `geoloc evaluate` does, and prints
the gain in R@1 with a 95% paired bootstrap interval over the test queries. Speed is reported as
training images per CPU-second with one torch thread: robust to a shared machine's load, and
comparable between configurations measured on the same processor (the demo's wall time follows
from it through a reference configuration measured on an idle machine).

    python benchmarks/demo_learning.py --backbone resnet18 --iterations 200 --lr 3e-3 --seed 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import OUT, write_json

from geoloc.data.datasets import TestSet
from geoloc.data.synthetic.write import generate_city
from geoloc.evaluate.evaluation import evaluate_model
from geoloc.train.settings import RunInfo, TrainSettings
from geoloc.train.trainer import Trainer

DEMO = dict(
    classifier_lr=1e-2, M=10, alpha=45, N=2, L=2, min_images_per_class=4, groups_num=1, fc_output_dim=512
)  # config/demo.yaml's fixed training settings


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--iterations", type=int, default=700, help="in total, over --epochs")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--classifier-lr", type=float, default=DEMO["classifier_lr"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--eval-size",
        type=int,
        default=None,
        help="test images resized to this square side (evaluation.resize); default: their own",
    )
    parser.add_argument("--trainable-blocks", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--city",
        type=Path,
        default=Path(tempfile.gettempdir()) / "geoloc-demo-city",
        help="generated here when missing",
    )
    parser.add_argument("--size", default="demo", help="synthetic city size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


def hits_at_1(model: torch.nn.Module, test: Path, size: int | None) -> np.ndarray:
    result = evaluate_model(
        model,
        TestSet(test),
        batch_size=64,
        device="cpu",
        num_workers=0,
        k=20,
        positive_dist_threshold=25.0,
        resize=None if size is None else (size, size),
    )
    return np.asarray(result.ranks) == 1  # first correct rank, 1-based (0: none in the top k)


def gain_interval(before: np.ndarray, after: np.ndarray, resamples: int = 10_000) -> tuple[float, float, float]:
    """R@1 after minus before in points, with its 95% paired bootstrap interval over the queries."""
    rng = np.random.default_rng(0)
    diff = after.astype(float) - before.astype(float)
    samples = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(samples, [2.5, 97.5])
    return 100 * diff.mean(), 100 * low, 100 * high


class CurveTrainer(Trainer):
    """A Trainer that also records test R@1 after each epoch: the learning curve of one run."""

    def __init__(self, *args, test: Path, eval_size: int | None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.test, self.eval_size, self.curve, self.curve_cpu_seconds = test, eval_size, [], 0.0

    def _validate(self, progress, events) -> None:
        super()._validate(progress, events)
        start = time.process_time()
        r1 = 100 * hits_at_1(self.model, self.test, self.eval_size).mean()
        self.curve_cpu_seconds += time.process_time() - start  # not training: left out of its speed
        self.curve.append((progress.global_iteration, round(float(r1), 1)))
        print(f"iteration {progress.global_iteration}: SF-XS test R@1 {r1:.1f}", flush=True)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if not (args.city / "sf_xs").is_dir():
        generate_city(args.city, seed=0, size=args.size)
    settings = TrainSettings(
        backbone=args.backbone,
        epochs=args.epochs,
        iterations_per_epoch=args.iterations // args.epochs,
        batch_size=args.batch_size,
        image_size=args.image_size,
        lr=args.lr,
        trainable_blocks=args.trainable_blocks,
        seed=args.seed,
        **{**DEMO, "classifier_lr": args.classifier_lr},
    )
    name = (
        f"{args.backbone.replace(':', '_')}-it{args.iterations}-e{args.epochs}-b{args.batch_size}-lr{args.lr:g}"
        f"-clr{args.classifier_lr:g}"
        f"-px{args.image_size}-ev{args.eval_size}-tb{args.trainable_blocks}-s{args.seed}"
    )
    test = args.city / "sf_xs" / "test"
    with tempfile.TemporaryDirectory() as checkpoints:
        trainer = CurveTrainer(
            settings,
            RunInfo(name, args.backbone, "none", "fp32", args.seed, None),
            train_dir=args.city / "sf_xs" / "train",
            val_dir=args.city / "sf_xs" / "val",
            weights=None,
            checkpoint_dir=Path(checkpoints),
            cache_dir=None,
            device="cpu",
            num_workers=0,
            checkpoint_every=10**9,
            test=test,
            eval_size=args.eval_size,
        )
        before = hits_at_1(trainer.model, test, args.eval_size)
        print(f"untrained: SF-XS test R@1 {100 * before.mean():.1f}", flush=True)
        cpu, wall = time.process_time(), time.perf_counter()
        progress = trainer.fit()
        cpu, wall = time.process_time() - cpu - trainer.curve_cpu_seconds, time.perf_counter() - wall
        after = hits_at_1(trainer.best_model(progress), test, args.eval_size)
    gain, low, high = gain_interval(before, after)
    images = args.iterations // args.epochs * args.epochs * args.batch_size
    found = {
        "benchmark": "demo_learning",
        "run": name,
        "args": {k: str(v) for k, v in vars(args).items()},
        "r1_before": round(100 * before.mean(), 1),
        "r1_after": round(100 * after.mean(), 1),
        "gain": round(gain, 1),
        "ci": [round(low, 1), round(high, 1)],
        "images": images,
        "fit_cpu_seconds": round(cpu, 1),
        "fit_wall_seconds": round(wall, 1),
        "images_per_cpu_second": round(images / cpu, 2),
        "best_epoch": progress.best_epoch,
        "curve": trainer.curve,
    }
    write_json(args.out or OUT / f"demo_learning-{name}.json", found)
    print(
        f"{name}: R@1 {found['r1_before']} -> {found['r1_after']}, gain {gain:+.1f} (95% CI {low:+.1f} to "
        f"{high:+.1f}); {images} images, {found['images_per_cpu_second']} images per CPU-second"
    )


if __name__ == "__main__":
    main()
