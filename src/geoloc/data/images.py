"""Decoding images into uint8 RGB tensors, one at a time or as a dataset in a fixed order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from geoloc.errors import GeolocError


def read_image(path: Path, size: int | tuple[int, int] | None) -> torch.Tensor:
    """Decode an image upright (EXIF orientation applied) as uint8 RGB of shape (3, H, W).

    `size`: the side of the square to resize to, (H, W), or None for the image's own resolution.
    """
    height, width = (size, size) if isinstance(size, int) else size or (None, None)
    try:
        with Image.open(path) as image:
            if size is not None:
                # JPEGs decode directly at 1/2, 1/4 or 1/8 scale, never below the longer side
                # asked for (whichever way EXIF turns the image): a fraction of a full decode.
                image.draft(None, (max(height, width),) * 2)
            ImageOps.exif_transpose(image, in_place=True)
            # convert/resize copy even when there is nothing to do; skip them then.
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            if size is not None and rgb.size != (width, height):
                rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
            # Stacking the bands gives channel-first memory directly (cheaper than a permute copy).
            channels = np.stack([np.asarray(band) for band in rgb.split()])
    except Exception as exc:  # PIL reports corrupt files with many exception types
        raise GeolocError(f"cannot decode image {path}: {exc}") from exc
    return torch.from_numpy(channels)



class ImageListDataset(torch.utils.data.Dataset):
    """Images in a fixed order, for computing descriptors."""

    def __init__(self, paths: list[Path], image_size: int) -> None:
        self.paths = paths
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return read_image(self.paths[index], self.image_size)

