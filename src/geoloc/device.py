"""The compute device and numeric precision every stage runs with.

`auto` takes CUDA when torch sees a device, else the CPU. `amp` is mixed precision: float16
autocast on CUDA (with a GradScaler in training, as the study ran it) and bfloat16 on a CPU,
where float16 autocast is not offered.
"""

from __future__ import annotations

import torch

from geoloc.errors import GeolocError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "amp")


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when available, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise GeolocError("device cuda was asked for, but torch sees no CUDA device")
        return torch.device("cuda")
    raise GeolocError(f"unknown device {name!r}: expected auto, cpu or cuda")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise GeolocError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of `precision` on `device` (a no-op for fp32)."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=precision == "amp")
