"""Site app bundles: the app folder a site runs, packed as one tar.gz to travel as a raw frame.

Sites do not share the parent's disk. Only regular files and folders are packed (symlinks and
special files are skipped), with paths relative to the app folder.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zlib

MAX_BUNDLE_BYTES = 512 * 1024 * 1024


def make_bundle(app_dir: str) -> bytes:
    """A tar.gz of ``app_dir``'s regular files.

    Raises:
        ValueError: the folder is missing or the bundle would be larger than `MAX_BUNDLE_BYTES`.
    """
    if not os.path.isdir(app_dir):
        raise ValueError(f"app folder {app_dir} is missing")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for folder, dirs, files in os.walk(app_dir, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(folder, d)) and d != "__pycache__")
            for name in sorted(files):
                path = os.path.join(folder, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                tar.add(path, arcname=os.path.relpath(path, app_dir), recursive=False)
                if buf.tell() > MAX_BUNDLE_BYTES:
                    raise ValueError(f"app folder {app_dir} packs to more than {MAX_BUNDLE_BYTES} bytes")
    return buf.getvalue()


class BundleLimitError(ValueError):
    """A bundle holds more entries or bytes than the caps it was unpacked with allow."""


#: Most entries (files and folders) a bundle may hold: empty files cost no bytes, but each costs work.
MAX_BUNDLE_ENTRIES = 10_000
#: Most folder levels in an entry's path.
MAX_PATH_DEPTH = 64
#: Tar data allowed per entry beyond its content: its header, and room for a long-name or pax record.
_HEADER_ALLOWANCE = 4096


def extract_bundle(data: bytes, dest: str, max_bytes: int = MAX_BUNDLE_BYTES,
                   max_entries: int = MAX_BUNDLE_ENTRIES) -> None:
    """Unpack a bundle into ``dest``, refusing anything that is not a plain file or folder inside it.

    Every entry is checked before anything is written. The work is bounded by the limits, not by
    what the bundle claims: decompression stops once the tar stream runs past what ``max_bytes``
    of content and ``max_entries`` headers can take (a gzip bomb is refused there, not after
    inflating all of it), and entries are counted as they are read.

    Raises:
        BundleLimitError: the bundle holds more than ``max_entries`` entries, or unpacks to more
            than ``max_bytes`` (a `ValueError`).
        ValueError: the bundle is not a tar.gz, holds a link, a device, an absolute path, ``..``,
            or a path deeper than `MAX_PATH_DEPTH`.
    """
    root = os.path.realpath(dest)
    os.makedirs(root, exist_ok=True)
    stream = _Capped(gzip.GzipFile(fileobj=io.BytesIO(data)), max_bytes + max_entries * _HEADER_ALLOWANCE)
    try:
        with tarfile.open(fileobj=stream, mode="r:") as tar:
            members = _checked_members(tar, root, max_bytes, max_entries)
            for m in members:
                _extract(tar, m, root)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"bundle is not a valid tar.gz ({type(exc).__name__}: {exc})") from None


def _checked_members(tar: tarfile.TarFile, root: str, max_bytes: int, max_entries: int) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    total = 0
    for m in tar:  # reads the headers, skipping the content
        if len(members) >= max_entries:
            raise BundleLimitError(f"bundle holds more than {max_entries} entries")
        if not (m.isfile() or m.isdir()):
            raise ValueError(f"bundle entry '{m.name[:200]}' is not a regular file or folder")
        if m.name.count("/") >= MAX_PATH_DEPTH:
            raise ValueError(f"bundle entry '{m.name[:200]}…' is nested deeper than {MAX_PATH_DEPTH} folders")
        target = os.path.realpath(os.path.join(root, m.name))
        if os.path.isabs(m.name) or (target != root and not target.startswith(root + os.sep)):
            raise ValueError(f"bundle entry '{m.name[:200]}' leaves the app folder")
        total += m.size
        if total > max_bytes:
            raise BundleLimitError(f"bundle unpacks to more than {max_bytes} bytes")
        members.append(m)
    return members


def _extract(tar: tarfile.TarFile, m: tarfile.TarInfo, root: str) -> None:
    target = os.path.join(root, m.name)
    if m.isdir():
        os.makedirs(target, exist_ok=True)
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    src = tar.extractfile(m)
    assert src is not None
    with open(target, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)


class _Capped(io.RawIOBase):
    """A read-only view of a decompressing stream that refuses to go past ``cap`` bytes."""

    def __init__(self, f: gzip.GzipFile, cap: int) -> None:
        self.f, self.cap = f, cap

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _check(self, position: int) -> None:
        if position > self.cap:
            raise BundleLimitError(f"bundle unpacks to more than {self.cap} bytes of tar data")

    def read(self, n: int = -1) -> bytes:
        # Checked before reading: a forged header may ask for gigabytes in one read.
        self._check(self.f.tell() + (n if n is not None and n >= 0 else self.cap + 1))
        return self.f.read(n)

    def readinto(self, buf) -> int:
        self._check(self.f.tell() + len(buf))
        return self.f.readinto(buf)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: 0, io.SEEK_CUR: self.f.tell()}.get(whence)
        if target is None:  # from the end would mean inflating everything
            raise ValueError("bundle streams cannot be sought from their end")
        self._check(target + offset)
        return self.f.seek(target + offset)

    def tell(self) -> int:
        return self.f.tell()
