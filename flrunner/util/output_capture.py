"""A process's output into a log file of bounded size.

A job's stdout and stderr — its own, and those of every process it starts, which inherit them —
go to its log. Written straight to a file, a job printing in a loop fills the disk (1 GB in a few
seconds) and with it the parent's store and every other job's workspace. `OutputCapture` points
file descriptors 1 and 2 at a pipe and copies what comes out of it into a `RotatingFile`: at
``max_bytes`` the log is renamed ``log.txt.1`` (older ones shifted up to ``backups``, the oldest
dropped) and a new one begun, so a job's log never takes more than ``max_bytes * (backups + 1)``.
A write the disk refuses drops that output, counted, and the drop is noted in the log once
writing works again: the job itself never fails or blocks on its output.

The copying runs on a thread of the capturing process, so it survives the parent's death like
the job does; what the process writes just before it exits is drained by `OutputCapture.stop`.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading

log = logging.getLogger(__name__)

#: Smallest size a log may rotate at (a rotation per read would be absurd).
MIN_MAX_BYTES = 64 * 1024
_CHUNK = 64 * 1024


class RotatingFile:
    """Appends to ``path``, rotating it by size; never raises on a write.

    Args:
        path: the log file.
        max_bytes: size at which the file is rotated (at least `MIN_MAX_BYTES`).
        backups: rotated files kept (``path.1`` … ``path.N``); 0 keeps none (the file restarts).
    """

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max(int(max_bytes), MIN_MAX_BYTES)
        self.backups = max(int(backups), 0)
        #: Bytes that could not be written (a full disk), not yet reported in the log.
        self.dropped = 0
        self._error = ""
        self._fd = -1
        self._size = 0
        self._open()

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._size = os.fstat(self._fd).st_size
        except OSError as exc:
            self._fd, self._error = -1, str(exc)

    def write(self, data: bytes) -> None:
        if self._fd < 0:
            self._open()
        if self._size > 0 and self._size + len(data) > self.max_bytes:
            self._rotate()
        if self.dropped and self._fd >= 0:
            note = f"[flrunner: {self.dropped} bytes of output were lost: {self._error}]\n".encode()
            if self._write(note):
                self.dropped = 0
        if self._fd < 0 or not self._write(data):
            self.dropped += len(data)

    def _write(self, data: bytes) -> bool:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                self._size += n
                view = view[n:]
            return True
        except OSError as exc:  # ENOSPC, EIO, EFBIG: drop, never fail the job over its log
            self._error = exc.strerror or str(exc)
            return False

    def _rotate(self) -> None:
        self.close()
        try:
            if self.backups == 0:
                os.unlink(self.path)
            else:
                for n in range(self.backups - 1, 0, -1):
                    older = f"{self.path}.{n}"
                    if os.path.exists(older):
                        os.replace(older, f"{self.path}.{n + 1}")
                os.replace(self.path, f"{self.path}.1")
        except OSError as exc:
            self._error = str(exc)
        self._open()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class OutputCapture:
    """Descriptors 1 and 2 of this process (and of what it starts) into a `RotatingFile`.

    Args:
        path, max_bytes, backups: see `RotatingFile`.
    """

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self.path = path
        self.file = RotatingFile(path, max_bytes, backups)
        self._read_fd = -1
        self._stopping = threading.Event()
        # Wakes the copying thread out of its wait at once when the capture stops (a job's exit
        # must not wait for a poll timeout).
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._copy, name="output-capture", daemon=True)

    def start(self) -> None:
        """From now on, what is written to descriptors 1 and 2 goes through the capture."""
        sys.stdout.flush()
        sys.stderr.flush()
        r, w = os.pipe2(os.O_CLOEXEC)
        self._read_fd = r
        os.dup2(w, 1)  # dup2 clears close-on-exec: the processes the job starts inherit them
        os.dup2(w, 2)
        os.close(w)
        self._thread.start()

    def _copy(self) -> None:
        while True:
            stopping = self._stopping.is_set()
            readable, _, _ = select.select([self._read_fd, self._wake_r], [], [], 0.0 if stopping else None)
            if self._read_fd not in readable:
                if stopping:
                    return
                continue
            data = os.read(self._read_fd, _CHUNK)
            if not data:
                return
            self.file.write(data)

    def stop(self, timeout: float = 2.0) -> None:
        """Copy what is still in the pipe, then write descriptors 1 and 2 to the log file directly.

        ``timeout`` bounds the drain: a process the job left running may keep writing.
        """
        if self._read_fd < 0:
            return
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        self._stopping.set()
        os.write(self._wake_w, b"x")
        self._thread.join(timeout)
        # Whatever is written from here on (an error on the way out) goes to the log itself.
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        except OSError:
            pass
        self.file.close()
