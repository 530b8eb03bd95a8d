"""Published VPR models, evaluated as reference rows beside a study (not trained here).

Each entry says how its release's tensors are named (its own module layout) and which of
geoloc's networks they fill: backbone, aggregator with its hyperparameters, and the image size
and normalisation of the authors' evaluation protocol. The network resizes its images to that
size itself, so evaluation needs no flag. Where the file is (URL, sha256, size) is in the
weights registry, resources/weights.yaml, under `published`: `geoloc fetch-weights --backbone
published --pretraining NAME` downloads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from geoloc.errors import GeolocError
from geoloc.model.aggregators import aggregator_entry
from geoloc.model.network import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    GeoLocNet,
    TimmTokens,
    TorchvisionBackbone,
    backbone_spec,
    load_checked,
)
from geoloc.model.weights import load_state_dict

_RESNET = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
# ResNet-50 as the releases cut it: to layer4 (CosPlace, EigenPlaces) or to layer3 (MixVPR, BoQ).
_BACKBONES = {
    "resnet50": TorchvisionBackbone("resnet50", _RESNET, 2048, 0, 6, "ResNet-50"),
    "resnet50_layer3": TorchvisionBackbone("resnet50", _RESNET[:-1], 1024, 0, 5, "ResNet-50 (to layer3)"),
}
# torchvision ResNet children by position, as `nn.Sequential(*list(resnet.children())[:-2])` numbers them
_SEQUENTIAL_RESNET = tuple((f"{i}.", f"{name}.") for i, name in enumerate(_RESNET) if name not in ("relu", "maxpool"))


def _prefixed(outer: str, inner: str, pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple((outer + old, inner + new) for old, new in pairs)


@dataclass(frozen=True)
class PublishedModel:
    label: str
    backbone: str  # a key of _BACKBONES or a `timm:` backbone
    aggregator: str
    params: dict[str, Any]  # the aggregator's hyperparameters but in_channels
    renames: tuple[tuple[str, str], ...]  # release key prefix -> geoloc key prefix, first match wins
    image_size: tuple[int, int] | None  # (H, W) of the authors' evaluation; None: each image at its own size
    source: str
    dropped: tuple[str, ...] = ()  # release tensors geoloc's network has no place for (unused by the model)
    vit_final_norm: bool = True  # the ViT's final LayerNorm is applied to the patch tokens
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


_GEM_2048 = {"p": 3.0, "eps": 1e-6, "fc_output_dim": 2048}
_GEM_RENAMES = (
    *_prefixed("backbone.", "backbone.", _SEQUENTIAL_RESNET),
    ("aggregation.1.", "aggregation.gem."),
    ("aggregation.3.", "aggregation.fc."),
)
_DINOV2_B = "timm:vit_base_patch14_dinov2"

PUBLISHED: dict[str, PublishedModel] = {
    "cosplace-resnet50-2048": PublishedModel(
        "CosPlace ResNet-50 2048",
        "resnet50",
        "gem",
        _GEM_2048,
        _GEM_RENAMES,
        None,
        "gmberton/CosPlace hubconf.py; tested at each image's own resolution",
    ),
    "eigenplaces-resnet50-2048": PublishedModel(
        "EigenPlaces ResNet-50 2048",
        "resnet50",
        "gem",
        _GEM_2048,
        _GEM_RENAMES,
        None,
        "gmberton/EigenPlaces hubconf.py (CosPlace's network); tested at each image's own resolution",
    ),
    "mixvpr-resnet50-4096": PublishedModel(
        "MixVPR ResNet-50 4096",
        "resnet50_layer3",
        "mixvpr",
        {"in_h": 20, "in_w": 20, "out_channels": 1024, "mix_depth": 4, "mlp_ratio": 1, "out_rows": 4},
        (("backbone.model.", "backbone."), ("aggregator.", "aggregation.")),
        (320, 320),
        "amaralibey/MixVPR README (Lightning checkpoint, images resized to 320x320)",
    ),
    "salad-dinov2": PublishedModel(
        "SALAD DINOv2 ViT-B/14",
        _DINOV2_B,
        "salad",
        {"num_clusters": 64, "cluster_dim": 128, "token_dim": 256, "dropout": 0.3},
        (("backbone.model.", "backbone.body."), ("aggregator.", "aggregation.")),
        (322, 322),
        "serizba/salad hubconf.py and README (eval.py --image_size 322 322)",
        dropped=("backbone.model.mask_token",),
    ),
    "boq-dinov2": PublishedModel(
        "BoQ DINOv2 ViT-B/14 12288",
        _DINOV2_B,
        "boq",
        {"proj_channels": 384, "num_queries": 64, "num_layers": 2, "row_dim": 32},
        (("backbone.dino.", "backbone.body."), ("aggregator.", "aggregation.")),
        (322, 322),
        "amaralibey/Bag-of-Queries hubconf.py and README (322x322 for DINOv2); patch tokens without the final norm",
        dropped=("backbone.dino.mask_token",),
        vit_final_norm=False,
    ),
    "boq-resnet50": PublishedModel(
        "BoQ ResNet-50 16384",
        "resnet50_layer3",
        "boq",
        {"proj_channels": 512, "num_queries": 64, "num_layers": 2, "row_dim": 32},
        (*_prefixed("backbone.net.", "backbone.", _SEQUENTIAL_RESNET), ("aggregator.", "aggregation.")),
        (384, 384),
        "amaralibey/Bag-of-Queries hubconf.py and README (384x384 for ResNet-50)",
    ),
}


def published_entry(name: str) -> PublishedModel:
    if name not in PUBLISHED:
        raise GeolocError(f"unknown published model {name!r}; known: {', '.join(PUBLISHED)}")
    return PUBLISHED[name]


def build_published(name: str) -> GeoLocNet:
    """Published model `name`'s network, randomly initialised, its tensors named as geoloc's."""
    entry = published_entry(name)
    spec = _BACKBONES.get(entry.backbone) or backbone_spec(entry.backbone)
    body = spec.truncate(spec.build_full())
    if entry.backbone.startswith("timm:"):
        body = TimmTokens(
            body.name,
            body.body,
            class_token=aggregator_entry(entry.aggregator).uses_class_token,
            norm=entry.vit_final_norm,
        )
    params = {"in_channels": spec.output_channels(body), **entry.params}
    model = GeoLocNet(
        name,
        body,
        entry.aggregator,
        params,
        entry.params.get("fc_output_dim", 1),
        0,
        entry.mean,
        entry.std,
        entry.image_size,
    )
    model.fc_output_dim = model.descriptor_dim
    for param in model.parameters():
        param.requires_grad = False
    return model.eval()


def to_geoloc_keys(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A release's state dict renamed into geoloc's network; a key no rename covers is refused."""
    entry = published_entry(name)
    renamed, unknown = {}, []
    for key, value in state.items():
        if key in entry.dropped:
            continue
        target = next((new + key[len(old) :] for old, new in entry.renames if key.startswith(old)), None)
        if target is None:
            unknown.append(key)
        else:
            renamed[target] = value
    if unknown:
        raise GeolocError(
            f"published model {name}: the file holds tensors this release does not have: "
            f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}"
        )
    return renamed


def load_published(name: str, path: Path) -> GeoLocNet:
    """Published model `name` with its release file `path` loaded (tensors only), in eval mode."""
    model = build_published(name)
    state = load_state_dict(Path(path), "published")
    load_checked(model, to_geoloc_keys(name, state), (), f"published model file {path} ({name})")
    return model
