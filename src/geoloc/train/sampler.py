"""Which images each training iteration sees: a pure function of (seed, epoch, iteration).

A resumed run draws exactly the batches the uninterrupted one would have, and the ranks of a
distributed run draw the same global batch and each keep its own slice of it.
"""

from __future__ import annotations

import torch


def seed_for(*numbers: int) -> int:
    """A seed for one (run seed, epoch, iteration, stream), independent of the order runs happen in."""
    value = 0x9E3779B97F4A7C15
    for n in numbers:
        value = (value ^ (n + 0x632BE59BD9B4E019 + (value << 6) + (value >> 2))) & (2**63 - 1)
    return value


class GroupBatchSampler:
    """Batches of (class, image) pairs: `batch_size` distinct classes, one random image each.

    Each batch is drawn from a generator seeded by (seed, epoch, iteration); `part` = (start,
    stop) keeps that slice of every batch (a rank's share of the global batch).
    """

    def __init__(
        self,
        images_per_class: list[int],
        batch_size: int,
        seed: int,
        epoch: int,
        start: int,
        stop: int,
        part: tuple[int, int] | None = None,
    ) -> None:
        self.counts = torch.tensor(images_per_class, dtype=torch.float64)
        self.batch_size, self.seed, self.epoch, self.start, self.stop = batch_size, seed, epoch, start, stop
        self.part = slice(*part) if part else slice(None)

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        for iteration in range(self.start, self.stop):
            g = torch.Generator().manual_seed(seed_for(self.seed, self.epoch, iteration, 0))
            classes = torch.randperm(len(self.counts), generator=g)[: self.batch_size]
            picks = (torch.rand(self.batch_size, generator=g, dtype=torch.float64) * self.counts[classes]).long()
            yield list(zip(classes.tolist(), picks.tolist()))[self.part]
