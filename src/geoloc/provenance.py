"""What a result file records about the machine and software that made it.

`geoloc train` (train.json) and `geoloc evaluate` (the recall CSVs, baseline.json) record the
same strings, so the report can tell which results came from the same hardware.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import resource
from datetime import datetime, timezone

import torch

import geoloc

# Distribution names whose versions are recorded (faiss ships as one of three).
_PACKAGES = {"torch": ("torch",), "torchvision": ("torchvision",), "timm": ("timm",),
             "faiss": ("faiss-cpu", "faiss-gpu", "faiss")}


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
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fingerprint_of(settings: dict) -> dict:
    """train.json's (and baseline.json's) `fingerprint`: the settings that make the result and
    the sha256 of their sorted JSON, which the report compares."""
    return {"sha256": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(), "settings": settings}
