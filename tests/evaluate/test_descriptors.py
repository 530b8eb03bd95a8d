"""Descriptors as CosPlace's test.py computes them: each image at its own size, in fp32."""

import multiprocessing
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from geoloc.data.images import read_image
from geoloc.errors import GeolocError
from geoloc.evaluate.batches import equal_size_batches, image_sizes, upright_size
from geoloc.evaluate.descriptors import compute_descriptors
from geoloc.model.backbones import input_size_multiple
from geoloc.model.network import build_model

# (width, height) of the queries: landscape, portrait and square, as the example.
QUERY_SIZES = [(640, 480), (480, 640), (512, 512), (640, 480), (512, 512), (480, 640), (640, 480)]


class Recording(nn.Module):
    """Wraps a model and records the shape of every batch it is given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.shapes = model, []

    def forward(self, images):
        self.shapes.append(tuple(images.shape))
        return self.model(images)


def noise_images(folder, sizes, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (width, height) in enumerate(sizes):
        path = folder / f"{index:02d}.jpg"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def small_network():
    torch.manual_seed(0)
    return build_model("mobilenet_v3_small", fc_output_dim=16).eval()


def alone(model, path, size=None):
    """The descriptor the model gives the image at `path` on its own, in fp32 (eval mode)."""
    model.eval()
    with torch.inference_mode():
        return nn.functional.normalize(model(read_image(path, size)[None].float() / 255), dim=1)[0].numpy()


def test_each_image_gets_the_descriptor_it_gets_alone_at_its_own_size(tmp_path, small_network):
    paths = noise_images(tmp_path, QUERY_SIZES)
    model = Recording(small_network).eval()

    descriptors = compute_descriptors(model, paths, batch_size=2, device="cpu")

    expected = np.stack([alone(small_network, path) for path in paths])
    np.testing.assert_allclose(descriptors, expected, atol=1e-5)
    assert descriptors.dtype == np.float32
    # Batched by size, never mixing two sizes, the sizes in the order they first appear:
    # three 640x480 (a batch of 2, then 1), two 480x640, two 512x512.
    assert model.shapes == [(2, 3, 480, 640), (1, 3, 480, 640), (2, 3, 640, 480), (2, 3, 512, 512)]


def test_resize_embeds_every_image_at_h_by_w_in_full_batches(tmp_path, small_network):
    paths = noise_images(tmp_path, QUERY_SIZES)
    model = Recording(small_network).eval()

    descriptors = compute_descriptors(model, paths, batch_size=4, device="cpu", resize=(96, 128))

    expected = np.stack([alone(small_network, path, (96, 128)) for path in paths])
    np.testing.assert_allclose(descriptors, expected, atol=1e-5)
    assert model.shapes == [(4, 3, 96, 128), (3, 3, 96, 128)]


def test_descriptors_are_fp32_unless_autocast_is_asked_for(tmp_path, small_network):
    # What an amp-trained run's model meets at evaluation: the same weights, run in fp32.
    paths = noise_images(tmp_path, [(64, 48), (48, 64), (64, 48)])

    default = compute_descriptors(small_network, paths, batch_size=4, device="cpu")
    autocast = compute_descriptors(small_network, paths, batch_size=4, device="cpu", autocast=True)

    fp32 = np.stack([alone(small_network, path) for path in paths])
    np.testing.assert_allclose(default, fp32, atol=1e-5)
    assert np.abs(autocast - fp32).max() > 1e-3  # bfloat16 autocast did run: a different result
    assert autocast.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(autocast, axis=1), 1.0, atol=1e-5)


def test_descriptors_restore_the_model_training_mode(tmp_path, small_network):
    paths = noise_images(tmp_path, QUERY_SIZES[:2])
    small_network.train()
    try:
        compute_descriptors(small_network, paths, batch_size=2, device="cpu")
        assert small_network.training
    finally:
        small_network.eval()


def test_sizes_from_headers_match_the_decoded_images_exif_rotation_included(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned 90 degrees: the stored 40x24 image shows as 24x40
    Image.new("RGB", (40, 24), (200, 10, 10)).save(tmp_path / "rotated.jpg", exif=exif)
    Image.new("RGB", (40, 24), (200, 10, 10)).save(tmp_path / "plain.jpg")
    Image.new("L", (7, 5), 80).save(tmp_path / "gray.png")
    paths = [tmp_path / name for name in ("rotated.jpg", "plain.jpg", "gray.png")]

    sizes = image_sizes(paths)

    assert sizes == [(40, 24), (24, 40), (5, 7)]
    assert [tuple(read_image(path, None).shape[1:]) for path in paths] == sizes
    assert [upright_size(path) for path in paths] == sizes


def test_sizes_are_read_in_loader_workers_in_order(tmp_path):
    paths = noise_images(tmp_path, [(8 + i, 9) for i in range(600)])  # three chunks of headers
    assert image_sizes(paths, num_workers=2) == [(9, 8 + i) for i in range(600)]


def test_an_unreadable_header_is_an_error_naming_the_file_even_in_workers(tmp_path):
    paths = noise_images(tmp_path, [(8, 8)] * 3)
    paths[1].write_bytes(b"not an image")
    with pytest.raises(GeolocError, match=f"cannot decode image {paths[1]}"):
        image_sizes(paths, num_workers=1)


def test_an_image_cut_short_is_an_error_naming_the_file(tmp_path, small_network):
    paths = noise_images(tmp_path, [(64, 48)] * 3)
    paths[2].write_bytes(paths[2].read_bytes()[:300])  # the header survives, the pixels do not
    with pytest.raises(GeolocError, match=f"cannot decode image {paths[2]}"):
        compute_descriptors(small_network, paths, batch_size=2, device="cpu", num_workers=1)


def test_an_image_changed_after_its_header_was_read_is_an_error(tmp_path, small_network, monkeypatch):
    paths = noise_images(tmp_path, [(64, 48)] * 2)
    from geoloc.evaluate import descriptors

    monkeypatch.setattr(descriptors, "image_sizes", lambda paths, num_workers: [(48, 64), (64, 48)])
    with pytest.raises(GeolocError, match=f"image {paths[1]} decodes to 64x48 pixels, but its header said 48x64"):
        compute_descriptors(small_network, paths, batch_size=2, device="cpu")


def test_equal_size_batches_keep_first_appearance_order_and_the_batch_size():
    sizes = [(2, 2), (3, 3), (2, 2), (2, 2), (3, 3), (4, 4), (2, 2)]
    assert equal_size_batches(sizes, 3) == [[0, 2, 3], [6], [1, 4], [5]]
    assert equal_size_batches(sizes, 1) == [[0], [2], [3], [6], [1], [4], [5]]
    with pytest.raises(GeolocError, match="batch_size must be at least 1"):
        equal_size_batches(sizes, 0)


def test_no_images_is_an_error(small_network):
    with pytest.raises(GeolocError, match="no images"):
        compute_descriptors(small_network, [], batch_size=2, device="cpu")


def test_non_finite_descriptors_are_refused_naming_the_first_image(tmp_path):
    class Overflows(nn.Module):
        def forward(self, images):
            out = images.mean(dim=(2, 3))
            out[1:] = float("inf")
            return out

    paths = noise_images(tmp_path, [(8, 8)] * 3)
    with pytest.raises(GeolocError, match=f"2 of 3 descriptors are not finite .* the first of {paths[1]}"):
        compute_descriptors(Overflows(), paths, batch_size=3, device="cpu")


def test_stop_signals_to_the_loader_workers_are_left_to_the_main_process(tmp_path, small_network, monkeypatch):
    # SLURM signals every process of a job: a worker must neither die of it nor handle it.
    from geoloc.evaluate import batches, descriptors

    signalled = multiprocessing.Value("i", 0)

    def signalled_in_workers(read):
        def read_after_a_signal(*args):
            if torch.utils.data.get_worker_info() is not None:  # never the test process itself
                for sig in (signal.SIGTERM, signal.SIGUSR1):
                    os.kill(os.getpid(), sig)
                with signalled.get_lock():
                    signalled.value += 1
            return read(*args)

        return read_after_a_signal

    monkeypatch.setattr(batches, "upright_size", signalled_in_workers(batches.upright_size))
    monkeypatch.setattr(descriptors, "read_image", signalled_in_workers(descriptors.read_image))
    paths = noise_images(tmp_path, [(64, 48)] * 12)

    result = compute_descriptors(small_network, paths, batch_size=4, device="cpu", num_workers=2)

    assert signalled.value == 2 * len(paths)  # every header and every image, read after the signals
    np.testing.assert_allclose(result[-1], alone(small_network, paths[-1]), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_vit14():
    """A one-block DINOv2-style ViT with 14 px patches (timm, random weights), cut as geoloc cuts it."""
    import timm

    from geoloc.model.aggregators.layers import resolve_hyperparameters
    from geoloc.model.network import GeoLocNet
    from geoloc.model.timm_backbone import TimmBackbone

    torch.manual_seed(0)
    full = timm.create_model(
        "vit_small_patch14_dinov2",
        pretrained=False,
        img_size=28,
        depth=1,
        embed_dim=24,
        num_heads=2,
        dynamic_img_size=True,
    )
    spec = TimmBackbone("vit_small_patch14_dinov2")
    body = spec.truncate(full)
    gem = resolve_hyperparameters("gem", spec.output_channels(body), fc_output_dim=8, feature_hw=(0, 0), vit=True)
    return GeoLocNet("timm:vit_small_patch14_dinov2", body, "gem", gem, 8, 1).eval()


def test_a_patch_14_vit_embeds_images_of_any_size_at_the_nearest_multiple_of_14(tmp_path, tiny_vit14):
    paths = noise_images(tmp_path, [(50, 37), (37, 50), (56, 42), (50, 37)])
    model = Recording(tiny_vit14)

    descriptors = compute_descriptors(model, paths, batch_size=4, device="cpu")

    assert input_size_multiple(model) == 14
    assert descriptors.shape == (4, 8) and np.isfinite(descriptors).all()
    # 50 x 37 px (W x H) becomes 56 x 42: each side to its nearest multiple of 14.
    assert sorted(model.shapes) == [(1, 3, 56, 42), (3, 3, 42, 56)]
    np.testing.assert_allclose(descriptors[0], alone(tiny_vit14, paths[0], (42, 56)), atol=1e-5)
    np.testing.assert_allclose(descriptors[2], alone(tiny_vit14, paths[2]), atol=1e-5)  # a multiple: as stored
    resized = compute_descriptors(model, paths[:1], batch_size=1, device="cpu", resize=(30, 30))
    assert model.shapes[-1] == (1, 3, 28, 28)
    np.testing.assert_allclose(resized[0], alone(tiny_vit14, paths[0], (28, 28)), atol=1e-5)


def test_a_network_that_takes_any_size_is_given_images_as_stored(small_network):
    assert input_size_multiple(small_network) == 1
