"""Atomic file writes: a reader (or a killed job) never sees a half-written file.

Each writer goes to a temporary file in the destination folder, fsyncs it and renames it
over the final name, so the final name either holds the old content or the whole new one.
Temporary files are named `.<final name>.<random>.tmp`; only SIGKILL (or a power cut) can
leave one behind, and the next run of the command that owns the final name removes it
(`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from geoloc.errors import GeolocError

log = logging.getLogger(__name__)
# Stop signals wait while a set of outputs is renamed into place: all of them appear, or none.
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is fsynced and renamed onto `path`.

    On any exception the temporary file is removed and `path` is left untouched.
    """
    final = Path(path)
    with _temporary(final) as tmp:
        yield tmp
        _fsync_file(tmp, final)
        _rename(tmp, final)


@contextlib.contextmanager
def _temporary(final: Path) -> Iterator[Path]:
    """A temporary file next to `final`, removed unless renamed away; OSError -> GeolocError."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as exc:
        raise GeolocError(f"cannot write {final}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # mkstemp creates 0600; results on a shared cluster disk must get the usual permissions.
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
    except OSError as exc:
        raise GeolocError(f"cannot write {final}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)  # a no-op once renamed


def _fsync_file(tmp: Path, final: Path) -> None:
    try:
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
    except OSError as exc:
        raise GeolocError(f"cannot write {final}: {exc.strerror or exc}") from exc


def _rename(tmp: Path, final: Path) -> None:
    try:
        os.replace(tmp, final)
    except OSError as exc:
        raise GeolocError(f"cannot write {final}: {exc.strerror or exc}") from exc
    _fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file for writing that replaces `path` only when the block succeeds."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as handle:
            yield handle


@contextlib.contextmanager
def atomic_outputs(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Temporary paths for several outputs that appear together or not at all.

    The block writes every temporary path; on success all are fsynced, then renamed in the
    given order with stop signals held back (a Ctrl-C or SIGTERM is delivered once all are in
    place, or none is). On any exception every temporary file is removed and no final name is touched.
    """
    finals = [Path(path) for path in paths]
    with contextlib.ExitStack() as stack:
        temporaries = [stack.enter_context(_temporary(final)) for final in finals]
        yield temporaries
        for tmp, final in zip(temporaries, finals):
            _fsync_file(tmp, final)
        with _stop_signals_held():
            renamed = []
            try:
                for tmp, final in zip(temporaries, finals):
                    _rename(tmp, final)
                    renamed.append(final)
            except BaseException:
                for final in renamed:  # neither: the ones already in place go again
                    final.unlink(missing_ok=True)
                raise


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Stop signals that arrive in the block are delivered after it, to the handlers of before.

    Python-level, not a signal mask: Python runs its handlers in the main thread whichever
    thread the signal reached, and torch's threads do not block it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may handle signals; none is raised here
        return
    pending = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: pending.append(signum)) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in pending:
            signal.raise_signal(signum)


def remove_stale_temporaries(folder: str | os.PathLike, name: str) -> list[Path]:
    """Remove the temporary files a killed writer of `folder/name` left (`name` may be a glob).

    Also those of an atomic writer whose target was itself a temporary file (`atomic_outputs`).
    """
    removed = []
    folder = Path(folder)
    for stale in [*folder.glob(f".{name}.*.tmp"), *folder.glob(f"..{name}.*.tmp")]:
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed.append(stale)
    if removed:
        log.info(
            "removed %d temporary file(s) left by a killed run: %s",
            len(removed),
            ", ".join(str(path) for path in removed),
        )
    return removed


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """`torch.save` through `atomic_path`; torch reports a full disk as a RuntimeError.

    Saved through an open file: given a path, torch names the archive inside after the file,
    here a random temporary name, and the same model would never give the same bytes twice
    (train.json's model_sha256 identifies a model by its file).
    """
    import torch  # only the writers of models and checkpoints need it

    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as handle:
                torch.save(obj, handle)
        except RuntimeError as exc:
            raise GeolocError(f"cannot write {path}: {exc} (is the disk full?)") from exc


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # The rename itself is only durable once the directory entry is flushed.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
