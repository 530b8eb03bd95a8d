"""TensorBoard scalars of one training run, under `<out-dir>/tensorboard/`; never fatal.

`tensorboard --logdir results/demo/runs` then shows every run of the grid side by side. A
resumed run continues its curves: the writer purges what the killed run wrote after the
checkpoint it resumes from (TensorBoard's `purge_step`), so no step appears twice. A fresh
run starts an empty folder, so an old run's curves never mix with a new one's. Any failure
to write (a full disk, an unwritable folder) is a warning, and the training goes on.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


class TrainingEvents:
    """Writes scalars by global iteration; a no-op when `folder` is None (ranks other than 0)."""

    def __init__(self, folder: Path | None, resumed_from: int | None) -> None:
        self.folder, self._writer = folder, None
        if folder is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            if resumed_from is None:
                shutil.rmtree(folder, ignore_errors=True)
            # Steps up to the checkpoint's are in it; later ones died with the killed run.
            purge = None if resumed_from is None else resumed_from + 1
            self._writer = SummaryWriter(str(folder), purge_step=purge)
        except Exception as exc:  # TensorBoard must never stop a training
            self._give_up(exc)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._writer is None:
            return
        try:
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, step)
        except Exception as exc:
            self._give_up(exc)

    def flush(self) -> None:
        if self._writer is None:
            return
        try:
            self._writer.flush()
        except Exception as exc:
            self._give_up(exc)

    def close(self) -> None:
        if self._writer is None:
            return
        try:
            self._writer.close()
        except Exception as exc:
            self._give_up(exc)
        self._writer = None

    def _give_up(self, exc: Exception) -> None:
        log.warning("TensorBoard events in %s are not written any more (the training goes on): %s", self.folder, exc)
        self._writer = None
