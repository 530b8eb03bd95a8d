"""Margin-based classifiers of the CosPlace training: CosFace, ArcFace and SphereFace.

Each classifier holds one weight vector per class and turns descriptors into logits
`s * cos(theta_j)` for every class j (s, the `scale`: cosines in [-1, 1] would make too flat a
softmax), with a margin m (`margin`) applied to the target class only; the trainer applies
`CrossEntropyLoss` to the logits. The three losses differ only in that margin, written on the
target cosine:
- CosFace (CosPlace's MarginCosineProduct): cos(theta) - m, s=30, m=0.4.
- ArcFace: cos(theta + m), s=30, m=0.5.
- SphereFace (as the study used it, OpenSphere's head): psi(theta) = (-1)^k cos(m theta) - 2k
  for theta in [k pi / m, (k+1) pi / m], s=30, m=1.5. It is the monotonic extension of
  cos(m theta) over [0, pi].
ArcFace and SphereFace go through acos, whose gradient explodes at cos = +-1; like
OpenSphere (SphereFace Revived) the margin enters as a detached offset, so gradients flow
through the plain cosine and the logits' values carry the margin.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from geoloc.errors import GeolocError

# acos is only evaluated strictly inside (-1, 1)
_COS_CLAMP = 1.0 - 1e-7


class MarginClassifier(nn.Module):
    """Cosine classifier: logits = scale * cos(theta), the target class' cosine replaced by its margin version."""

    def __init__(self, in_features: int, out_features: int, scale: float, margin: float):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise GeolocError(
                f"a classifier needs in_features and out_features >= 1, got {in_features} and {out_features}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.scale = scale
        self.margin = margin
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.xavier_uniform_(self.weight)

    def target_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        """The margin version of the target classes' cosines (same shape as `cosine`)."""
        raise NotImplementedError

    def forward(self, descriptors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(descriptors, dim=1), F.normalize(self.weight, dim=1))
        target = cosine.gather(1, labels.view(-1, 1))
        with torch.no_grad():
            offset = self.target_cosine(target) - target
        offsets = torch.zeros_like(cosine).scatter_(1, labels.view(-1, 1), offset)
        return self.scale * (cosine + offsets)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale}, "
            f"margin={self.margin}"
        )


class CosFace(MarginClassifier):
    """Large margin cosine loss (CosPlace's MarginCosineProduct): target logit s * (cos - m)."""

    def __init__(self, in_features: int, out_features: int, scale: float = 30.0, margin: float = 0.4):
        super().__init__(in_features, out_features, scale, margin)

    def target_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        return cosine - self.margin


class ArcFace(MarginClassifier):
    """Additive angular margin: target logit s * cos(theta + m), theta + m capped at pi."""

    def __init__(self, in_features: int, out_features: int, scale: float = 30.0, margin: float = 0.5):
        super().__init__(in_features, out_features, scale, margin)

    def target_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        theta = torch.acos(cosine.clamp(-_COS_CLAMP, _COS_CLAMP))
        return torch.cos((theta + self.margin).clamp(max=math.pi))


class SphereFace(MarginClassifier):
    """Multiplicative angular margin: target logit s * psi(theta), psi(theta) = (-1)^k cos(m theta) - 2k."""

    def __init__(self, in_features: int, out_features: int, scale: float = 30.0, margin: float = 1.5):
        super().__init__(in_features, out_features, scale, margin)

    def target_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        m_theta = self.margin * torch.acos(cosine.clamp(-_COS_CLAMP, _COS_CLAMP))
        k = torch.floor(m_theta / math.pi)
        sign = 1.0 - 2.0 * torch.remainder(k, 2)  # (-1)^k
        return sign * torch.cos(m_theta) - 2.0 * k


_CLASSIFIERS: dict[str, type[MarginClassifier]] = {
    "cosface": CosFace,
    "arcface": ArcFace,
    "sphereface": SphereFace,
}
LOSSES: tuple[str, ...] = tuple(_CLASSIFIERS)


def build_classifier(loss: str, in_features: int, out_features: int) -> MarginClassifier:
    """The classifier of `loss` ("cosface", "arcface" or "sphereface") with the study's scale and margin."""
    if loss not in _CLASSIFIERS:
        raise GeolocError(f"unknown loss {loss!r}; known losses: {', '.join(LOSSES)}")
    return _CLASSIFIERS[loss](in_features, out_features)
