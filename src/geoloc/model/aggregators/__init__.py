"""The registry of aggregators (the network's head after the backbone), as plain data.

Each entry names its module class in `geoloc.model.aggregators.layers` and the defaults of
its reference implementation. The workflow reads this registry when Snakemake parses the
config (names; `sizes.input_size_problem`, which imports torch only for an aggregator built
for one feature-map size); `layers` holds the modules.

Every aggregator takes a CNN's feature map (N, C, H, W) or a ViT's patch tokens laid out on
their grid (N, C, H/p, W/p), and returns L2-normalised descriptors (N, D). SALAD also takes
the ViT's class token, as its reference does (for a CNN, the feature map's mean stands in).
Training stays CosPlace's recipe (CosFace over class groups) for every aggregator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_AGGREGATOR = "gem"


@dataclass(frozen=True)
class AggregatorEntry:
    """One aggregator: its module class, its reference defaults and where they come from."""

    constructor: str  # class name in geoloc.model.aggregators.layers
    label: str  # the name the report uses
    defaults: dict[str, Any] = field(default_factory=dict)  # hyperparameters, as the reference sets them
    uses_fc_output_dim: bool = False  # a linear layer maps to fc_output_dim (else the size is its own)
    fixed_feature_map: bool = False  # built for one feature-map size (MixVPR): the image size is fixed
    uses_class_token: bool = False  # takes a ViT's class token beside its patch tokens (SALAD)
    vit_trainable_blocks: int | None = None  # transformer blocks its reference trains (None: the backbone's default)
    reference: str = ""


AGGREGATORS: dict[str, AggregatorEntry] = {
    "gem": AggregatorEntry(
        "GeMHead",
        "GeM",
        {"p": 3.0, "eps": 1e-6},
        uses_fc_output_dim=True,
        reference="CosPlace (gmberton/CosPlace): L2 norm, GeM p=3 learnable, linear, L2 norm",
    ),
    "netvlad": AggregatorEntry(
        "NetVLADHead",
        "NetVLAD",
        {"clusters": 64, "normalize_input": True},
        uses_fc_output_dim=True,
        reference="dVGL benchmark (gmberton/deep-visual-geo-localization-benchmark): NetVLAD, K=64, "
        "then linear + L2 norm",
    ),
    "convap": AggregatorEntry(
        "ConvAP",
        "ConvAP",
        {"out_channels": 1024, "s1": 2, "s2": 2},
        reference="GSV-Cities (amaralibey/gsv-cities main.py): 1x1 conv to 1024 channels, 2x2 average pooling",
    ),
    "mixvpr": AggregatorEntry(
        "MixVPR",
        "MixVPR",
        {"out_channels": 1024, "mix_depth": 4, "mlp_ratio": 1, "out_rows": 4},
        fixed_feature_map=True,
        reference="MixVPR (amaralibey/MixVPR main.py): 4 feature mixers, 1024 channels x 4 rows",
    ),
    "salad": AggregatorEntry(
        "SALAD",
        "SALAD",
        {"num_clusters": 64, "cluster_dim": 128, "token_dim": 256, "dropout": 0.3},
        uses_class_token=True,
        vit_trainable_blocks=4,
        reference="SALAD (serizba/salad hubconf.py): 64 clusters of 128, a 256-d scene token",
    ),
    "boq": AggregatorEntry(
        "BoQ",
        "BoQ",
        {"proj_channels": None, "num_queries": 64, "num_layers": 2, "row_dim": 32},
        vit_trainable_blocks=4,
        reference="Bag-of-Queries (amaralibey/Bag-of-Queries hubconf.py): 2 blocks of 64 queries, 32 rows; "
        "proj_channels 512 on a CNN, 384 on DINOv2 (None: chosen by the input)",
    ),
}


def aggregator_entry(name: str) -> AggregatorEntry:
    """The registry entry of `name`; an unknown name is refused with the known ones."""
    from geoloc.errors import GeolocError

    if name not in AGGREGATORS:
        raise GeolocError(f"unknown aggregator {name!r}; known aggregators: {', '.join(AGGREGATORS)}")
    return AGGREGATORS[name]
