"""The registry of study backbones, as plain data (no torch import).

The workflow validates backbone names when Snakemake parses it, for every job; importing
torch there would add seconds to each. `geoloc.model.network` builds the networks from these entries.
"""

from __future__ import annotations

from dataclasses import dataclass

TIMM_PREFIX = "timm:"  # any timm model is a backbone too: `timm:<model_name>`


@dataclass(frozen=True)
class StudyBackbone:
    """A torchvision network as the study used it, cut after its last feature map."""

    constructor: str  # the torchvision.models function that builds it
    kept: tuple[str, ...]  # top-level modules kept, in order; every other one is cut
    channels: int  # channels of the last feature map
    default_trainable_blocks: int  # trailing blocks the study trained; the rest is frozen
    label: str  # the name the report uses, in the study's terms
    weights_format: str = "torchvision"


_FEATURES = ("features",)
STUDY_BACKBONES: dict[str, StudyBackbone] = {
    "resnet18": StudyBackbone(
        "resnet18",
        kept=("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
        channels=512, default_trainable_blocks=2, label="ResNet-18"),  # layer3, layer4
    "efficientnet_b0": StudyBackbone("efficientnet_b0", _FEATURES, 1280, 2, "EfficientNet-B0"),
    "efficientnet_b1": StudyBackbone("efficientnet_b1", _FEATURES, 1280, 2, "EfficientNet-B1"),
    "efficientnet_b2": StudyBackbone("efficientnet_b2", _FEATURES, 1408, 2, "EfficientNet-B2"),
    "efficientnet_v2_s": StudyBackbone("efficientnet_v2_s", _FEATURES, 1280, 2, "EfficientNetV2-S"),
    "mobilenet_v3_small": StudyBackbone("mobilenet_v3_small", _FEATURES, 576, 3, "MobileNetV3-Small"),
    "mobilenet_v3_large": StudyBackbone("mobilenet_v3_large", _FEATURES, 960, 3, "MobileNetV3-Large"),
    "convnext_tiny": StudyBackbone("convnext_tiny", _FEATURES, 768, 1, "ConvNeXt-Tiny"),
    # swin's feature stages output NHWC tokens; its own `permute` module turns them to NCHW.
    # The two trailing blocks are the last stage and the final norm.
    "swin_tiny": StudyBackbone("swin_t", ("features", "norm", "permute"), 768, 2, "Swin-Tiny"),
}
