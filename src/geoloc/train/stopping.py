"""Stopping a training cleanly: stop signals, and a SLURM job's time limit.

Both become one flag the loop checks between steps, so that it writes a checkpoint before it
exits (exit 3, and the job requeues itself: workflow/scripts/requeue-on-stop.sh). The time
limit is the job's own: its time left is read from SLURM once, when training starts, and the
loop stops `--stop-margin-seconds` before it by its own clock. SLURM's USR1 signal (the
workflow asks for it at the same margin) is a second way in; a user's `slurm_extra` may
replace it, the clock stays.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from geoloc.errors import GeolocError, StopRequested

log = logging.getLogger(__name__)

# squeue's %L: [days-][hours:]minutes:seconds, e.g. "2:59", "1:02:03", "3-00:00:00".
_TIME_LEFT = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$")
_NO_LIMIT = ("UNLIMITED", "NOT_SET")


@dataclass(frozen=True)
class Deadline:
    """When training must stop: `at` is a `time.monotonic()` value, `margin_seconds` before a
    SLURM job's time limit."""

    at: float
    margin_seconds: float


class TrainingInterrupted(StopRequested):
    """A stop signal arrived or the time limit came near; the state was checkpointed and the
    next run resumes from it."""


class StopFlag:
    """Turns Ctrl-C, SIGTERM and SIGUSR1 (SLURM's warning before a time limit) into a flag,
    and `deadline` into the same flag once it has passed.

    Only the process that entered it sets the flag: loader workers forked while it is active
    inherit the handler and leave stopping to the main process.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, deadline: Deadline | None = None) -> None:
        self.signal: int | None = None
        self.deadline = deadline
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

    @property
    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline.at

    @property
    def asked(self) -> bool:
        """Whether this process should stop: a signal came, or the deadline has passed."""
        return self.signal is not None or self.out_of_time

    def interrupted(self, where: str) -> TrainingInterrupted:
        """The exception that ends the run, once its checkpoint is written."""
        if self.signal is not None:
            name = signal.Signals(self.signal).name
            return TrainingInterrupted(
                f"stopped by signal {self.signal} ({name}) {where}; checkpoint saved, rerun to resume", self.signal
            )
        if self.out_of_time:
            return TrainingInterrupted(
                f"stopped {where}, {self.deadline.margin_seconds:g} s before the SLURM job's time limit "
                "(--stop-margin-seconds); checkpoint saved, rerun to resume",
                signal.SIGTERM,
            )
        # In a distributed run, another rank was signalled or ran out of time.
        return TrainingInterrupted(
            f"stopped {where} because another training process was asked to stop; checkpoint saved, rerun to resume",
            signal.SIGTERM,
        )


def slurm_deadline(margin_seconds: float | None) -> Deadline | None:
    """When training must stop: `margin_seconds` before this SLURM job's time limit.

    None outside a SLURM job, without a margin, or when the job has no limit; a job whose time
    left cannot be read is left to SLURM's USR1 signal, with a warning. Read once: a requeued
    job starts again with its whole time limit, and so does its training.
    """
    job = os.environ.get("SLURM_JOB_ID")
    if margin_seconds is None or not job:
        return None
    left = _time_left(job)
    if left is None:
        return None
    if left <= margin_seconds:
        raise GeolocError(
            f"SLURM job {job} has {left} s left, not more than --stop-margin-seconds "
            f"{margin_seconds:g}: it would stop before its first step (ask for a longer time "
            "limit or a smaller training.stop_margin_minutes)"
        )
    log.info("SLURM job %s ends in %d s: training stops %g s before", job, left, margin_seconds)
    return Deadline(time.monotonic() + left - margin_seconds, margin_seconds)


def _time_left(job: str) -> int | None:
    """Seconds left to SLURM job `job` (squeue's %L), or None when it has no limit or squeue
    cannot tell."""
    command = ["squeue", "-h", "-j", job, "-o", "%L"]
    try:
        answer = subprocess.run(command, capture_output=True, text=True, timeout=60)
        said = (
            answer.stdout.strip().splitlines()[0]
            if answer.returncode == 0 and answer.stdout.strip()
            else (answer.stderr.strip() or f"exit code {answer.returncode}, no output")
        )
    except (OSError, subprocess.SubprocessError) as exc:
        said = str(exc)
    if said in _NO_LIMIT:
        log.info("SLURM job %s has no time limit (squeue says %s)", job, said)
        return None
    if not (match := _TIME_LEFT.match(said)):
        log.warning(
            "cannot read the time left of SLURM job %s (%s: %s); only SLURM's USR1 signal can stop "
            "training before its time limit",
            job,
            " ".join(command),
            said,
        )
        return None
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
