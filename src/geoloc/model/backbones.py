"""The registry of study backbones, as plain data (no torch import).

The workflow validates backbone names, `trainable_blocks` and `image_size` when Snakemake
parses it, for every job; importing torch there would add seconds to each.
`geoloc.model.network` builds the networks from these entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TIMM_PREFIX = "timm:"  # any timm model is a backbone too: `timm:<model_name>`


@dataclass(frozen=True)
class StudyBackbone:
    """A torchvision network as the study used it, cut after its last feature map."""

    constructor: str  # the torchvision.models function that builds it
    kept: tuple[str, ...]  # top-level modules kept, in order; every other one is cut
    channels: int  # channels of the last feature map
    default_trainable_blocks: int  # trailing blocks the study trained; the rest is frozen
    blocks: int  # blocks that `trainable_blocks` counts (network.TorchvisionBackbone.block_parameters)
    label: str  # the name the report uses, in the study's terms
    min_image_size: int = 1  # the smallest square input the network takes
    weights_format: str = "torchvision"


_FEATURES = ("features",)
STUDY_BACKBONES: dict[str, StudyBackbone] = {
    # Blocks: conv1, bn1, layer1-4 (relu and maxpool hold no parameters).
    "resnet18": StudyBackbone(
        "resnet18",
        kept=("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
        channels=512, default_trainable_blocks=2, blocks=6, label="ResNet-18"),  # layer3, layer4
    # Blocks: the children of `features`.
    "efficientnet_b0": StudyBackbone("efficientnet_b0", _FEATURES, 1280, 2, 9, "EfficientNet-B0"),
    "efficientnet_b1": StudyBackbone("efficientnet_b1", _FEATURES, 1280, 2, 9, "EfficientNet-B1"),
    "efficientnet_b2": StudyBackbone("efficientnet_b2", _FEATURES, 1408, 2, 9, "EfficientNet-B2"),
    "efficientnet_v2_s": StudyBackbone("efficientnet_v2_s", _FEATURES, 1280, 2, 8, "EfficientNetV2-S"),
    "mobilenet_v3_small": StudyBackbone("mobilenet_v3_small", _FEATURES, 576, 3, 13, "MobileNetV3-Small"),
    "mobilenet_v3_large": StudyBackbone("mobilenet_v3_large", _FEATURES, 960, 3, 17, "MobileNetV3-Large"),
    # Its 4x4 stem and three 2x2 downsamplings need a 32 px input.
    "convnext_tiny": StudyBackbone("convnext_tiny", _FEATURES, 768, 1, 8, "ConvNeXt-Tiny", min_image_size=32),
    # swin's feature stages output NHWC tokens; its own `permute` module turns them to NCHW.
    # The two trailing blocks are the last stage and the final norm; its 4x4 patches need 4 px.
    "swin_tiny": StudyBackbone("swin_t", ("features", "norm", "permute"), 768, 2, 9, "Swin-Tiny",
                               min_image_size=4),
}


def input_size_problem(backbone: str, image_size: int) -> str | None:
    """Why `backbone` cannot take image_size x image_size images, or None when it can.

    Study backbones take any size from their `min_image_size` on. A `timm:` backbone is asked
    (timm, and torch, are imported then, and only then): e.g. a ViT whose patch size does not
    divide the size, or a model built for one size only.
    """
    if backbone.startswith(TIMM_PREFIX):
        from geoloc.model.timm_backbone import timm_input_size_problem

        return timm_input_size_problem(backbone[len(TIMM_PREFIX):], image_size)
    entry = STUDY_BACKBONES.get(backbone)
    if entry is None:
        return f"unknown backbone {backbone!r}; known backbones: {', '.join(STUDY_BACKBONES)}, or {TIMM_PREFIX}<timm model name>"
    if image_size < entry.min_image_size:
        return f"backbone {backbone} needs images of at least {entry.min_image_size} px, not {image_size}"
    return None


def input_size_multiple(model) -> int:
    """What a network's input height and width must be multiples of: the patch size of a vision
    transformer whose patch embedding does not pad (timm's PatchEmbed), else 1.

    Duck-typed on `model.modules()` (no torch import here).
    """
    multiple = 1
    for module in model.modules():
        patch = getattr(module, "patch_size", None)
        if patch and hasattr(module, "proj") and not getattr(module, "dynamic_img_pad", False):
            multiple = math.lcm(multiple, *((patch,) if isinstance(patch, int) else patch))
    return multiple
