"""The CosPlace network: a truncated, partly frozen backbone, then L2 norm -> GeM -> linear -> L2 norm.

One registry (`geoloc.model.backbones`, plain data; `BACKBONES` here) maps each study backbone to
its torchvision constructor and what the study did with it: which top-level modules are kept (the classifier and the pooling
before it are cut), how many trailing blocks train (the rest is frozen) and how many
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

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from geoloc.atomic import atomic_torch_save
from geoloc.errors import GeolocError
from geoloc.model.backbones import STUDY_BACKBONES, TIMM, StudyBackbone, check_backbone
from geoloc.model.timm_backbone import TimmBackbone
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


class L2Norm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2.0, dim=1)


class GeM(nn.Module):
    """Generalized mean pooling over the spatial dimensions, with a learnable exponent p."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p)


class GeoLocNet(nn.Module):
    """Float images in [0, 1], shape (B, 3, H, W) -> L2-normalised (B, fc_output_dim) descriptors."""

    def __init__(self, backbone_name: str, backbone: nn.Module, channels: int, fc_output_dim: int,
                 trainable_blocks: int):
        super().__init__()
        self.backbone_name = backbone_name
        self.fc_output_dim = fc_output_dim
        self.trainable_blocks = trainable_blocks
        # Not persistent: constants, not weights, so saved models stay pure weights.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.backbone = backbone
        self.aggregation = nn.Sequential(OrderedDict(
            l2norm=L2Norm(),
            gem=GeM(),
            flatten=nn.Flatten(),
            fc=nn.Linear(channels, fc_output_dim),
            l2norm_out=L2Norm(),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregation(self.backbone((x - self.mean) / self.std))


def build_model(backbone: str, fc_output_dim: int = 512, weights: Path | None = None,
                weights_format: str | None = None, trainable_blocks: int | None = None) -> GeoLocNet:
    """The CosPlace network on `backbone`, randomly initialised or with `weights` loaded.

    `trainable_blocks`: how many trailing backbone blocks train (None: the study's default);
    the head always trains.
    """
    spec = backbone_spec(backbone)
    if fc_output_dim < 1:
        raise GeolocError(f"fc_output_dim must be >= 1, got {fc_output_dim}")
    full = spec.build_full()
    cut = spec.cut_prefixes(full)
    if weights is not None:
        state = load_state_dict(Path(weights), weights_format or spec.weights_format, drop_prefixes=cut)
        source = f"weights file {weights} ({backbone})"
        _check_finite(state, source)
        _load_checked(full, state, cut, source)
    body = spec.truncate(full)
    blocks = spec.block_parameters(body)
    trainable = spec.default_trainable_blocks if trainable_blocks is None else trainable_blocks
    if not 0 <= trainable <= len(blocks):
        raise GeolocError(f"trainable_blocks for {backbone} must be between 0 and {len(blocks)}, got {trainable}")
    for param in body.parameters():
        param.requires_grad = False
    for block in blocks[len(blocks) - trainable:]:
        for param in block:
            param.requires_grad = True
    return GeoLocNet(backbone, body, spec.output_channels(body), fc_output_dim, trainable)


def _check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    # A NaN in pretrained weights would otherwise surface after a whole first epoch, as a
    # diverged training or as validation descriptors that are not finite.
    not_finite = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if not_finite:
        raise GeolocError(f"{source} is damaged: non-finite values (NaN or inf) in {_first(not_finite)}")


def _load_checked(full: nn.Module, state: Mapping[str, torch.Tensor], cut: tuple[str, ...], source: str) -> None:
    """Load `state` into `full`; every tensor of the kept part must be there with its shape."""
    expected = {key: value for key, value in full.state_dict().items() if not key.startswith(cut)}
    # Old checkpoints lack BatchNorm's step counters; torch fills them in.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unknown = [k for k in state if k not in expected]
    wrong_shape = [f"{k} {tuple(state[k].shape)} (the network has {tuple(v.shape)})"
                   for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [f"{label}: {_first(keys)}" for label, keys in
                (("missing keys", missing), ("wrong shapes", wrong_shape), ("unknown keys", unknown)) if keys]
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
    """Write the model's weights and what rebuilds it, atomically."""
    payload = {
        "format": MODEL_FORMAT,
        "backbone": model.backbone_name,
        "fc_output_dim": model.fc_output_dim,
        "trainable_blocks": model.trainable_blocks,
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
    model = build_model(payload["backbone"], payload["fc_output_dim"], trainable_blocks=payload["trainable_blocks"])
    _load_checked(model, payload["state_dict"], (), f"model file {path}")
    return model.to(map_location)


def _is_count(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_state_dict(value: object) -> bool:
    return isinstance(value, Mapping) and all(isinstance(key, str) and isinstance(tensor, torch.Tensor)
                                              for key, tensor in value.items())


# What each field of a model file must hold, and how the error says it.
_MODEL_FIELDS = {
    "backbone": (lambda value: isinstance(value, str), "a backbone name"),
    "fc_output_dim": (lambda value: _is_count(value, 1), "a positive integer"),
    "trainable_blocks": (lambda value: value is None or _is_count(value, 0), "null or an integer >= 0"),
    "state_dict": (_is_state_dict, "a mapping of tensor names to tensors"),
}


def _check_model_fields(path: Path, payload: dict) -> None:
    """One clear error for a model file whose fields have the wrong types (e.g. edited by hand)."""
    for field, (valid, expected) in _MODEL_FIELDS.items():
        if field not in payload:
            raise GeolocError(f"model file {path} is damaged: it has no {field!r}")
        value = payload[field]
        if not valid(value):
            shown = type(value).__name__ if field == "state_dict" else repr(value)
            raise GeolocError(f"model file {path} is damaged: {field} must be {expected}, got {shown}")
