"""geoloc.model.cost: FLOPs by torch's counter (2 per multiply-add) and inference latency."""

import pytest
import torch
import torchvision
from torch import nn

from geoloc.errors import GeolocError
from geoloc.model.cost import gflops_per_image, inference_latency_ms
from geoloc.model.network import build_model


def test_conv_flops_are_two_per_multiply_add():
    # 8 output channels x 8 x 8 output pixels, each a 3x3x3 dot product: 13,824 multiply-adds.
    conv = nn.Conv2d(3, 8, kernel_size=3)
    assert gflops_per_image(conv, 10) * 1e9 == pytest.approx(2 * 8 * 8 * 8 * 3 * 3 * 3)


def test_linear_flops_count_the_flattened_image():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    assert gflops_per_image(model, 4) * 1e9 == pytest.approx(2 * 48 * 5)


def test_resnet18_at_224_is_twice_its_published_gmacs():
    # torchvision's card: 1.81 GMACs; torch counts 2 FLOPs per multiply-add.
    assert gflops_per_image(torchvision.models.resnet18(), 224) == pytest.approx(3.63, abs=0.01)


def test_geoloc_resnet18_flops_grow_with_the_pixel_count():
    # The 1000-class head is cut and a 512x512 linear layer added: nearly the same FLOPs.
    model = build_model("resnet18", fc_output_dim=512)
    at_224 = gflops_per_image(model, 224)
    assert at_224 == pytest.approx(3.63, abs=0.01)
    assert gflops_per_image(model, 448) == pytest.approx(4 * at_224, rel=0.01)


def test_flop_count_restores_training_mode_and_leaves_no_gradient():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.train()
    gflops_per_image(model, 8)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert model[1].num_batches_tracked.item() == 0  # ran in eval mode: statistics untouched


def test_latency_is_a_positive_median_in_milliseconds(monkeypatch):
    ticks = iter(float(t) for t in range(1000))
    monkeypatch.setattr("geoloc.model.cost.time.perf_counter", lambda: next(ticks) * 0.002)
    # Every pass spans one tick of 2 ms on this fake clock.
    latency = inference_latency_ms(nn.Conv2d(3, 4, 3), 8, "cpu", "fp32", repeats=3, warmup=1)
    assert latency == pytest.approx(2.0)


def test_latency_restores_training_mode_and_accepts_amp():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    assert inference_latency_ms(model, 8, "cpu", "amp", batch_size=2, repeats=2) > 0
    assert model.training
    assert model[1].num_batches_tracked.item() == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"precision": "fp16"}, "unknown precision 'fp16'"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"repeats": 0}, "repeats must be at least 1"),
    ],
)
def test_latency_rejects_bad_settings(kwargs, message):
    settings = {"image_size": 8, "device": "cpu", "precision": "fp32", **kwargs}
    with pytest.raises(GeolocError, match=message):
        inference_latency_ms(nn.Conv2d(3, 4, 3), **settings)


def test_flops_reject_a_non_positive_image_size():
    with pytest.raises(GeolocError, match="image_size must be at least 1"):
        gflops_per_image(nn.Conv2d(3, 4, 3), 0)


def test_cost_measures_leave_the_global_rng_alone():
    model = nn.Conv2d(3, 4, 3)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    gflops_per_image(model, 8)
    inference_latency_ms(model, 8, "cpu", "fp32", repeats=1)
    assert torch.equal(torch.rand(3), expected)
