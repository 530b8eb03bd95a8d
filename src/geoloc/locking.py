"""Advisory locks: one geoloc process at a time writes a run folder, a checkpoint folder or a
results folder.

A lock is `fcntl.flock` on a file beside the folder, `.<folder name>.lock` (beside, so that
the folder holds only what its command writes). The kernel releases it when
the process that holds it ends, however it ends (SIGKILL, a node crash seen by the file
server), so a lock left by a killed process is taken over by the next one without a question;
the file itself only records who holds it (pid, host, command, since when) for the message
that a second process gets. flock works across the nodes of a cluster where the file system
supports it (NFSv4, Lustre mounted with `flock`, GPFS); where it does not, the command goes on
with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from geoloc.errors import GeolocError
from geoloc.provenance import now

log = logging.getLogger(__name__)

# The file systems that do not do flock say so with one of these.
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)
_HELD: list[int] = []  # the descriptors of `hold`: open until the process ends
_OWN: set[Path] = set()  # the folders this process holds: a second flock of its own would block it


@contextlib.contextmanager
def locked(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold `folder`'s lock for the block; `what` names the folder in messages ("run folder")."""
    fd = acquire(folder, what)
    try:
        yield
    finally:
        if fd is not None:
            _OWN.discard(Path(folder).resolve())
            os.close(fd)  # releases the lock; the file stays, for the next holder to overwrite


def hold(folder: str | os.PathLike, what: str) -> None:
    """Hold `folder`'s lock until this process ends (the workflow's lock on its results folder)."""
    fd = acquire(folder, what)
    if fd is not None:
        _HELD.append(fd)


def acquire(folder: str | os.PathLike, what: str) -> int | None:
    """Lock `folder` (which need not exist yet) and record this process in its lock file.

    Returns the open descriptor that holds the lock (None where this process holds it already, or
    the file system has no locks). Another live process's lock raises GeolocError naming that
    process and the way out.
    """
    folder = Path(folder)
    if folder.resolve() in _OWN:
        return None
    path = lock_file(folder)
    if folder.exists() and not folder.is_dir():
        raise GeolocError(f"{what} {folder} is a file, not a folder: give another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # the folder itself is its command's to make
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise GeolocError(f"cannot write in {what} {folder}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise GeolocError(
            f"{what} {folder} is in use by {holder}: two processes would write the same files; wait until it "
            f"ends or stop it, then rerun (a killed holder releases {path} by itself)"
        ) from None
    except OSError as exc:
        os.close(fd)
        if exc.errno not in _NO_LOCKS:
            raise GeolocError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        log.warning(
            "%s: this file system cannot lock files (%s); nothing stops a second process from writing "
            "%s at the same time",
            path,
            exc.strerror,
            folder,
        )
        return None
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300], "since": now()}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    except OSError as exc:  # a full disk: the lock holds all the same, only the message would be poorer
        log.warning("%s: cannot record the holder (%s)", path, exc.strerror or exc)
    _OWN.add(folder.resolve())
    return fd


def lock_file(folder: str | os.PathLike) -> Path:
    """The file whose lock stands for `folder`'s."""
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}.lock"


def _holder(fd: int) -> str:
    """Who holds a lock, as its file records it."""
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"process {record['pid']} on {record['host']} since {record['since']} ({record['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
