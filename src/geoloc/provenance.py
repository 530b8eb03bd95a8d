"""What a result file records about the machine and software that made it.

`geoloc train` (train.json) and `geoloc evaluate` (the recall CSVs, baseline.json) record the
same strings, so the report can tell which results came from the same hardware.
"""

from __future__ import annotations

import platform

import torch

import geoloc


def device_name(device: torch.device) -> str:
    """The GPU model, or the CPU and the number of torch threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def package_versions() -> dict[str, str]:
    import faiss
    import timm
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__,
            "faiss": faiss.__version__, "geoloc": geoloc.__version__}
