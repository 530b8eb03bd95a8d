"""Stage 1, data: image names, listing and decoding, CosPlace classes and groups, the datasets,
the decoded-image cache, and the synthetic city (`geoloc synth`).

May import only the shared plumbing at the top of the package (`atomic`, `errors`): nothing
from `model`, `train`, `evaluate` or `report`.
"""
