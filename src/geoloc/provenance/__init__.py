"""What a result file records about the machine, software and model that made it.

`geoloc train` (train.json) and `geoloc evaluate` (the recall CSVs, baseline.json) record the
same strings, so the report can tell which results came from the same hardware. The workflow's
own checks of what each job was made from live in `geoloc.provenance.stamps`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import resource
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import geoloc
from geoloc.errors import GeolocError

if TYPE_CHECKING:  # torch takes seconds to import; the workflow imports this package at parse time
    import torch

# Distribution names whose versions are recorded (faiss ships as one of three).
_PACKAGES = {
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "timm": ("timm",),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss"),
}


def package_versions() -> dict[str, str | None]:
    """Package versions from their installed metadata: importing timm and faiss to ask them
    took most of a second of every run."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for key, distributions in _PACKAGES.items():
        found[key] = next((version for name in distributions if (version := _version(name))), None)
    found["geoloc"] = geoloc.__version__
    return found


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str:
    """The GPU model, or the CPU and the number of torch threads."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def peak_memory_mb(device: torch.device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def fingerprint_of(settings: dict) -> dict:
    """train.json's (and baseline.json's) `fingerprint`: the settings that make the result and
    the sha256 of their sorted JSON, which the report compares."""
    return {"sha256": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(), "settings": settings}


def sha256_of_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def checked_model(model: Path) -> str:
    """The sha256 of `model`, once it is found to be the file its run's train.json recorded.

    A model.pt whose bytes changed after training (a disk error, a copy from another run) would
    evaluate as if it were the trained one. Without a train.json beside it (a model from
    elsewhere) there is nothing to compare: its digest is returned as it is.
    """
    model = Path(model)
    summary = model.parent / "train.json"
    try:
        digest = sha256_of_file(model)
    except OSError as exc:
        raise GeolocError(f"cannot read model {model}: {exc.strerror or exc}") from exc
    if not summary.is_file():
        return digest
    try:
        recorded = json.loads(summary.read_text(encoding="utf-8")).get("model_sha256")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise GeolocError(
            f"{summary}: not readable JSON ({exc}): delete it and {model}, and rerun the workflow (it retrains the run)"
        ) from exc
    if recorded != digest:
        raise GeolocError(
            f"{model}: its sha256 {digest[:12]}... is not the model_sha256 {str(recorded)[:12]}... that {summary} "
            f"records (the file changed after training): delete {model} and {summary} and rerun the workflow "
            "(it retrains the run)"
        )
    return digest
