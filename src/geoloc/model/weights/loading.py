"""Safe loading of weights files: tensors only, in each format's own layout.

Weights files are read with `torch.load(weights_only=True)` (or as safetensors): they hold
tensors only, and a file that would run code when unpickled is refused. torch is imported
inside the functions: the workflow imports the registry at parse time.
"""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoloc.errors import GeolocError
from geoloc.model.weights.registry import FORMATS

if TYPE_CHECKING:
    import torch

# Containers a format's checkpoints may wrap their state dict in: CSAIL's Places365 ResNets
# are training checkpoints, the benchmark's Places365/GLDv2 copies plain state dicts; both
# load. timm checkpoints may be training checkpoints too.
_CONTAINERS = {
    "torchvision": (),
    "places365": ("state_dict",),
    "gldv2": ("state_dict",),
    "timm": ("state_dict", "model"),
    "published": ("state_dict",),
}
_DATA_PARALLEL_PREFIX = "module."


def load_state_dict(path: Path, fmt: str, *, drop_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The tensors of weights file `path` in format `fmt`, named as the library's own network.

    Containers are unwrapped and DataParallel's `module.` prefix removed; keys starting with
    one of `drop_prefixes` (a classifier the caller cuts off) are left out.
    """
    import torch  # here, not at the top: the workflow imports this module for `lookup` alone

    if fmt not in FORMATS:
        raise GeolocError(f"unknown weights format {fmt!r}; known formats: {', '.join(FORMATS)}")
    path = Path(path)
    content = _read_tensors(path)
    for container in _CONTAINERS[fmt]:
        if isinstance(content, Mapping) and isinstance(content.get(container), Mapping):
            content = content[container]
            break
    if not isinstance(content, Mapping):
        raise GeolocError(f"weights file {path} holds a {type(content).__name__}, not a state dict ({fmt} format)")
    state = {}
    for key, value in content.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise GeolocError(f"weights file {path} is not a {fmt} state dict: entry {key!r} is not a tensor")
        name = key.removeprefix(_DATA_PARALLEL_PREFIX)
        if not name.startswith(drop_prefixes):
            state[name] = value
    return state


def _read_tensors(path: Path) -> Any:
    if not path.is_file():
        raise GeolocError(f"weights file {path} does not exist")
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as exc:
            raise GeolocError(f"weights file {path} is a damaged safetensors file: {exc}") from exc
    return read_torch_file(path, "weights file")


def read_torch_file(path: Path, what: str) -> Any:
    """`torch.load(weights_only=True)` with errors that say what is wrong with `what` `path`.

    A file whose pickle names Python code (anything but tensors and plain containers) is
    refused before any of it runs.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        code = _python_globals(path, str(exc))
        if code:
            raise GeolocError(
                f"{what} {path} was refused: loading it would run the Python code it "
                f"names ({', '.join(code)}); geoloc loads tensors only"
            ) from exc
        raise GeolocError(
            f"{what} {path} is not a readable PyTorch file (its pickle holds more than tensors and plain containers)"
        ) from exc
    except EOFError as exc:
        raise GeolocError(f"{what} {path} is not a readable PyTorch file: it is empty or cut short") from exc
    except (RuntimeError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise GeolocError(f"{what} {path} is not a readable PyTorch file: {exc}") from exc


def _python_globals(path: Path, message: str) -> list[str]:
    """The Python globals (module.name) a checkpoint's pickle names beyond tensors and containers.

    Asked of torch for zip checkpoints; for the legacy format, read from its error message
    (its other advice, to load with weights_only=False, is exactly what must not happen).
    """
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (ValueError, RuntimeError, OSError, pickle.UnpicklingError):
        return re.findall(r"GLOBAL ([\w.]+)", message)


def _is_safetensors(path: Path) -> bool:
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    header_length = struct.unpack("<Q", head[:8])[0]
    return head[8:9] == b"{" and header_length < path.stat().st_size
