"""Optimisation steps that a non-finite loss never reaches, with no host synchronisation per step.

A non-finite loss poisons its own gradients (times NaN), so the GradScaler's on-device check
makes the fused Adam kernels skip the whole step, moments and step count included. In fp32
(and with bf16 autocast on a CPU) the scale stays at 1, and multiplying by 1 changes no bit:
the weights are those of plain Adam (tests/train/test_guard.py). With fp16 autocast on CUDA
the scale is dynamic, as the study trained.

The host learns which steps were bad from a window of per-step losses kept on the device
(`StepWindow`), read every SYNC_EVERY steps and before every checkpoint.
"""

from __future__ import annotations

import time

import torch

SYNC_EVERY = 32  # steps between two reads of the window: one host synchronisation each


def adam(params, lr: float, device: torch.device) -> torch.optim.Adam:
    """Fused Adam (one kernel for all parameters) where torch has it, else the foreach one."""
    if device.type in ("cuda", "cpu"):
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr, foreach=True)


class GuardedStep:
    """backward + the optimizers' steps, skipped on the device when the loss is not finite."""

    def __init__(self, device: torch.device, precision: str) -> None:
        self.dynamic = precision == "amp" and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, init_scale=2.0**16 if self.dynamic else 1.0)

    def __call__(self, loss: torch.Tensor, optimizers: list[torch.optim.Optimizer]) -> None:
        poison = torch.where(torch.isfinite(loss.detach()), 1.0, float("nan"))
        self.scaler.scale(loss * poison).backward()
        for optimizer in optimizers:
            self.scaler.step(optimizer)
        self.scaler.update(None if self.dynamic else 1.0)


class StepWindow:
    """Per-step losses on the device, plus one stop slot, read by the host all at once.

    The read sums the window over the ranks of a distributed run (each rank adds its share
    of the global loss, and its stop flag), so every rank sees the same losses and stops
    together.
    """

    def __init__(self, device: torch.device, size: int = SYNC_EVERY) -> None:
        self.size = size
        self.values = torch.zeros(size + 1, device=device)
        self.count = 0
        self.started = time.perf_counter()

    @property
    def full(self) -> bool:
        return self.count == self.size

    def add(self, loss: torch.Tensor) -> None:
        self.values[self.count] = loss.detach().float()
        self.count += 1

    def read(self, stop: bool, all_reduce) -> tuple[list[float], bool, float]:
        """(losses of the steps since the last read, whether any rank asked to stop, the wall
        seconds those steps took); resets the window."""
        self.values[self.size] = float(stop)
        all_reduce(self.values)
        values = self.values.tolist()  # the one wait for the device
        losses, stopping = values[: self.count], values[self.size] > 0
        seconds = time.perf_counter() - self.started
        self.values.zero_()
        self.count = 0
        self.started = time.perf_counter()
        return losses, stopping, seconds
