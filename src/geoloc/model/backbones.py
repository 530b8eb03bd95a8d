"""The registry of study backbones, as plain data (no torch import), and backbone names.

The workflow validates backbone names, `trainable_blocks` and `image_size` when Snakemake
parses it, for every job; importing torch there would add seconds to each.
`geoloc.model.network` builds the networks from these entries.

A backbone is named as a study backbone (`resnet18`) or as `timm:<model name>`, any timm model.
`parse_backbone` splits a name and `check_backbone` refuses an unknown one, for every module
that reads backbone names. timm has its own `parse_model_name` for the same job on its names; importing it
here would cost the seconds above, and the model name goes to timm untouched, to parse.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

from geoloc.errors import GeolocError

TIMM = "timm"  # the source of `timm:<model_name>` backbones
TIMM_PREFIX = f"{TIMM}:"


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
        channels=512,
        default_trainable_blocks=2,
        blocks=6,
        label="ResNet-18",
    ),  # layer3, layer4
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
    "swin_tiny": StudyBackbone("swin_t", ("features", "norm", "permute"), 768, 2, 9, "Swin-Tiny", min_image_size=4),
}


@dataclass(frozen=True)
class BackboneName:
    """A backbone's name split into its source and model, as timm's `parse_model_name` splits
    `hf-hub:<id>`: `timm:convnext_small` is ("timm", "convnext_small"), `resnet18` (None, "resnet18")."""

    source: str | None  # None: the study's registry (STUDY_BACKBONES)
    model: str  # the registry's key, or the model name as timm takes it (a pretrained tag after ".")


def parse_backbone(name: str) -> BackboneName:
    """`name` split at its first ":", unchecked (`check_backbone` checks it)."""
    source, colon, model = name.partition(":")
    return BackboneName(source, model) if colon else BackboneName(None, name)


def check_backbone(name: str, known: Collection[str] = STUDY_BACKBONES) -> BackboneName:
    """`name` parsed, or a GeolocError unless it is one of the `known` study backbones or
    `timm:<model>` (whether timm has that model is timm's to say, when it builds it)."""
    parsed = parse_backbone(name)
    if parsed.source is None and parsed.model in known or parsed.source == TIMM and parsed.model:
        return parsed
    raise GeolocError(
        f"unknown backbone {name!r}; known backbones: {', '.join(sorted(known))}, or {TIMM_PREFIX}<timm model name>"
    )


def block_count(backbone: str) -> int | None:
    """The blocks `trainable_blocks` counts. None for a timm model: its blocks are its feature
    stages, known only once it is built, so `geoloc train` refuses too many there."""
    parsed = check_backbone(backbone)
    return None if parsed.source == TIMM else STUDY_BACKBONES[parsed.model].blocks


def input_size_problem(backbone: str, image_size: int) -> str | None:
    """Why `backbone` cannot take image_size x image_size images, or None when it can.

    Study backbones take any size from their `min_image_size` on. A `timm:` backbone is asked
    (timm, and torch, are imported then, and only then): e.g. a ViT whose patch size does not
    divide the size, or a model built for one size only.
    """
    try:
        parsed = check_backbone(backbone)
    except GeolocError as exc:
        return str(exc)
    if parsed.source == TIMM:
        from geoloc.model.timm_backbone import timm_input_size_problem

        return timm_input_size_problem(parsed.model, image_size)
    entry = STUDY_BACKBONES[parsed.model]
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
