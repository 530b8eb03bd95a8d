"""Stage 2, model: the backbone registry, the CosPlace network (GeM head), margin losses,
pretrained weights (`geoloc fetch-weights`) and model cost.

May import `data` and the shared plumbing; nothing from `train`, `evaluate` or `report`.
`backbones` and `weights` import no torch at module level: the workflow reads them when it
parses the config.
"""
