import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from geoloc.data.images import decode_size, read_image
from geoloc.train.augment import AugmentConfig, augment_batch, color_jitter, random_resized_crop

NO_JITTER = AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_output_shape_range_and_dtype():
    images = torch.randint(0, 256, (5, 3, 40, 40), dtype=torch.uint8)
    out = augment_batch(images, 24, _gen())
    assert out.shape == (5, 3, 24, 24) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_same_generator_seed_gives_same_batch_and_other_seed_differs():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    a, b = augment_batch(images, 32, _gen(1)), augment_batch(images, 32, _gen(1))
    c = augment_batch(images, 32, _gen(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_each_image_gets_its_own_parameters():
    one = torch.full((1, 3, 16, 16), 128, dtype=torch.uint8)
    out = augment_batch(one.repeat(8, 1, 1, 1), 16, _gen())
    per_image_mean = out.mean((1, 2, 3))
    assert per_image_mean.std() > 0.02  # identical inputs, different jitter per image


def test_zero_jitter_is_identity():
    images = torch.rand(3, 3, 8, 8)
    assert torch.allclose(color_jitter(images, NO_JITTER, _gen()), images, atol=1e-5)


def test_full_scale_square_crop_is_identity():
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    images = torch.rand(2, 3, 10, 10)
    assert torch.allclose(random_resized_crop(images, 10, cfg, _gen()), images, atol=1e-5)


def test_crop_zooms_into_part_of_the_image():
    # Left half black, right half white: a crop of half the area shows a different mix per image.
    images = torch.zeros(16, 3, 32, 32)
    images[..., 16:] = 1
    cfg = AugmentConfig(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0))
    out = random_resized_crop(images, 32, cfg, _gen())
    means = out.mean((1, 2, 3))
    assert means.min() < 0.3 and means.max() > 0.7


def test_hue_rotation_keeps_gray_gray():
    gray = torch.full((4, 3, 4, 4), 0.5)
    cfg = AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0.5)
    assert torch.allclose(color_jitter(gray, cfg, _gen()), gray, atol=1e-5)


def test_decode_size_lets_the_narrowest_crop_span_image_size_up_to_the_stored_side():
    # The narrowest crop of CosPlace's (area 0.5, ratio 3:4) spans sqrt(0.375) = 0.61 of the side.
    assert decode_size(64, 512) == 105 and 105 * math.sqrt(0.5 * 3 / 4) >= 64 > 104 * math.sqrt(0.5 * 3 / 4)
    assert decode_size(320, 512) == 512  # capped at the stored side: nothing to gain above it
    assert decode_size(512, 512) == 512 and decode_size(64, 64) == 64  # as before: the stored images
    assert decode_size(512, 256) == 512  # never below image_size


def test_a_crop_keeps_the_detail_of_a_crop_cut_from_the_full_resolution_image(tmp_path):
    """Training at 64 px from 512 px JPEGs: each crop against the same crop cut from the full
    512 px image and downsampled with antialiasing (what CosPlace's RandomResizedCrop gives)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "detail.jpg"
    noise = Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
    noise.resize((512, 512), Image.Resampling.BICUBIC).save(path, quality=95)

    def crops(decoded_side, out):
        images = read_image(path, decoded_side).float().div(255)[None].repeat(16, 1, 1, 1)
        return random_resized_crop(images, out, AugmentConfig(), _gen(3))

    reference = F.interpolate(crops(None, 512), size=64, mode="bilinear", antialias=True)
    error = (crops(decode_size(64, 512), 64) - reference).abs().mean()
    decoded_at_64 = (crops(64, 64) - reference).abs().mean()  # before: crops upsampled from ~45 px

    assert error < 0.025  # measured 0.020, against 0.047 decoded at 64 px
    assert decoded_at_64 > 2 * error
