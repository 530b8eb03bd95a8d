"""Any timm model as a backbone (`timm:<model_name>`): its last feature map, NCHW, for GeM.

The network is cut with timm's own API: `prune_intermediate_layers` drops the classifier and
what follows the last feature stage, and `forward_intermediates` gives that stage's output as
an NCHW map with the model's final norm applied (a ViT's LayerNorm, a Swin's last norm). For
a vision transformer that map is its patch tokens on the patch grid, without the class and
register tokens.

Models that accept timm's `dynamic_img_size` (ViT, DeiT, DINOv2, EVA, Swin, ...) are built
with it: the position embeddings (or attention masks) are resampled for each input size, so
one model trains at `image_size` and evaluates test images at their own resolution. What a
model still cannot take (a size its patch size does not divide, a fixed-size model such as
MLP-Mixer) is found before any job by `input_size_problem`, which runs the cut network on a
shape-only ("meta") tensor.

timm is imported only here, when a timm backbone is asked for: it adds seconds to the start
of every command.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch
from torch import nn

from geoloc.errors import GeolocError


class TimmFeatures(nn.Module):
    """A pruned timm model reduced to its last feature map, always NCHW."""

    def __init__(self, name: str, body: nn.Module):
        super().__init__()
        self.name = name
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            maps = self.body.forward_intermediates(x, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True)
        except AssertionError as exc:  # timm checks input sizes with asserts
            raise GeolocError(f"{self.name} cannot take {x.shape[-2]}x{x.shape[-1]} images: {exc}") from exc
        return maps[-1]


@dataclass(frozen=True)
class TimmBackbone:
    """Any timm model: its last feature stage, the last stage (or transformer block) training by default.

    Its blocks are its feature stages as timm's `feature_info` lists them: the stages of a
    CNN or Swin, the transformer blocks of a ViT. The embeddings belong to the first block,
    the final norm to the last.
    """

    model_name: str
    default_trainable_blocks: int = 1
    weights_format: str = "timm"

    @property
    def name(self) -> str:
        return f"timm model {self.model_name}"

    def build_full(self) -> nn.Module:
        import timm

        try:
            try:
                return timm.create_model(self.model_name, pretrained=False, dynamic_img_size=True)
            except TypeError as exc:  # a model without the option takes any size already
                if "dynamic_img_size" not in str(exc):
                    raise
                return timm.create_model(self.model_name, pretrained=False)
        except RuntimeError as exc:  # timm's "Unknown model"
            raise GeolocError(f"{self.name}: {exc}") from exc

    def cut_prefixes(self, full: nn.Module) -> tuple[str, ...]:
        classifier = full.pretrained_cfg.get("classifier") or ()
        names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        return tuple(f"{name}." for name in names)

    def truncate(self, full: nn.Module) -> nn.Module:
        if not hasattr(full, "forward_intermediates"):
            raise GeolocError(f"{self.name} cannot give a feature map: timm offers no forward_intermediates for it")
        full.prune_intermediate_layers(indices=1, prune_norm=False, prune_head=True)
        return TimmFeatures(self.name, full)

    def block_parameters(self, body: nn.Module) -> list[list[nn.Parameter]]:
        # Stage i is everything registered after stage i-1's module, up to the end of its own;
        # what comes after the last stage (the final norm) belongs to the last.
        model = body.body
        order = [name for name, _ in model.named_modules()]
        stage_ends = []
        for stage in (info["module"] for info in model.feature_info):
            if stage not in order:
                raise GeolocError(f"{self.name}: cannot find its feature stage {stage!r}")
            start = order.index(stage)
            end = start + 1
            while end < len(order) and order[end].startswith(stage + "."):
                end += 1
            stage_ends.append(end)
        stages: list[list[nn.Parameter]] = [[] for _ in stage_ends]
        for index, (_, module) in enumerate(model.named_modules()):
            stage = min(bisect.bisect_right(stage_ends, index), len(stages) - 1)
            stages[stage].extend(module.parameters(recurse=False))
        return [params for params in stages if params]

    def output_channels(self, body: nn.Module) -> int:
        return body.body.feature_info[-1]["num_chs"]


def timm_input_size_problem(model_name: str, image_size: int) -> str | None:
    """Why timm model `model_name`, cut as a backbone, cannot take image_size x image_size
    images, or None when it can. Shapes only: nothing is computed or allocated."""
    spec = TimmBackbone(model_name)
    try:
        with torch.device("meta"):
            body = spec.truncate(spec.build_full()).eval()
        with torch.no_grad():
            body(torch.empty(1, 3, image_size, image_size, device="meta"))
    except GeolocError as exc:
        return str(exc)
    except (RuntimeError, ValueError) as exc:  # e.g. a kernel larger than the feature map
        return f"{spec.name} cannot take {image_size}x{image_size} images: {exc}"
    return None
