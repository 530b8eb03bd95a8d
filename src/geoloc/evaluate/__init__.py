"""Stage 4, evaluate: descriptors, k-NN search and recall@N, and the columns of the result
files (`geoloc evaluate`).

May import `data`, `model` and the shared plumbing; nothing from `train` or `report`.
"""
