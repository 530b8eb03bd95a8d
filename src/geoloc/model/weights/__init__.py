"""Pretrained weights: the registry (`registry`), the checked download (`download`), safe
loading (`loading`) and the `geoloc fetch-weights` command (`command`).

The names other modules use are re-exported here. The registry and download modules import
no torch: the workflow reads the registry when it parses the config.
"""

from geoloc.model.weights.download import fetch, sha256_file, verify_weights
from geoloc.model.weights.loading import load_state_dict, read_torch_file
from geoloc.model.weights.registry import FORMATS, load_registry, lookup

__all__ = [
    "FORMATS",
    "fetch",
    "load_registry",
    "load_state_dict",
    "lookup",
    "read_torch_file",
    "sha256_file",
    "verify_weights",
]
