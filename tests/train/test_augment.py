import torch

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
