"""Descriptors of a list of images: batched, decoded in loader workers, checked finite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geoloc.data.images import ImageListDataset
from geoloc.device import autocast, check_precision
from geoloc.errors import GeolocError


class _ImagesOrErrors(ImageListDataset):
    """(image, "") or, for an image that cannot be decoded, (blank image, the error message).

    Raised in a loader worker, the error would reach the user as a worker traceback; it is
    raised by the main process instead, with its one-line message naming the file.
    """

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            return super().__getitem__(index), ""
        except GeolocError as exc:
            return torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8), str(exc)


def compute_descriptors(
    model: torch.nn.Module,
    paths: list[Path],
    *,
    image_size: int,
    batch_size: int,
    device: torch.device | str,
    precision: str,
    num_workers: int = 0,
) -> np.ndarray:
    """L2-normalised float32 descriptors (n, D) of the images at `paths`, in their order.

    Images travel to the device as uint8 and become floats in [0, 1] there. With `amp`, the
    model runs under autocast (float16 on CUDA, bfloat16 on CPU); descriptors are cast back to
    float32 and normalised again, so reduced precision never reaches the search. The model's
    train/eval mode is restored afterwards (the trainer validates mid-training).
    """
    check_precision(precision)
    if not paths:
        raise GeolocError("no images to compute descriptors of")
    device = torch.device(device)
    loader = torch.utils.data.DataLoader(
        _ImagesOrErrors(paths, image_size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    was_training = model.training
    model.eval()
    batches = []
    try:
        with torch.inference_mode(), autocast(device, precision):
            for images, errors in loader:
                if failed := next((error for error in errors if error), None):
                    raise GeolocError(failed)
                images = images.to(device, non_blocking=True).float().div_(255.0)
                descriptors = F.normalize(model(images).float(), dim=1)
                batches.append(descriptors.cpu().numpy())
    finally:
        model.train(was_training)
    descriptors = np.concatenate(batches)
    # A NaN descriptor would be ranked arbitrarily by the search: never a recall from it.
    broken = ~np.isfinite(descriptors).all(axis=1)
    if broken.any():
        raise GeolocError(
            f"{int(broken.sum())} of {len(paths)} descriptors are not finite (NaN or inf), the first of "
            f"{paths[int(broken.argmax())]}: the model overflows in {precision} (try fp32) or its weights are damaged"
        )
    return descriptors
