"""Stop signals during training: a flag the loop checks, so that it checkpoints before it exits."""

from __future__ import annotations

import os
import signal
from typing import Any

from geoloc.errors import StopRequested


class TrainingInterrupted(StopRequested):
    """A stop signal arrived; the state was checkpointed and the next run resumes from it."""


class StopFlag:
    """Turns Ctrl-C, SIGTERM and SIGUSR1 (SLURM's warning before a time limit) into a flag.

    Only the process that entered it sets the flag: loader workers forked while it is active
    inherit the handler and leave stopping to the main process.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid: int | None = None

    def __enter__(self) -> StopFlag:
        self._pid = os.getpid()
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if os.getpid() == self._pid:
            self.signal = signum

    def interrupted(self, where: str) -> TrainingInterrupted:
        """The exception that ends the run, once its checkpoint is written."""
        if self.signal is None:  # in a distributed run, another rank was signalled
            return TrainingInterrupted(f"stopped {where} because another training process was signalled; "
                                       "checkpoint saved, rerun to resume", signal.SIGTERM)
        name = signal.Signals(self.signal).name
        return TrainingInterrupted(f"stopped by signal {self.signal} ({name}) {where}; checkpoint saved, "
                                   "rerun to resume", self.signal)
