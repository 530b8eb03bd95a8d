"""What a training run is: the result-affecting settings (the checkpoint fingerprint) and its name."""

from __future__ import annotations

from dataclasses import dataclass

from geoloc.device import PRECISIONS
from geoloc.errors import GeolocError
from geoloc.model.aggregators import AGGREGATORS
from geoloc.model.losses import LOSSES


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a training run's result (the checkpoint fingerprint)."""

    backbone: str = "resnet18"
    weights_format: str | None = None
    precision: str = "fp32"
    seed: int = 0
    epochs: int = 3
    iterations_per_epoch: int = 10_000
    batch_size: int = 32
    image_size: int = 512
    lr: float = 1e-5  # backbone + head
    classifier_lr: float = 0.01
    loss: str = "cosface"
    M: int = 10  # metres per class cell, east and north
    alpha: int = 30  # degrees per heading bin
    N: int = 5  # cells between two classes of the same group, east and north
    L: int = 2  # heading bins between two classes of the same group
    min_images_per_class: int = 10
    groups_num: int = 1
    fc_output_dim: int = 512  # descriptor size of the aggregators that end in a linear layer (gem, netvlad)
    aggregator: str = "gem"  # geoloc.model.aggregators.AGGREGATORS
    trainable_blocks: int | None = None  # None: the study's default for the backbone
    positive_dist_threshold: float = 25.0

    def check(self) -> None:
        positive = ("epochs", "iterations_per_epoch", "batch_size", "image_size", "M", "alpha", "N", "L",
                    "min_images_per_class", "groups_num", "fc_output_dim")
        for name in positive:
            if getattr(self, name) < 1:
                raise GeolocError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "classifier_lr", "positive_dist_threshold"):
            if not getattr(self, name) > 0:
                raise GeolocError(f"{name} must be positive, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise GeolocError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.aggregator not in AGGREGATORS:
            raise GeolocError(f"aggregator must be one of {', '.join(AGGREGATORS)}, got {self.aggregator!r}")
        if self.loss not in LOSSES:
            raise GeolocError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.alpha > 360:
            raise GeolocError(f"alpha must be at most 360 degrees, got {self.alpha}")
        if self.groups_num > self.N * self.N * self.L:
            raise GeolocError(f"groups_num={self.groups_num} exceeds N*N*L={self.N * self.N * self.L}")


@dataclass(frozen=True)
class RunInfo:
    name: str
    backbone: str
    pretraining: str
    precision: str
    seed: int
    tag: str | None
    kind: str = "trained"
