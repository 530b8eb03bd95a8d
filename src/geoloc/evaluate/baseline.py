"""The untrained baseline: the network exactly as `geoloc train` starts it, and its baseline.json.

What a VPR paper shows as "off-the-shelf": the backbone with its pretrained weights (or its
random initialisation) and a GeM + fc head with random weights, as CosPlace's training starts
from. The trainer seeds torch and builds the model with nothing in between; so does this, so
a baseline is the first state of every run of its (backbone, pretraining, seed).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from geoloc.grid import backbone_slug
from geoloc.model.cost import gflops_per_image
from geoloc.model.network import GeoLocNet, backbone_spec, build_model, count_parameters
from geoloc.model.weights import sha256_file
from geoloc.provenance import device_name, fingerprint_of, package_versions


def baseline_name(backbone: str, pretraining: str) -> str:
    """`<slug>-<pretraining>-baseline`, the name of the baseline of a (backbone, pretraining)."""
    return f"{backbone_slug(backbone)}-{pretraining}-baseline"


def build_baseline(
    backbone: str, *, fc_output_dim: int, seed: int, weights: Path | None, weights_format: str | None
) -> GeoLocNet:
    """The network as training starts it: `torch.manual_seed(seed)`, then `build_model`."""
    torch.manual_seed(seed)
    return build_model(backbone, fc_output_dim, weights=weights, weights_format=weights_format)


def baseline_summary(
    model: GeoLocNet,
    *,
    pretraining: str,
    seed: int,
    weights: Path | None,
    weights_format: str | None,
    device: torch.device,
    image_size: tuple[int, int],
) -> dict[str, Any]:
    """baseline.json: the keys the report and aggregate read from a train.json, for no training.

    Times, epochs and the best validation epoch are null; `gflops_per_image` is counted at
    `image_size` (H, W), the size of the evaluation's first test image.
    """
    weights_sha256 = sha256_file(weights) if weights is not None else None
    settings = {
        "backbone": model.backbone_name,
        "pretraining": pretraining,
        "seed": seed,
        "fc_output_dim": model.fc_output_dim,
        "trainable_blocks": model.trainable_blocks,
        "weights_sha256": weights_sha256,
    }
    total, trainable = count_parameters(model)
    return {
        "run": {
            "name": baseline_name(model.backbone_name, pretraining),
            "backbone": model.backbone_name,
            "pretraining": pretraining,
            "precision": "fp32",
            "seed": seed,
            "tag": None,
            "kind": "baseline",
        },
        "fingerprint": fingerprint_of(settings),
        "hyperparameters": settings,
        "weights": None
        if weights is None
        else {
            "path": str(weights),
            "sha256": weights_sha256,
            "format": weights_format or backbone_spec(model.backbone_name).weights_format,
        },
        "model_sha256": None,
        "epochs": [],
        "best_epoch": None,
        "best_val_r1": None,
        "train_seconds": None,
        "val_seconds": None,
        "training_time_seconds": None,
        "images_per_second": None,
        "peak_memory_mb": None,
        "image_cache_build_seconds": None,
        "compile_seconds": None,
        "resumed_from_iteration": None,
        "device": device_name(device),
        "device_type": device.type,
        "gpus": int(device.type == "cuda"),
        "world_size": 1,
        "params": total,
        "trainable_params": trainable,
        "gflops_per_image": gflops_per_image(model, image_size),
        "versions": package_versions(),
        "started_at": None,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
