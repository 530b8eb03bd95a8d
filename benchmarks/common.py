"""Shared by the benchmark scripts: flags, the synthetic data they run on, the compute-only
training step, machine facts, and the table + JSON output.

The benchmarks are plain scripts: `python benchmarks/<name>.py --help`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from geoloc.atomic import atomic_write_text
from geoloc.data.synthetic.write import generate_city
from geoloc.device import autocast, channels_last, resolve_device
from geoloc.model.losses import build_classifier
from geoloc.train.guard import GuardedStep, adam

BENCHMARKS = Path(__file__).resolve().parent
OUT = Path(os.environ.get("OUT") or BENCHMARKS / "out")
DEMO_BACKBONES = ("resnet18", "mobilenet_v3_small", "efficientnet_b0")  # config/demo.yaml's grid


def add_common_arguments(
    parser: argparse.ArgumentParser, *, image_size: int, batch_size: int, backbones: tuple[str, ...], out_name: str
) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", choices=("fp32", "amp"), default="fp32")
    parser.add_argument("--image-size", type=int, default=image_size)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--backbones", default=",".join(backbones), help="comma-separated")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared machine, OpenMP threads that "
        "wait for a busy core make 2 threads slower than 1)",
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="let cuDNN time its algorithms for each shape (as geoloc.train.trainer does for "
        "its training batches on CUDA)",
    )
    parser.add_argument(
        "--data-root", type=Path, default=OUT / "data", help="synthetic cities are generated here once and reused"
    )
    parser.add_argument("--out", type=Path, default=OUT / out_name, help="JSON file to write")


def setup(args: argparse.Namespace) -> torch.device:
    """Apply --threads and --cudnn-benchmark; return the device of --device."""
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    args.backbones = [name for name in args.backbones.split(",") if name]
    return resolve_device(args.device)


# -- data ------------------------------------------------------------------------------------------
def synthetic_city(root: Path, size: str, seed: int = 0, pixels: int | None = None) -> Path:
    """The synthetic city of `size` under `root`, generated on first use.

    With `pixels`, a copy whose images are `pixels` square JPEGs (see `upscaled_copy`).
    """
    city = root / f"{size}-s{seed}"
    if not (city / "synthetic.json").is_file():
        print(f"generating the {size} synthetic city in {city} ...", file=sys.stderr)
        generate_city(city, seed=seed, size=size, workers=os.cpu_count() or 1)
    if pixels is None:
        return city
    return upscaled_copy(city, root / f"{size}-s{seed}-{pixels}px", pixels)


def upscaled_copy(source: Path, target: Path, pixels: int) -> Path:
    """`source` with every image resized to `pixels` square, light sensor noise added, JPEG q90.

    The synthetic city is rendered at 64 px; SF-XS images are 512 px JPEGs of about 50 kB.
    This makes images that cost what those cost to decode (about 48 kB each at 512 px), with
    the same names, so the same classes and ground truth.
    """
    if (target / "synthetic.json").is_file():
        return target
    print(f"writing {pixels} px copies of {source} to {target} ...", file=sys.stderr)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    jobs = []
    for folder, _, files in os.walk(source):
        out_folder = tmp / Path(folder).relative_to(source)
        out_folder.mkdir(parents=True, exist_ok=True)
        jobs += [(Path(folder) / name, out_folder / name, pixels) for name in files if name.endswith(".jpg")]
    # Spawn, not fork: this process holds torch's threads.
    with ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_upscale_one, jobs, chunksize=64))
    shutil.copy2(source / "synthetic.json", tmp / "synthetic.json")
    os.replace(tmp, target)
    return target


def _upscale_one(job: tuple[Path, Path, int]) -> None:
    source, target, pixels = job
    rng = np.random.default_rng(zlib.crc32(source.name.encode()))
    image = Image.open(source).convert("RGB").resize((pixels, pixels), Image.Resampling.BICUBIC)
    noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 4, (pixels, pixels, 3)).astype(np.int16)
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(target, quality=90)


# -- compute-only training step ------------------------------------------------------------------
class ComputeOnlyStep:
    """The training loop's compute on a batch already on the device: the pipeline's upper bound.

    Forward under the run's autocast, the CosFace logits and cross-entropy, backward, and the
    fused Adam steps of model and classifier through the trainer's own guarded step
    (geoloc.train.guard), as `geoloc.train.trainer` does them; no loading, augmentation,
    transfer, reading of the losses or bookkeeping.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        model_opt: torch.optim.Optimizer,
        n_classes: int,
        *,
        batch_size: int,
        image_size: int,
        precision: str,
        device: torch.device,
        loss: str = "cosface",
        classifier_lr: float = 0.01,
        layout_channels_last: bool | None = None,
    ) -> None:
        self.model, self.model_opt, self.precision, self.device = model, model_opt, precision, device
        self.classifier = build_classifier(loss, model.fc_output_dim, n_classes).to(device)
        self.classifier_opt = adam(self.classifier.parameters(), classifier_lr, device)
        self.guarded_step = GuardedStep(device, precision)
        self.criterion = torch.nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(batch_size, 3, image_size, image_size, generator=generator).to(device)
        # The trainer's layout (geoloc.device.channels_last) unless told otherwise.
        if channels_last(device, precision) if layout_channels_last is None else layout_channels_last:
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.labels = torch.randint(0, n_classes, (batch_size,), generator=generator).to(device)

    def step(self) -> None:
        with autocast(self.device, self.precision):
            loss = self.criterion(self.classifier(self.model(self.images), self.labels), self.labels)
        self.model_opt.zero_grad(set_to_none=True)
        self.classifier_opt.zero_grad(set_to_none=True)
        self.guarded_step(loss, [self.model_opt, self.classifier_opt])

    def seconds(self, steps: int) -> float:
        """Wall time of `steps` steps (the model left in train mode)."""
        self.model.train()
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        synchronize(self.device)
        return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- output ----------------------------------------------------------------------------------------
def machine(device: torch.device) -> dict:
    """What the figures were measured on, including the load of a shared machine."""
    info = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def settings_of(args: argparse.Namespace) -> dict:
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}


def print_table(rows: list[dict], columns: list[str]) -> None:
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    print("  ".join(column.rjust(width) for column, width in zip(columns, widths)))
    for line in cells:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths)))


def _cell(value: object) -> str:
    if isinstance(value, list):
        return "-".join(_cell(item) for item in value)
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "-" if value is None else str(value)


def write_json(path: Path, content: dict) -> None:
    atomic_write_text(path, json.dumps(content, indent=2) + "\n")
    print(f"wrote {path}")
