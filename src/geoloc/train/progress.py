"""Where a training run stands: what every checkpoint saves besides the weights and optimizers,
and what train.json reports of the epochs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from geoloc.provenance import now


@dataclass
class Progress:
    """The loop's counters, clocks and best model. A checkpoint stores it as a dict of these
    fields (`as_dict`; their types are checkpoint.PROGRESS_FIELDS)."""

    epoch: int = 0  # the epoch being trained
    iteration: int = 0  # iterations done in that epoch
    global_iteration: int = 0  # iterations done in all epochs: the checkpoint's number
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per validated epoch
    loss_sum: float = 0.0  # finite losses of the epoch so far, for its mean
    loss_count: int = 0
    bad_steps: int = 0  # the current streak of non-finite losses
    train_seconds: float = 0.0
    val_seconds: float = 0.0
    epoch_train_seconds: float = 0.0
    compile_seconds: float | None = None  # the first compiled step's, apart from train_seconds
    best_r1: float | None = None
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None  # the best epoch's model weights, on the CPU
    started_at: str = field(default_factory=now)
    resumed_from_iteration: int | None = None  # the global iteration of the checkpoint this run resumed

    def as_dict(self) -> dict[str, Any]:
        # Shallow: a deep copy (dataclasses.asdict) would clone best_state at every checkpoint.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def resumed(cls, saved: dict[str, Any]) -> Progress:
        """The progress a checkpoint saved (fields checked by checkpoint.check_fields), resumed now."""
        progress = cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls)})
        progress.resumed_from_iteration = progress.global_iteration
        return progress

    def finish_step(self) -> None:
        self.iteration += 1
        self.global_iteration += 1

    def add_loss(self, loss: float) -> bool:
        """Count one step's loss; False for a non-finite one, which extends the streak of bad steps."""
        if not math.isfinite(loss):
            self.bad_steps += 1
            return False
        self.bad_steps = 0
        self.loss_sum += loss
        self.loss_count += 1
        return True

    @property
    def mean_loss(self) -> float:
        """The mean finite loss of the epoch so far."""
        return self.loss_sum / max(self.loss_count, 1)

    def add_training_time(self, seconds: float) -> None:
        self.train_seconds += seconds
        self.epoch_train_seconds += seconds

    def close_epoch(self, val_seconds: float) -> tuple[float, float]:
        """The epoch's mean loss and training seconds; resets both for the next epoch."""
        self.val_seconds += val_seconds
        closed = self.mean_loss, self.epoch_train_seconds
        self.loss_sum, self.loss_count, self.epoch_train_seconds = 0.0, 0, 0.0
        return closed

    def keep_if_best(self, r1: float, model: torch.nn.Module) -> None:
        """Keep `model`'s weights when this epoch's validation R@1 beats every earlier one."""
        if self.best_r1 is None or r1 > self.best_r1:
            self.best_r1, self.best_epoch = r1, self.epoch
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def start_next_epoch(self) -> None:
        self.epoch += 1
        self.iteration = 0
