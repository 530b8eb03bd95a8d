"""Stage 3, train: the CosPlace training loop (`geoloc train`: command, trainer), its settings,
batch sampler and augmentation, the on-device non-finite guard (guard), resumable checkpoints,
stop signals (stopping), TensorBoard events (events), and distributed training over several
processes (distributed, batchnorm).

May import `data`, `model`, `evaluate` (for in-loop validation) and the shared plumbing;
nothing from `report`.
"""
