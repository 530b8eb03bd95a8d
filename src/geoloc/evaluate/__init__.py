"""Stage 4, evaluate: descriptors, k-NN search and recall@N, the untrained baseline, and the
result files with their columns (`geoloc evaluate`).

May import `data`, `model`, the shared plumbing and `geoloc.grid` (the baseline's run name);
nothing from `train` or `report`.
"""
