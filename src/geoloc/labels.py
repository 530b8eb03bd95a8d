"""How the report names backbones, pretrainings, precisions and test sets (the study's terms).

A name not listed here is shown as it is written in the config.
"""

from __future__ import annotations

BACKBONES = {
    "resnet18": "ResNet-18",
    "efficientnet_b0": "EfficientNet-B0",
    "efficientnet_b1": "EfficientNet-B1",
    "efficientnet_b2": "EfficientNet-B2",
    "efficientnet_v2_s": "EfficientNetV2-S",
    "mobilenet_v3_small": "MobileNetV3-Small",
    "mobilenet_v3_large": "MobileNetV3-Large",
    "convnext_tiny": "ConvNeXt-Tiny",
    "swin_tiny": "Swin-Tiny",
}
PRETRAININGS = {
    "imagenet": "ImageNet",
    "places365": "Places365",
    "gldv2": "Google Landmarks v2",
    "none": "random init",
}
PRECISIONS = {"fp32": "FP32", "amp": "AMP"}
TEST_SETS = {"sf_xs": "SF-XS", "tokyo_xs": "Tokyo-XS", "tokyo_night": "Tokyo-Night"}


def backbone_label(name: str) -> str:
    return BACKBONES.get(name, name)


def pretraining_label(name: str) -> str:
    return PRETRAININGS.get(name, name)


def precision_label(name: str) -> str:
    return PRECISIONS.get(name, name)


def test_set_label(name: str) -> str:
    return TEST_SETS.get(name, name)
