"""The network: a truncated, partly frozen backbone, then an aggregator (`geoloc.model.aggregators`).

The default aggregator is CosPlace's head (L2 norm -> GeM -> linear -> L2 norm); NetVLAD,
ConvAP, MixVPR, SALAD and BoQ take the same feature map. Images are normalised with the
statistics the backbone's pretrained weights expect (timm's pretrained_cfg; ImageNet's for the
torchvision study backbones); model.pt records them with the aggregator and its hyperparameters.

One registry (`geoloc.model.backbones`, plain data; `BACKBONES` here) maps each study backbone to
its torchvision constructor and what the study did with it: which top-level modules are kept
(the classifier and the pooling before it are cut), how many trailing blocks train (the rest is frozen) and how many
channels come out. Any timm model can be named as `timm:<model_name>` as well.

A backbone's *blocks* are its kept modules that hold parameters, with `features` counted
stage by stage; the last `trainable_blocks` of them train. For a timm model
(`geoloc.model.timm_backbone`) the blocks are its feature stages as timm's `feature_info`
lists them (a ViT's transformer blocks).

Pretrained weights are loaded into the full network first and only then cut, so the keys of
a weights file are the library's own names, and the truncated backbone keeps those names
(`model.backbone.layer3...` is `layer3...` of torchvision's ResNet-18).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from geoloc.atomic import atomic_torch_save
from geoloc.errors import GeolocError
from geoloc.model.aggregators import DEFAULT_AGGREGATOR, aggregator_entry
from geoloc.model.aggregators.layers import build_aggregator, resolve_hyperparameters
from geoloc.model.backbones import STUDY_BACKBONES, TIMM, StudyBackbone, check_backbone
from geoloc.model.timm_backbone import TimmBackbone, TimmFeatures
from geoloc.model.weights import load_state_dict, read_torch_file

MODEL_FORMAT = "geoloc-model/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TorchvisionBackbone(StudyBackbone):
    """A registry entry that builds, loads and cuts its torchvision network."""

    def build_full(self) -> nn.Module:
        return getattr(torchvision.models, self.constructor)(weights=None)

    def cut_prefixes(self, full: nn.Module) -> tuple[str, ...]:
        return tuple(f"{name}." for name, _ in full.named_children() if name not in self.kept)

    def truncate(self, full: nn.Module) -> nn.Module:
        return nn.Sequential(OrderedDict((name, getattr(full, name)) for name in self.kept))

    def block_parameters(self, body: nn.Module) -> list[list[nn.Parameter]]:
        modules = []
        for name, child in body.named_children():
            modules.extend(child.children() if name == "features" else [child])
        return [params for m in modules if (params := list(m.parameters()))]

    def output_channels(self, body: nn.Module) -> int:
        return self.channels


BACKBONES: dict[str, TorchvisionBackbone] = {
    name: TorchvisionBackbone(**dataclasses.asdict(entry)) for name, entry in STUDY_BACKBONES.items()
}

BackboneSpec = TorchvisionBackbone | TimmBackbone


def backbone_spec(name: str) -> BackboneSpec:
    """The registry entry of `name`: a study backbone or `timm:<model_name>`."""
    parsed = check_backbone(name)
    return TimmBackbone(parsed.model) if parsed.source == TIMM else BACKBONES[parsed.model]


class TimmTokens(TimmFeatures):
    """A timm ViT's patch tokens on their grid (NCHW), and its class token (N, C) when `class_token`.

    `norm`: after the ViT's final norm (as `TimmFeatures`), or straight from its last block (as
    BoQ's DINOv2 backbone takes them).
    """

    def __init__(self, name: str, body: nn.Module, *, class_token: bool = True, norm: bool = True):
        super().__init__(name, body)
        self.class_token = class_token
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        try:
            last = self.body.forward_intermediates(
                x,
                indices=1,
                norm=self.norm,
                output_fmt="NCHW",
                intermediates_only=True,
                return_prefix_tokens=self.class_token,
            )[-1]
        except AssertionError as exc:  # timm checks input sizes with asserts
            raise GeolocError(f"{self.name} cannot take {x.shape[-2]}x{x.shape[-1]} images: {exc}") from exc
        return (last[0], last[1][:, 0]) if self.class_token else last


def _has_class_token(body: nn.Module) -> bool:
    return isinstance(body, TimmFeatures) and getattr(body.body, "cls_token", None) is not None


class GeoLocNet(nn.Module):
    """Float images in [0, 1], shape (B, 3, H, W) -> L2-normalised (B, descriptor_dim) descriptors.

    backbone -> feature map (and a ViT's class token) -> aggregator. An aggregator built for one
    feature-map size (MixVPR) makes the network resize its images to `input_size` first.
    """

    def __init__(
        self,
        backbone_name: str,
        backbone: nn.Module,
        aggregator: str,
        aggregator_params: dict[str, Any],
        fc_output_dim: int,
        trainable_blocks: int,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        input_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.backbone_name = backbone_name
        self.aggregator = aggregator
        self.aggregator_params = dict(aggregator_params)
        self.fc_output_dim = fc_output_dim
        self.trainable_blocks = trainable_blocks
        self.input_size = input_size
        self.normalization = (tuple(mean), tuple(std))
        # Not persistent: constants, not weights, so saved models stay pure weights.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.backbone = backbone
        self.aggregation = build_aggregator(aggregator, self.aggregator_params)
        self.descriptor_dim: int = self.aggregation.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
        features = self.backbone((x - self.mean) / self.std)
        return self.aggregation(*features) if isinstance(features, tuple) else self.aggregation(features)


def _pretrained_normalization(spec: BackboneSpec, full: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std the backbone's pretrained weights expect: timm's pretrained_cfg, else ImageNet's."""
    config = (getattr(full, "pretrained_cfg", None) or {}) if isinstance(spec, TimmBackbone) else {}
    return tuple(config.get("mean", IMAGENET_MEAN)), tuple(config.get("std", IMAGENET_STD))


def feature_map_size(backbone: str, image_size: int) -> tuple[int, int]:
    """(H, W) of `backbone`'s feature map for image_size x image_size images (shapes only, nothing computed)."""
    spec = backbone_spec(backbone)
    with torch.device("meta"):
        body = spec.truncate(spec.build_full()).eval()
    with torch.no_grad():
        features = body(torch.empty(1, 3, image_size, image_size, device="meta"))
    return tuple(features.shape[-2:])


def build_model(
    backbone: str,
    fc_output_dim: int = 512,
    weights: Path | None = None,
    weights_format: str | None = None,
    trainable_blocks: int | None = None,
    *,
    aggregator: str = DEFAULT_AGGREGATOR,
    image_size: int | None = None,
    aggregator_params: dict[str, Any] | None = None,
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> GeoLocNet:
    """The network of `backbone` and `aggregator`, randomly initialised or with backbone `weights` loaded.

    `trainable_blocks`: how many trailing backbone blocks train (None: the study's default, or
    for a ViT the aggregator's reference default where it has one); the head always trains.
    `image_size`: the training size, needed by an aggregator built for one feature-map size (MixVPR).
    `aggregator_params` (complete, as model.pt records them) and `normalization` (mean, std) rebuild
    a saved model; by default they follow the backbone.
    """
    spec = backbone_spec(backbone)
    entry = aggregator_entry(aggregator)
    if fc_output_dim < 1:
        raise GeolocError(f"fc_output_dim must be >= 1, got {fc_output_dim}")
    if entry.fixed_feature_map and image_size is None:
        raise GeolocError(f"aggregator {aggregator} is built for one input size: give the training image_size")
    full = spec.build_full()
    cut = spec.cut_prefixes(full)
    if weights is not None:
        state = load_state_dict(Path(weights), weights_format or spec.weights_format, drop_prefixes=cut)
        source = f"weights file {weights} ({backbone})"
        _check_finite(state, source)
        load_checked(full, state, cut, source)
    mean, std = normalization or _pretrained_normalization(spec, full)
    body = spec.truncate(full)
    blocks = spec.block_parameters(body)
    vit = isinstance(body, TimmFeatures) and hasattr(body.body, "patch_embed")
    default = spec.default_trainable_blocks
    if vit and entry.vit_trainable_blocks is not None:  # e.g. SALAD and BoQ train DINOv2's last 4 blocks
        default = min(entry.vit_trainable_blocks, len(blocks))
    trainable = default if trainable_blocks is None else trainable_blocks
    if not 0 <= trainable <= len(blocks):
        raise GeolocError(f"trainable_blocks for {backbone} must be between 0 and {len(blocks)}, got {trainable}")
    for param in body.parameters():
        param.requires_grad = False
    for block in blocks[len(blocks) - trainable :]:
        for param in block:
            param.requires_grad = True
    if entry.uses_class_token and _has_class_token(body):
        body = TimmTokens(body.name, body.body)
    input_size = (image_size, image_size) if entry.fixed_feature_map else None
    if aggregator_params is None:
        feature_hw = feature_map_size(backbone, image_size) if entry.fixed_feature_map else (0, 0)
        aggregator_params = resolve_hyperparameters(
            aggregator, spec.output_channels(body), fc_output_dim=fc_output_dim, feature_hw=feature_hw, vit=vit
        )
    return GeoLocNet(backbone, body, aggregator, aggregator_params, fc_output_dim, trainable, mean, std, input_size)


def _check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    # A NaN in pretrained weights would otherwise surface after a whole first epoch, as a
    # diverged training or as validation descriptors that are not finite.
    not_finite = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if not_finite:
        raise GeolocError(f"{source} is damaged: non-finite values (NaN or inf) in {_first(not_finite)}")


def load_checked(full: nn.Module, state: Mapping[str, torch.Tensor], cut: tuple[str, ...], source: str) -> None:
    """Load `state` into `full`; every tensor of the kept part must be there with its shape."""
    expected = {key: value for key, value in full.state_dict().items() if not key.startswith(cut)}
    # Old checkpoints lack BatchNorm's step counters; torch fills them in.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unknown = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} (the network has {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label}: {_first(keys)}"
        for label, keys in (("missing keys", missing), ("wrong shapes", wrong_shape), ("unknown keys", unknown))
        if keys
    ]
    if problems:
        raise GeolocError(f"{source} does not fit the network; " + "; ".join(problems))
    full.load_state_dict(state, strict=False)


def _first(items: list[str], shown: int = 8) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) number of parameters."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def save_model(path: Path, model: GeoLocNet) -> None:
    """Write the model's weights and what rebuilds it, atomically.

    Files written before aggregators were recorded lack `aggregator`, `image_size`, `mean` and
    `std`: `load_model` reads them as GeM (CosPlace's defaults) on ImageNet-normalised images.
    """
    payload = {
        "format": MODEL_FORMAT,
        "backbone": model.backbone_name,
        "fc_output_dim": model.fc_output_dim,
        "trainable_blocks": model.trainable_blocks,
        "aggregator": {"name": model.aggregator, "params": model.aggregator_params},
        "image_size": None if model.input_size is None else model.input_size[0],
        "mean": list(model.normalization[0]),
        "std": list(model.normalization[1]),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_torch_save(payload, path)


def load_model(path: Path, map_location: str | torch.device = "cpu") -> GeoLocNet:
    """The model saved by `save_model`; a file holding code or anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise GeolocError(f"model file {path} does not exist")
    payload = read_torch_file(path, "model file")
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise GeolocError(f"{path} is not a geoloc model (it has no 'format': '{MODEL_FORMAT}' entry)")
    _check_model_fields(path, payload)
    aggregator = payload.get("aggregator") or {"name": DEFAULT_AGGREGATOR, "params": None}
    try:
        model = build_model(
            payload["backbone"],
            payload["fc_output_dim"],
            trainable_blocks=payload["trainable_blocks"],
            aggregator=aggregator["name"],
            aggregator_params=aggregator["params"],
            image_size=payload.get("image_size"),
            normalization=(tuple(payload.get("mean", IMAGENET_MEAN)), tuple(payload.get("std", IMAGENET_STD))),
        )
    except TypeError as exc:  # hyperparameters the aggregator's module does not take
        raise GeolocError(f"model file {path} is damaged: its aggregator hyperparameters do not fit: {exc}") from exc
    load_checked(model, payload["state_dict"], (), f"model file {path}")
    return model.to(map_location)


def _is_count(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_state_dict(value: object) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(key, str) and isinstance(tensor, torch.Tensor) for key, tensor in value.items()
    )


# What each field of a model file must hold, and how the error says it.
_MODEL_FIELDS = {
    "backbone": (lambda value: isinstance(value, str), "a backbone name"),
    "fc_output_dim": (lambda value: _is_count(value, 1), "a positive integer"),
    "trainable_blocks": (lambda value: value is None or _is_count(value, 0), "null or an integer >= 0"),
    "state_dict": (_is_state_dict, "a mapping of tensor names to tensors"),
}
# Fields added with the aggregators; absent from older files (read as GeM, ImageNet statistics).
_OPTIONAL_FIELDS = {
    "aggregator": (
        lambda value: (
            isinstance(value, Mapping)
            and isinstance(value.get("name"), str)
            and isinstance(value.get("params"), Mapping)
        ),
        "a mapping with a name and params",
    ),
    "image_size": (lambda value: value is None or _is_count(value, 1), "null or a positive integer"),
    "mean": (lambda value: _is_triple(value), "three numbers"),
    "std": (lambda value: _is_triple(value), "three numbers"),
}


def _is_triple(value: object) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)


def _check_model_fields(path: Path, payload: dict) -> None:
    """One clear error for a model file whose fields have the wrong types (e.g. edited by hand)."""
    for field, (valid, expected) in (_MODEL_FIELDS | _OPTIONAL_FIELDS).items():
        if field not in payload:
            if field in _OPTIONAL_FIELDS:
                continue
            raise GeolocError(f"model file {path} is damaged: it has no {field!r}")
        value = payload[field]
        if not valid(value):
            shown = type(value).__name__ if field == "state_dict" else repr(value)
            raise GeolocError(f"model file {path} is damaged: {field} must be {expected}, got {shown}")
