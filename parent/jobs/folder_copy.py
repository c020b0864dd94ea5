"""Reading a submitted job folder into the workspace, safely: scan it first, then copy what the scan saw.

The scan walks the folder without letting symbolic links recurse and writes nothing. It refuses,
with a one-line error naming the path (relative to the job folder):

- a symlink to a folder inside the job folder, or to one that holds a folder being copied
  (``custom/a -> .``: a loop, or the same files twice);
- a symlink to a folder outside that leads back to a folder already being copied (a loop
  through shared code);
- a dangling symlink, and special files (FIFO, socket, device): reading them would block or
  read a device;
- more files and folders than `CopyLimits.max_files`, or more bytes than
  `CopyLimits.max_bytes`, checked as it goes, so a huge folder is refused after reading at
  most the cap's worth of entries.

Symlinks to folders outside the job folder are followed (users link shared code into
``custom/``); symlinks to files, inside or outside, are copied as regular files.

The copy then creates exactly the entries of the scan: it never walks the folder again, reads
each file at most to the size the scan counted (a file that grew in between is refused), and
opens nothing that is not a regular file by then. A half-written copy is the caller's to remove
(`parent.jobs.submission.Submissions.prepare` removes the whole run dir on any failure).
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from dataclasses import dataclass, field, replace

from flrunner.errors import BadRequest, JobFolderError

#: How much of a path an error message shows (a name may be up to 4 KiB).
_SHOWN_PATH = 200

#: A folder still to walk: the path to list, its path in the job folder, and the real paths and
#: (device, inode) of the folders from the job folder down to it (the current path, for loop checks).
_Folder = tuple[str, str, tuple[str, ...], tuple[tuple[int, int], ...]]


@dataclass(frozen=True)
class CopyLimits:
    """How much one job folder may hold (`ParentConfig.max_job_files`, ``max_job_bytes``).

    Attributes:
        max_files: files and folders, not counting the job folder itself.
        max_bytes: total size of the files, symlinked ones included.
    """

    max_files: int = 10_000
    max_bytes: int = 1 << 30


@dataclass(frozen=True)
class Entry:
    """One file or folder to copy.

    Attributes:
        rel: its path in the job folder, ``/``-separated.
        source: the path to read it from (through any symlinked folder on the way).
        is_dir: a folder (created) rather than a file (copied).
        follow: the last component is a symlink to a file, to be followed when opened.
        size: the file's size when scanned: the copy reads no more.
        mode: permission bits to give the copy.
        mtime_ns: modification time to give the copy (so cached bytecode stays valid).
    """

    rel: str
    source: str
    is_dir: bool
    follow: bool = False
    size: int = 0
    mode: int = 0o644
    mtime_ns: int = 0


@dataclass
class FolderScan:
    """What `scan_job_folder` found: the entries to copy, parents before children.

    Attributes:
        root: the scanned folder.
        entries: every folder and file under it.
        files: how many regular files (symlinked ones included).
        bytes: their total size.
    """

    root: str
    entries: list[Entry] = field(default_factory=list)
    files: int = 0
    bytes: int = 0

    def subtree(self, rel_dir: str, read_from: str) -> FolderScan:
        """The entries under ``rel_dir``, relative to it, to be read from ``read_from``.

        ``read_from`` is a copy of ``rel_dir`` made from this scan (the job folder's copy in the
        run dir): a second copy is then made from our own files, not the submitter's, which may
        have changed meanwhile. Every entry of the copy is a plain file or folder.
        """
        prefix = rel_dir.strip("/") + "/"
        sub = FolderScan(read_from)
        for e in self.entries:
            if e.rel.startswith(prefix):
                rel = e.rel[len(prefix):]
                sub.entries.append(replace(e, rel=rel, source=os.path.join(read_from, rel), follow=False))
                if not e.is_dir:
                    sub.files += 1
                    sub.bytes += e.size
        return sub


def show(path: str) -> str:
    """A path as an error message shows it: on one line (control characters escaped) and clipped."""
    text = path.encode("unicode_escape", "backslashreplace").decode("ascii") if not path.isprintable() else path
    return text if len(text) <= _SHOWN_PATH else text[:_SHOWN_PATH] + "…"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _kind(mode: int) -> str:
    return next((name for test, name in _SPECIAL if test(mode)), "not a regular file or folder")


class _Scanner:
    """One scan: the entries so far, the caps, and the folder's real path."""

    def __init__(self, root: str, limits: CopyLimits) -> None:
        self.scan = FolderScan(root)
        self.limits = limits
        self.real_root = os.path.realpath(root)
        self.count = 0

    def add(self, entry: Entry) -> None:
        self.count += 1
        if self.count > self.limits.max_files:
            raise BadRequest(f"job folder refused: more than {self.limits.max_files} files and folders (stopped "
                             f"counting at {self.count}, at '{show(entry.rel)}'); raise the cap with flrunner parent "
                             f"--max-job-files")
        if not entry.is_dir:
            self.scan.files += 1
            self.scan.bytes += entry.size
            if self.scan.bytes > self.limits.max_bytes:
                cap = _size(self.limits.max_bytes)
                exact = f" ({self.limits.max_bytes} bytes)" if not cap.endswith(" bytes") else ""
                raise BadRequest(f"job folder refused: more than {cap}{exact} of files ({_size(self.scan.bytes)} in "
                                 f"{self.scan.files} files so far, at '{show(entry.rel)}'); raise the cap with "
                                 f"flrunner parent --max-job-bytes")
        self.scan.entries.append(entry)

    def run(self) -> FolderScan:
        root = self.scan.root
        try:
            st = os.stat(root)
        except OSError as exc:
            raise JobFolderError(show(root), None, f"cannot be read ({exc.strerror})") from None
        if not stat.S_ISDIR(st.st_mode):
            raise JobFolderError(show(root), None, "is not a directory")
        # Depth first with an explicit stack: no recursion limit, whatever the depth.
        stack: list[_Folder] = [(root, "", (self.real_root,), ((st.st_dev, st.st_ino),))]
        while stack:
            path, rel, reals, inodes = stack.pop()
            try:
                with os.scandir(path) as it:
                    # No more than the file cap leaves room for (plus the one that exceeds it): a
                    # folder of millions of entries is refused without listing all of them.
                    children = sorted(itertools.islice(it, self.limits.max_files - self.count + 1),
                                      key=lambda c: c.name)
            except OSError as exc:
                raise JobFolderError(show(rel or "."), None, f"cannot be read ({exc.strerror})") from None
            below: list[_Folder] = []  # the sub-folders, walked in name order after this folder's entries
            for child in children:
                crel = f"{rel}/{child.name}" if rel else child.name
                try:
                    lst = child.stat(follow_symlinks=False)
                except OSError as exc:
                    raise JobFolderError(show(crel), None, f"cannot be read ({exc.strerror})") from None
                if stat.S_ISLNK(lst.st_mode):
                    self._link(child.path, crel, reals, inodes, below)
                elif stat.S_ISDIR(lst.st_mode):
                    if (lst.st_dev, lst.st_ino) in inodes:  # only a bind mount can do this without a link
                        raise JobFolderError(show(crel), None, "leads back to a folder already being copied (a loop)")
                    self.add(Entry(crel, child.path, True))
                    below.append((child.path, crel, reals + (os.path.join(reals[-1], child.name),),
                                  inodes + ((lst.st_dev, lst.st_ino),)))
                elif stat.S_ISREG(lst.st_mode):
                    self.add(Entry(crel, child.path, False, False, lst.st_size, lst.st_mode, lst.st_mtime_ns))
                else:
                    raise JobFolderError(show(crel), None, f"is {_kind(lst.st_mode)}; a job folder holds regular "
                                                           f"files, folders and symlinks only")
            stack.extend(reversed(below))
        return self.scan

    def _link(self, path: str, rel: str, reals: tuple[str, ...], inodes: tuple[tuple[int, int], ...],
              below: list[_Folder]) -> None:
        try:
            target = os.readlink(path)
        except OSError as exc:
            raise JobFolderError(show(rel), None, f"cannot be read ({exc.strerror})") from None
        where = f"symlink to '{show(target)}'"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise JobFolderError(show(rel), None, f"{where} is dangling (nothing there)") from None
        except OSError as exc:
            what = "loops (links lead back to each other)" if exc.errno == errno.ELOOP else \
                f"cannot be followed ({exc.strerror})"
            raise JobFolderError(show(rel), None, f"{where} {what}") from None
        if stat.S_ISREG(st.st_mode):
            self.add(Entry(rel, path, False, True, st.st_size, st.st_mode, st.st_mtime_ns))
            return
        if not stat.S_ISDIR(st.st_mode):
            raise JobFolderError(show(rel), None, f"{where} leads to {_kind(st.st_mode)}; a job folder holds regular "
                                                  f"files, folders and symlinks to them only")
        real = os.path.realpath(path)
        if real.startswith(self.real_root + os.sep):
            raise JobFolderError(show(rel), None, f"{where} leads to a folder inside the job folder; links to folders "
                                                  f"are followed only when they lead outside it")
        # The target is a folder on the current path, or holds one (``.``, ``..``, ``/``): a loop.
        if any(real == r or r.startswith(real.rstrip(os.sep) + os.sep) for r in reals) \
                or (st.st_dev, st.st_ino) in inodes:
            raise JobFolderError(show(rel), None, f"{where} leads back to a folder already being copied (a loop)")
        self.add(Entry(rel, path, True))
        below.append((path, rel, reals + (real,), inodes + ((st.st_dev, st.st_ino),)))


def scan_job_folder(folder: str | os.PathLike, limits: CopyLimits = CopyLimits()) -> FolderScan:
    """Walk a job folder and list what to copy, writing nothing.

    Raises:
        JobFolderError: a symlink to a folder inside the job folder, a symlink loop, a dangling
            symlink, a special file, or an unreadable entry (the message names its path).
        BadRequest: the folder holds more than ``limits`` allow (the message names the cap, what
            was counted, and the flag that raises it).
    """
    return _Scanner(os.path.abspath(os.fspath(folder)), limits).run()


def copy_scanned(scan: FolderScan, dest: str) -> None:
    """Create ``dest`` with exactly the entries of ``scan``.

    Files get their permission bits (and owner read/write, so the workspace stays removable) and
    modification time; folders get the default mode.

    Raises:
        JobFolderError: a file changed kind or grew since it was scanned.
        BadRequest: the copy failed (no space, no file descriptors...): the message names the
            entry and the OS error. What was written is left for the caller to remove.
    """
    rel = "."
    try:
        os.mkdir(dest)
        for e in scan.entries:
            rel = e.rel
            target = os.path.join(dest, e.rel)
            if e.is_dir:
                os.mkdir(target)
            else:
                _copy_file(e, target)
    except OSError as exc:
        raise BadRequest(f"cannot copy the job folder into the workspace: '{show(rel)}': "
                         f"{exc.strerror or exc}") from None


def _copy_file(e: Entry, target: str) -> None:
    # O_NONBLOCK: if a FIFO took the file's place since the scan, open returns at once (and the
    # fstat below refuses it) instead of waiting for a writer. O_NOFOLLOW: nor may a new symlink.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if e.follow else os.O_NOFOLLOW)
    src = os.open(e.source, flags)
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            raise JobFolderError(show(e.rel), None, "is no longer a regular file (it changed during the copy)")
        mode = (e.mode & 0o777) | 0o600
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            _send(src, dst, e.size)
            if os.pread(src, 1, e.size):
                raise JobFolderError(show(e.rel), None, f"grew during the copy (it had {e.size} bytes when scanned)")
            os.fchmod(dst, mode)  # the umask narrowed what open gave
            os.utime(dst, ns=(e.mtime_ns, e.mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _send(src: int, dst: int, size: int) -> None:
    """Copy the first ``size`` bytes of ``src`` (fewer if it shrank) in the kernel where it can."""
    offset = 0
    try:
        while offset < size:
            sent = os.sendfile(dst, src, offset, min(size - offset, 1 << 30))
            if sent == 0:
                return
            offset += sent
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS) or offset:
            raise
        while offset < size:  # a file system without sendfile between files
            chunk = os.pread(src, min(size - offset, 1 << 20), offset)
            if not chunk:
                return
            view = memoryview(chunk)
            while view:  # a short write is possible when the disk fills up; the next one raises ENOSPC
                view = view[os.write(dst, view):]
            offset += len(chunk)
