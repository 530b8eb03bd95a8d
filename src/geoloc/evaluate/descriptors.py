"""Descriptors of a list of images: CosPlace's protocol, batched by size, decoded in loader workers.

By default every image is embedded at its own resolution and in fp32, whatever precision the
model was trained in (CosPlace's test.py); `resize` (its `resize_test_imgs`, here to an exact
H x W) and `autocast` are options. A backbone that needs sides in multiples of its patch size
(a ViT: geoloc.model.backbones.input_size_multiple) gets each image resized to the nearest
multiple: any image size works, at the cost of a few pixels of stretch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geoloc.data.images import read_image
from geoloc.device import autocast as device_autocast
from geoloc.device import channels_last
from geoloc.errors import GeolocError
from geoloc.evaluate.batches import equal_size_batches, image_sizes, leave_stop_signals_to_the_main_process
from geoloc.model.backbones import input_size_multiple

log = logging.getLogger(__name__)


class _ImagesOrErrors(torch.utils.data.Dataset):
    """(image, "") or, for an image that cannot be decoded at its expected size, (blank, message).

    Image i is decoded at `sizes[i]`: resized there when `resized[i]`, else at its own
    resolution, which its header said is `sizes[i]`. Raised in a loader worker, the error would
    reach the user as a worker traceback; it is raised by the main process instead, with its
    one-line message naming the file.
    """

    def __init__(self, paths: list[Path], sizes: list[tuple[int, int]], resized: list[bool]) -> None:
        self.paths, self.sizes, self.resized = paths, sizes, resized

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        height, width = self.sizes[index]
        try:
            image = read_image(self.paths[index], self.sizes[index] if self.resized[index] else None)
        except GeolocError as exc:
            return torch.zeros(3, height, width, dtype=torch.uint8), str(exc)
        if image.shape[1:] != (height, width):  # the file changed since its header was read
            return (
                torch.zeros(3, height, width, dtype=torch.uint8),
                f"image {self.paths[index]} decodes to {image.shape[2]}x{image.shape[1]} pixels, "
                f"but its header said {width}x{height}",
            )
        return image, ""


def nearest_multiple(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """(H, W) each rounded to the nearest multiple of `multiple` (halves up), at least one multiple."""
    return tuple(max(multiple, (side + multiple // 2) // multiple * multiple) for side in size)


def compute_descriptors(
    model: torch.nn.Module,
    paths: list[Path],
    *,
    batch_size: int,
    device: torch.device | str,
    num_workers: int = 0,
    resize: tuple[int, int] | None = None,
    autocast: bool = False,
) -> np.ndarray:
    """L2-normalised float32 descriptors (n, D) of the images at `paths`, in their order.

    Each image is embedded at its own size (`resize`: at H x W; either rounded to the nearest
    multiple of the backbone's patch size, `nearest_multiple`) in batches of equal-size images,
    so its descriptor is the one the model gives it alone. Images travel to the device as uint8
    and become floats in [0, 1] there. With `autocast`, the forward pass runs under the
    device's autocast (float16 on CUDA, bfloat16 on CPU, as amp trains); descriptors are cast
    to float32 and normalised again either way. The model's train/eval mode is restored
    afterwards (the trainer validates mid-training).
    """
    if not paths:
        raise GeolocError("no images to compute descriptors of")
    device = torch.device(device)
    stored = [resize] * len(paths) if resize is not None else image_sizes(paths, num_workers)
    multiple = input_size_multiple(model)
    sizes = [nearest_multiple(size, multiple) for size in stored]
    resized = [resize is not None or size != own for size, own in zip(sizes, stored)]
    if sizes != stored:
        log.info(
            "%d of %d images resized to the nearest multiple of %d px (the backbone's patch size)",
            sum(size != own for size, own in zip(sizes, stored)),
            len(paths),
            multiple,
        )
    batches = equal_size_batches(sizes, batch_size)
    loader = torch.utils.data.DataLoader(
        _ImagesOrErrors(paths, sizes, resized),
        batch_sampler=batches,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=leave_stop_signals_to_the_main_process,
    )
    was_training = model.training
    model.eval()
    outputs = []
    precision = "amp" if autocast else "fp32"
    layout = torch.channels_last if channels_last(device, precision) else torch.contiguous_format
    try:
        with torch.inference_mode(), device_autocast(device, precision):
            for images, errors in loader:
                if failed := next((error for error in errors if error), None):
                    raise GeolocError(failed)
                images = images.to(device, non_blocking=True)
                images = images.contiguous(memory_format=layout)
                # Kept on the device until the end: no host synchronisation per batch.
                outputs.append(F.normalize(model(images.float().div_(255.0)).float(), dim=1))
    finally:
        model.train(was_training)
    descriptors = np.empty((len(paths), outputs[0].shape[1]), dtype=np.float32)
    descriptors[np.concatenate(batches)] = torch.cat(outputs).cpu().numpy()
    # A NaN descriptor would be ranked arbitrarily by the search: never a recall from it.
    broken = ~np.isfinite(descriptors).all(axis=1)
    if broken.any():
        cause = "it overflows under autocast (evaluate without --autocast)" if autocast else "it overflows in fp32"
        raise GeolocError(
            f"{int(broken.sum())} of {len(paths)} descriptors are not finite (NaN or inf), the first of "
            f"{paths[int(broken.argmax())]}: the model's weights are damaged or {cause}"
        )
    return descriptors
