"""Stage 3, train: the CosPlace training loop (`geoloc train`), batch augmentation and
resumable checkpoints.

May import `data`, `model`, `evaluate` (for in-loop validation) and the shared plumbing;
nothing from `report`.
"""
