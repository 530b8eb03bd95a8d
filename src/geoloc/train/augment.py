"""Training augmentation applied to whole batches on the training device.

The study used torchvision's ColorJitter(0.7, 0.7, 0.7, 0.5) and RandomResizedCrop(scale
0.5-1) image by image. Here every image of a batch still gets its own random parameters, but
all images are transformed together with tensor ops (no Python loop over images), so the
augmentation costs a few kernels per batch instead of a few per image.

The random parameters are drawn for the whole global batch, image by image in batch order, and
a rank of a distributed run keeps the rows of its slice (`rows`): its images get exactly the
augmentation they get in a single-process run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from geoloc.data.images import CROP_RATIO, CROP_SCALE

# Luma weights (ITU-R 601), as torchvision's rgb_to_grayscale.
_GRAY = torch.tensor([0.299, 0.587, 0.114])
# RGB <-> YIQ: hue is the angle of the (I, Q) chroma vector.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


@dataclass(frozen=True)
class AugmentConfig:
    brightness: float = 0.7
    contrast: float = 0.7
    saturation: float = 0.7
    hue: float = 0.5
    crop_scale: tuple[float, float] = CROP_SCALE
    crop_ratio: tuple[float, float] = CROP_RATIO


@dataclass(frozen=True)
class _Rows:
    """Rows start..start+count of a batch of `total` images: the draws this slice keeps."""

    start: int
    count: int
    total: int

    def rand(self, generator: torch.Generator, device) -> torch.Tensor:
        return torch.rand(self.total, generator=generator, device=device)[self.start : self.start + self.count]


def _uniform(rows: _Rows, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return rows.rand(generator, device) * (high - low) + low


def color_jitter(
    images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator, rows: _Rows | None = None
) -> torch.Tensor:
    """Per-image brightness, contrast, saturation and hue jitter of float images in [0, 1].

    Hue is rotated in YIQ space (one 3x3 matrix per image), a linear stand-in for the HSV
    hue shift that keeps the whole jitter a handful of batched ops.
    """
    n, device = images.shape[0], images.device
    rows = rows or _Rows(0, n, n)
    gray_w = _GRAY.to(device, images.dtype).view(1, 3, 1, 1)

    b = _uniform(rows, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, generator, device)
    images = (images * b.view(n, 1, 1, 1).to(images.dtype)).clamp_(0, 1)

    c = _uniform(rows, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, generator, device).view(n, 1, 1, 1)
    mean = (images * gray_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    images = (c * images + (1 - c) * mean).clamp_(0, 1).to(images.dtype)

    s = _uniform(rows, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, generator, device).view(n, 1, 1, 1)
    gray = (images * gray_w).sum(1, keepdim=True)
    images = (s * images + (1 - s) * gray).clamp_(0, 1).to(images.dtype)

    angle = _uniform(rows, -cfg.hue, cfg.hue, generator, device) * (2 * math.pi)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(n, 3, 3, device=device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    matrix = _YIQ_TO_RGB.to(device) @ rot @ _RGB_TO_YIQ.to(device)  # (n, 3, 3)
    images = torch.einsum("nij,njhw->nihw", matrix.to(images.dtype), images)
    return images.clamp_(0, 1)


def crop_boxes(
    n: int, cfg: AugmentConfig, generator: torch.Generator, device, rows: _Rows | None = None
) -> tuple[torch.Tensor, ...]:
    """Random crops (w, h, cx, cy) of n images: width and height as fractions of the image, centre
    in normalised [-1, 1] coordinates, one area and aspect ratio per image, the crop inside."""
    rows = rows or _Rows(0, n, n)
    area = _uniform(rows, *cfg.crop_scale, generator, device)
    log_ratio = _uniform(rows, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), generator, device)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (rows.rand(generator, device) * 2 - 1) * (1 - w)
    cy = (rows.rand(generator, device) * 2 - 1) * (1 - h)
    return w, h, cx, cy


def random_resized_crop(
    images: torch.Tensor,
    size: int,
    cfg: AugmentConfig,
    generator: torch.Generator,
    rows: _Rows | None = None,
) -> torch.Tensor:
    """Crop a random area (scale and aspect ratio per image, `crop_boxes`) and resize it to size x size."""
    n, device = images.shape[0], images.device
    w, h, cx, cy = crop_boxes(n, cfg, generator, device, rows)
    theta = torch.zeros(n, 2, 3, device=device, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = w, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_batch(
    images_uint8: torch.Tensor,
    size: int,
    generator: torch.Generator,
    cfg: AugmentConfig = AugmentConfig(),
    rows: tuple[int, int] | None = None,
) -> torch.Tensor:
    """uint8 (n, 3, H, W) on the training device -> augmented float (n, 3, size, size) in [0, 1].

    `rows` = (start, total): these n images are rows start..start+n of a batch of `total`.
    """
    n = images_uint8.shape[0]
    start, total = rows or (0, n)
    kept = _Rows(start, n, total)
    images = images_uint8.float().div_(255)
    images = color_jitter(images, cfg, generator, kept)
    return random_resized_crop(images, size, cfg, generator, kept)
