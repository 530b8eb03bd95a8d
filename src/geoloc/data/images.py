"""Decoding images into uint8 RGB tensors, one at a time or as a dataset in a fixed order.

Every image becomes the RGB picture an image viewer shows of it, whatever its PNG or JPEG
mode: 16-bit grayscale is scaled to 8 bits (PIL's own conversion clips it, so any real
16-bit photo turned solid white); transparent pixels are shown over white, as a browser shows
them on its default page (PIL's conversion drops the alpha and shows whatever colour the
transparent pixels happen to store); CMYK, palette and 1-bit images go through PIL's
conversion. EXIF orientation is applied, as viewers do.

An image of more pixels than the cap (`geoloc --max-image-megapixels`, which sets
$GEOLOC_MAX_IMAGE_PIXELS; default 50 million) is refused from its header, before decoding: a
12000 x 12000 JPEG took a minute and 11 GB to decode on a CPU.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from geoloc.errors import GeolocError

# CosPlace's RandomResizedCrop: area 50-100 %, aspect ratio 3:4 to 4:3 (geoloc.train.augment).
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
_BACKGROUND = (255, 255, 255, 255)  # what transparent pixels are shown over
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_SIXTEEN_BIT_MAX = 65535
MAX_PIXELS_VARIABLE = "GEOLOC_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000


def max_pixels() -> int:
    """The pixel cap in force (read each time: loader workers inherit the environment)."""
    value = os.environ.get(MAX_PIXELS_VARIABLE, "")
    try:
        return int(value) if value.strip() else DEFAULT_MAX_PIXELS
    except ValueError:
        raise GeolocError(f"${MAX_PIXELS_VARIABLE} is {value!r}, not a number of pixels") from None


def check_pixels(path: Path, size: tuple[int, int]) -> None:
    """Refuse an image larger than the cap, from the (width, height) its header gives."""
    cap = max_pixels()
    if size[0] * size[1] > cap:
        raise GeolocError(
            f"image {path} is {size[0]} x {size[1]} = {size[0] * size[1] / 1e6:.1f} megapixels, more than the "
            f"{cap / 1e6:g} allowed: shrink it, or raise --max-image-megapixels (${MAX_PIXELS_VARIABLE})"
        )


def viewer_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB, as a viewer shows it (see the module docstring)."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode.startswith("I"):
        # I;16 (16-bit PNG samples) and I (how PIL opened 16-bit PNGs before it had I;16):
        # 0..65535 maps to 0..255, as the PNG format defines sample depth.
        samples = np.clip(np.asarray(image, dtype=np.int64), 0, _SIXTEEN_BIT_MAX)
        image = Image.fromarray(((samples * 255 + _SIXTEEN_BIT_MAX // 2) // _SIXTEEN_BIT_MAX).astype(np.uint8))
    elif image.mode == "F":
        image = image.convert("L")  # float samples on PIL's own 0..255 scale, clipped
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        background = Image.new("RGBA", image.size, _BACKGROUND)
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def read_image(path: Path, size: int | tuple[int, int] | None) -> torch.Tensor:
    """Decode an image upright (EXIF orientation applied) as uint8 RGB of shape (3, H, W).

    `size`: the side of the square to resize to, (H, W), or None for the image's own resolution.
    """
    height, width = (size, size) if isinstance(size, int) else size or (None, None)
    try:
        with Image.open(path) as image:
            check_pixels(path, image.size)
            if size is not None:
                # JPEGs decode directly at 1/2, 1/4 or 1/8 scale, never below the longer side
                # asked for (whichever way EXIF turns the image): a fraction of a full decode.
                image.draft(None, (max(height, width),) * 2)
            ImageOps.exif_transpose(image, in_place=True)
            rgb = viewer_rgb(image)
            if size is not None and rgb.size != (width, height):
                rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
            # Stacking the bands gives channel-first memory directly (cheaper than a permute copy).
            channels = np.stack([np.asarray(band) for band in rgb.split()])
    except GeolocError:
        raise
    except Exception as exc:  # PIL reports corrupt files with many exception types
        raise GeolocError(f"cannot decode image {path}: {exc}") from exc
    return torch.from_numpy(channels)


def decode_size(
    image_size: int,
    stored_side: int,
    crop_scale: tuple[float, float] = CROP_SCALE,
    crop_ratio: tuple[float, float] = CROP_RATIO,
) -> int:
    """The square side training images are decoded (and cached) at, before the random-resized crop.

    CosPlace cuts its crop from the stored image (512 px). Decoded at image_size instead, a
    half-area crop would be upsampled from ~0.7 x image_size pixels; so the side is large
    enough that the narrowest crop (smallest area, most extreme aspect ratio) still spans
    image_size pixels, but never above the stored side (nothing to gain) nor below image_size.
    """
    narrowest = math.sqrt(crop_scale[0] * min(crop_ratio[0], 1 / crop_ratio[1]))
    return max(image_size, min(math.ceil(image_size / narrowest), stored_side))


def stored_side(path: Path) -> int:
    """The longer side of the image at `path`, in pixels, from its header."""
    try:
        with Image.open(path) as image:
            return max(image.size)
    except Exception as exc:  # PIL reports corrupt files with many exception types
        raise GeolocError(f"cannot decode image {path}: {exc}") from exc


class ImageListDataset(torch.utils.data.Dataset):
    """Images in a fixed order, for computing descriptors."""

    def __init__(self, paths: list[Path], image_size: int | None) -> None:
        self.paths = paths
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return read_image(self.paths[index], self.image_size)
