"""The parse-time check of an aggregator's input size (torch only for an aggregator with a fixed map)."""

from __future__ import annotations

from geoloc.model.aggregators import AGGREGATORS


def input_size_problem(aggregator: str, backbone: str, image_size: int) -> str | None:
    """Why `aggregator` on `backbone` cannot be trained at image_size x image_size, or None.

    The backbone's own limits come first (`geoloc.model.backbones.input_size_problem`). An
    aggregator with a fixed feature map (MixVPR) is then built for the map the backbone gives at
    `image_size` (found on a shape-only tensor, importing torch): it must hold at least as many
    positions as the rows MixVPR projects them to. Such a network resizes every image to
    `image_size` itself, so evaluation at other resolutions still works.
    """
    from geoloc.model.backbones import input_size_problem as backbone_problem

    if aggregator not in AGGREGATORS:
        return f"unknown aggregator {aggregator!r}; known aggregators: {', '.join(AGGREGATORS)}"
    problem = backbone_problem(backbone, image_size)
    if problem is not None or not AGGREGATORS[aggregator].fixed_feature_map:
        return problem
    from geoloc.model.network import feature_map_size

    height, width = feature_map_size(backbone, image_size)
    rows = AGGREGATORS[aggregator].defaults["out_rows"]
    if height * width < rows:
        return (
            f"aggregator {aggregator} projects the backbone's feature positions to {rows} rows, but {backbone} "
            f"gives a {height}x{width} map at {image_size} px; use a larger image_size"
        )
    return None
