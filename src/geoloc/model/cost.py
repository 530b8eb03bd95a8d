"""What a model costs to run: FLOPs per image and inference latency.

FLOPs are torch's own count (`torch.utils.flop_counter`): a shape-based, theoretical figure
from the dense formulas of the matrix products and convolutions, in which one multiply-add
counts as 2 FLOPs. Papers and torchvision's model cards quote GMACs (multiply-adds), half of
this: ResNet-18 at 224 px is 1.82 GMACs there and 3.64 GFLOPs here. Elementwise operations
(activations, normalisation, GeM) count nothing.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from geoloc.device import autocast, check_precision
from geoloc.errors import GeolocError


def gflops_per_image(model: nn.Module, image_size: int | tuple[int, int]) -> float:
    """Forward FLOPs / 1e9 of one image of image_size x image_size, or of (H, W) (batch 1, eval mode).

    Counted on the model's own device; the model's train/eval mode is restored afterwards.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if min(height, width) < 1:
        raise GeolocError(f"image_size must be at least 1, got {image_size}")
    # Zeros: the count depends on shapes only, and the global RNG must not move (the trainer
    # calls this between seeding and training).
    image = torch.zeros(1, 3, height, width, device=_model_device(model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def inference_latency_ms(
    model: nn.Module,
    image_size: int,
    device: torch.device | str,
    precision: str,
    batch_size: int = 1,
    repeats: int = 20,
    warmup: int = 3,
) -> float:
    """Median wall time in ms of one forward pass of `batch_size` images (eval mode, no grad).

    The model must already be on `device`; the global RNG is left alone. The median of `repeats` timed passes, after
    `warmup` untimed ones (allocator and cuDNN algorithm choice), is robust to a shared
    machine's hiccups. amp autocasts to float16 on CUDA and bfloat16 on CPU, as training does.
    """
    check_precision(precision)
    for name, value in (("image_size", image_size), ("batch_size", batch_size), ("repeats", repeats)):
        if value < 1:
            raise GeolocError(f"{name} must be at least 1, got {value}")
    device = torch.device(device)
    images = torch.rand(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode(), autocast(device, precision):
            for i in range(warmup + repeats):
                _synchronize(device)
                start = time.perf_counter()
                model(images)
                _synchronize(device)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return 1000.0 * statistics.median(times)


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _synchronize(device: torch.device) -> None:
    # CUDA kernels run asynchronously: without this the clock would time the launch only.
    if device.type == "cuda":
        torch.cuda.synchronize(device)
