"""Durable file writes shared by the snapshot, provisioning and anything else that must not be
seen half-written or lost in a crash; and the lock file that keeps a second process off a folder."""

from __future__ import annotations

import fcntl
import os
import tempfile


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` whole: a temp file in the same folder, fsync, rename, fsync the folder.

    Readers see the old content or the new, never a mix; after a crash the new content is there
    once this returned.
    """
    folder = os.path.dirname(os.fspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(os.fspath(path))}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(folder)


def lock_exclusive(path: str | os.PathLike, mode: int = 0o600) -> int:
    """Take an exclusive ``flock`` on ``path`` (created if missing), without waiting.

    Returns the open descriptor, which holds the lock until it is closed (it is not inherited
    by child processes: ``O_CLOEXEC``).

    Raises:
        BlockingIOError: another open file description holds the lock (nothing is left open).
        OSError: ``path`` cannot be opened.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd
